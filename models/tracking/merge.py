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
  n_sigma * sqrt(sigma_z^2 + (scatter / pT)^2), pT from the joint circle's radius in the 2 T field but
  never below the pieces' own fitted pT (``pair_pt``), so a bad joint fit cannot widen its own tolerance.
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


def quality(cfg: MergeConfig, p: np.ndarray, pt_floor: float = 0.0) -> float:
    """Largest residual / tolerance of one helix through ``p``: <= 1 passes. The tolerance takes the
    helix's pT or ``pt_floor``, the larger (``pair_pt``)."""
    return _worst(cfg, p, pt_floor)[0]


def pair_pt(pt: np.ndarray, size: np.ndarray) -> float:
    """The pT floor of the tolerance of a joint fit of pieces of fitted ``pt`` and ``size`` hits: the
    smallest pT of the pieces of two hits or more.

    A joint fit of two particles' pieces bends to reach both and can come out at a lower pT than
    either, which would widen its own tolerance (the scattering term grows as 1 / pT); the floor keeps
    it at least as tight as the pieces' own fits. The smaller of the pieces' pT, not the larger: a
    short piece's pT is poorly measured (scattering, a lever arm of a few layers), and the larger of
    two estimates would tighten true joins by that piece's error. A one-hit piece has no pT of its own
    (the circle through the beam line and one point is just the smallest that reaches it); the screen
    pairs it only with a piece of three hits or more, so every pair has a piece that counts."""
    ok = size >= 2
    return float(pt[ok].min()) if ok.any() else 0.0


def groups(labels: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """The track labels >= 0 (ascending) and each one's hit indices (ascending): one stable sort,
    not one scan of the hits per track."""
    order = np.argsort(labels, kind="stable")
    order = order[labels[order] >= 0]
    ids, start = np.unique(labels[order], return_index=True)
    return ids, (np.split(order, start[1:]) if order.size else [])


def track_pt(labels: np.ndarray, xyz: np.ndarray, min_hits: int = 1) -> np.ndarray:
    """Per track label 0..T-1: the pT (GeV) of the helix ``merge`` fits through its hits (the
    reconstructed pT); NaN for tracks of fewer than ``min_hits`` hits (not fitted)."""
    out = np.full(int(labels.max(initial=-1)) + 1, np.nan)
    for t, hits in zip(*groups(labels), strict=True):
        if hits.size >= min_hits:
            out[t] = helix_fit(xyz[hits])["pt"]
    return out


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


def _worst(cfg: MergeConfig, p: np.ndarray, pt_floor: float = 0.0) -> tuple[float, int]:
    """Largest residual / tolerance of the helix through ``p`` and the point that has it."""
    f = helix_fit(p)
    tol_xy, tol_z = tolerance(cfg, max(f["pt"], pt_floor))
    q = np.maximum(np.abs(f["dxy"]) / tol_xy, np.abs(f["dz"]) / tol_z)
    return float(q.max()), int(np.argmax(q))


def _clean(labels: np.ndarray, xyz: np.ndarray, cfg: MergeConfig) -> None:
    """Pieces of 4 hits or more that no helix fits lose their worst hit, up to ``clean`` times."""
    for hits in groups(labels)[1]:
        if hits.size < 4:
            continue
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
    sorted_labels = labels[order]
    lo, hi = np.searchsorted(sorted_labels, ids, "left"), np.searchsorted(sorted_labels, ids, "right")
    members = [order[a:b] for a, b in zip(lo.tolist(), hi.tolist(), strict=True)]  # inner to outer
    fits = [helix_fit(xyz[m]) for m in members]
    first, last = order[lo], order[hi - 1]
    pt, size = np.array([f["pt"] for f in fits]), hi - lo
    cands = _screen(cfg, xyz, r, fits, first, last)
    scored = []
    for ia, ib in cands.tolist():
        pair = [ia, ib]
        q = quality(cfg, xyz[np.r_[members[ia], members[ib]]], pair_pt(pt[pair], size[pair]))
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
    lut = np.arange(int(labels.max()) + 1)  # label -> its merged track's label, one gather for all hits
    lut[ids] = [_find(root, t) for t in ids.tolist()]
    labels[on] = lut[labels[on]]
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
