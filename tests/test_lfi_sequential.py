"""Sequential rounds (models/lfi/sequential.py, TSNPE) on the benchmark's gaussian_linear task: the
second round's simulations lie inside the first round's truncation, its posterior is no wider and still
covers the true parameters, and its C2ST against the reference holds against one round of the same
total budget (a loose bound: small budgets, CPU)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from smilejax.models.lfi import c2st, evaluation, posterior, sequential, tasks
from threadpoolctl import threadpool_limits

from smilejax import config, trained

OBSERVATION = 1
C2ST_SAMPLES = 500  # per side (the benchmark's 10,000 take minutes on a CPU)
OVERRIDES = [
    "model.task=gaussian_linear",
    "run.steps=400",
    "run.log_every=100",
    "run.eval_every=0",
    "data.batch_size=128",
    "model.embedding={kind: none}",
    "model.flow={kind: maf, layers: 3, hidden: [32, 32]}",
    "logging.progress=false",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    cfg = config.load("npe-two-moons", OVERRIDES)
    base = tmp_path_factory.mktemp("sequential")
    two = sequential.run(cfg, 2, 1000, OBSERVATION, out=base / "two")
    one = sequential.run(cfg, 1, 2000, OBSERVATION, out=base / "one")
    return base, two, one


def _draws(run_dir, x_o: np.ndarray, n: int = 1000) -> np.ndarray:
    model = trained.load(run_dir).model
    return np.asarray(posterior.sample(model, x_o[None], n, jax.random.key(7)))[0]


def test_second_round_simulates_inside_the_truncation(runs):
    base, two, _ = runs
    first, second = two
    assert first.threshold is None and first.acceptance == 1.0
    assert np.isfinite(second.threshold) and 0.0 < second.acceptance <= 1.0
    pooled = np.load(second.simulations)
    assert pooled["theta"].shape == (2000, 10) and pooled["x"].shape == (2000, 10)
    np.testing.assert_array_equal(pooled["theta"][:1000], np.load(first.simulations)["theta"])
    # the new draws of round 2 are where round 1's posterior put 1 - 1e-4 of its mass
    task = tasks.get("gaussian_linear")
    x_o = task.observation(OBSERVATION)
    _, density = evaluation.sampler(trained.load(first.run_dir).model)
    log_q = density(pooled["theta"][1000:], np.repeat(x_o[None], 1000, axis=0))
    assert np.all(log_q >= second.threshold - 1e-4)
    listed = json.loads((base / "two" / "rounds.json").read_text())
    assert [r["total_simulations"] for r in listed] == [1000, 2000]


def test_second_round_is_narrower_covers_the_truth_and_holds_c2st(runs):
    _, two, one = runs
    task = tasks.get("gaussian_linear")
    x_o, truth = task.observation(OBSERVATION), task.true_parameters(OBSERVATION)
    first, second, single = (_draws(r.run_dir, x_o) for r in (two[0], two[1], one[0]))
    # narrower or equal (10% slack for training noise at 1000 simulations)
    assert second.std(0).mean() <= 1.1 * first.std(0).mean()
    # covers the truth: every parameter within 4 posterior standard deviations of the posterior mean
    z = np.abs(second.mean(0) - truth) / second.std(0)
    assert np.all(z < 4.0), z
    reference = task.reference_samples(OBSERVATION)[:C2ST_SAMPLES]
    with threadpool_limits(1):  # sklearn's BLAS threads beside JAX's crawl on a few shared cores
        score_two = c2st.c2st(reference, second[:C2ST_SAMPLES])
        score_one = c2st.c2st(reference, single[:C2ST_SAMPLES])
    assert score_two <= score_one + 0.05, (score_two, score_one)


def test_refuses_an_earlier_sequence(runs):
    base, _, _ = runs
    with pytest.raises(ValueError, match="earlier sequence"):
        sequential.run(config.load("npe-two-moons", OVERRIDES), 2, 10, OBSERVATION, out=base / "two")


def test_command_line_help():
    from smilejax import cli

    with pytest.raises(SystemExit) as exit_:
        cli.main(["data", "sequential", "--help"])
    assert exit_.value.code == 0
