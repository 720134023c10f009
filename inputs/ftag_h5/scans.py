"""Whole-file scans through ``FtagH5Source``: ``check`` (structure, labels, NaN/inf in chunks of jets) and
``compute_class_dict`` (class weights in umami-preprocessing's layout)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import hdf5
from .config import FtagConfig
from .hdf5 import expand_paths, inspect_file
from .labels import FLAVOURS, ORIGIN_FIELDS, TRACK_ORIGINS
from .norm import identity_norm
from .source import FtagH5Source


def check(path: str, cfg: FtagConfig | None = None, *, chunk: int = hdf5.CHECK_CHUNK) -> dict:
    """Scan whole files (a path, glob or comma list) in chunks of jets: structure, dtypes, labels and
    NaN/inf in the input variables of valid tracks and jets. Raises naming file, field and rows;
    returns ``{path: {"jets": n, "tracks": n_valid, "flavours": counts[4], "aux": bool}}``."""
    cfg = cfg or FtagConfig()
    report = {}
    for p in expand_paths(path):
        info = inspect_file(p, cfg)
        src = FtagH5Source(
            [info], [(0, 0, info.n_jets)], cfg, identity_norm(cfg), aux=info.origin_field is not None
        )
        counts = np.zeros(len(FLAVOURS), np.int64)
        n_valid = 0
        try:
            for a in range(0, info.n_jets, chunk):
                batch = src.read(np.arange(a, min(a + chunk, info.n_jets)))
                counts += np.bincount(batch["flavour"], minlength=len(FLAVOURS))
                n_valid += int(batch["valid"].sum())
        finally:
            src.close()
        report[p] = {
            "jets": info.n_jets,
            "tracks": n_valid,
            "flavours": counts.tolist(),
            "aux": info.origin_field is not None,
        }
    return report


def compute_class_dict(
    paths: str | Sequence[str], cfg: FtagConfig | None = None, max_jets: int = 200_000
) -> dict:
    """Class weights in umami-preprocessing's ``class_dict.yaml`` layout: per label, ``total/count``
    scaled so the most common class weighs 1, rounded to 2 decimals, one entry per class (b, c, light,
    tau for ``flavour_label``; the 8 origins for the track origin). An absent class gets the largest
    weight."""
    cfg = cfg or FtagConfig()
    files = [inspect_file(p, cfg) for p in expand_paths(paths)]
    aux = all(i.origin_field for i in files)
    src = FtagH5Source(
        files, [(k, 0, i.n_jets) for k, i in enumerate(files)], cfg, identity_norm(cfg), aux=aux
    )
    flav = np.zeros(len(FLAVOURS), np.int64)
    orig = np.zeros(len(TRACK_ORIGINS), np.int64)
    n = min(len(src), int(max_jets))
    try:
        for a in range(0, n, hdf5.CHECK_CHUNK):
            batch = src.read(np.arange(a, min(a + hdf5.CHECK_CHUNK, n)))
            flav += np.bincount(batch["flavour"], minlength=len(FLAVOURS))
            if aux:
                o = batch["track_origin"][batch["valid"]]
                orig += np.bincount(o[o >= 0], minlength=len(TRACK_ORIGINS))
    finally:
        src.close()
    out: dict = {"jets": {"flavour_label": _weights(flav)}}
    if aux:
        out["tracks"] = {ORIGIN_FIELDS[0]: _weights(orig)}
    return out


def _weights(counts: np.ndarray) -> list[float]:
    present = counts > 0
    w = np.zeros(counts.size)
    w[present] = counts.sum() / counts[present]
    w /= w[present].min()
    w[~present] = w[present].max()
    return np.round(w, 2).tolist()
