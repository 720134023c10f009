"""Early stopping (smilejax/callbacks/early_stop.py, ``train.early_stop_patience``), on the LFI family's
stored-simulation budget where it matters: a run whose validation loss stops improving stops after
``patience`` evaluations and ends with the best evaluation's parameters; off (the default) a run trains
out its steps and keeps its last parameters."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from smilejax.models.lfi import model as lfimodel
from smilejax.models.lfi import tasks as lfi_tasks

from smilejax import config, metrics, registry, steps, trained, trainer
from smilejax.callbacks import early_stop


class FakeLoop:
    """What the callback reads of the loop: its config, state, step, trial axis and stop."""

    def __init__(self, steps_: int):
        self.cfg = types.SimpleNamespace(run=types.SimpleNamespace(steps=steps_))
        self.trial_axis, self.step, self.stopped, self.exit_code = 0, 0, None, 0
        self.state = self.at(0, 0.0)
        self.emitted: list[tuple[int, dict]] = []

    @staticmethod
    def at(step: int, w: float) -> steps.TrainState:
        return steps.TrainState(jnp.asarray(step), {"w": jnp.full(3, w)}, {}, {"m": jnp.full(3, -w)})

    def stop(self, exit_code: int) -> None:
        self.stopped, self.exit_code = exit_code, exit_code

    def emit(self, step: int, values: dict) -> None:
        self.emitted.append((step, values))


def test_counts_evaluations_without_improvement_and_restores_the_best():
    stop = early_stop.EarlyStop(patience=3, min_delta=0.01)
    loop = FakeLoop(steps_=100)
    # eval/loss per evaluation (every 10 steps): best 2.0 at step 20; 1.995 is not lower by min_delta
    for k, value in enumerate([3.0, 2.0, 2.5, 1.995, 2.2, 1.0], start=1):
        loop.step = 10 * k
        loop.state = FakeLoop.at(loop.step, float(k))  # the parameters of this step
        stop.metrics(loop, 0, loop.step, {"loss": 0.0})  # training records do not count
        stop.metrics(loop, 0, loop.step, {"eval/loss": value})
        if loop.stopped is not None:
            break
    assert loop.stopped == 0 and stop.stopped_at == 50 and stop.best_step == 20 and stop.best == 2.0
    stop.step(loop, 50)  # the last step: the best state goes in before that step's checkpoint
    np.testing.assert_array_equal(loop.state.params["w"], np.full(3, 2.0))  # step 20's parameters
    np.testing.assert_array_equal(loop.state.opt_state["m"], np.full(3, -2.0))  # and optimizer state
    assert int(loop.state.step) == 50  # the step counter is not rewound
    # the kept state's value is the run's last eval record
    assert loop.emitted == [(50, {"eval/loss": 2.0, "early_stop/best_step": 20.0})]
    stop.finish(loop)  # kept once
    assert len(loop.emitted) == 1


def test_a_stop_signal_keeps_the_latest_state_for_the_resume():
    stop = early_stop.EarlyStop(patience=5)
    loop = FakeLoop(steps_=100)
    loop.exit_code = 75  # preemption.EXIT_PREEMPTED: the scheduler's signal stopped the loop
    for step, value in ((10, 1.0), (20, 2.0)):
        loop.step, loop.state = step, FakeLoop.at(step, float(step))
        stop.metrics(loop, 0, step, {"eval/loss": value})
    stop.finish(loop)
    np.testing.assert_array_equal(loop.state.params["w"], np.full(3, 20.0))
    assert loop.emitted == []


def test_patience_running_out_on_the_last_step_is_not_a_stop():
    stop = early_stop.EarlyStop(patience=1)
    loop = FakeLoop(steps_=20)
    for step, value in ((10, 1.0), (20, 2.0)):
        loop.step, loop.state = step, FakeLoop.at(step, float(step))
        stop.metrics(loop, 0, step, {"eval/loss": value})
    assert loop.stopped is None and stop.stopped_at is None
    stop.finish(loop)
    np.testing.assert_array_equal(loop.state.params["w"], np.full(3, 10.0))  # the best, all the same


def test_config_key_off_by_default_and_needs_evaluations():
    cfg = config.load("npe-two-moons")
    assert cfg.train.early_stop_patience == 0 and early_stop.from_config(cfg) == []
    on = config.load("npe-two-moons", ["train.early_stop_patience=5", "run.eval_every=0"])
    with pytest.raises(config.ConfigError, match=r"needs evaluations: set run\.eval_every"):
        early_stop.from_config(on)
    on = config.load("npe-two-moons", ["train.early_stop_patience=5", "train.early_stop_min_delta=0.1"])
    (made,) = early_stop.from_config(on)
    assert made.patience == 5 and made.min_delta == 0.1


# ---- real runs: two_moons from a stored budget, validation on a held-out file

BATCH, EVAL = 64, 128


@pytest.fixture(scope="module")
def sims(tmp_path_factory):
    task = lfi_tasks.get("two_moons")
    theta, x = jax.jit(task.simulate_seeds)(np.arange(512 + EVAL, dtype=np.uint32))
    theta, x = np.asarray(theta), np.asarray(x)
    folder = tmp_path_factory.mktemp("sims")
    np.savez(folder / "train.npz", theta=theta[:512], x=x[:512])
    np.savez(folder / "eval.npz", theta=theta[512:], x=x[512:])
    return folder


def _train(sims, run_dir, *overrides: str) -> tuple[trainer.Result, list[tuple[int, float]]]:
    tree = yaml.safe_load(registry.configs()["npe-two-moons"].read_text())
    tree["data"] = {
        "format": "stored_simulations",
        "path": str(sims / "train.npz"),
        "eval_path": str(sims / "eval.npz"),
        "batch_size": BATCH,
        "read_threads": 1,
    }
    cfg = config.load(
        tree,
        [
            f"run.dir={run_dir}",
            "run.log_every=4",
            "run.eval_every=4",
            f"run.eval_steps={EVAL // BATCH}",  # the whole eval file, each example once
            "run.checkpoint_every=4",  # also at the stop's step: that checkpoint must hold the best state
            "logging.progress=false",
            "optimizer.lr=3e-3",
            "model.embedding={kind: mlp, hidden: [16], out: 8}",
            "model.flow={kind: maf, layers: 1, hidden: [16, 16]}",
            *overrides,
        ],
    )
    result = trainer.train(cfg)
    evals = [(r["step"], r["eval/loss"]) for r in metrics.read(run_dir / "metrics.jsonl") if "eval/loss" in r]
    return result, evals


def _eval_loss(run_dir, sims) -> float:
    """The saved run's loss on the whole eval file."""
    tm = trained.load(run_dir)
    with np.load(sims / "eval.npz") as f:
        batch = {"theta": jnp.asarray(f["theta"]), "x": jnp.asarray(f["x"])}
    tm.model.eval()
    return float(lfimodel.npe_loss(tm.model, batch)[0])


