"""Response distributions (reco / gen) summarised by median and interquartile range, and missing pT.

As particleflow's ``med_iqr``: the median and IQR = 75th - 25th percentile (numpy's linear
interpolation); the relative resolution is IQR / median. Missing pT of a collection = |Σ pT vector| over
its particles with a class other than 0, (px, py) = pT (cos phi, sin phi) with phi = atan2(sin phi,
cos phi) (particleflow sums pT · sin phi and pT · cos phi as predicted, not normalised to a unit vector).
"""

from __future__ import annotations

import numpy as np

from .particles import Particles


def summary(ratio: np.ndarray) -> dict:
    """n, median, p25, p75, iqr and iqr / median of the finite values of ``ratio`` (None when empty)."""
    x = np.asarray(ratio, np.float64)
    x = x[np.isfinite(x)]
    if not x.size:
        return {"n": 0, "median": None, "p25": None, "p75": None, "iqr": None, "iqr_over_median": None}
    p25, median, p75 = (float(v) for v in np.percentile(x, [25, 50, 75]))
    return {
        "n": int(x.size),
        "median": median,
        "p25": p25,
        "p75": p75,
        "iqr": p75 - p25,
        "iqr_over_median": (p75 - p25) / median if median else None,
    }


def missing_pt(particles: Particles, keep: np.ndarray) -> np.ndarray:
    """|Σ pT vector| per event [events] over the ``keep`` elements that hold a particle (class != 0)."""
    use = np.asarray(keep, bool) & (particles.cls != 0)
    pt = np.where(use, particles.pt, 0.0).astype(np.float64)
    px = (pt * np.cos(particles.phi)).sum(axis=-1)
    py = (pt * np.sin(particles.phi)).sum(axis=-1)
    return np.hypot(px, py)
