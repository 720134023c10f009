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
VERSION = 4  # of what ``learn`` makes (in the names of cached maps and edges): 4 widens ranges by counts
SAMPLED = 5  # a module pair seen this often has ranges of its own; fewer: widened (``learn``)


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


def _ordered(hits: np.ndarray, particle: np.ndarray, vertex: np.ndarray) -> np.ndarray:
    """Rows of real hits, grouped by particle, each group by distance from the particle's vertex."""
    real = np.flatnonzero(particle > 0)
    p = particle[real]
    pos = np.stack([hits["x"][real], hits["y"][real], hits["z"][real]], 1)
    dist = np.linalg.norm(pos - vertex[p], axis=1)
    return real[np.lexsort((dist, p))]


def true_pairs(hits: np.ndarray, particle: np.ndarray, vertex: np.ndarray) -> np.ndarray:
    """[P, 2] consecutive hits of every particle (``particle``: dense index per hit, 0 = noise;
    ``vertex``: [n_particles + 1, 3] production vertices indexed the same way)."""
    order = _ordered(hits, particle, vertex)
    same = particle[order[1:]] == particle[order[:-1]]
    return np.stack([order[:-1][same], order[1:][same]], axis=1)


def true_triplets(hits: np.ndarray, particle: np.ndarray, vertex: np.ndarray) -> np.ndarray:
    """[T, 3] three consecutive hits of one particle."""
    order = _ordered(hits, particle, vertex)
    same = (particle[order[2:]] == particle[order[1:-1]]) & (particle[order[1:-1]] == particle[order[:-2]])
    return np.stack([order[:-2][same], order[1:-1][same], order[2:][same]], axis=1)


def triplet_features(x, y, z, a, b, c) -> np.ndarray:
    """[T, 2] how well the doublets a -> b and b -> c continue each other: the change of z0 and of the
    phi slope (both constant along an ideal helix from the beam line)."""
    f1 = doublet_features(x, y, z, a, b)
    f2 = doublet_features(x, y, z, b, c)
    return np.stack([f2[:, 0] - f1[:, 0], f2[:, 1] - f1[:, 1]], axis=1)


def _triplet_code(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """One int64 per module triplet from dense module indices (-1: a module the map does not know)."""
    code = (a << 42) | (b << 21) | c
    return np.where((a < 0) | (b < 0) | (c < 0), -1, code)


def _dense(modules: np.ndarray, keys: np.ndarray) -> np.ndarray:
    if modules.size == 0:
        return np.full(keys.shape, -1, np.int64)
    i = np.clip(np.searchsorted(modules, keys), 0, modules.size - 1)
    return np.where(modules[i] == keys, i, -1).astype(np.int64)


@dataclasses.dataclass
class ModuleMap:
    pairs: np.ndarray  # [P] int64, sorted: module key of a << 32 | module key of b
    lo: np.ndarray  # [P, 4] feature minima
    hi: np.ndarray  # [P, 4] feature maxima
    events: int = 0
    modules: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))  # sorted keys
    triplets: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))  # sorted codes
    t_lo: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 2)))  # triplet feature ranges
    t_hi: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 2)))

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.npz")
        arrays = dataclasses.asdict(self)
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ModuleMap:
        with np.load(path) as f:
            return cls(**{k: (int(f[k]) if k == "events" else f[k]) for k in f.files})

    def __len__(self) -> int:
        return self.pairs.size

    def apply(self, hits: np.ndarray, margin: float = 0.05, triplets: bool = False) -> np.ndarray:
        """[E, 2] int32 candidate edges (hit rows) of one event; with ``triplets``, only the edges that
        form, with another candidate edge through a shared hit, a module triplet seen in training."""
        edges = apply(self, hits, margin)
        return filter_triplets(self, hits, edges, margin) if triplets else edges


def learn(events) -> ModuleMap:
    """The map of an iterable of (hits, particle, vertex) per event (see ``true_pairs``)."""
    keys, feats, trip, n = [], [], [], 0
    for hits, particle, vertex in events:
        pairs = true_pairs(hits, particle, vertex)
        mk = module_key(hits)
        keys.append((mk[pairs[:, 0]] << 32) | mk[pairs[:, 1]])
        feats.append(doublet_features(hits["x"], hits["y"], hits["z"], pairs[:, 0], pairs[:, 1]))
        tt = true_triplets(hits, particle, vertex)
        trip.append((mk[tt], triplet_features(hits["x"], hits["y"], hits["z"], *tt.T)))
        n += 1
    if not keys or sum(k.size for k in keys) == 0:
        raise ValueError("the module map needs training events with particles of at least two hits")
    key, feat = np.concatenate(keys), np.concatenate(feats)
    order = np.argsort(key, kind="stable")
    key, feat = key[order], feat[order]
    start = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    counts = np.diff(np.r_[start, key.size])
    layers = ((key[start] >> 48) << 16) | ((key[start] & 0xFFFFFFFF) >> 16)  # (volume, layer) of a and b
    lo, hi = _widened(
        np.minimum.reduceat(feat, start, axis=0), np.maximum.reduceat(feat, start, axis=0), counts, layers
    )
    modules = np.unique(np.r_[key >> 32, key & 0xFFFFFFFF])
    if modules.size >= 1 << 21:
        raise ValueError(f"{modules.size} modules: more than the triplet codes hold (2^21)")
    t = np.concatenate([m for m, _ in trip]).reshape(-1, 3)
    t_feat = np.concatenate([f for _, f in trip]).reshape(-1, 2)
    codes = _triplet_code(*(_dense(modules, t[:, k]) for k in range(3)))
    order = np.argsort(codes, kind="stable")
    codes, t_feat = codes[order], t_feat[order]
    t_start = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]]) if codes.size else np.zeros(0, int)
    t_lo = np.minimum.reduceat(t_feat, t_start, axis=0) if codes.size else np.zeros((0, 2))
    t_hi = np.maximum.reduceat(t_feat, t_start, axis=0) if codes.size else np.zeros((0, 2))
    t_lo, t_hi = _widened(t_lo, t_hi, np.diff(np.r_[t_start, codes.size]), np.zeros(t_start.size, np.int64))
    known = codes[t_start] >= 0
    return ModuleMap(
        key[start],
        lo,
        hi,
        n,
        modules,
        codes[t_start][known],
        t_lo[known],
        t_hi[known],
    )