def test_a_run_whose_validation_loss_stops_improving_stops_and_keeps_the_best(sims, tmp_path):
    # min_delta larger than any change: no evaluation after the first counts as better, so the run stops
    # after two more (steps 8 and 12) of its 400 steps, with step 4's parameters
    run = tmp_path / "stopped"
    result, evals = _train(
        sims, run, "run.steps=400", "train.early_stop_patience=2", "train.early_stop_min_delta=1e9"
    )
    assert result.exit_code == 0 and result.step == 12
    # evaluations at 4, 8, 12, then the kept state's record at 12: step 4's value
    assert [step for step, _ in evals] == [4, 8, 12, 12] and evals[-1][1] == evals[0][1]
    assert abs(evals[2][1] - evals[0][1]) > 1e-3  # the parameters did change after step 4
    assert result.last_eval["eval/loss"] == pytest.approx(evals[0][1])
    assert trained.load(run).step == 12
    np.testing.assert_allclose(_eval_loss(run, sims), evals[0][1], rtol=1e-4, atol=1e-4)
    # run again: the run stopped, so it trains no further and its checkpoint stays the best
    again, evals_again = _train(
        sims, run, "run.steps=400", "train.early_stop_patience=2", "train.early_stop_min_delta=1e9"
    )
    assert again.exit_code == 0 and again.step == 12 and evals_again == evals
    np.testing.assert_allclose(_eval_loss(run, sims), evals[0][1], rtol=1e-4, atol=1e-4)


def test_off_by_default_trains_out_and_keeps_the_last_parameters(sims, tmp_path):
    run = tmp_path / "plain"
    result, evals = _train(sims, run, "run.steps=12")
    assert result.exit_code == 0 and result.step == 12 and [step for step, _ in evals] == [4, 8, 12]
    np.testing.assert_allclose(_eval_loss(run, sims), evals[-1][1], rtol=1e-4, atol=1e-4)
