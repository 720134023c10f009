"""The impact-parameter baseline tagger (IP2D style): a log-likelihood ratio of signed d0 significance.

Templates: the per-track distributions of the signed transverse impact-parameter significance
``s = d0 / sigma(d0)`` (lifetime-signed w.r.t. the jet axis) on the valid tracks of b jets and of
light jets of the *training* split. Binned in ``sign(s) * ln(1 + |s|)`` (fine near 0 where resolution
dominates, coarse in the lifetime tail), values outside the range fall into the edge bins, and every
bin gets one pseudo-track so that no ratio is 0 or infinite.

Jet score: ``sum over valid tracks of ln(p_b(s) / p_light(s))``, the likelihood ratio of the jet's
tracks under the b and light hypotheses if tracks were independent. The same score serves against
c jets (IP2D has no separate c template either).
"""

from __future__ import annotations

import dataclasses

import numpy as np

VARIABLE = "IP3D_signed_d0_significance"
_RANGE = (-30.0, 100.0)  # significance range of the binning; beyond it, the edge bins
_BINS = 48


def _transform(s: np.ndarray) -> np.ndarray:
    return np.sign(s) * np.log1p(np.abs(s))


@dataclasses.dataclass
class Templates:
    edges: np.ndarray  # bin edges in the transformed variable
    b_counts: np.ndarray  # tracks of b jets per bin
    light_counts: np.ndarray  # tracks of light jets per bin
    n_jets: int  # jets the templates were filled from

    @property
    def log_ratio(self) -> np.ndarray:
        """ln(p_b / p_light) per bin, with one pseudo-track per bin."""
        b = self.b_counts + 1.0
        light = self.light_counts + 1.0
        return np.log(b / b.sum()) - np.log(light / light.sum())

    def describe(self) -> dict:
        return {
            "variable": VARIABLE,
            "fit_jets": self.n_jets,
            "fit_tracks_b": int(self.b_counts.sum()),
            "fit_tracks_light": int(self.light_counts.sum()),
            "significance_range": list(_RANGE),
            "bins": _BINS,
        }


def _bin(sd0: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.clip(np.searchsorted(edges, _transform(sd0), side="right") - 1, 0, edges.size - 2)


def fit(sd0: np.ndarray, valid: np.ndarray, flavour: np.ndarray) -> Templates:
    """Templates from tracks ``sd0`` [n, t], ``valid`` [n, t] and jet ``flavour`` [n] (0 = b, 2 = light)."""
    edges = np.linspace(*_transform(np.asarray(_RANGE)), _BINS + 1)
    valid = valid.astype(bool)
    counts = {}
    for name, k in (("b", 0), ("light", 2)):
        tracks = valid & (flavour == k)[:, None]
        if not tracks.any():
            raise ValueError(f"no valid tracks of {name} jets to fill the IP baseline's template with")
        counts[name] = np.bincount(_bin(sd0[tracks], edges), minlength=_BINS).astype(np.float64)
    return Templates(edges, counts["b"], counts["light"], int(flavour.size))


def score(templates: Templates, sd0: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-jet log-likelihood ratio: the sum of the per-track ln(p_b / p_light) over valid tracks."""
    per_track = templates.log_ratio[_bin(np.where(valid, sd0, 0.0), templates.edges)]
    return np.where(valid, per_track, 0.0).sum(axis=1)
