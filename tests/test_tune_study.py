"""Both backends finish a small study on the toy model; pruning stops bad trials early."""

from __future__ import annotations

import json

import pytest
import yaml

from smilejax import metrics
from smilejax.tune import space as spaces
from smilejax.tune import study, worker
from smilejax.tune.optuna_backend import optuna
from tests import toy

STEPS = 8
SPACE = {
    "objective": {"metric": "eval/loss", "mode": "min"},
    "parameters": {
        "optimizer.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "scale": "log"},
        "model.hidden": {"type": "int", "low": 16, "high": 32, "step": 16},
    },
}


def base(**run) -> dict:
    return toy.config(
        run={"steps": STEPS, "eval_every": 4, "eval_steps": 1, "checkpoint_every": 8, **run}, mesh={"data": 8}
    )


def check_finished_study(summary, directory, trials: int) -> None:
    assert [t["state"] for t in summary.trials] == ["complete"] * trials
    values = [t["value"] for t in summary.trials]
    assert summary.best["value"] == min(values)
    saved = json.loads((directory / "study.json").read_text())
    assert saved["best"]["number"] == summary.best["number"] and len(saved["trials"]) == trials
    assert (directory / "study.png").stat().st_size > 0
    for t in summary.trials:
        run_dir = directory / f"trial-{t['number']:04d}"
        assert t["run_dir"] == str(run_dir) and t["step"] == STEPS
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert cfg["optimizer"]["lr"] == pytest.approx(t["params"]["optimizer.lr"])
        assert cfg["model"]["hidden"] == t["params"]["model.hidden"]
        assert cfg["logging"]["group"] == directory.name  # the W&B group is the study
        evals = [r["eval/loss"] for r in metrics.read(run_dir / "metrics.jsonl") if "eval/loss" in r]
        assert evals[-1] == pytest.approx(t["value"])  # the objective is the run's logged metric
        assert (run_dir / "checkpoints" / str(STEPS)).is_dir()


@pytest.mark.parametrize(("backend", "algorithm"), [("optuna", "tpe"), ("keras-tuner", "bayesian")])
def test_backend_finishes_small_study_and_reports_best(tmp_path, backend, algorithm):
    directory = tmp_path / "study"
    options = study.Options(dir=directory, backend=backend, algorithm=algorithm, trials=2, seed=1)
    summary = study.tune(base(), spaces.parse(SPACE), options, worker.local())
    check_finished_study(summary, directory, 2)
    assert summary.table().splitlines()[0].split()[:3] == ["trial", "state", "eval/loss"]


def test_pruning_stops_bad_trials_early(tmp_path):
    directory = tmp_path / "study"
    lr = {"type": "float", "low": 1e-7, "high": 0.1, "scale": "log"}
    space = spaces.parse({"objective": {"metric": "eval/loss"}, "parameters": {"optimizer.lr": lr}})
    steps, every = 16, 2
    # ASHA: a trial that barely learns falls behind a good one at a rung and stops there.
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(_mkdir(directory) / "optuna.journal"))
    )
    queued = optuna.create_study(storage=storage, study_name=directory.name)
    for lr in (3e-3, 1e-7):  # 0.05 overshoots: over 16 steps its eval loss stays above the initial one
        queued.enqueue_trial({"optimizer.lr": lr})
    options = study.Options(dir=directory, backend="optuna", pruner="asha", trials=2)
    # four eval batches: one batch of 16 examples is too noisy to rank the trials by after a few steps
    summary = study.tune(base(steps=steps, eval_every=every, eval_steps=4), space, options, worker.local())
    good, bad = sorted(summary.trials, key=lambda t: t["number"])
    assert good["state"] == "complete" and good["step"] == steps
    assert bad["state"] == "pruned" and bad["step"] < steps
    trained = [r["step"] for r in metrics.read(f"{bad['run_dir']}/metrics.jsonl") if "loss" in r]
    assert max(trained) == bad["step"]  # it really stopped training there
    assert sorted(bad["intermediate"]) == list(range(every, bad["step"] + 1, every))
    assert summary.best["number"] == good["number"]


def _mkdir(path):
    path.mkdir(parents=True, exist_ok=True)
    return path
