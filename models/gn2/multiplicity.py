"""Tracks per jet of an ftag HDF5 file (what the Pythia maker reports): mean, quantiles, the share of each
track origin, and a histogram PNG comparing files (e.g. several pile-up values)."""

from __future__ import annotations

import os

import h5py
import numpy as np

from .make_synthetic import MAX_TRACKS, ORIGINS

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)


def counts(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(valid tracks per jet [n], origin labels of all valid tracks)."""
    with h5py.File(path, "r", locking=False) as f:
        valid = f["tracks"].fields("valid")[:]
        origin = f["tracks"].fields("ftagTruthOriginLabel")[:][valid]
    return valid.sum(1), origin


def summary(path: str | os.PathLike) -> dict:
    """Jets, mean tracks per jet, its quantiles, the fraction of jets at the cap and of tracks per origin."""
    return summarise(*counts(path))


def summarise(n: np.ndarray, origin: np.ndarray) -> dict:
    """``summary`` of tracks per jet ``n`` and the valid tracks' origin labels."""
    share = np.bincount(origin.astype(np.int64), minlength=len(ORIGINS)) / max(origin.size, 1)
    return {
        "jets": int(n.size),
        "mean": float(n.mean()),
        "quantiles": {f"{q:g}": float(np.quantile(n, q)) for q in QUANTILES},
        "at_cap": float((n >= MAX_TRACKS).mean()),
        "origin_share": {name: float(s) for name, s in zip(ORIGINS, share, strict=True)},
    }


def describe(s: dict) -> str:
    """One line of ``summary``'s numbers."""
    q = s["quantiles"]
    shares = ", ".join(f"{k} {v:.1%}" for k, v in s["origin_share"].items() if v > 0)
    return (
        f"tracks per jet: mean {s['mean']:.2f}, median {q['0.5']:g}, 10-90 % {q['0.1']:g}-{q['0.9']:g}, "
        f"99 % {q['0.99']:g}, at the {MAX_TRACKS}-track cap {s['at_cap']:.1%}; tracks: {shares}"
    )


def plot(files: dict[str, str | os.PathLike], out: str | os.PathLike) -> None:
    """Histogram (fraction of jets) of tracks per jet, one step line per labelled file."""
    from smilejax import plotting

    plt = plotting.pyplot(out)
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.arange(MAX_TRACKS + 2) - 0.5
    for label, path in files.items():
        n, _ = counts(path)
        ax.hist(n, bins=bins, histtype="step", density=True, label=f"{label} (mean {n.mean():.1f})")
    ax.set_xlabel("selected tracks per jet")
    ax.set_ylabel("fraction of jets")
    ax.legend(frameon=False)
    plotting.save(fig, out)
