"""Plots of studies that may run on a bare GPU node (the source copied there, not installed), and the
plots model families share (``confusion_matrix``, ``save``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import ModuleType

import numpy as np

log = logging.getLogger(__name__)


def pyplot(path: str | os.PathLike) -> ModuleType | None:
    """``matplotlib.pyplot`` drawing to files, or None with a warning naming the plot ``path`` when
    matplotlib is missing: the study's JSON and tables are written without it."""
    try:
        import matplotlib
    except ImportError:
        log.warning("matplotlib is not installed: no plot %s", path)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` to ``path`` (PNG at 110 dpi, tight) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def confusion_matrix(
    confusion: np.ndarray,
    names: list[str],
    title: str,
    path: str | os.PathLike,
    *,
    xlabel: str = "predicted class",
    ylabel: str = "true class",
) -> Path | None:
    """Row-normalised confusion matrix (true class per row, its count in the tick label), with the
    fractions written in the cells; None without matplotlib (see ``pyplot``)."""
    plt = pyplot(path)
    if plt is None:
        return None
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
    return save(fig, path)
