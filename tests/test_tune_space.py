"""Search spaces: typed parameters, conditions, and malformed spaces rejected before any trial runs."""

from __future__ import annotations

import pytest
import yaml

from smilejax import config
from smilejax.tune import space as spaces
from smilejax.tune.space import SpaceError
from tests import toy
from tests.conftest import run_cli

pytestmark = pytest.mark.unit  # make test-fast runs it: one device, seconds

GOOD = {
    "objective": {"metric": "eval/loss", "mode": "min"},
    "parameters": {
        "optimizer.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "scale": "log"},
        "model.hidden": {"type": "int", "low": 16, "high": 48, "step": 16},
        "optimizer.name": {"type": "choice", "values": ["adamw", "lion"]},
        "optimizer.b2": {"type": "float", "low": 0.9, "high": 0.999, "when": {"optimizer.name": "adamw"}},
    },
}


def base(**run) -> dict:
    return toy.config(run={"eval_every": 4, **run})


def test_parsed_space_is_typed_and_conditional_values_apply():
    space = spaces.parse(GOOD)
    lr, hidden, name, b2 = space.params
    assert (lr.kind, lr.low, lr.high, lr.log) == ("float", 1e-4, 1e-2, True)
    assert (hidden.kind, hidden.step) == ("int", 16) and name.values == ("adamw", "lion")
    assert b2.when == (("optimizer.name", ("adamw",)),)
    space.check(base())
    values = {"optimizer.lr": 3e-4, "model.hidden": 32, "optimizer.name": "lion", "optimizer.b2": 0.95}
    assert space.active(values) == {"optimizer.lr": 3e-4, "model.hidden": 32, "optimizer.name": "lion"}
    cfg = config.load(base(), space.overrides(values))
    assert cfg.optimizer.lr == pytest.approx(3e-4) and cfg.model.hidden == 32 and cfg.optimizer.name == "lion"
    assert cfg.optimizer.b2 == 0.999  # inactive: the config's own value
    cfg = config.load(base(), space.overrides({**values, "optimizer.name": "adamw"}))
    assert cfg.optimizer.b2 == pytest.approx(0.95)


def with_param(key, spec, **objective) -> dict:
    tree = {"parameters": {key: spec}}
    if objective:
        tree["objective"] = objective
    return tree


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        # unknown config field: named, with the closest valid one
        (with_param("optimizer.lrr", {"type": "float", "low": 0.1, "high": 1}), r"optimizer\.lrr.*'lr'"),
        (with_param("model.hiden", {"type": "int", "low": 1, "high": 4}), r"model\.hiden.*'hidden'"),
        # empty ranges
        (with_param("optimizer.lr", {"type": "float", "low": 0.1, "high": 0.1}), "empty range"),
        (with_param("model.hidden", {"type": "int", "low": 8, "high": 4}), "empty range"),
        (with_param("optimizer.name", {"type": "choice", "values": []}), "non-empty list"),
        # bad types: of the parameter, of its bounds, of the config field it sets
        (with_param("optimizer.lr", {"type": "floaty", "low": 0.1, "high": 1}), "did you mean 'float'"),
        (with_param("optimizer.lr", {"type": "float", "low": "small", "high": 1}), "low must be a number"),
        (with_param("model.hidden", {"type": "float", "low": 8, "high": 64}), "model.hidden must be int"),
        (
            with_param("optimizer.name", {"type": "choice", "values": ["adamw", "adam"]}),
            "did you mean 'adamw'",
        ),
        # values the config refuses, other malformations
        (
            with_param("optimizer.lr", {"type": "float", "low": 0.0, "high": 1}),
            "optimizer.lr must be positive",
        ),
        (with_param("optimizer.lr", {"type": "float", "low": 0.0, "high": 1, "scale": "log"}), "low > 0"),
        (
            with_param("optimizer.lr", {"type": "float", "low": 0.1, "high": 1, "hgih": 2}),
            "did you mean 'high'",
        ),
        (with_param("run.dir", {"type": "choice", "values": ["a", "b"]}), "set by the study"),
        (
            with_param(
                "optimizer.b2", {"type": "float", "low": 0.9, "high": 0.99, "when": {"optimizer.nme": "lion"}}
            ),
            "not a parameter listed before it",
        ),
        (
            with_param("optimizer.lr", {"type": "float", "low": 0.1, "high": 1}, mode="minimise"),
            "'min' or 'max'",
        ),
        ({"parameter": {}}, "did you mean 'parameters'"),
    ],
)
def test_malformed_space_names_the_problem(tree, message):
    with pytest.raises(SpaceError, match=message):
        spaces.parse(tree, source="space.yaml").check(base())


