"""Per-hit inputs of the GNN pipeline from a TrackML event's arrays: scaled cylindrical coordinates, cell
(cluster-shape) features, and the truth the losses and the evaluation need."""

from __future__ import annotations

import numpy as np

# The TrackML detector's cell sizes (mm) per volume: pixels 50 x 50 um; short strips 80 um x 1.2 mm;
# long strips 120 um x 10.8 mm (the challenge's detectors.csv), and the sensor thickness.
PITCH = {
    **dict.fromkeys((7, 8, 9), (0.05, 0.05)),
    **dict.fromkeys((12, 13, 14), (0.08, 1.2)),
    **dict.fromkeys((16, 17, 18), (0.12, 10.8)),
}
THICKNESS = {**dict.fromkeys((7, 8, 9), 0.15), **dict.fromkeys((12, 13, 14, 16, 17, 18), 0.25)}
# acorn's TrackML scaling: r / 1000, phi / pi, z / 1000
SCALES = {"r": 1000.0, "phi": np.pi, "z": 1000.0}
COORDINATES = ("r", "phi", "z")
CELL_FEATURES = ("cell_count", "cell_val", "len0", "len1")


def cell_features(hit_ids: np.ndarray, volume: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """[n_hits, 4]: log(cells), summed charge, cluster length along ch0 and ch1 (mm) of each hit."""
    n = hit_ids.size
    out = np.zeros((n, 4), np.float32)
    if cells.size == 0:
        return out
    order = np.argsort(hit_ids, kind="stable")
    row = order[np.clip(np.searchsorted(hit_ids, cells["hit_id"], sorter=order), 0, n - 1)]
    count = np.bincount(row, minlength=n)
    value = np.bincount(row, weights=cells["value"], minlength=n)
    ext = []
    for ch in ("ch0", "ch1"):
        lo = np.full(n, np.iinfo(np.int64).max)
        hi = np.full(n, np.iinfo(np.int64).min)
        np.minimum.at(lo, row, cells[ch])
        np.maximum.at(hi, row, cells[ch])
        ext.append(np.where(count > 0, hi - lo + 1, 0))
    pitch = np.array([PITCH.get(int(v), (0.0, 0.0)) for v in range(20)])[np.clip(volume, 0, 19)]
    out[:, 0] = np.log1p(count)
    out[:, 1] = value
    out[:, 2] = ext[0] * pitch[:, 0]
    out[:, 3] = ext[1] * pitch[:, 1]
    return out


def hit_features(hits: np.ndarray, cells: np.ndarray | None) -> np.ndarray:
    """[n_hits, 3 (+4)] float32: r/1000, phi/pi, z/1000, then the cell features when ``cells`` is given."""
    r = np.hypot(hits["x"], hits["y"])
    phi = np.arctan2(hits["y"], hits["x"])
    coords = np.stack([r / SCALES["r"], phi / SCALES["phi"], hits["z"] / SCALES["z"]], axis=1)
    if cells is None:
        return coords.astype(np.float32)
    return np.concatenate([coords, cell_features(hits["hit_id"], hits["volume_id"], cells)], 1).astype(
        np.float32
    )


def particle_truth(truth: np.ndarray, particles: np.ndarray) -> dict[str, np.ndarray]:
    """Per hit: a dense particle index (0 = noise, 1..P in the particles file's order), the particle's pT
    and eta (0 for noise), and the hit's weight."""
    pid = truth["particle_id"]
    ids = particles["particle_id"]
    order = np.argsort(ids, kind="stable")
    k = np.clip(np.searchsorted(ids, pid, sorter=order), 0, max(ids.size - 1, 0))
    found = (pid != 0) & (ids.size > 0)
    if ids.size:
        found &= ids[order[k]] == pid
    index = np.where(found, order[k] + 1 if ids.size else 0, 0).astype(np.int32)
    pt_p = np.hypot(particles["px"], particles["py"])
    eta_p = np.arcsinh(particles["pz"] / np.maximum(pt_p, 1e-9))
    pt = np.where(found, np.r_[0.0, pt_p][index], 0.0)
    eta = np.where(found, np.r_[0.0, eta_p][index], 0.0)
    return {
        "particle": index,
        "pt": pt.astype(np.float32),
        "eta": eta.astype(np.float32),
        "weight": truth["weight"].astype(np.float32),
    }


def module_key(hits: np.ndarray) -> np.ndarray:
    """One int64 per hit naming its module: volume << 24 | layer << 16 | module."""
    return (
        (hits["volume_id"].astype(np.int64) << 24)
        | (hits["layer_id"].astype(np.int64) << 16)
        | hits["module_id"].astype(np.int64)
    )
