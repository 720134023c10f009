"""PNG plots of flavour-tagging performance (matplotlib, Agg backend: no display needed).

The ROC and D_b plots follow the conventions of puma, ATLAS's flavour-tagging plotting library:
rejection on a log axis against the b-jet efficiency with binomial uncertainty bands, a ratio panel to
the reference tagger whose bands are each tagger's own relative uncertainty, the working points
marked and labelled, unit-area step histograms with statistical bands, the sample described in the
plot instead of a title. Drawn with matplotlib itself: puma-hep's releases pin older matplotlib and
numpy than this project's, and its newest installable one needs pandas.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from smilejax.plotting import confusion_matrix  # noqa: F401  (re-exported: plots.confusion_matrix)
from smilejax.plotting import save as _save

from . import flavour

FLAVOUR_COLOURS = {"b": "tab:blue", "c": "tab:orange", "light": "tab:green", "tau": "tab:purple"}
FLAVOUR_LABELS = {"b": "$b$-jets", "c": "$c$-jets", "light": "Light-jets", "tau": "$\\tau$-jets"}
TAGGER_COLOURS = ("#3f90da", "#ffa90e", "#bd1f01", "#94a4a2", "#832db6")  # puma's colour-blind safe set
EFFICIENCIES = np.linspace(0.5, 0.99, 99)


def rejection_curves(
    scores: dict[str, tuple[np.ndarray, np.ndarray]],
    background: str,
    info: str,
    path: Path,
    *,
    reference: str | None = None,
) -> Figure:
    """b-jet efficiency vs ``background``-jet rejection (log scale) of each tagger with its binomial
    band, and in a lower panel each tagger's ratio to ``reference`` (default: the last tagger, the
    baseline). ``scores`` maps a tagger label to (b scores, background scores); ``info`` is the text
    describing the sample, the legend's title. Saved to ``path``; returns the (closed) figure."""
    reference = reference or list(scores)[-1]
    if reference not in scores:
        raise ValueError(f"the reference tagger {reference!r} is not among {list(scores)}")
    curves = {}
    for label, (sig, bkg) in scores.items():
        rej = flavour.rejections(sig, bkg, EFFICIENCIES)
        value = np.array([r["rejection"] for r in rej])
        err = np.array([r["stat_err"] for r in rej])
        shown = np.isfinite(value)  # no background jet passes: no point
        curves[label] = (np.where(shown, value, np.nan), np.where(shown, err, np.nan))

    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(6.4, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1], "hspace": 0.05}
    )
    ref_value = curves[reference][0]
    for colour, (label, (value, err)) in zip(TAGGER_COLOURS * 4, curves.items(), strict=False):
        top.plot(EFFICIENCIES, value, color=colour, lw=2, label=label)
        top.fill_between(EFFICIENCIES, value - err, value + err, color=colour, alpha=0.25, lw=0)
        top.plot(
            flavour.WORKING_POINTS, np.interp(flavour.WORKING_POINTS, EFFICIENCIES, value), "o", color=colour
        )
        ratio = value / ref_value
        band = err / value * ratio  # the tagger's own relative uncertainty, as puma's ratio panels
        bottom.plot(EFFICIENCIES, ratio, color=colour, lw=2)
        bottom.fill_between(EFFICIENCIES, ratio - band, ratio + band, color=colour, alpha=0.25, lw=0)
    for wp in flavour.WORKING_POINTS:
        for ax in (top, bottom):
            ax.axvline(wp, color="grey", lw=0.8, ls="--")
        top.text(
            wp, 0.98, f"{round(100 * wp)}% WP", rotation=90, ha="right", va="top", fontsize="small",
            color="grey", transform=top.get_xaxis_transform(),
        )  # fmt: skip
    top.set_yscale("log")
    top.set_ylabel(f"{FLAVOUR_LABELS.get(background, background + '-jets')[:-1]} rejection")
    top.legend(
        loc="best", title=f"{info}\nbands: binomial stat. unc.", title_fontsize="small", alignment="left"
    )
    top.grid(alpha=0.3, which="both")
    bottom.axhline(1.0, color="black", lw=0.8)
    bottom.set_xlim(EFFICIENCIES[0], 1.0)
    bottom.set_xlabel("$b$-jet efficiency")
    bottom.set_ylabel(f"Ratio to {reference}")
    bottom.grid(alpha=0.3)
    _save(fig, path)
    return fig


def discriminant_by_flavour(
    db: np.ndarray, labels: np.ndarray, names: tuple[str, ...], info: str, cuts: dict[str, float], path: Path
) -> Figure:
    """Unit-area D_b histograms per true flavour with their statistical bands (log y), and the
    working points' cuts ``cuts`` ({"70": cut, ...}) as labelled vertical lines. Saved to ``path``;
    returns the (closed) figure."""
    finite = np.isfinite(db)
    lo, hi = np.percentile(db[finite], [0.1, 99.9]) if finite.any() else (-1.0, 1.0)
    bins = np.linspace(lo, hi + 1e-9, int(np.clip(np.sqrt(finite.sum()) * 2, 10, 60)) + 1)
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for k, name in enumerate(names):
        x = db[(labels == k) & finite]
        if not x.size:
            continue
        counts, _ = np.histogram(np.clip(x, lo, hi), bins)
        scale = 1.0 / (x.size * np.diff(bins))
        colour = FLAVOUR_COLOURS.get(name)
        ax.stairs(
            counts * scale, bins, color=colour, lw=1.5, label=f"{FLAVOUR_LABELS.get(name, name)} ({x.size})"
        )
        band = np.sqrt(counts) * scale  # Poisson error of each bin's count
        ax.stairs(
            counts * scale + band, bins, baseline=counts * scale - band, fill=True, color=colour, alpha=0.25
        )
    for wp, cut in cuts.items():
        ax.axvline(cut, color="grey", lw=0.8, ls="--")
        ax.text(
            cut, 0.98, f"{wp}%", rotation=90, ha="right", va="top", fontsize="small", color="grey",
            transform=ax.get_xaxis_transform(),
        )  # fmt: skip
    ax.set_yscale("log")
    ymin, ymax = ax.get_ylim()
    ax.set_ylim(ymin, ymax * (ymax / ymin) ** 0.3)  # headroom above the curves for the labels
    ax.set_xlabel("$D_b$")
    ax.set_ylabel("Normalised number of jets")
    ax.legend(loc="best", fontsize="small", title=info, title_fontsize="small", alignment="left")
    _save(fig, path)
    return fig
