"""Plots of a study (objective per trial, best so far) and of the HPO benchmark (best against compute)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

_COLOURS = {"complete": "tab:blue", "pruned": "tab:orange", "failed": "tab:red", "running": "tab:gray"}


def study(summary, path: Path) -> None:
    """Each trial's objective (pruned trials at their last reported value) and the best so far."""
    trials = sorted(summary.trials, key=lambda t: t["number"])
    fig, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
    for state, colour in _COLOURS.items():
        points = [(t["number"], t["value"]) for t in trials if t["state"] == state and t["value"] is not None]
        if points:
            ax.scatter(*zip(*points, strict=True), color=colour, label=state, s=18)
    best, xs, ys = None, [], []
    for t in trials:
        value = t["value"] if t["state"] == "complete" else None
        if value is not None and (best is None or (value < best if summary.mode == "min" else value > best)):
            best = value
        if best is not None:
            xs.append(t["number"])
            ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="black", lw=1.2, label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(summary.metric)
    ax.set_title(f"study {summary.name} ({summary.mode}imise)")
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def best_vs_compute(
    curves: dict[str, list[list[tuple[float, float]]]], path: Path, *, metric: str, xlabel: str
) -> None:
    """Per method, the best objective against compute spent: the median over seeds and the min-max band.

    ``curves[method]`` holds one list of (compute, best so far) points per seed.
    """
    import warnings

    import numpy as np

    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    styles = ["-", "--", ":", "-."]
    for n, (method, runs) in enumerate(curves.items()):
        runs = [r for r in runs if r]
        if not runs:
            continue
        grid = np.linspace(0, max(r[-1][0] for r in runs), 200)
        stacked = []
        for run in runs:
            x = np.array([p[0] for p in run])
            y = np.array([p[1] for p in run])
            at = np.searchsorted(x, grid, side="right") - 1
            stacked.append(np.where(at >= 0, y[np.clip(at, 0, None)], np.nan))
        stacked = np.array(stacked)
        with warnings.catch_warnings():  # all-NaN columns before a seed's first result
            warnings.simplefilter("ignore", RuntimeWarning)
            median, low, high = (f(stacked, axis=0) for f in (np.nanmedian, np.nanmin, np.nanmax))
        label = f"{method} (median of {len(runs)})"
        (line,) = ax.plot(grid, median, ls=styles[n % len(styles)], lw=1.6, label=label)
        ax.fill_between(grid, low, high, color=line.get_color(), alpha=0.15)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"best {metric}")
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=110)
    plt.close(fig)
