"""K trials in one jit(vmap) program give each trial the results of training it alone."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest
from flax import nnx

from smilejax import config, metrics, registry, steps, trained, trainer
from smilejax.tune import space as spaces
from smilejax.tune import vectorised
from smilejax.tune.vectorised import VectoriseError
from tests import toy

# Trials differing in everything a vectorised program may vary: the learning rate (under a cosine
# schedule with warm-up), weight decay, Adam's b2, dropout and the seed (init, dropout, data order).
TRIALS = [
    {"lr": 1e-2, "weight_decay": 0.0, "b2": 0.999, "dropout": 0.1, "seed": 0},
    {"lr": 3e-3, "weight_decay": 0.1, "b2": 0.99, "dropout": 0.3, "seed": 0},
    {"lr": 2e-2, "weight_decay": 0.01, "b2": 0.95, "dropout": 0.2, "seed": 1},
]
IGNORED = {"step", "samples_per_s", "step_time_s", "data_wait_frac", "mfu"}


def trial_config(run_dir, t: dict) -> config.Config:
    return config.load(
        toy.config(
            run={
                "dir": str(run_dir),
                "steps": 8,
                "log_every": 2,
                "eval_every": 4,
                "eval_steps": 2,
                "seed": t["seed"],
            },
            model={"dropout": t["dropout"]},
            optimizer={
                "lr": t["lr"],
                "weight_decay": t["weight_decay"],
                "b2": t["b2"],
                "schedule": "cosine",
                "warmup": 2,
            },
        )
    )


def test_vectorised_trials_match_sequential_trials(tmp_path):
    cfgs = [trial_config(tmp_path / f"vec-{i}", t) for i, t in enumerate(TRIALS)]
    outcomes = vectorised.train(cfgs, "eval/loss")
    assert [o.state for o in outcomes] == ["complete"] * 3 and [o.step for o in outcomes] == [8] * 3
    for i, t in enumerate(TRIALS):
        alone = trainer.train(trial_config(tmp_path / f"seq-{i}", t)).run_dir
        together = tmp_path / f"vec-{i}"
        seq, vec = metrics.read(alone / "metrics.jsonl"), metrics.read(together / "metrics.jsonl")
        assert [r["step"] for r in vec] == [r["step"] for r in seq] == [2, 4, 4, 6, 8, 8]
        for a, b in zip(seq, vec, strict=True):
            for key in set(a) - IGNORED:
                assert b[key] == pytest.approx(a[key], rel=2e-5, abs=1e-6), (i, a["step"], key)
        assert outcomes[i].value == pytest.approx(seq[-1]["eval/loss"], rel=2e-5)
        # The final checkpoint is a normal run's: trained.load reads the same parameters back.
        p_seq = nnx.state(trained.load(alone).model, nnx.Param)
        p_vec = nnx.state(trained.load(together).model, nnx.Param)
        for x, y in zip(jax.tree.leaves(p_seq), jax.tree.leaves(p_vec), strict=True):
            np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-4, atol=1e-6)
    # different seeds really trained differently (the data and init were not shared by mistake)
    assert outcomes[0].value != outcomes[2].value


def test_shape_changing_values_are_refused_with_the_field_named(tmp_path):
    a = config.load(toy.config(run={"dir": str(tmp_path / "a")}))
    b = config.load(toy.config(run={"dir": str(tmp_path / "b")}, model={"hidden": 16}))
    with pytest.raises(VectoriseError, match=r"model\.hidden"):
        vectorised.train([a, b], "loss")
    c = config.load(toy.config(run={"dir": str(tmp_path / "c")}, data={"batch_size": 32}))
    with pytest.raises(VectoriseError, match=r"data\.batch_size"):
        vectorised.train([a, c], "loss")
    space = spaces.parse({"parameters": {"data.batch_size": {"type": "choice", "values": [8, 16]}}})
    with pytest.raises(VectoriseError, match=r"parameters\.data\.batch_size"):
        vectorised.check_space(space)


def test_a_pruned_trial_stops_alone_and_keeps_no_checkpoint(tmp_path):
    """The tuner's pruning callback ends one trial of a program; the other trains on to its last step."""
    cfgs = [trial_config(tmp_path / f"vec-{i}", t) for i, t in enumerate(TRIALS[:2])]
    seen: list[tuple[int, float]] = []

    def prune_at_once(step: int, value: float) -> bool:
        seen.append((step, value))
        return True

    kept, pruned = vectorised.train(cfgs, "eval/loss", reports=[None, prune_at_once])
    assert (kept.state, kept.step) == ("complete", 8) and (pruned.state, pruned.step) == ("pruned", 4)
    assert pruned.history == seen == [(4, pruned.value)] and [s for s, _ in kept.history] == [4, 8]
    steps_logged = [r["step"] for r in metrics.read(tmp_path / "vec-1" / "metrics.jsonl")]
    assert steps_logged == [2, 4, 4]  # nothing after the step it was pruned at
    assert (tmp_path / "vec-0" / "checkpoints" / "8").is_dir()
    assert not (tmp_path / "vec-1" / "checkpoints").exists()


