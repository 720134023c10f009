"""Loop features beyond the basics: MFU, profiler traces, NaN stops, fixed evaluations, optimizers and
schedules."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from smilejax import checkpoint, config, metrics, optim, registry, steps, trainer
from smilejax import mesh as meshlib
from smilejax.config import OptimizerConfig
from smilejax.xla import devices
from tests import toy


def _run(tmp_path, **sections):
    run = {"dir": str(tmp_path / "run"), "steps": 4, **sections.pop("run", {})}
    cfg = config.load(toy.config(run=run, **sections))
    return trainer.train(cfg), tmp_path / "run"


def test_mfu_is_logged_when_the_device_peak_is_known(tmp_path, monkeypatch):
    monkeypatch.setitem(devices.DEVICES, "cpu", devices.Device("cpu", 1e9, None, 1e9, 2**30))
    _, run_dir = _run(tmp_path)
    records = [r for r in metrics.read(run_dir / "metrics.jsonl") if "loss" in r]
    assert all(0 < r["mfu"] < 1 for r in records)


def test_profiler_trace_is_written_and_broken_down(tmp_path):
    _, run_dir = _run(tmp_path, run={"profile_at": 0, "profile_steps": 2})
    assert list((run_dir / "profile").rglob("*.xplane.pb"))
    summary = json.loads((run_dir / "profile.json").read_text())
    assert summary["label"] == "training steps 1-2"
    phases = {r["phase"] for r in summary["by_scope"]}
    assert {"forward", "backward", "update"} <= phases  # the toy names no scopes; the optimizer does
    assert "optimizer" in {r["scope"] for r in summary["by_scope"]}
    assert sum(r["share"] for r in summary["by_category"]) == pytest.approx(1.0)
    assert "## By model scope" in (run_dir / "profile.md").read_text()


def test_a_profiler_window_past_the_last_step_is_closed_and_summarised(tmp_path, caplog):
    _, run_dir = _run(tmp_path, run={"profile_at": 2, "profile_steps": 10})  # the run has 4 steps
    assert "the profiler window ended early, after step 4" in caplog.text
    assert json.loads((run_dir / "profile.json").read_text())["label"] == "training steps 3-4"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("run.profile_at=-2", "run.profile_at must be -1"),
        ("run.profile_steps=0", "run.profile_steps must be"),
    ],
)
def test_profiler_settings_are_checked(override, message):
    with pytest.raises(config.ConfigError, match=message):
        config.load(toy.config(), [override])


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    # Rows of the 4th batch (no shuffling) carry a NaN target: step 4's loss is NaN.
    source = toy.ToySource(toy.ToyDataConfig(), "train")
    y = source.y.copy()
    y[3 * 16 : 4 * 16] = np.nan
    data = tmp_path / "nan.npz"
    np.savez(data, x=source.x, y=y)
    with pytest.raises(FloatingPointError, match="loss is nan at step 4"):
        _run(tmp_path, run={"steps": 8, "checkpoint_every": 2}, data={"path": str(data), "shuffle": False})
    saved = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == [2]


def test_every_evaluation_scores_the_same_examples():
    cfg = config.load(toy.config(run={"eval_steps": 2}))
    program = steps.build(registry.model(cfg.model.name), cfg, meshlib.build_mesh(cfg.mesh))
    state = program.init()
    evaluation = trainer.Evaluation(cfg)
    first = evaluation(program, state)
    assert set(first) == {"eval/loss", "eval/mae"} and first["eval/loss"] > 0
    assert evaluation(program, state) == first  # the same parameters, the same numbers
    # control: an eval stream that carries on from one evaluation to the next (as it did) differs
    carried_on = evaluation.restart()
    assert trainer.evaluate(program, state, carried_on, cfg) == first
    assert trainer.evaluate(program, state, carried_on, cfg) != first


def test_evaluations_score_a_fixed_random_subset_of_all_eval_files(tmp_path):
    """Eval files follow one another (ttbar, then Z'): the evaluated examples come from both, and every
    evaluation (and every run, whatever its seed) reads the same ones."""
    from smilejax.models.gn2 import make_synthetic as ftag_synthetic

    from tests.conftest import TINY_GN2

    first, second = tmp_path / "ttbar.h5", tmp_path / "zprime.h5"
    ftag_synthetic.make(first, 400, seed=1)
    ftag_synthetic.make(second, 400, seed=2)
    data = [f"data.path={first}", f"data.eval_path={first},{second}", "run.eval_steps=2"]
    cfg = config.load("gn2", [*TINY_GN2, *data])
    source = registry.dataset("ftag_h5").source(cfg.data, "eval")
    row_of = {t.tobytes(): i for i, t in enumerate(source.read(np.arange(len(source)))["tracks"])}

    def evaluated(evaluation: trainer.Evaluation) -> list[int]:
        batches = evaluation.restart()
        return [row_of[t.tobytes()] for _ in range(cfg.run.eval_steps) for t in next(batches)["tracks"]]

    evaluation = trainer.Evaluation(cfg)
    rows = evaluated(evaluation)
    assert len(set(rows)) == 2 * 32
    from_first = sum(row < 400 for row in rows)
    assert 0 < from_first < len(rows)  # both files (unshuffled, all 64 were the first file's first jets)
    assert evaluated(evaluation) == rows  # rewound: the same examples again
    reseeded = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, seed=7))
    assert evaluated(trainer.Evaluation(reseeded)) == rows


def test_checkpoint_differences_name_each_array_parameters_first():
    saved = {"opt/count": ((), "int32"), "params/a": ((2, 3), "float32"), "params/b": ((4,), "float32")}
    wanted = {"params/a": ((2, 4), "float32"), "params/b": ((4,), "bfloat16"), "params/c": ((1,), "float32")}
    assert checkpoint.differences(saved, wanted) == [
        "the checkpoint holds params/a [2,3] where the model wants [2,4]",
        "the checkpoint holds params/b as float32 where the model wants bfloat16",
        "the model has params/c [1] that the checkpoint lacks",
        "the checkpoint holds opt/count [] that the model lacks",
    ]
    assert checkpoint.differences(saved, dict(saved)) == []


@pytest.mark.parametrize("name", ["adamw", "lion", "lamb"])
def test_each_optimizer_trains(tmp_path, name):
    lr = 3e-3 if name == "lion" else 1e-2
    result, run_dir = _run(tmp_path, run={"steps": 30, "log_every": 10}, optimizer={"name": name, "lr": lr})
    losses = [r["loss"] for r in metrics.read(run_dir / "metrics.jsonl")]
    assert result.step == 30 and losses[-1] < losses[0]


def test_schedules_hit_their_anchor_points():
    cosine = optim.schedule(OptimizerConfig(schedule="cosine", lr=1.0, warmup=10, final_lr=0.1), 110)
    assert float(cosine(0)) == pytest.approx(0.0) and float(cosine(10)) == pytest.approx(1.0)
    assert float(cosine(110)) == pytest.approx(0.1)
    one = optim.schedule(
        OptimizerConfig(schedule="onecycle", lr=5e-4, initial_lr=1e-7, final_lr=1e-5, warmup=0.01), 1000
    )
    assert float(one(0)) == pytest.approx(1e-7, rel=1e-3) and float(one(10)) == pytest.approx(5e-4)
    assert float(one(1000)) == pytest.approx(1e-5, rel=1e-3)
    const = optim.schedule(OptimizerConfig(lr=0.5, warmup=0.5), 10)
    assert [float(const(s)) for s in (0, 5, 9)] == pytest.approx([0.0, 0.5, 0.5])


def test_resume_on_files_with_another_number_of_examples_is_refused(tmp_path):
    from smilejax.config import ConfigError

    source = toy.ToySource(toy.ToyDataConfig(), "train")
    data = tmp_path / "data.npz"
    np.savez(data, x=source.x, y=source.y)
    settings = {"run": {"steps": 2, "checkpoint_every": 2}, "data": {"path": str(data)}}
    _run(tmp_path, **settings)
    n = len(toy.ToySource(toy.ToyDataConfig(path=str(data)), "train"))
    np.savez(data, x=source.x[:-40], y=source.y[:-40])  # the same path, other contents
    settings["run"]["steps"] = 4
    with pytest.raises(ConfigError, match=rf"trained on {n:,} training examples and its data now holds"):
        _run(tmp_path, **settings)
    np.savez(data, x=source.x, y=source.y)  # the files it trained on: it resumes
    result, run_dir = _run(tmp_path, **settings)
    assert result.step == 4 and [r["step"] for r in metrics.read(run_dir / "metrics.jsonl")][-1] == 4


def test_a_callback_sees_every_record_and_may_halt_the_run(tmp_path):
    """``train(cfg, callbacks=...)``: a callback's ``metrics`` gets each record metrics.jsonl gets, and
    ``loop.halt()`` ends the run at once, without the final log or checkpoint (as pruning does)."""
    from smilejax.callbacks import Callback

    class HaltAt3(Callback):
        def __init__(self):
            self.seen: list[dict] = []

        def metrics(self, loop, trial, step, values):
            self.seen.append({"step": step, **values})

        def step(self, loop, step):
            if step == 3:
                loop.halt()

    spy = HaltAt3()
    run = {"dir": str(tmp_path / "run"), "steps": 8, "log_every": 2, "eval_every": 2, "checkpoint_every": 2}
    result = trainer.train(config.load(toy.config(run=run)), callbacks=[spy])
    assert result.step == 3 and result.exit_code == 0
    assert spy.seen == metrics.read(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in spy.seen] == [2, 2]  # step 3's window is not flushed
    saved = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == [2]
