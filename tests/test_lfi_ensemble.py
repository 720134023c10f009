"""Ensembles (models/lfi/ensemble.py): K=3 NPEs train as one vectorised program (one compilation of the
train step), the members differ, the mixture's log_prob is finite and normalised as a mixture, its
samples cover the true parameters, and the saved ensemble loads back as a run of its own."""

from __future__ import annotations

import logging
import math

import jax
import numpy as np
import pytest
from smilejax.models.lfi import ensemble, posterior, tasks

from smilejax import config, trained

K = 3
OBSERVATION = 1
OVERRIDES = [
    "model.task=gaussian_linear",
    "run.steps=300",
    "run.log_every=50",
    "run.eval_every=0",
    "data.batch_size=128",
    "model.standardize=1024",
    "model.embedding={kind: none}",
    "model.flow={kind: maf, layers: 3, hidden: [32, 32]}",
    "logging.progress=false",
]


@pytest.fixture(scope="module")
def trained_ensemble(tmp_path_factory):
    cfg = config.load("npe-two-moons", OVERRIDES)
    out = tmp_path_factory.mktemp("ensemble")
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    jax_logger = logging.getLogger("jax._src.interpreters.pxla")
    jax_logger.addHandler(handler)
    try:
        with jax.log_compiles(True):
            run_dirs = ensemble.train(cfg, K, out)
    finally:
        jax_logger.removeHandler(handler)
    compiles = [m for m in records if m.startswith("Compiling") and "train_step" in m.split(" with ")[0]]
    return cfg, out, run_dirs, ensemble.load(run_dirs), compiles


def test_members_train_as_one_program_and_differ(trained_ensemble):
    _, _, run_dirs, ens, compiles = trained_ensemble
    assert len(compiles) == 1, compiles  # one train step for all K members
    assert [d.name for d in run_dirs] == [f"member-{i}" for i in range(K)]
    assert ens.k == K
    x = tasks.get("gaussian_linear").observation(OBSERVATION)[None]
    draws = [np.asarray(posterior.sample(m, x, 200, jax.random.key(0)))[0] for m in ens.members]
    assert not np.allclose(draws[0], draws[1]) and not np.allclose(draws[1], draws[2])


def test_mixture_log_prob_and_samples(trained_ensemble):
    _, _, _, ens, _ = trained_ensemble
    task = tasks.get("gaussian_linear")
    x_o, truth = task.observation(OBSERVATION), task.true_parameters(OBSERVATION)
    samples = np.asarray(posterior.sample(ens, x_o[None], 2000, jax.random.key(1)))[0]
    assert samples.shape == (2000, task.theta_dim) and np.isfinite(samples).all()
    x_rep = np.repeat(x_o[None], 2000, axis=0)
    log_q = np.asarray(posterior.log_prob(ens, samples, x_rep))
    assert np.isfinite(log_q).all()
    # logsumexp of the members' densities minus log K
    each = np.stack([np.asarray(posterior.log_prob(m, samples[:5], x_rep[:5])) for m in ens.members])
    expected = np.log(np.exp(each.astype(np.float64)).sum(0)) - math.log(K)
    np.testing.assert_allclose(log_q[:5], expected, rtol=1e-4, atol=1e-4)
    z = np.abs(samples.mean(0) - truth) / samples.std(0)
    assert np.all(z < 4.0), z  # the truth within 4 standard deviations in every parameter


def test_saved_ensemble_loads_as_a_run(trained_ensemble):
    cfg, out, _, ens, _ = trained_ensemble
    ensemble.save(ens, cfg, out, step=cfg.run.steps)
    back = trained.load(out)
    assert back.cfg.model.name == ensemble.NAME and back.cfg.model.members == K
    assert back.step == cfg.run.steps
    task = tasks.get("gaussian_linear")
    x = task.observation(OBSERVATION)[None]
    theta = task.true_parameters(OBSERVATION)[None]
    np.testing.assert_allclose(
        posterior.log_prob(back.model, theta, x), posterior.log_prob(ens, theta, x), rtol=1e-5, atol=1e-5
    )
    served = back.model(x, theta, np.zeros(1, np.int32))
    assert served["samples"].shape == (1, cfg.model.export_samples, task.theta_dim)


def test_command_line_help():
    from smilejax import cli

    with pytest.raises(SystemExit) as exit_:
        cli.main(["data", "ensemble", "--help"])
    assert exit_.value.code == 0
