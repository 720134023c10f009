"""Merging of track pieces that one helix fits (no truth): the lever against split tracks.

A walk-through (or CC) stops where the classifier scored a true edge low or the graph lacks it, and the
particle's hits end up in two or more pieces; under two-way matching a piece holding at most half of its
particle is a fake. ``merge`` joins pieces end to start when one helix fits both:

* every piece of at least ``min_piece`` hits is fitted: a circle through the beam line (x = y = 0) in xy,
  a line z = z0 + s cot(theta) in (s, z), s the arc length in xy from the beam line;
* piece B may follow piece A when B's innermost hit lies outside A's outermost (in r), within
  ``max_gap`` mm of it, and A's helix passes it within three times the tolerance (a cheap screen);
* the pair is merged when the joint fit's largest residuals stay within the tolerance: in xy (distance
  from the circle) n_sigma * sqrt(sigma_xy^2 + (scatter / pT)^2), in (s, z) (distance from the line)
  n_sigma * sqrt(sigma_z^2 + (scatter / pT)^2), pT from the joint circle's radius in the 2 T field.
  sigma_xy and sigma_z are the detector's coarsest hit resolutions (long strips: pitch / sqrt(12),
  35 um across, 3.1 mm along the strip); ``scatter`` (mm GeV) is the spread multiple scattering adds,
  which grows as 1 / pT;
* pairs that pass are taken best first (largest residual / tolerance plus gap / ``max_gap``, so a
  near piece wins between equal fits), each end and each start once per round; merged pieces are
  fitted again in the next round, until a round merges nothing or ``rounds`` have run (a chain
  A -> B -> C joined in one round is not refitted as a whole before it is kept);
* with ``clean`` (first), a piece of 4 hits or more that no helix fits loses its worst hit, up to
  ``clean`` times (a foreign hit the walk picked up would block every merge of the piece);
* with ``free_hits``, hits on no piece (cleaned ones too) take part as one-hit pieces, joined only to
  a piece of three or more hits whose helix passes them; those still alone stay on no track.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from smilejax.inputs.trackml.features import PITCH, SCALES

from .detector import MM_PER_GEV

SCREEN_BLOCK = 1024  # pieces A screened at once
LONG_STRIP = PITCH[17]  # the coarsest module type: (across, along) the strip, mm


@dataclasses.dataclass(frozen=True)
class MergeConfig:
    sigma_xy: float = LONG_STRIP[0] / np.sqrt(12.0)
    sigma_z: float = LONG_STRIP[1] / np.sqrt(12.0)
    scatter: float = 1.0  # mm GeV: multiple scattering's residual spread times pT
    n_sigma: float = 2.0
    max_gap: float = 1500.0  # mm between A's outermost and B's innermost hit
    min_piece: int = 2  # hits of the shortest piece merged
    rounds: int = 4
    free_hits: bool = False  # hits on no piece join as one-hit pieces
    clean: int = 0  # hits a piece that no helix fits may lose first (its worst), to no track


MODES = ("pieces", "hits")


def config(mode: str | None, n_sigma: float = MergeConfig.n_sigma) -> MergeConfig | None:
    """``smilejax eval``'s ``--merge``: None (off), ``pieces`` (join pieces) or ``hits`` (also clean
    each piece of up to two hits no helix fits and attach hits on no piece)."""
    if mode is None:
        return None
    if mode not in MODES:
        raise ValueError(f"--merge must be one of {MODES}, not {mode!r}")
    extra = {"clean": 2, "free_hits": True} if mode == "hits" else {}
    return MergeConfig(n_sigma=n_sigma, **extra)


def positions(hits: np.ndarray) -> np.ndarray:
    """[n, 3] x, y, z (mm) from the hit features (r/1000, phi/pi, z/1000, ...)."""
    r, phi, z = hits[:, 0] * SCALES["r"], hits[:, 1] * SCALES["phi"], hits[:, 2] * SCALES["z"]
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], 1).astype(np.float64)


def helix_fit(p: np.ndarray) -> dict:
    """Circle through the beam line in xy and line in (s, z) of the points ``p`` [k, 3] (k >= 2):
    centre, radius, pT (GeV), z0, cot(theta) and each point's residuals ``dxy``, ``dz`` (mm)."""
    x, y, z = p.T
    (a, b), *_ = np.linalg.lstsq(np.stack([2 * x, 2 * y], 1), x * x + y * y, rcond=None)
    radius = float(np.hypot(a, b))
    s = _arc(np.hypot(x, y), radius)
    (z0, cot), *_ = np.linalg.lstsq(np.stack([np.ones_like(s), s], 1), z, rcond=None)
    return {
        "centre": (float(a), float(b)),
        "radius": radius,
        "pt": radius / MM_PER_GEV,
        "z0": float(z0),
        "cot": float(cot),
        "dxy": np.hypot(x - a, y - b) - radius,
        "dz": (z - z0 - cot * s) / np.sqrt(1.0 + cot * cot),
    }