def _widened(lo: np.ndarray, hi: np.ndarray, counts: np.ndarray, groups: np.ndarray):
    """Ranges of module pairs (or triplets) widened by how often they were seen. Fewer than ``SAMPLED``
    times: to hold any range of the typical width ``w`` that holds what was seen (``[hi - w, lo + w]``;
    ``w``: the median width of the well-sampled ones of the same group (doublets: layer pair), else of
    all). More: by the expected
    gap ``(hi - lo) / (n - 1)`` on each side. Why: a pair seen once has a range of width 0, which no other
    event's hits match, and n samples of a range cover a new one only with probability (n-1)/(n+1). With
    few training events most pairs are sparse: a map from 40 pile-up-5 events knew 62 % of held-out
    events' module pairs and found 24 % of their true pairs with the raw ranges (50 % widened)."""
    width = hi - lo
    well = counts >= SAMPLED
    if not well.any():
        return lo, hi
    typical = np.broadcast_to(np.median(width[well], axis=0), width.shape).copy()
    inverse = np.unique(groups, return_inverse=True)[1]
    for c in np.unique(inverse[well]):
        members = inverse == c
        typical[members] = np.median(width[members & well], axis=0)
    sparse = ~well[:, None]
    wide_lo, wide_hi = np.minimum(lo, hi - typical), np.maximum(hi, lo + typical)
    # n samples of a range cover a new one with probability (n - 1) / (n + 1) (uniform): extend by the
    # expected gap, width / (n - 1), on each side
    gap = width / np.maximum(counts - 1, 1)[:, None]
    return np.where(sparse, wide_lo, lo - gap), np.where(sparse, wide_hi, hi + gap)


def filter_triplets(mmap: ModuleMap, hits: np.ndarray, edges: np.ndarray, margin: float = 0.05) -> np.ndarray:
    """The edges a -> b that make a known module triplet with an edge b -> c or z -> a, within that
    triplet's learned ranges of ``triplet_features`` (widened by ``margin`` of their width). Vectorised:
    edges are joined on their shared hit in chunks of about ``CHUNK`` edge pairs."""
    if len(edges) == 0 or mmap.triplets.size == 0:
        return edges[:0]
    dense = _dense(mmap.modules, module_key(hits))
    n = len(hits)
    into = np.argsort(edges[:, 1], kind="stable")  # edges by their outer hit
    out_of = np.argsort(edges[:, 0], kind="stable")  # edges by their inner hit
    n_in = np.bincount(edges[:, 1], minlength=n)
    n_out = np.bincount(edges[:, 0], minlength=n)
    first_in, first_out = np.cumsum(n_in) - n_in, np.cumsum(n_out) - n_out
    per_hit = n_in * n_out
    keep = np.zeros(len(edges), bool)
    ends = np.cumsum(per_hit)
    lo = 0
    while lo < n:
        base = ends[lo - 1] if lo else 0
        hi = max(int(np.searchsorted(ends, base + CHUNK, side="right")), lo + 1)
        h = np.arange(lo, min(hi, n))
        k = per_hit[h]
        mid = np.repeat(h, k)
        local = np.arange(int(k.sum())) - np.repeat(np.cumsum(k) - k, k)
        e1 = into[first_in[mid] + local // n_out[mid]]  # z -> mid
        e2 = out_of[first_out[mid] + local % n_out[mid]]  # mid -> c
        code = _triplet_code(dense[edges[e1, 0]], dense[mid], dense[edges[e2, 1]])
        i = np.clip(np.searchsorted(mmap.triplets, code), 0, mmap.triplets.size - 1)
        ok = (mmap.triplets[i] == code) & (code >= 0)
        if mmap.t_lo.shape[0] == mmap.triplets.size:  # maps saved before the ranges existed: modules only
            f = triplet_features(hits["x"], hits["y"], hits["z"], edges[e1, 0], mid, edges[e2, 1])
            width = mmap.t_hi[i] - mmap.t_lo[i]
            ok &= ((f >= mmap.t_lo[i] - margin * width) & (f <= mmap.t_hi[i] + margin * width)).all(1)
        keep[e1[ok]] = True
        keep[e2[ok]] = True
        lo = hi
    return edges[keep]


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
