"""The LFI family trains through the command line on simulations drawn on the device (NPE, NRE), learns
the posterior (gaussian_linear's analytic one), exports, and reads seeds or stored simulations."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from flax import nnx
from smilejax.models import lfi
from smilejax.models.lfi import posterior
from smilejax.models.lfi import tasks as lfi_tasks

from smilejax import config, metrics, registry, trained, trainer
from tests.conftest import run_cli

TINY = ["run.log_every=100", "run.eval_every=0", "logging.progress=false", "data.read_threads=1"]


def train(config_name: str, run_dir, *overrides: str) -> dict[int, dict]:
    proc = run_cli("train", config_name, f"run.dir={run_dir}", *TINY, *overrides, timeout=600)
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stderr[-4000:]}"
    return {r["step"]: r for r in metrics.read(run_dir / "metrics.jsonl") if "loss" in r}


@pytest.fixture(scope="module")
def npe_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("lfi") / "npe"
    records = train("npe-two-moons", run, "run.steps=400", "model.export_samples=64")
    return run, records


def test_npe_learns_two_moons_from_fresh_simulations(npe_run):
    run, records = npe_run
    assert sorted(records) == [100, 200, 300, 400]
    assert records[400]["loss"] < records[100]["loss"] - 1.0 and records[400]["loss"] < -1.5, records
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["name"] == "npe" and saved["data"]["format"] == "simulations"
    tm = trained.load(run)
    task = lfi_tasks.get("two_moons")
    x = np.stack([task.observation(i) for i in (1, 2, 3)])
    draws = np.asarray(posterior.sample(tm.model, x, 500, jax.random.key(0)))
    assert draws.shape == (3, 500, 2) and np.all(np.isfinite(draws))
    log_q = posterior.log_prob(tm.model, draws[:, 0], x)
    assert log_q.shape == (3,) and np.all(np.isfinite(log_q))


def test_export_serves_samples_and_log_prob(npe_run, tmp_path):
    run, _ = npe_run
    repo = tmp_path / "repo"
    proc = run_cli("export", str(run), "--out", str(repo), timeout=600)  # StableHLO and ONNX
    assert proc.returncode == 0, proc.stderr[-4000:]
    meta = json.loads((repo / "smilejax_export.json").read_text())
    assert {"npe_jax", "npe_onnx"} <= set(meta["models"])
    exported = jax.export.deserialize(bytearray((repo / "npe_jax" / "1" / "model.jaxexport").read_bytes()))
    task = lfi_tasks.get("two_moons")
    x = np.stack([task.observation(i) for i in range(1, 6)])
    theta = np.stack([task.true_parameters(i) for i in range(1, 6)])
    seed = np.arange(5, dtype=np.int32)
    out = exported.call(x, theta, seed)
    assert out["samples"].shape == (5, 64, 2)
    model = trained.load(run).model
    np.testing.assert_allclose(out["log_prob"], posterior.log_prob(model, theta, x), rtol=1e-4, atol=1e-4)
    again = exported.call(x, theta, seed)
    np.testing.assert_array_equal(out["samples"], again["samples"])  # a seed fixes the draws
    # row b's draws depend on seed[b] alone (Triton's dynamic batching merges requests)
    alone = exported.call(x[3:4], theta[3:4], seed[3:4])
    np.testing.assert_allclose(alone["samples"][0], out["samples"][3], rtol=1e-5, atol=1e-5)
    # the ONNX artifact draws the same samples (the noise generator is integer arithmetic)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(repo / "npe_onnx" / "1" / "model.onnx"))
    feed = {"x": x.astype(np.float32), "theta": theta.astype(np.float32), "seed": seed}
    names = [o.name for o in session.get_outputs()]
    onnx_out = dict(zip(names, session.run(None, feed), strict=True))
    np.testing.assert_allclose(onnx_out["samples"], out["samples"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(onnx_out["log_prob"], out["log_prob"], rtol=1e-4, atol=1e-4)


def test_npe_posterior_mean_on_gaussian_linear(tmp_path):
    """gaussian_linear's posterior is Gaussian and known: the estimate's mean and spread match it."""
    run = tmp_path / "gl"
    train("npe-two-moons", run, "model.task=gaussian_linear", "model.flow.kind=maf", "run.steps=600")
    model = trained.load(run).model
    task = lfi_tasks.get("gaussian_linear")
    for i in (1, 2):
        draws = np.asarray(posterior.sample(model, task.observation(i)[None], 4000, jax.random.key(i)))[0]
        reference = task.reference_samples(i)
        assert np.max(np.abs(draws.mean(0) - reference.mean(0))) < 0.1, (draws.mean(0), reference.mean(0))
        np.testing.assert_allclose(draws.std(0), reference.std(0), rtol=0.3)


def test_nre_trains(tmp_path):
    run = tmp_path / "nre"
    records = train("nre-two-moons", run, "run.steps=300")
    assert records[300]["loss"] < records[100]["loss"] and records[300]["loss"] < 1.2, records
    assert records[300]["accuracy"] > 0.6
    model = trained.load(run).model
    task = lfi_tasks.get("two_moons")
    x = np.stack([task.observation(i) for i in (1, 2)])
    theta = np.stack([task.true_parameters(i) for i in (1, 2)])
    assert posterior.log_ratio(model, theta, x).shape == (2,)
    draws = np.asarray(posterior.sample(model, x, 100, jax.random.key(0)))
    assert draws.shape == (2, 100, 2) and np.all(np.abs(draws) <= 1.0)  # prior draws, resampled
    # the true parameters score above parameters from elsewhere in the prior
    other = task.prior_sample(jax.random.key(3), 256)
    assert np.mean(posterior.log_ratio(model, jnp.repeat(theta[:1], 256, 0), jnp.repeat(x[:1], 256, 0))) > (
        np.mean(posterior.log_ratio(model, other, jnp.repeat(x[:1], 256, 0)))
    )


# ---------------------------------------------------------------- formats


def _seeds(cfg, split: str, process: int, processes: int, steps: int = 3) -> list[np.ndarray]:
    spec = registry.dataset("simulations")
    source = spec.source(cfg, split)
    it = iter(spec.pipeline(source, cfg, seed=0, process_index=process, process_count=processes))
    return [next(it)["seed"] for _ in range(steps)]


def test_simulation_seeds_shard_over_processes():
    cfg = config.load("npe-two-moons", ["data.batch_size=8"]).data
    whole = _seeds(cfg, "train", 0, 1)
    parts = [_seeds(cfg, "train", p, 2) for p in (0, 1)]
    for step, batch in enumerate(whole):
        assert batch.dtype == np.uint32 and batch.shape == (8,)
        a, b = parts[0][step], parts[1][step]
        np.testing.assert_array_equal(np.concatenate([a, b]), batch)  # each process its own slice
        assert not set(a) & set(b)
    assert len(set(np.concatenate(whole))) == 24  # new simulations every step
    assert not set(np.concatenate(whole)) & set(np.concatenate(_seeds(cfg, "eval", 0, 1)))
    other = config.load("npe-two-moons", ["data.batch_size=8", "data.seed=1"]).data
    assert not set(np.concatenate(whole)) & set(np.concatenate(_seeds(other, "train", 0, 1)))
    # a fixed budget of 16 simulations: the second epoch reuses the first's seeds, reshuffled
    budget = config.load("npe-two-moons", ["data.batch_size=8", "data.examples=16"]).data
    epochs = _seeds(budget, "train", 0, 1, steps=4)
    assert set(np.concatenate(epochs[:2])) == set(np.concatenate(epochs[2:])) and len(set(epochs[0])) == 8
    # the loss simulates each example from its seed alone: the same seed gives the same pair anywhere
    task = lfi_tasks.get("two_moons")
    theta, x = jax.jit(task.simulate_seeds)(whole[0])
    theta2, x2 = jax.jit(task.simulate_seeds)(whole[0][::-1])
    np.testing.assert_allclose(theta[::-1], theta2)
    np.testing.assert_allclose(x[::-1], x2)


def _stored_config(path, *overrides: str):
    tree = yaml.safe_load(registry.configs()["npe-two-moons"].read_text())
    tree["data"] = {"format": "stored_simulations", "path": str(path), "batch_size": 64, "read_threads": 1}
    return config.load(tree, list(overrides))


def test_stored_simulations_train_with_a_set_embedding(tmp_path):
    task = lfi_tasks.get("two_moons")
    theta, x = jax.jit(task.simulate_seeds)(np.arange(2048, dtype=np.uint32))
    path = tmp_path / "sims.npz"
    np.savez(path, theta=np.asarray(theta), x=np.asarray(x))
    cfg = _stored_config(
        path,
        f"run.dir={tmp_path / 'run'}",
        "run.steps=60",
        "run.log_every=20",
        "run.checkpoint_every=0",
        "logging.progress=false",
        "model.embedding.kind=set",
        "model.embedding.set_features=1",
        "model.embedding.set_embed=16",
        "model.embedding.set_heads=2",
        "model.embedding.set_layers=1",
    )
    trainer.train(cfg)
    losses = [r["loss"] for r in metrics.read(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert len(losses) == 3 and losses[-1] < losses[0], losses
    model = trained.load(tmp_path / "run").model
    np.testing.assert_allclose(model.theta_loc[...], np.asarray(theta).mean(0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"theta": np.zeros((4, 2))}, r"no array \['x'\]"),
        ({"theta": np.zeros((4, 2)), "x": np.zeros((5, 2))}, "theta has 4 rows and x 5"),
        ({"theta": np.zeros(4), "x": np.zeros((4, 2))}, r"theta must be \[N, theta_dim\]"),
        ({"theta": np.full((4, 2), np.nan), "x": np.zeros((4, 2))}, "theta has 4 rows with NaN"),
        ({"theta": np.zeros((0, 2)), "x": np.zeros((0, 2))}, "theta is empty"),
        ({"theta": np.array([["a", "b"]]), "x": np.zeros((1, 2))}, "expected numbers"),
        ({"theta": np.zeros((4, 2)), "x": np.full((4, 2), np.inf)}, "x has 4 rows with inf"),
    ],
)
def test_malformed_stored_files_are_named(tmp_path, arrays, message):
    from smilejax.inputs import stored_simulations

    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    data = stored_simulations.StoredSimulationsConfig(path=str(path))
    with pytest.raises(stored_simulations.MalformedFile, match=message):
        registry.dataset("stored_simulations").source(data, "train")
    with pytest.raises(config.ConfigError, match=message):  # a config naming it fails as it loads
        _stored_config(path)


def test_unreadable_or_mismatched_stored_files(tmp_path):
    from smilejax.inputs import stored_simulations

    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not hdf5")
    with pytest.raises(stored_simulations.MalformedFile, match=r"cannot be read as \.h5"):
        stored_simulations.load(str(garbage))
    with pytest.raises(stored_simulations.MalformedFile, match=r"unknown file type '\.csv'"):
        (tmp_path / "a.csv").write_text("1,2")
        stored_simulations.load(str(tmp_path / "a.csv"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        stored_simulations.load(str(tmp_path / "missing.npz"))
    wide = tmp_path / "wide.npz"  # three parameters for a task of two
    np.savez(wide, theta=np.zeros((8, 3)), x=np.ones((8, 2)))
    cfg = _stored_config(wide)
    with pytest.raises(ValueError, match=r"model\.theta_loc has 3 numbers .* the task 'two_moons'"):
        from smilejax import steps

        steps.build_model(registry.model("npe"), cfg, 0)


@pytest.mark.parametrize("name", ["npe", "nre"])
def test_failed_simulations_are_left_out(name):
    """A simulation that failed (NaN x: an ODE solver that gave up) leaves the loss and its gradient
    finite and equal to the loss of the others."""
    spec = registry.model(name)
    cfg = lfi.LfiConfig(name=name, task="two_moons", standardize=256)
    with nnx.use_eager_sharding(False):
        model = spec.build(cfg, rngs=nnx.Rngs(0))
    theta, x = jax.jit(lfi_tasks.get("two_moons").simulate_seeds)(np.arange(8, dtype=np.uint32))
    broken = {"theta": theta, "x": x.at[3].set(jnp.nan)}
    loss, values = nnx.jit(spec.loss)(model, broken)
    grads = nnx.jit(nnx.grad(lambda m: spec.loss(m, broken)[0]))(model)
    assert np.isfinite(loss) and values["valid"] == 7 / 8
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    if name == "npe":  # per-example terms: the broken row simply drops out
        kept = np.array([i for i in range(8) if i != 3])
        expected, _ = nnx.jit(spec.loss)(model, {"theta": theta[kept], "x": x[kept]})
        np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_within_prior_keeps_draws_inside_the_support():
    """An untrained NPE (the flow's base, a Gaussian) leaks past two moons' box prior; within_prior=True
    keeps only draws inside it."""
    cfg = lfi.LfiConfig(name="npe", task="two_moons", standardize=256)
    with nnx.use_eager_sharding(False):
        model = registry.model("npe").build(cfg, rngs=nnx.Rngs(0))
    x = lfi_tasks.get("two_moons").observation(1)[None]
    raw = np.asarray(posterior.sample(model, x, 2000, jax.random.key(0)))
    kept = np.asarray(posterior.sample(model, x, 2000, jax.random.key(0), within_prior=True))
    assert kept.shape == raw.shape == (1, 2000, 2)
    assert np.mean(np.abs(raw) > 1) > 0.02 and np.all(np.abs(kept) <= 1)