def _arc(r: np.ndarray, radius) -> np.ndarray:
    """Arc length in xy from the beam line to radius r on a circle through it of radius ``radius``."""
    return 2 * radius * np.arcsin(np.minimum(1.0, r / (2 * np.maximum(radius, 1e-9))))


def tolerance(cfg: MergeConfig, pt) -> tuple:
    """The largest residual allowed in xy and in (s, z) for a helix of this pT (GeV)."""
    ms = cfg.scatter / np.maximum(pt, 1e-3)
    return (
        cfg.n_sigma * np.sqrt(cfg.sigma_xy**2 + ms**2),
        cfg.n_sigma * np.sqrt(cfg.sigma_z**2 + ms**2),
    )


def quality(cfg: MergeConfig, p: np.ndarray) -> float:
    """Largest residual / tolerance of one helix through ``p``: <= 1 passes."""
    return _worst(cfg, p)[0]


def merge(labels: np.ndarray, xyz: np.ndarray, cfg: MergeConfig | None = None) -> np.ndarray:
    """Labels with compatible pieces joined (same numbering scheme; -1 stays -1)."""
    cfg = cfg or MergeConfig()
    labels = labels.copy()
    if cfg.clean:
        _clean(labels, xyz, cfg)
    free = np.flatnonzero(labels < 0) if cfg.free_hits else np.zeros(0, np.int64)
    base = int(labels.max(initial=-1)) + 1
    labels[free] = base + np.arange(free.size)  # one-hit pieces
    for _ in range(cfg.rounds):
        if not _round(labels, xyz, cfg):
            break
    if free.size:
        single = np.bincount(labels[labels >= 0]) == 1
        labels[single[labels] & (labels >= base)] = -1
    return labels


def _worst(cfg: MergeConfig, p: np.ndarray) -> tuple[float, int]:
    """Largest residual / tolerance of the helix through ``p`` and the point that has it."""
    f = helix_fit(p)
    tol_xy, tol_z = tolerance(cfg, f["pt"])
    q = np.maximum(np.abs(f["dxy"]) / tol_xy, np.abs(f["dz"]) / tol_z)
    return float(q.max()), int(np.argmax(q))


def _clean(labels: np.ndarray, xyz: np.ndarray, cfg: MergeConfig) -> None:
    """Pieces of 4 hits or more that no helix fits lose their worst hit, up to ``clean`` times."""
    ids, counts = np.unique(labels[labels >= 0], return_counts=True)
    for t in ids[counts >= 4]:
        hits = np.flatnonzero(labels == t)
        for _ in range(cfg.clean):
            q, k = _worst(cfg, xyz[hits])
            if q <= 1.0 or hits.size <= 3:
                break
            labels[hits[k]] = -1
            hits = np.delete(hits, k)