def test_eval_objective_needs_evaluation():
    space = spaces.parse(with_param("optimizer.lr", {"type": "float", "low": 0.1, "high": 1}))
    with pytest.raises(SpaceError, match=r"run\.eval_every is 0"):
        space.check(toy.config())
    spaces.parse(with_param("optimizer.lr", {"type": "float", "low": 0.1, "high": 1}, metric="loss")).check(
        toy.config()
    )


def test_cli_rejects_malformed_space_before_any_trial(tmp_path, toy_yaml):
    cfg = toy_yaml(run={"eval_every": 4})
    bad = tmp_path / "space.yaml"
    bad.write_text(yaml.safe_dump(with_param("model.hiden", {"type": "int", "low": 8, "high": 32})))
    study = tmp_path / "study"
    proc = run_cli("tune", str(cfg), "--space", str(bad), "--dir", str(study), "--trials", "2", timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "space.yaml: parameters.model.hiden" in proc.stderr and "'hidden'" in proc.stderr
    assert not list(study.glob("trial-*"))


def test_best_trial_follows_the_objective_mode(tmp_path):
    from smilejax.tune import study

    trials = [
        {"number": 0, "state": "complete", "value": 0.2, "params": {}},
        {"number": 1, "state": "pruned", "value": 0.9, "params": {}},
        {"number": 2, "state": "complete", "value": 0.7, "params": {}},
        {"number": 3, "state": "failed", "value": None, "params": {}},
    ]
    options = study.Options(dir=tmp_path)
    for mode, best in (("min", 0), ("max", 2)):
        space = spaces.parse({**GOOD, "objective": {"metric": "eval/acc", "mode": mode}})
        assert study.summarize(trials, space, options).best["number"] == best  # pruned never wins


def test_objective_metric_is_checked_against_what_a_run_logs():
    from smilejax.tune import metric_names

    loop = {"lr", "grad_norm", "samples_per_s", "step_time_s", "data_wait_frac"}  # no mfu: a CPU has no peak
    cfg = config.load(base())
    assert set(metric_names.reported(cfg)) == {"loss", "mae", "eval/loss", "eval/mae", *loop}
    assert set(metric_names.reported(config.load(toy.config()))) == {"loss", "mae", *loop}  # no evaluation
    metric_names.check("eval/mae", cfg)
    misspelled = r"space\.yaml: objective metric 'eval/los' .* did you mean 'eval/loss'"
    with pytest.raises(SpaceError, match=misspelled):
        metric_names.check("eval/los", cfg, "space.yaml")
    with pytest.raises(SpaceError, match="it logs data_wait_frac, eval/loss, eval/mae, grad_norm, loss"):
        metric_names.check("auc", cfg)


def test_reported_metrics_are_those_a_run_logs(tmp_path):
    from smilejax import metrics, trainer
    from smilejax.tune import metric_names

    cfg = config.load(base(steps=4, eval_every=2, eval_steps=1), [f"run.dir={tmp_path / 'run'}"])
    trainer.train(cfg)
    logged = {k for r in metrics.read(tmp_path / "run" / "metrics.jsonl") for k in r if k != "step"}
    assert logged == set(metric_names.reported(cfg))


def test_cli_refuses_a_misspelled_objective_before_any_trial(tmp_path, toy_yaml):
    cfg = toy_yaml(run={"eval_every": 4})
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(with_param("optimizer.lr", {"type": "float", "low": 1e-3, "high": 1e-2})))
    study = tmp_path / "study"
    proc = run_cli("tune", str(cfg), "--space", str(space), "--metric", "eval/los", "--dir", str(study))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "objective metric 'eval/los' is not logged" in proc.stderr and "'eval/loss'" in proc.stderr
    assert not list(study.glob("trial-*"))
