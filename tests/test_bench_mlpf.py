"""``smilejax bench train mlpf`` on CPU at tiny sizes: JAX against particleflow 3.1.0 eager, same batches.

The particleflow side runs in the reference environment (``make reference``), as users run it; its
torch.compile mode is not run here (about 90 s of compilation on this machine's CPU).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from smilejax.models import mlpf
from smilejax.models.mlpf import bench_study, peer, synthetic

from tests.conftest import run_cli
from tests.helpers_mlpf import REF_ENV

TINY = ["model.num_convs=1", "model.num_heads=2", "model.head_dim=4"]
FAST = ["--steps", "2", "--repeats", "1", "--warmup", "2"]


def test_jax_and_particleflow_train_the_same_model_on_the_same_batches(tmp_path):
    if not (REF_ENV / "bin" / "python").exists():
        pytest.fail(f"the particleflow reference environment {REF_ENV} is missing: `make reference`")
    out = tmp_path / "bench"
    args = ["--shape", "32x4", *FAST, "--precision", "fp32", "--impls", "jax,torch-eager", "--out", str(out)]
    args += ["--profile", "2"]  # traced after the timed steps: the loss check below still compares equals
    done = run_cli("bench", "train", "mlpf", *TINY, *args, devices=2, SMILEJAX_MLPF_REF=str(REF_ENV))
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((out / "train.json").read_text())
    assert record["study"] == "train" and record["model"] == "mlpf" and record["shapes"] == ["32x4"]
    assert record["reference"]["particleflow"] == "3.1.0" and record["reference"]["attention"] == "math"
    rows = {r["impl"]: r for r in record["rows"]}
    assert sorted(rows) == ["jax", "torch-eager"]
    assert rows["jax"]["params"] == rows["torch-eager"]["params"] == record["params"] > 0

    # the timed steps train on batches 0 and 1 of the shape's synthetic set
    batches = bench_study.make_batches((32, 4))
    valid = (batches[0]["mask"].sum() + batches[1]["mask"].sum()) / 2
    for r in rows.values():
        assert (r["elements"], r["events"]) == (32, 4) and r["ms_per_step"] > 0
        assert r["events_per_s"] == pytest.approx(4 / (r["ms_per_step"] / 1e3))
        assert r["valid_per_event"] == pytest.approx(valid / 4)
        assert r["valid_elements_per_s"] == pytest.approx(valid / (r["ms_per_step"] / 1e3))
    speedup = rows["jax"]["events_per_s"] / rows["torch-eager"]["events_per_s"]
    assert rows["jax"]["vs_ref_eager"] == pytest.approx(speedup) == rows["jax"]["vs_ref_best"]
    assert rows["torch-eager"]["vs_ref_eager"] == 1.0
    assert "particleflow's initial weights" in rows["jax"]["note"]

    # Same weights, same batches in the same order, fp32: the losses of the first step (batch 0) and
    # of the last timed one (the 4th AdamW step, batch 1) agree to float rounding.
    check = record["loss_vs_ref_eager"]["jax chunked 32x4"]
    assert check["first_loss"] < 1e-4 and check["last_loss"] < 1e-4, check
    assert rows["jax"]["first_loss"] != pytest.approx(rows["jax"]["last_loss"], rel=1e-3)  # it trained

    profile = json.loads((out / "profile-mlpf-chunked-32x4.json").read_text())
    scopes = {r["scope"] for r in profile["by_scope"]}
    assert {
        "id_encoder/attention",
        "reg_encoder",
        "class_heads",
        "momentum_heads",
        "loss",
        "optimizer",
    } <= scopes

    table = (out / "train.md").read_text()
    assert "| impl | attention | elements | events | valid_per_event | ms_per_step |" in table
    assert (out / "train.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_mlpf_refuses_bad_options_and_names_the_reference_install(tmp_path):
    missing = tmp_path / "no-env"
    done = run_cli(
        "bench", "train", "mlpf", *TINY, "--shape", "32x4", devices=1, SMILEJAX_MLPF_REF=str(missing)
    )
    assert done.returncode != 0
    assert f"SMILEJAX_MLPF_REF={missing}" in done.stderr and "make reference" in done.stderr
    assert "--impls jax" in done.stderr

    done = run_cli("bench", "train", "mlpf", "--shape", "32x4", "--bucket", "8", devices=1)
    assert done.returncode != 0 and "--bucket: not an option of bench train mlpf" in done.stderr
    done = run_cli("bench", "train", "mlpf", "--shape", "32by4", "--impls", "jax", devices=1)
    assert done.returncode != 0 and "--shape 32by4: expected ELEMENTSxEVENTS" in done.stderr


def test_particleflow_gets_nothing_it_cannot_express():
    # the mapping itself is what tests/test_mlpf_parity.py sends to particleflow and checks
    cfg = mlpf.MLPFConfig(num_convs=2, num_heads=4, head_dim=4, activation="gelu", eta_mode="direct")
    assert peer.particleflow_config(cfg)["model"]["attention"]["activation"] == "gelu"
    for change in ({"mask_padded_keys": True}, {"focal_gamma": 1.0}):
        with pytest.raises(SystemExit, match=f"model.{next(iter(change))}="):
            peer.particleflow_config(dataclasses.replace(cfg, **change))


def test_synthetic_mlpf_events_are_padded_clic_like_events():
    batch = synthetic.events(seed=3, events=64, elements=40)
    X, mask, y = batch["X"], batch["mask"], batch["ytarget"]
    assert X.shape == (64, 40, 17) and y.shape == (64, 40, 13) and mask.dtype == np.bool_
    n_real = mask.sum(axis=1)
    assert n_real.min() >= 20 and n_real.max() <= 40 and 0.65 < mask.mean() < 0.85
    assert (mask == (X[..., 0] != 0)).all()  # particleflow's mask: a non-zero element type
    assert not X[~mask].any() and not y[~mask].any()  # padding is zero
    types = X[..., 0]
    assert (np.diff(np.where(mask, types, 3), axis=1) >= 0).all()  # tracks (1), then clusters (2)
    assert (X[mask][:, 1] > 0).all() and (X[mask][:, 5] > 0).all()  # pT, p / E: finite log ratios
    particle = y[..., 0] != 0
    assert 0.6 < particle[mask].mean() < 0.8 and set(np.unique(y[..., 0])) <= set(range(6))
    np.testing.assert_array_equal(X, synthetic.events(seed=3, events=64, elements=40)["X"])


def test_generic_synthetic_batch_gets_targets_the_loss_can_use():
    from flax import nnx

    from smilejax.bench import _synthetic

    cfg = mlpf.MLPFConfig(num_convs=1, num_heads=2, head_dim=4, max_elements=16)
    batch = _synthetic.batch(mlpf.SPEC, cfg, 8, seed=0)  # X: standard normal, negative pTs included
    y, real = batch["ytarget"], batch["mask"] & (batch["X"][..., 1] > 0)
    assert y.shape == (8, 16, 13) and not y[~real].any() and (y[real][:, 0] != 0).any()
    with nnx.use_eager_sharding(False):
        value, metrics = mlpf.loss(mlpf.build(cfg, rngs=nnx.Rngs(0)), batch)
    assert np.isfinite(float(value)) and float(metrics["regression_pt"]) > 0
    np.testing.assert_array_equal(y, _synthetic.batch(mlpf.SPEC, cfg, 8, seed=0)["ytarget"])


def test_ratios_and_loss_check_compare_at_the_same_shape():
    def row(impl, n, ms, first, last):
        speed = {"ms_per_step": ms, "events_per_s": 2e3 / ms, "first_loss": first, "last_loss": last}
        return {"impl": impl, "attention": "a", "elements": n, "events": 2, **speed}

    rows = [
        row("jax", 8, 10.0, 2.0, 1.0),
        row("jax", 16, 10.0, 3.0, 1.0),
        row("torch-eager", 8, 40.0, 2.0, 1.1),
        row("torch-compile", 8, 20.0, 2.0, 1.0),
        row("torch-eager", 16, 30.0, 3.3, 1.0),
    ]
    bench_study.add_ratios(rows)
    assert [r["vs_ref_eager"] for r in rows] == pytest.approx([4, 3, 1, 2, 1])
    assert [r["vs_ref_best"] for r in rows] == pytest.approx([2, 3, 0.5, 1, 1])
    check = bench_study._loss_check(rows)
    assert check["jax a 8x2"] == pytest.approx({"first_loss": 0.0, "last_loss": 0.1 / 1.1})
    assert check["jax a 16x2"] == pytest.approx({"first_loss": 0.3 / 3.3, "last_loss": 0.0})
