"""The module map: candidate edges from the module pairs that true particles connect (numpy, vectorised).

Learning (``learn``): in every training event, the hits of each particle are ordered by distance from
its production vertex; each pair of consecutive hits (a, b) adds the module pair (module of a, module
of b) to the map, and widens that pair's ranges of four doublet features: z0 (the z where the line
through a and b meets r = 0), phi slope (dphi / dr), deta and dphi. Applying (``apply``): every hit of
module A is connected to every hit of module B for each pair (A, B) in the map, and a candidate is kept
when its features lie in the pair's ranges widened by ``margin`` of their width (as acorn's module map
does with its doublet cuts). Edges point from the inner hit (a) to the outer one (b).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from .features import module_key

FEATURES = ("z0", "phi_slope", "deta", "dphi")
CHUNK = 4_000_000  # candidate edges evaluated at once (memory)


def _wrap(dphi: np.ndarray) -> np.ndarray:
    return (dphi + np.pi) % (2 * np.pi) - np.pi


def doublet_features(x: np.ndarray, y: np.ndarray, z: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[E, 4] features of the edges a -> b (see ``FEATURES``)."""
    r, phi = np.hypot(x, y), np.arctan2(y, x)
    eta = np.arcsinh(z / np.maximum(r, 1e-9))
    dr = r[b] - r[a]
    dz = z[b] - z[a]
    dphi = _wrap(phi[b] - phi[a])
    safe = np.where(np.abs(dr) < 1e-6, 1e-6, dr)
    z0 = np.clip(z[a] - r[a] * dz / safe, -1e5, 1e5)
    slope = np.clip(dphi / safe, -1e3, 1e3)
    return np.stack([z0, slope, eta[b] - eta[a], dphi], axis=1)


def true_pairs(hits: np.ndarray, particle: np.ndarray, vertex: np.ndarray) -> np.ndarray:
    """[P, 2] consecutive hits of every particle (``particle``: dense index per hit, 0 = noise;
    ``vertex``: [n_particles + 1, 3] production vertices indexed the same way)."""
    real = np.flatnonzero(particle > 0)
    p = particle[real]
    pos = np.stack([hits["x"][real], hits["y"][real], hits["z"][real]], 1)
    dist = np.linalg.norm(pos - vertex[p], axis=1)
    order = real[np.lexsort((dist, p))]
    same = particle[order[1:]] == particle[order[:-1]]
    return np.stack([order[:-1][same], order[1:][same]], axis=1)


@dataclasses.dataclass
class ModuleMap:
    pairs: np.ndarray  # [P] int64, sorted: module key of a << 32 | module key of b
    lo: np.ndarray  # [P, 4] feature minima
    hi: np.ndarray  # [P, 4] feature maxima
    events: int = 0

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez(tmp, pairs=self.pairs, lo=self.lo, hi=self.hi, events=self.events)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ModuleMap:
        with np.load(path) as f:
            return cls(f["pairs"], f["lo"], f["hi"], int(f["events"]))

    def __len__(self) -> int:
        return self.pairs.size

    def apply(self, hits: np.ndarray, margin: float = 0.05) -> np.ndarray:
        """[E, 2] int32 candidate edges (hit rows) of one event."""
        return apply(self, hits, margin)


def learn(events) -> ModuleMap:
    """The map of an iterable of (hits, particle, vertex) per event (see ``true_pairs``)."""
    keys, feats, n = [], [], 0
    for hits, particle, vertex in events:
        pairs = true_pairs(hits, particle, vertex)
        mk = module_key(hits)
        keys.append((mk[pairs[:, 0]] << 32) | mk[pairs[:, 1]])
        feats.append(doublet_features(hits["x"], hits["y"], hits["z"], pairs[:, 0], pairs[:, 1]))
        n += 1
    if not keys or sum(k.size for k in keys) == 0:
        raise ValueError("the module map needs training events with particles of at least two hits")
    key, feat = np.concatenate(keys), np.concatenate(feats)
    order = np.argsort(key, kind="stable")
    key, feat = key[order], feat[order]
    start = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    return ModuleMap(
        key[start], np.minimum.reduceat(feat, start, axis=0), np.maximum.reduceat(feat, start, axis=0), n
    )


def apply(mmap: ModuleMap, hits: np.ndarray, margin: float = 0.05) -> np.ndarray:
    mk = module_key(hits)
    order = np.argsort(mk, kind="stable")
    sorted_keys = mk[order]
    mods, start, count = np.unique(sorted_keys, return_index=True, return_counts=True)
    if mods.size == 0 or len(mmap) == 0:
        return np.zeros((0, 2), np.int32)
    ka, kb = mmap.pairs >> 32, mmap.pairs & 0xFFFFFFFF
    ia = np.clip(np.searchsorted(mods, ka), 0, mods.size - 1)
    ib = np.clip(np.searchsorted(mods, kb), 0, mods.size - 1)
    present = np.flatnonzero((mods[ia] == ka) & (mods[ib] == kb))
    ia, ib = ia[present], ib[present]
    width = mmap.hi[present] - mmap.lo[present]
    lo, hi = mmap.lo[present] - margin * width, mmap.hi[present] + margin * width
    n_edges = count[ia] * count[ib]
    x, y, z = hits["x"], hits["y"], hits["z"]
    out = []
    ends = np.cumsum(n_edges)
    first = 0
    while first < present.size:  # chunks of pairs holding at most CHUNK candidates (or one pair)
        base = ends[first - 1] if first else 0
        last = max(int(np.searchsorted(ends, base + CHUNK, side="right")), first + 1)
        sl = slice(first, last)
        k = n_edges[sl]
        pair = np.repeat(np.arange(first, last), k)
        local = np.arange(int(k.sum())) - np.repeat(np.cumsum(k) - k, k)
        nb = count[ib][pair]
        a = order[start[ia][pair] + local // nb]
        b = order[start[ib][pair] + local % nb]
        f = doublet_features(x, y, z, a, b)
        keep = ((f >= lo[pair]) & (f <= hi[pair])).all(1) & (a != b)
        out.append(np.stack([a[keep], b[keep]], 1))
        first = last
    return np.concatenate(out).astype(np.int32)


def edge_metrics(edges: np.ndarray, particle: np.ndarray, pairs: np.ndarray) -> dict[str, float]:
    """Efficiency (true consecutive pairs found, in either direction) and purity (edges joining two hits
    of one particle) of candidate edges."""
    n = max(int(particle.size), 1)
    codes = np.r_[
        edges[:, 0].astype(np.int64) * n + edges[:, 1], edges[:, 1].astype(np.int64) * n + edges[:, 0]
    ]
    hit = np.isin(pairs[:, 0].astype(np.int64) * n + pairs[:, 1], codes)
    same = (particle[edges[:, 0]] == particle[edges[:, 1]]) & (particle[edges[:, 0]] > 0)
    return {
        "efficiency": float(hit.mean()) if hit.size else 1.0,
        "purity": float(same.mean()) if same.size else 0.0,
        "edges": len(edges),
        "true_pairs": len(pairs),
    }
