"""PNG plots of flavour-tagging performance (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

from . import flavour

FLAVOUR_COLOURS = {"b": "tab:blue", "c": "tab:orange", "light": "tab:green", "tau": "tab:purple"}
EFFICIENCIES = np.linspace(0.5, 0.99, 99)


def rejection_curves(
    scores: dict[str, tuple[np.ndarray, np.ndarray]], background: str, title: str, path: Path
) -> Path:
    """b-efficiency vs ``background``-rejection (log scale) of each tagger, and the ratio of each to the
    first (the reference) in a lower panel. ``scores`` maps a tagger label to (b scores, background
    scores)."""
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(6.4, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1], "hspace": 0.05}
    )
    reference = None
    for label, (sig, bkg) in scores.items():
        rej = flavour.rejection(sig, bkg, EFFICIENCIES)
        rej = np.where(np.isfinite(rej), rej, np.nan)  # no background passes: no point
        top.plot(EFFICIENCIES, rej, label=label)
        if reference is None:
            reference = rej
            continue
        bottom.plot(EFFICIENCIES, rej / reference, label=f"{label} / {next(iter(scores))}")
    for wp in flavour.WORKING_POINTS:
        top.axvline(wp, color="grey", lw=0.6, ls=":")
        bottom.axvline(wp, color="grey", lw=0.6, ls=":")
    top.set_yscale("log")
    top.set_ylabel(f"{background}-jet rejection")
    top.set_title(title)
    top.legend()
    top.grid(alpha=0.3, which="both")
    bottom.axhline(1.0, color="black", lw=0.8)
    bottom.set_xlabel("b-jet efficiency")
    bottom.set_ylabel("ratio")
    bottom.grid(alpha=0.3)
    if len(scores) > 1:
        bottom.legend(fontsize="small")
    return _save(fig, path)


def discriminant_by_flavour(
    db: np.ndarray, labels: np.ndarray, names: tuple[str, ...], title: str, path: Path
):
    """Normalised D_b histograms per true flavour, log y."""
    finite = np.isfinite(db)
    lo, hi = np.percentile(db[finite], [0.1, 99.9]) if finite.any() else (-1.0, 1.0)
    bins = np.linspace(lo, hi + 1e-9, int(np.clip(np.sqrt(finite.sum()) * 2, 10, 60)) + 1)
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for k, name in enumerate(names):
        x = db[(labels == k) & finite]
        if x.size:
            ax.hist(
                np.clip(x, lo, hi),
                bins=bins,
                density=True,
                histtype="step",
                lw=1.5,
                color=FLAVOUR_COLOURS.get(name),
                label=f"{name} jets ({x.size})",
            )
    ax.set_yscale("log")
    ax.set_xlabel("$D_b$")
    ax.set_ylabel("normalised jets")
    ax.set_title(title)
    ax.legend()
    return _save(fig, path)


def confusion_matrix(
    confusion: np.ndarray,
    names: list[str],
    title: str,
    path: Path,
    *,
    xlabel: str = "predicted origin",
    ylabel: str = "true origin (tracks)",
) -> Path:
    """Row-normalised confusion matrix (true class per row), with the fractions written in the cells."""
    counts = np.asarray(confusion, np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    frac = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    image = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(frac.shape[0]):
        for j in range(frac.shape[1]):
            colour = "white" if frac[i, j] > 0.6 else "black"
            ax.text(j, i, f"{frac[i, j]:.2f}", ha="center", va="center", fontsize=8, color=colour)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), [f"{n} ({int(r)})" for n, r in zip(names, rows[:, 0], strict=True)])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