def test_a_trial_whose_loss_is_not_finite_fails_alone(tmp_path, caplog):
    """The NaN stop of a vectorised program fails the trial (a plain run raises) and keeps the others."""
    blown = {**TRIALS[0], "lr": 1e20}  # the updates overflow the outputs: the loss goes non-finite
    cfgs = [trial_config(tmp_path / f"vec-{i}", t) for i, t in enumerate([TRIALS[0], blown])]
    good, bad = vectorised.train(cfgs, "eval/loss")
    assert (good.state, good.step) == ("complete", 8) and good.value is not None
    assert (bad.state, bad.value, bad.error) == ("failed", None, "non-finite loss") and bad.step < 8
    assert re.search(rf"trial vec-1: loss is (nan|inf) at step {bad.step}", caplog.text)
    logged = metrics.read(tmp_path / "vec-1" / "metrics.jsonl")
    # its records before the failure are kept; its non-finite record is not written, nor any later
    assert logged and all(r["step"] < bad.step for r in logged), logged
    assert not (tmp_path / "vec-1" / "checkpoints").exists()


def test_other_trials_of_the_same_shapes_lower_to_the_same_program(tmp_path):
    """The trials' hyperparameter tables (learning rate per step, traced optimizer and model fields) are
    arguments of the program, not constants compiled into it; the program has no single optimizer."""
    other = [
        {"lr": 5e-4, "weight_decay": 0.2, "b2": 0.9, "dropout": 0.25, "seed": 0},
        {"lr": 7e-3, "weight_decay": 0.05, "b2": 0.98, "dropout": 0.15, "seed": 0},
    ]
    texts = []
    for name, group in (("a", TRIALS[:2]), ("b", other)):
        cfgs = [trial_config(tmp_path / f"{name}-{i}", t) for i, t in enumerate(group)]
        spec = registry.model(cfgs[0].model.name)
        axis, mesh = vectorised.trial_axis(spec, cfgs)
        assert set(axis.hypers) == {"lr", "seed", "optimizer.weight_decay", "optimizer.b2", "model.dropout"}
        program = steps.build(spec, cfgs[0], mesh, trials=axis)
        assert program.tx is None and program.lr is None
        batch = vectorised._Inputs(cfgs, program).next()
        texts.append(program.train_step.lower(program.abstract_state, batch).as_text())
    assert texts[0] == texts[1]


def test_seed_groups_whose_batches_differ_in_shape_are_refused():
    # bucketed or packed inputs pick each step's shape from that seed's jets: stacking them cannot work
    inputs = object.__new__(vectorised._Inputs)
    inputs.sharding = None
    inputs.of_trial = [0, 1]
    inputs.iters = [iter([{"x": np.zeros((8, 16))}]), iter([{"x": np.zeros((8, 24))}])]
    with pytest.raises(ValueError, match="one shape from every seed's input, got 2 shapes"):
        inputs.next()
