"""LFI posterior checks: the benchmark's C2ST, SBC and expected coverage on a Gaussian whose posterior is
known exactly, and ``smilejax eval`` on a tiny trained NPE run (metrics and plots)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from smilejax.models.lfi import calibration
from smilejax.models.lfi.c2st import c2st
from smilejax.models.lfi.evaluation import parse_observations

from tests.conftest import run_cli


def test_c2st_same_distribution_is_chance_and_shifted_is_one():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(1000, 2))
    same = rng.normal(size=(1000, 2))
    shifted = rng.normal(size=(1000, 2)) + np.array([4.0, 0.0])
    assert abs(c2st(reference, same) - 0.5) < 0.06
    assert c2st(reference, shifted) > 0.97
    with pytest.raises(ValueError, match="dimensions differ"):
        c2st(reference, same[:, :1])


# A conjugate Gaussian: theta ~ N(0, 1) per coordinate, x ~ N(theta, S^2); the posterior is
# N(x / (1 + S^2), S^2 / (1 + S^2)) per coordinate.
S = 0.5
POST_VAR = S**2 / (1 + S**2)


def _gaussian_pairs(n: int, draws: int, scale: float, seed: int = 0):
    """(posterior draws [n, draws, 2], true theta [n, 2], their log densities) with the posterior's
    standard deviation multiplied by ``scale`` (1: exact; < 1: over-confident)."""
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=(n, 2))
    x = theta + S * rng.normal(size=(n, 2))
    mean, std = x / (1 + S**2), scale * np.sqrt(POST_VAR)
    samples = mean[:, None, :] + std * rng.normal(size=(n, draws, 2))

    def log_q(t, m):
        return -0.5 * np.sum(((t - m) / std) ** 2, axis=-1)

    return samples, theta, log_q(samples, mean[:, None, :]), log_q(theta, mean)


def test_sbc_and_coverage_of_the_exact_posterior_are_uniform_and_diagonal():
    samples, theta, log_q_samples, log_q_true = _gaussian_pairs(2000, 100, scale=1.0)
    ranks = calibration.sbc_ranks(samples, theta)
    assert ranks.shape == (2000, 2) and ranks.min() >= 0 and ranks.max() <= 100
    sbc = calibration.sbc_metrics(ranks, draws=100, bins=20)
    assert min(sbc["sbc_ks_pvalue"]) > 1e-3
    assert max(sbc["sbc_bins_outside_band"]) <= 0.1  # 1% expected per bin
    coverage = calibration.coverage_metrics(calibration.coverage_alphas(log_q_samples, log_q_true))
    assert coverage["coverage_max_under"] < 0.04 and coverage["coverage_max_over"] < 0.04
    assert coverage["coverage_empirical"][0] == 0.0 and coverage["coverage_empirical"][-1] == 1.0


def test_an_over_confident_posterior_fails_both_checks():
    samples, theta, log_q_samples, log_q_true = _gaussian_pairs(2000, 100, scale=0.5)
    sbc = calibration.sbc_metrics(calibration.sbc_ranks(samples, theta), draws=100, bins=20)
    assert max(sbc["sbc_ks_pvalue"]) < 1e-6  # U-shaped ranks
    assert min(sbc["sbc_bins_outside_band"]) > 0.3
    coverage = calibration.coverage_metrics(calibration.coverage_alphas(log_q_samples, log_q_true))
    assert coverage["coverage_max_under"] > 0.2  # below the diagonal


def test_rank_band_holds_the_expected_count():
    lo, hi = calibration.rank_band(1000, 20)
    assert lo < 50 < hi and hi - lo < 40


def test_parse_observations():
    assert parse_observations("all", 10) == list(range(1, 11))
    assert parse_observations("none", 10) == []
    assert parse_observations("2-4,7", 10) == [2, 3, 4, 7]
    with pytest.raises(ValueError, match="--observations"):
        parse_observations("first", 10)


def test_smilejax_eval_of_a_tiny_npe_run_writes_metrics_and_plots(tmp_path):
    run_dir = tmp_path / "run"
    train = run_cli(
        "train",
        "npe-two-moons",
        "run.steps=30",
        "run.eval_every=0",
        "run.log_every=10",
        "logging.progress=false",
        "data.batch_size=64",
        f"run.dir={run_dir}",
        timeout=600,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    out = tmp_path / "eval"
    flags = ["--sbc-runs", "60", "--sbc-draws", "20", "--sbc-bins", "5", "--posterior-samples", "200"]
    result = run_cli(
        "eval", str(run_dir), "--out", str(out), *flags, "--observations", "1,2", "--corner", "1"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "npe" and metrics["task"] == "two_moons"
    assert len(metrics["sbc_ks_pvalue"]) == 2 and len(metrics["coverage_empirical"]) == 21
    assert set(metrics["observations"]) == {"1", "2"}
    for row in metrics["observations"].values():
        assert 0.4 <= row["c2st"] <= 1.0 and len(row["true_parameters"]) == 2
    assert 0.4 <= metrics["c2st_mean"] <= 1.0
    for plot in ("sbc_ranks.png", "coverage.png", "posterior_obs1.png"):
        assert (out / plot).stat().st_size > 1000, plot
    assert not (out / "posterior_obs2.png").exists()  # --corner 1
    assert "C2ST mean" in result.stdout
    bad = run_cli("eval", str(run_dir), "--out", str(out), "--observations", "11")
    assert bad.returncode != 0 and "out of 1..10" in bad.stderr
