"""PNG plots of particle-flow performance: rates per class and vs pT, response and spectrum histograms,
confusion matrices (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

from smilejax.plotting import confusion_matrix  # noqa: F401  (re-exported: plots.confusion_matrix)
from smilejax.plotting import save as _save

COLOURS = {"MLPF": "tab:blue", "PF": "tab:orange", "target": "tab:green", "gen": "black"}
RATE_LABELS = ("any", "ch. hadron", "n. hadron", "photon", "electron", "muon")


def _label(name: str, stats: Mapping | None) -> str:
    if not stats or stats.get("median") is None:
        return name
    label = f"{name}: median {stats['median']:.3f}, IQR {stats['iqr']:.3f} ({stats['n']}"
    if stats.get("matched_fraction") is not None:
        label += f", {100 * stats['matched_fraction']:.0f}% matched"
    return label + ")"


def response_histograms(
    ratios: Mapping[str, np.ndarray],
    stats: Mapping[str, Mapping],
    xlabel: str,
    title: str,
    path: Path,
    bins: np.ndarray | None = None,
) -> Path:
    """Normalised step histograms of reco / gen per collection (outside the range: into the edge bins),
    with each collection's median and IQR in the legend."""
    bins = np.linspace(0.0, 2.0, 81) if bins is None else bins
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for name, x in ratios.items():
        x = np.asarray(x)[np.isfinite(x)]
        if x.size:
            ax.hist(
                np.clip(x, bins[0], bins[-1] - 1e-9 * (bins[-1] - bins[0])),
                bins=bins,
                density=True,
                histtype="step",
                lw=1.5,
                color=COLOURS.get(name),
                label=_label(name, stats.get(name)),
            )
    ax.axvline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("normalised entries")
    ax.set_title(title)
    if ax.has_data():
        ax.legend(fontsize="small")
    return _save(fig, path)


def distributions(
    values: Mapping[str, np.ndarray], xlabel: str, title: str, path: Path, bins: np.ndarray
) -> Path:
    """Step histograms (counts, log y) of one quantity per collection."""
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for name, x in values.items():
        x = np.asarray(x)[np.isfinite(x)]
        if x.size:
            ax.hist(
                np.clip(x, bins[0], bins[-1]),
                bins=bins,
                histtype="step",
                lw=1.5,
                color=COLOURS.get(name),
                label=f"{name} ({x.size})",
            )
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("entries")
    ax.set_title(title)
    if ax.has_data():
        ax.legend(fontsize="small")
    return _save(fig, path)


def rates(results: Mapping[str, Mapping], title: str, path: Path) -> Path:
    """Grouped bars of efficiency and fake rate per class ("any" first) for each collection."""
    keys = list(next(iter(results.values()))["efficiency"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / len(results)
    x = np.arange(len(keys))
    for ax, what in zip(axes, ("efficiency", "fake_rate"), strict=True):
        for i, (name, res) in enumerate(results.items()):
            values = [np.nan if res[what][k] is None else res[what][k] for k in keys]
            ax.bar(
                x + (i - (len(results) - 1) / 2) * width, values, width, label=name, color=COLOURS.get(name)
            )
        ax.set_xticks(x, RATE_LABELS[: len(keys)], rotation=30, ha="right")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(what.replace("_", " "))
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize="small")
    fig.suptitle(title)
    return _save(fig, path)


def rates_vs_pt(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    edges: np.ndarray,
    ylabel: str,
    xlabel: str,
    title: str,
    path: Path,
) -> Path:
    """One panel per class ("any" first): numerator / denominator per pT bin for each collection;
    ``curves`` maps a collection to (numerator, denominator), both [classes, bins]. Empty bins: no point."""
    centres = np.sqrt(edges[:-1] * edges[1:])
    fig, axes = plt.subplots(2, 3, figsize=(12, 7), sharex=True, sharey=True)
    for k, ax in enumerate(axes.flat):
        for name, (num, den) in curves.items():
            rate = np.divide(num[k], den[k], out=np.full(den[k].shape, np.nan), where=den[k] > 0)
            ax.plot(centres, rate, marker="o", ms=3, color=COLOURS.get(name), label=name)
        ax.set_title(RATE_LABELS[k], fontsize="medium")
        ax.set_xscale("log")
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel(xlabel)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    axes.flat[0].legend(fontsize="small")
    fig.suptitle(title)
    return _save(fig, path)
