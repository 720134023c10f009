"""``smilejax bench convergence``: a tiny GN2 on a tiny synthetic sample, two variants × two seeds × a few
steps: its files, its points, identical batches giving identical losses, and the variants it refuses."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import yaml

from smilejax import cli
from tests.conftest import synthetic_ftag
from tests.helpers_gn2 import CONVERGENCE_TINY

STEPS, EVERY, BATCH = 4, 2, 32


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    d = tmp_path_factory.mktemp("convergence")
    path, norm = synthetic_ftag(d, 1200, seed=1)
    cfg = {
        "base": "gn2",
        "data": {"path": str(path), "norm_dict": str(norm), "batch_size": BATCH, "read_threads": 1},
        "model": CONVERGENCE_TINY,
        "train": {"precision": "fp32"},
        "run": {"eval_steps": 3},
        "optimizer": {"lr": 1e-3, "schedule": "cosine"},
        "logging": {"wandb": "off"},
    }
    cfg_path = d / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    return cfg_path


def test_two_variants_two_seeds(tiny_config, tmp_path):
    out = tmp_path / "out"
    args = ["bench", "convergence", str(tiny_config), "--variants", "padded,bucketed", "--seeds", "2"]
    args += ["--steps", str(STEPS), "--eval-every", str(EVERY), "--out", str(out)]
    assert cli.main(args) == 0
    written = {p.name for p in out.iterdir()}
    assert written >= {"convergence.json", "convergence.md", "convergence.png", "runs"}
    record = json.loads((out / "convergence.json").read_text())
    assert record["mode"] == "reduced, CPU" and "reduced, CPU" in (out / "convergence.md").read_text()
    points = record["points"]
    runs = {
        (v, s): [p for p in points if (p["variant"], p["seed"]) == (v, s)]
        for v in ("padded", "bucketed")
        for s in (0, 1)
    }
    for run in runs.values():
        assert [p["step"] for p in run] == [0, 2, 4]  # the initial weights' point first
        assert [p["jets"] for p in run] == [0, 2 * BATCH, 4 * BATCH]  # monotone in jets seen
        assert run[0]["train_s"] == 0 and all(b["train_s"] > a["train_s"] for a, b in itertools.pairwise(run))
        assert all(np.isfinite(p["val_loss"]) and p["light_rej_77"] >= 1 and p["c_rej_77"] >= 1 for p in run)
    for seed in (0, 1):
        # window 1: the same jets in the same batches, only less padding, so the same losses
        padded, bucketed = runs["padded", seed], runs["bucketed", seed]
        assert bucketed[1]["val_loss"] == pytest.approx(padded[1]["val_loss"], rel=1e-4)
        assert bucketed[-1]["val_loss"] == pytest.approx(padded[-1]["val_loss"], rel=1e-4)
    assert runs["padded", 0][0]["val_loss"] != pytest.approx(runs["padded", 1][0]["val_loss"], rel=1e-4)
    summary = {r["variant"]: r for r in record["summary"]}
    assert summary["padded"]["seeds"] == 2 and summary["padded"]["jets_per_s"] > 0
    # the time to target is paired: each seed's padded final loss, which its bucketed twin reaches too
    assert record["target_val_loss"] == {str(s): runs["padded", s][-1]["val_loss"] for s in (0, 1)}
    assert summary["padded"]["reached"] == summary["bucketed"]["reached"] == "2/2"


def test_refuses_unknown_variants_and_keys(tiny_config, tmp_path):
    base = ["bench", "convergence", str(tiny_config), "--out", str(tmp_path)]
    with pytest.raises(SystemExit, match=r"unknown variant\(s\) \['nope'\]"):
        cli.main([*base, "--variants", "padded,nope"])
    unknown_key = r"variant 'odd' sets 'data.no_such_key', which config .* does not know"
    with pytest.raises(SystemExit, match=unknown_key):
        odd = "odd data.no_such_key=3 data.bucket_window=2"
        cli.main([*base, "--variant", odd, "--variants", "padded,odd"])
    assert not (tmp_path / "runs").exists()  # refused before any training


def test_torch_reference_line(tiny_config, tmp_path):
    """--torch: the PyTorch peer (eager: torch.compile would take minutes on this CPU) trains on the padded
    variant's batches from its initial weights, with all three losses: the same validation losses at the
    same steps, its points in the same JSON and table."""
    out = tmp_path / "out"
    args = ["bench", "convergence", str(tiny_config), "model.aux_tasks=auto", "--variants", "padded"]
    args += ["--seeds", "1", "--steps", str(STEPS), "--eval-every", str(EVERY), "--out", str(out)]
    assert cli.main([*args, "--torch", "--torch-modes", "eager"]) == 0
    record = json.loads((out / "convergence.json").read_text())
    runs = {v: [p for p in record["points"] if p["variant"] == v] for v in ("padded", "torch-eager")}
    jax_run, torch_run = runs["padded"], runs["torch-eager"]
    assert [p["step"] for p in torch_run] == [p["step"] for p in jax_run] == [0, 2, 4]
    assert [p["jets"] for p in torch_run] == [p["jets"] for p in jax_run] == [0, 2 * BATCH, 4 * BATCH]
    assert torch_run[0]["train_s"] == 0 and all(
        b["train_s"] > a["train_s"] for a, b in itertools.pairwise(torch_run)
    )
    # step 0: the same weights on the same held-out batches; then the same batches, AdamW and schedule
    assert torch_run[0]["val_loss"] == pytest.approx(jax_run[0]["val_loss"], rel=1e-5)
    for t, j in zip(torch_run[1:], jax_run[1:], strict=True):
        assert t["val_loss"] == pytest.approx(j["val_loss"], rel=1e-3)
        assert t["light_rej_77"] >= 1 and t["c_rej_77"] >= 1
    summary = {r["variant"]: r for r in record["summary"]}
    assert summary["torch-eager"]["reached"] == "1/1" and summary["torch-eager"]["jets_per_s"] > 0
    assert record["torch"] and record["torch_device"] == "cpu"
    assert "torch-eager" in (out / "convergence.md").read_text()
    assert not list((out / "runs").glob("torch-seed0/*.npy"))  # the batch files are gone


def test_torch_needs_its_environment(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("SMILEJAX_SALT_REF", str(tmp_path / "no-env"))
    args = ["bench", "convergence", str(tiny_config), "--torch", "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match=r"salt reference environment is missing .*make reference"):
        cli.main(args)
    assert not (tmp_path / "out" / "runs").exists()


def _points(variant: str, curves: dict[int, list[float]], every: int = 50) -> list[dict]:
    """Constructed evaluation points of ``variant``: one validation-loss curve per seed."""
    return [
        {"variant": variant, "seed": seed, "step": k * every, "jets": k * every * 100, "train_s": float(k),
         "compile_s": 0.0, "eval_s": 0.0, "val_loss": loss, "light_rej_77": 10.0}
        for seed, curve in curves.items()
        for k, loss in enumerate(curve)
    ]  # fmt: skip


def test_curve_within_seed_spread():
    """max |Δloss| / seed sd on constructed curves: the reference's seed sd is 0.2 at every evaluation."""
    from smilejax.bench import _convergence_report as convergence
    from smilejax.bench import _convergence_spread as spread

    padded = {0: [4.0, 3.0, 2.0], 1: [4.2, 3.2, 2.2], 2: [4.4, 3.4, 2.4]}
    close = {s: [c[0], c[1] + 0.05, c[2] + 0.1] for s, c in padded.items()}  # Δ 0, 0.05, 0.1
    far = {s: [c[0], c[1] - 0.1, c[2] + 0.3] for s, c in padded.items()}  # Δ 0, 0.1, 0.3
    points = _points("padded", padded) + _points("close", close) + _points("far", far)
    got = spread.spread(points, "padded", "close")
    assert got["max_ratio"] == pytest.approx(0.5) and got["max_delta"] == pytest.approx(0.1)
    assert got["at_step"] == 100 and got["within"] is True and got["evaluations"] == 3
    got = spread.spread(points, "padded", "far")
    assert got["max_ratio"] == pytest.approx(1.5) and got["at_step"] == 100 and got["within"] is False
    assert spread.spread(points, "padded", "padded")["max_ratio"] == 0.0
    # a paired difference: one seed off by 0.3, the others not, is a mean Δ of 0.1 (ratio 0.5)
    one_off = {s: [c[0], c[1], c[2] + (0.3 if s == 2 else 0.0)] for s, c in padded.items()}
    got = spread.spread(points + _points("one_off", one_off), "padded", "one_off")
    assert got["max_ratio"] == pytest.approx(0.5) and got["within"] is True
    # the curves end at the shortest run; a point without spread counts 0 only where Δ is 0 too
    same_start = {s: [4.0, *c[1:]] for s, c in padded.items()}
    moved = {s: [4.01, *c[1:2]] for s, c in padded.items()}
    got = spread.spread(_points("a", same_start) + _points("b", moved), "a", "b")
    assert got["evaluations"] == 2 and got["max_ratio"] == float("inf") and got["within"] is False
    # one seed: no spread, no verdict, but the largest |Δ|
    got = spread.spread(_points("padded", {0: [4.0, 3.0]}) + _points("v", {0: [4.0, 3.25]}), "padded", "v")
    assert got["max_ratio"] is None and got["within"] is None and got["max_delta"] == pytest.approx(0.25)

    # the bench's summary and table carry it
    rows, _ = convergence.summarise(points, ["padded", "close", "far"], tolerance=0.005)
    cells = {r["variant"]: convergence._table_row(r, ["light_rej_77"]) for r in rows}
    assert cells["close"]["max |Δloss| / seed sd"] == "0.5 (step 100)"
    assert [cells[v]["within spread"] for v in ("padded", "close", "far")] == ["reference", "yes", "no"]
    assert rows[2]["curve_max_delta"] == pytest.approx(0.3) and rows[2]["within_spread"] is False