def _round(labels: np.ndarray, xyz: np.ndarray, cfg: MergeConfig) -> bool:
    r = np.hypot(xyz[:, 0], xyz[:, 1])
    on = np.flatnonzero(labels >= 0)
    ids, counts = np.unique(labels[on], return_counts=True)
    ids = ids[(counts >= cfg.min_piece) | (cfg.free_hits & (counts == 1))]
    if ids.size < 2:
        return False
    order = on[np.lexsort((r[on], labels[on]))]
    members = {int(t): order[labels[order] == t] for t in ids}  # inner to outer
    fits = [helix_fit(xyz[members[int(t)]]) for t in ids]
    first = np.array([members[int(t)][0] for t in ids])
    last = np.array([members[int(t)][-1] for t in ids])
    cands = _screen(cfg, xyz, r, fits, first, last)
    scored = []
    for ia, ib in cands:
        q = quality(cfg, xyz[np.r_[members[int(ids[ia])], members[int(ids[ib])]]])
        if q <= 1.0:  # best fit first; the gap term lets the nearer of two equal fits win
            scored.append((q + float(np.linalg.norm(xyz[last[ia]] - xyz[first[ib]])) / cfg.max_gap, ia, ib))
    used_end, used_start, merged = set(), set(), False
    root = {int(t): int(t) for t in ids}
    for *_, ia, ib in sorted(scored):
        if ia in used_end or ib in used_start:
            continue
        used_end.add(ia)
        used_start.add(ib)
        a, b = _find(root, int(ids[ia])), _find(root, int(ids[ib]))
        root[b] = a
        merged = True
    for t in ids:
        top = _find(root, int(t))
        if top != t:
            labels[labels == t] = top
    return merged


def _find(root: dict, t: int) -> int:
    while root[t] != t:
        t = root[t]
    return t


def _near(cfg: MergeConfig, points: np.ndarray, fits: list) -> np.ndarray:
    """[points, helices] bool: the point lies within three tolerances of the helix (xy and (s, z))."""
    centre = np.array([f["centre"] for f in fits])
    radius = np.array([f["radius"] for f in fits])
    z0, cot = np.array([f["z0"] for f in fits]), np.array([f["cot"] for f in fits])
    tol_xy, tol_z = tolerance(cfg, radius / MM_PER_GEV)
    x, y, z = (points[:, k, None] for k in range(3))
    dxy = np.abs(np.hypot(x - centre[:, 0], y - centre[:, 1]) - radius)
    dz = np.abs(z - z0 - cot * _arc(np.hypot(x, y), radius)) / np.sqrt(1 + cot * cot)
    return (dxy <= 3 * tol_xy) & (dz <= 3 * tol_z)


def _screen(cfg: MergeConfig, xyz, r, fits: list, first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """[k, 2] piece pairs (A, B) where B starts outside A's end, within the gap, near A's helix (a
    one-hit A has no helix of its own: near B's helix, back at A's hit). Rows of A in blocks of
    ``SCREEN_BLOCK``, so memory grows as pieces x block, not pieces^2 (time still as pieces^2)."""
    single = first == last
    size = np.array([f["dxy"].size for f in fits])
    out = []
    for lo in range(0, len(fits), SCREEN_BLOCK):
        a = np.arange(lo, min(lo + SCREEN_BLOCK, len(fits)))
        near = np.where(
            single[a, None], _near(cfg, xyz[last[a]], fits), _near(cfg, xyz[first], fits[lo : a[-1] + 1]).T
        )
        gap = np.linalg.norm(xyz[last[a]][:, None] - xyz[first][None], axis=2)
        # a one-hit piece joins only a piece with a helix of its own (three hits or more)
        lone = (single[a, None] & (size[None] < 3)) | (single[None] & (size[a, None] < 3))
        ok = (r[first][None] > r[last[a]][:, None]) & (gap <= cfg.max_gap) & near & ~lone
        ok[np.arange(a.size), a] = False
        out.append(np.argwhere(ok) + np.array([lo, 0]))
    return np.concatenate(out) if out else np.zeros((0, 2), np.int64)
