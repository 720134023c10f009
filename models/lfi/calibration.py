"""Posterior calibration checks from samples: simulation-based calibration and expected coverage.

Both start from pairs (theta_i, x_i) drawn from the joint (a prior draw and its simulation) and the
estimator's posterior at each x_i:

* SBC (Talts et al. 2018): the rank of theta_i among L posterior draws, per parameter, is uniform on
  0..L when the posterior is the true one, averaged over the prior. A histogram of the N ranks in B bins
  then has counts Binomial(N, 1/B) in every bin; the band drawn is that distribution's central 99%.
  A U shape means an over-confident posterior, a hump an under-confident one, a slope a bias.
* Expected coverage (Hermans et al. 2022, "A trust crisis in simulation-based inference?"): theta_i lies
  in the highest-posterior-density region of credibility level g when fewer than a fraction g of the
  posterior's draws have a higher density than theta_i. The empirical coverage at each level g, against
  g, lies on the diagonal for a calibrated posterior; below it the posterior is over-confident.
  Only densities at each x are compared, so an unnormalised posterior (NRE) serves too.

Pure numpy (plots with matplotlib): the shapes are ``samples [N, L, dim]``, ``theta [N, dim]``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

BAND = 0.99  # central probability of the uniform band of the rank histograms
LEVELS = np.linspace(0.0, 1.0, 21)


def sbc_ranks(samples: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Rank of each true parameter among its posterior draws: ``[N, dim]`` integers in 0..L."""
    samples, theta = np.asarray(samples), np.asarray(theta)
    if samples.ndim != 3 or theta.shape != (samples.shape[0], samples.shape[2]):
        raise ValueError(
            f"sbc_ranks: samples [N, L, dim] and theta [N, dim]; got {samples.shape}, {theta.shape}"
        )
    return (samples < theta[:, None, :]).sum(axis=1)


def rank_band(n: int, bins: int, band: float = BAND) -> tuple[float, float]:
    """The central ``band`` interval of a bin's count when ``n`` ranks are uniform over ``bins`` bins."""
    from scipy import stats

    tail = (1.0 - band) / 2
    return float(stats.binom.ppf(tail, n, 1 / bins)), float(stats.binom.ppf(1 - tail, n, 1 / bins))


def rank_histograms(ranks: np.ndarray, draws: int, bins: int) -> np.ndarray:
    """Counts ``[dim, bins]`` of ``ranks`` (0..``draws``) in ``bins`` equal bins of the rank range."""
    edges = np.linspace(0, draws + 1, bins + 1)
    return np.stack([np.histogram(ranks[:, d], bins=edges)[0] for d in range(ranks.shape[1])])


def sbc_metrics(ranks: np.ndarray, draws: int, bins: int) -> dict:
    """Per parameter: the KS p-value of the normalised ranks against uniform, and the fraction of the
    histogram's bins outside the uniform band (about 1 - BAND when calibrated)."""
    from scipy import stats

    counts = rank_histograms(ranks, draws, bins)
    lo, hi = rank_band(len(ranks), bins)
    u = (ranks + np.random.default_rng(0).uniform(size=ranks.shape)) / (draws + 1)  # ties broken
    return {
        "sbc_ks_pvalue": [float(stats.kstest(u[:, d], "uniform").pvalue) for d in range(ranks.shape[1])],
        "sbc_bins_outside_band": [float(np.mean((c < lo) | (c > hi))) for c in counts],
    }


def coverage_alphas(log_q_samples: np.ndarray, log_q_true: np.ndarray) -> np.ndarray:
    """Per pair: the fraction of its posterior draws denser than the true parameter ``[N]``; theta_i lies
    in the HPD region of level g iff that fraction is below g."""
    log_q_samples, log_q_true = np.asarray(log_q_samples), np.asarray(log_q_true)
    if log_q_samples.ndim != 2 or log_q_true.shape != (log_q_samples.shape[0],):
        raise ValueError(f"coverage_alphas: [N, L] and [N]; got {log_q_samples.shape}, {log_q_true.shape}")
    return (log_q_samples > log_q_true[:, None]).mean(axis=1)


def expected_coverage(alphas: np.ndarray, levels: Sequence[float] = LEVELS) -> np.ndarray:
    """Empirical coverage at each credibility level: the fraction of pairs with alpha below it."""
    alphas = np.asarray(alphas)
    return np.array([float(np.mean(alphas < g)) if g < 1 else 1.0 for g in levels])


