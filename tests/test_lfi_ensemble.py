"""Ensembles (models/lfi/ensemble.py): K=3 NPEs train as one vectorised program (one compilation of the
train step), the members differ, the mixture's log_prob is finite and normalised as a mixture, its
samples cover the true parameters, and the saved ensemble loads back as a run of its own."""

from __future__ import annotations

import logging
import math

import jax
import jax.numpy as jnp
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


def _small_ensemble(tmp_path):
    """A saved ensemble of 2 small two_moons NPEs, parameters moved off the flows' identity start (the
    export's equality needs no training, and a small flow converts to ONNX quickly)."""
    from flax import nnx

    from smilejax import registry, steps

    cfg = config.load(
        "npe-two-moons",
        [
            "model.standardize=256",
            "model.export_samples=32",
            "model.embedding={kind: mlp, hidden: [8], out: 4}",
            "model.flow={kind: maf, layers: 2, hidden: [8, 8]}",
        ],
    )
    members = []
    for seed in range(2):
        model = steps.build_model(registry.model("npe"), cfg, seed)
        graph, params, rest = nnx.split(model, nnx.Param, ...)
        leaves, tree = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.key(10 + seed), len(leaves))
        leaves = [v + 0.2 * jax.random.normal(k, v.shape) for v, k in zip(leaves, keys, strict=True)]
        members.append(nnx.merge(graph, jax.tree.unflatten(tree, leaves), rest))
    ens = ensemble.Ensemble(members)
    return ens, ensemble.save(ens, cfg, tmp_path / "ens", step=1)


@pytest.mark.timeout(900)  # the ONNX conversion of the unrolled inverse flows is slow on a loaded CPU
def test_exported_ensemble_onnx_equals_stablehlo(tmp_path):
    """The saved mixture exports like a single NPE: its ONNX artifact (the members' noise and the picks
    from ``counter_uniform``: integer arithmetic) draws the same samples and gives the same log_prob as
    its StableHLO artifact, which gives the in-process mixture's log_prob."""
    import onnxruntime
    from flax import nnx

    from smilejax.serve import repository

    ens, run = _small_ensemble(tmp_path)
    meta = repository.build(run, tmp_path / "repo", formats=["stablehlo", "onnx"])
    by_format = {info["format"]: name for name, info in meta["models"].items()}
    assert {"stablehlo", "onnx"} <= set(by_format), meta["models"]
    task = tasks.get("two_moons")
    x = np.stack([task.observation(i) for i in (1, 2, 3)]).astype(np.float32)
    theta = np.stack([task.true_parameters(i) for i in (1, 2, 3)]).astype(np.float32)
    seed = np.array([0, 7, 123456], np.int32)
    artifact = (tmp_path / "repo" / by_format["stablehlo"] / "1" / "model.jaxexport").read_bytes()
    stablehlo = jax.export.deserialize(bytearray(artifact)).call(x, theta, seed)
    assert stablehlo["samples"].shape == (3, 32, task.theta_dim)
    in_process = nnx.jit(lambda e, t, o: e.log_prob(t, o))(ens, jnp.asarray(theta), jnp.asarray(x))
    np.testing.assert_allclose(stablehlo["log_prob"], in_process, rtol=1e-4, atol=1e-4)
    onnx_file = tmp_path / "repo" / by_format["onnx"] / "1" / "model.onnx"
    session = onnxruntime.InferenceSession(str(onnx_file))
    names = [o.name for o in session.get_outputs()]
    onnx = dict(zip(names, session.run(None, {"x": x, "theta": theta, "seed": seed}), strict=True))
    np.testing.assert_allclose(onnx["samples"], stablehlo["samples"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(onnx["log_prob"], stablehlo["log_prob"], rtol=1e-4, atol=1e-4)
    # the mixture's draws are its members' (member i draws from the noise stream i), both members picked
    from smilejax.models.lfi import model as lfimodel

    noise = [lfimodel.counter_normal(jnp.asarray(seed), 32, task.theta_dim, stream=i) for i in range(2)]
    draw = nnx.jit(lambda m, o, z: m.sample_noise(o, z))
    each = [np.asarray(draw(m, jnp.asarray(x), z)) for m, z in zip(ens.members, noise, strict=True)]
    assert not np.allclose(each[0], each[1])
    from_member = [np.isclose(stablehlo["samples"], e, atol=1e-5).all(-1) for e in each]
    assert all(f.any() for f in from_member) and (from_member[0] | from_member[1]).all()
