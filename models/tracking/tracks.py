"""Track building from scored edges and track-level matching, on the host (numpy / scipy).

Builders (one event; ``labels[i]`` is hit i's track, -1 for a hit on no track):

* ``connected_components``: the connected components of the edges scoring above the cut (Exa.TrkX);
* ``walkthrough``: from every hit with no incoming edge above the cut (inner to outer), follow the
  highest-scoring outgoing edge above the cut to a hit not yet used, layer by layer, until none is left;
  then again from the hits still unused (acorn's walk-through, greedy variant). With ``bridge`` (a
  score below the cut), a walk with no edge above the cut left may cross one weaker edge (above
  ``bridge``) to a free hit that goes on with an edge above the cut: a true edge the classifier scored
  low no longer splits the track in two.

With ``merge`` (``build``; ``merge.py``), the builder's pieces are then joined where one helix fits
them. Tracks with fewer than ``min_hits`` hits are dropped (after merging).

Matching (``match``): a track *matches* its majority particle when more than half of the track's hits
are that particle's and more than half of the particle's hits are on the track (two-way 50 %). Over
the *reconstructable* particles (``min_hits`` or more hits): track efficiency = matched particles /
particles. Over the tracks: fake rate = tracks whose majority particle holds at most half of the
track's hits / tracks; duplicate rate = tracks whose majority particle holds more than half of their
hits but that particle has another such track of more of its hits (the first is not a duplicate) /
tracks. The pT / eta of a track are its majority particle's (tracks of noise hits count only in "all").

TrackML score (the challenge's definition): a track's majority particle is the one with most hits on
it; when it holds more than half of the track's hits and the track more than half of its hits, the
weights of the track's hits of that particle add to the score; score = that sum / the sum of all weights.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components as _cc

from .merge import MergeConfig
from .merge import merge as merge_pieces

BUILDERS = ("cc", "walk")


def _finish(labels: np.ndarray, min_hits: int) -> np.ndarray:
    """Relabel tracks 0..T-1, dropping those shorter than ``min_hits`` (-1)."""
    ok = labels >= 0
    _, inv, counts = np.unique(labels[ok], return_inverse=True, return_counts=True)
    keep = counts[inv] >= min_hits
    out = np.full(labels.shape, -1, np.int64)
    kept = np.cumsum(counts >= min_hits) - 1
    out[np.flatnonzero(ok)[keep]] = kept[inv[keep]]
    return out


def connected_components(
    n_hits: int, edges: np.ndarray, scores: np.ndarray, cut: float, min_hits: int = 3
) -> np.ndarray:
    sel = scores > cut
    e = edges[sel]
    graph = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n_hits, n_hits))
    _, labels = _cc(graph, directed=False)
    return _finish(labels.astype(np.int64), min_hits)


def walkthrough(
    n_hits: int,
    edges: np.ndarray,
    scores: np.ndarray,
    cut: float,
    min_hits: int = 3,
    bridge: float | None = None,
) -> np.ndarray:
    low = cut if bridge is None else min(bridge, cut)
    sel = scores > low
    e, s = edges[sel], scores[sel]
    order = np.lexsort((-s, e[:, 0]))  # by sender, best score first
    e, s = e[order], s[order]
    strong = s > cut
    start = np.searchsorted(e[:, 0], np.arange(n_hits + 1))
    has_in = np.zeros(n_hits, bool)
    has_in[e[strong, 1]] = True
    labels = np.full(n_hits, -1, np.int64)
    track = 0
    seeds = np.r_[np.flatnonzero(~has_in), np.flatnonzero(has_in)]
    for seed in seeds.tolist():
        if labels[seed] >= 0 or not strong[start[seed] : start[seed + 1]].any():
            continue
        v = seed
        labels[v] = track
        while True:
            nxt, ok = e[start[v] : start[v + 1], 1], strong[start[v] : start[v + 1]]
            free = ok & (labels[nxt] < 0)
            if free.any():
                v = int(nxt[np.argmax(free)])
            else:
                v = -1 if bridge is None else _bridge(nxt[~ok & (labels[nxt] < 0)], e, strong, start, labels)
                if v < 0:
                    break
            labels[v] = track
        track += 1
    return _finish(labels, min_hits)


def _bridge(weak: np.ndarray, e, strong, start, labels) -> int:
    """The first (best-scored) of ``weak``, v's free hits over an edge below the cut, that goes on with
    an edge above the cut to a free hit; -1 if none does."""
    for u in weak.tolist():
        nxt = e[start[u] : start[u + 1], 1]
        if (strong[start[u] : start[u + 1]] & (labels[nxt] < 0)).any():
            return u
    return -1


def build(
    builder: str,
    n_hits,
    edges,
    scores,
    cut,
    min_hits=3,
    bridge: float | None = None,
    merge: MergeConfig | None = None,
    xyz: np.ndarray | None = None,
) -> np.ndarray:
    """One event's track labels; with ``merge`` (needs ``xyz``, hits' x, y, z in mm) the builder's
    pieces of any length are first joined where one helix fits them (``merge.merge``), then tracks
    shorter than ``min_hits`` are dropped."""
    if builder not in BUILDERS:
        raise ValueError(f"unknown track builder {builder!r}; choose from {BUILDERS}")
    if merge is not None and xyz is None:
        raise ValueError("merging track pieces needs the hits' positions (xyz)")
    keep = 1 if merge is not None else min_hits
    if builder == "cc":
        labels = connected_components(n_hits, edges, scores, cut, keep)
    else:
        labels = walkthrough(n_hits, edges, scores, cut, keep, bridge)
    if merge is None:
        return labels
    return _finish(merge_pieces(labels, xyz, merge), min_hits)


def match(labels: np.ndarray, particle: np.ndarray) -> dict[str, np.ndarray]:
    """Per track: majority particle, its hits on the track, the track's size, the particle's hits, and
    the flags matched (two-way > 50 %), fake (majority <= 50 % of the track) and duplicate."""
    on = labels >= 0
    t, p = labels[on], particle[on]
    n_tracks = int(labels.max(initial=-1)) + 1
    size = np.bincount(t, minlength=n_tracks)
    n_particle = np.bincount(particle, minlength=int(particle.max(initial=0)) + 1)
    pairs, counts = np.unique(np.stack([t, p], 1), axis=0, return_counts=True)
    # majority particle per track: most hits, ties to the lower particle index
    order = np.lexsort((pairs[:, 1], -counts, pairs[:, 0]))
    first = order[np.r_[True, pairs[order[1:], 0] != pairs[order[:-1], 0]]] if len(order) else order
    major = np.zeros(n_tracks, np.int64)
    shared = np.zeros(n_tracks, np.int64)
    major[pairs[first, 0]] = pairs[first, 1]
    shared[pairs[first, 0]] = counts[first]
    pure = (2 * shared > size) & (major > 0)
    matched = pure & (2 * shared > n_particle[major])
    duplicate = np.zeros(n_tracks, bool)
    if pure.any():
        idx = np.flatnonzero(pure)
        o = idx[np.lexsort((-shared[idx], major[idx]))]
        duplicate[o[1:][major[o[1:]] == major[o[:-1]]]] = True
    return {
        "major": major,
        "shared": shared,
        "size": size,
        "n_particle": n_particle,
        "matched": matched,
        "fake": ~pure,
        "duplicate": duplicate,
    }


def trackml_score(labels: np.ndarray, particle: np.ndarray, weight: np.ndarray) -> float:
    """The TrackML challenge's score of one event (hits with label -1 are on no track)."""
    m = match(labels, particle)
    good = m["matched"]
    on = labels >= 0
    hit_good = np.zeros(labels.shape, bool)
    hit_good[on] = good[labels[on]] & (particle[on] == m["major"][labels[on]])
    total = float(weight.sum())
    return float(weight[hit_good].sum() / total) if total > 0 else 0.0