def coverage_metrics(alphas: np.ndarray, levels: Sequence[float] = LEVELS) -> dict:
    """The coverage curve and its largest deviations: ``coverage_max_under`` (over-confidence: nominal
    minus empirical, largest) and ``coverage_max_over`` (conservative), and the area between the curve and
    the diagonal."""
    levels = np.asarray(levels, float)
    empirical = expected_coverage(alphas, levels)
    gap = levels - empirical
    return {
        "coverage_levels": levels.tolist(),
        "coverage_empirical": empirical.tolist(),
        "coverage_max_under": float(max(gap.max(), 0.0)),
        "coverage_max_over": float(max(-gap.min(), 0.0)),
        "coverage_area": float(np.trapezoid(np.abs(gap), levels)),
    }


def plot_ranks(
    ranks: np.ndarray, draws: int, bins: int, labels: Sequence[str], path: os.PathLike, title: str
) -> None:
    """One rank histogram per parameter with the uniform band (grey) and its expected count (line)."""
    from smilejax import plotting

    plt = plotting.pyplot(path)
    if plt is None:
        return
    counts = rank_histograms(ranks, draws, bins)
    lo, hi = rank_band(len(ranks), bins)
    dim = counts.shape[0]
    cols = min(dim, 5)
    rows = -(-dim // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.2 * rows), squeeze=False)
    for d, ax in enumerate(axes.flat):
        if d >= dim:
            ax.axis("off")
            continue
        ax.axhspan(lo, hi, color="0.85", label=f"uniform, {BAND:.0%}")
        ax.axhline(len(ranks) / bins, color="0.5", lw=0.8)
        ax.bar(np.arange(bins), counts[d], width=1.0, color="tab:blue", alpha=0.8)
        for edge in (lo, hi):  # the band's edges stay visible over the bars
            ax.axhline(edge, color="0.3", lw=0.8, ls=":")
        ax.set_title(labels[d] if d < len(labels) else f"theta[{d}]", fontsize=9)
        ax.set_xticks([])
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{title}: SBC ranks ({len(ranks)} simulations, {draws} draws each)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_coverage(levels: np.ndarray, empirical: np.ndarray, n: int, path: os.PathLike, title: str) -> None:
    """Empirical against nominal coverage, with the diagonal and its binomial 99% band for ``n`` pairs."""
    from scipy import stats

    from smilejax import plotting

    plt = plotting.pyplot(path)
    if plt is None:
        return
    levels = np.asarray(levels, float)
    lo = stats.binom.ppf((1 - BAND) / 2, n, levels) / n
    hi = stats.binom.ppf(1 - (1 - BAND) / 2, n, levels) / n
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.fill_between(levels, lo, hi, color="0.85", label=f"calibrated, {BAND:.0%}")
    ax.plot([0, 1], [0, 1], color="0.4", lw=0.8, ls="--")
    ax.plot(levels, empirical, marker="o", ms=3, color="tab:blue", label="estimator")
    ax.set_xlabel("credibility level")
    ax.set_ylabel("empirical coverage")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"{title}\nexpected coverage ({n} simulations)", fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_corner(
    samples: np.ndarray,
    truth: np.ndarray | None,
    labels: Sequence[str],
    path: os.PathLike,
    title: str,
    reference: np.ndarray | None = None,
) -> None:
    """Pairwise scatter and marginal histograms of posterior ``samples`` [L, dim] (blue), the reference
    posterior's (orange, when given) and the true parameters (red lines)."""
    from smilejax import plotting

    plt = plotting.pyplot(path)
    if plt is None:
        return
    dim = samples.shape[1]
    fig, axes = plt.subplots(dim, dim, figsize=(1.9 * dim + 1, 1.9 * dim + 1), squeeze=False)
    sets = [(samples, "tab:blue", "estimator")]
    if reference is not None:
        sets.append((reference, "tab:orange", "reference"))
    for i in range(dim):
        for j in range(dim):
            ax = axes[i, j]
            if j > i:
                ax.axis("off")
                continue
            for s, color, label in sets:
                if i == j:
                    ax.hist(s[:, i], bins=40, histtype="step", density=True, color=color, label=label)
                else:
                    ax.scatter(s[:2000, j], s[:2000, i], s=1, alpha=0.25, color=color, rasterized=True)
            if truth is not None:
                ax.axvline(truth[j], color="tab:red", lw=1)
                if i != j:
                    ax.axhline(truth[i], color="tab:red", lw=1)
                    ax.plot(truth[j], truth[i], "o", color="tab:red", ms=3)
            name = lambda k: labels[k] if k < len(labels) else f"theta[{k}]"  # noqa: E731
            if i == dim - 1:
                ax.set_xlabel(name(j), fontsize=8)
            if j == 0 and i != 0:
                ax.set_ylabel(name(i), fontsize=8)
            ax.tick_params(labelsize=6)
    axes[0, 0].legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
