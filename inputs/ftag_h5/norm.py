"""Normalisation dicts ``{jets|tracks: {var: {mean, std}}}`` (umami-preprocessing/salt layout, YAML or
JSON): computed over the training files, written, loaded, and the cache of a computed one."""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import yaml

from ..cache import derived_dir
from . import hdf5
from .config import FtagConfig
from .hdf5 import FileInfo, expand_paths, inspect_file, open_h5, read_rows

log = logging.getLogger(__name__)


def norm_arrays(norm: Mapping, group: str, names: Sequence[str], where: str) -> tuple[np.ndarray, ...]:
    if group not in norm:
        raise ValueError(f"norm dict {where} has no group {group!r} (it has {sorted(norm)})")
    mean, std = [], []
    for name in names:
        if name not in norm[group]:
            close = difflib.get_close_matches(name, list(norm[group]), n=3)
            raise ValueError(
                f"norm dict {where} has no {group}/{name}" + (f"; close names: {close}" if close else "")
            )
        mean.append(float(norm[group][name]["mean"]))
        std.append(float(norm[group][name]["std"]))
    std_arr = np.asarray(std, np.float32)
    if (~np.isfinite(std_arr) | ~np.isfinite(np.asarray(mean))).any():
        raise ValueError(f"norm dict {where}: non-finite mean/std for {group}")
    zero = std_arr <= 0
    if zero.any():
        log.warning(
            "norm dict %s: %s/%s have std 0; they are only shifted",
            where,
            group,
            [n for n, z in zip(names, zero, strict=True) if z],
        )
    return np.asarray(mean, np.float32), np.where(zero, 1, std_arr).astype(np.float32)


def identity_norm(cfg: FtagConfig) -> dict:
    return {
        "jets": {v: {"mean": 0.0, "std": 1.0} for v in cfg.jet_vars},
        "tracks": {v: {"mean": 0.0, "std": 1.0} for v in cfg.track_vars},
    }


def compute_norm_dict(
    paths: str | Sequence[str],
    cfg: FtagConfig | None = None,
    max_jets: int = 200_000,
    *,
    segments: Sequence[tuple[str, int, int]] | None = None,
) -> dict:
    """Mean and std of the jet variables and of the track variables on valid tracks, over the first
    ``max_jets`` jets of the files in order (or of ``segments``: ``(path, first row, end row)``)."""
    cfg = cfg or FtagConfig()
    if segments is None:
        segments = []
        for p in expand_paths(paths):
            info = inspect_file(p, cfg)
            segments.append((p, 0, info.n_jets))
    n_t, n_j = len(cfg.track_vars), len(cfg.jet_vars)
    acc = {"tracks": np.zeros((3, n_t)), "jets": np.zeros((3, n_j))}  # count, sum, sum of squares
    left = int(max_jets)
    for p, first, end in segments:
        if left <= 0:
            break
        with open_h5(p) as f:
            jets_ds, tracks_ds = f[cfg.jets_name], f[cfg.tracks_name]
            stop = min(end, first + left)  # fixed before the loop: ``left`` shrinks inside it
            for a in range(first, stop, hdf5.CHECK_CHUNK):
                b = min(a + hdf5.CHECK_CHUNK, stop)
                rows = np.arange(a, b)
                jets = read_rows(jets_ds, cfg.jet_vars, rows, p)
                trk = read_rows(tracks_ds, [*cfg.track_vars, "valid"], rows, p)[:, : cfg.max_tracks]
                valid = trk["valid"]
                for group, arr, names in (
                    ("tracks", trk[valid], cfg.track_vars),
                    ("jets", jets, cfg.jet_vars),
                ):
                    for i, name in enumerate(names):
                        x = arr[name].astype(np.float64)
                        bad = ~np.isfinite(x)
                        if bad.any():
                            raise ValueError(
                                f"{p}: NaN or inf in input variable {group}/{name} in rows {a}..{b - 1}"
                            )
                        acc[group][:, i] += (x.size, x.sum(), np.square(x).sum())
                left -= b - a
    norm: dict = {"jets": {}, "tracks": {}}
    for group, names in (("jets", cfg.jet_vars), ("tracks", cfg.track_vars)):
        count, s, s2 = acc[group]
        for i, name in enumerate(names):
            if count[i] == 0:
                raise ValueError(f"no valid {group} to compute the normalisation of {name!r} from")
            mean = s[i] / count[i]
            std = float(np.sqrt(max(s2[i] / count[i] - mean**2, 0.0)))
            norm[group][name] = {"mean": float(mean), "std": std}
    return norm


def write_norm_dict(norm: Mapping, path: str | os.PathLike) -> Path:
    """Write a norm dict as YAML (atomically), in the umami-preprocessing/salt layout."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plain = {
        g: {v: {"mean": float(d["mean"]), "std": float(d["std"])} for v, d in vs.items()}
        for g, vs in norm.items()
    }
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(yaml.safe_dump(plain, sort_keys=False))
    os.replace(tmp, path)
    return path


def load_norm_dict(path: str | os.PathLike) -> dict:
    """Read a YAML or JSON norm dict ``{group: {var: {mean, std}}}``."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such norm dict")
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"{path}: not a norm dict {{group: {{var: {{mean, std}}}}}}")
    for group, vs in data.items():
        for var, d in vs.items():
            if not isinstance(d, dict) or "mean" not in d or "std" not in d:
                raise ValueError(f"{path}: {group}/{var} needs 'mean' and 'std'")
    return data


def norm_cache_path(cfg: FtagConfig, files: Sequence[FileInfo], segments) -> Path:
    key = json.dumps(
        {
            "files": [
                (os.path.realpath(i.path), os.path.getsize(i.path), int(os.path.getmtime(i.path)))
                for i in files
            ],
            "segments": segments,
            "jets": cfg.jet_vars,
            "tracks": cfg.track_vars,
            "max_tracks": cfg.max_tracks,
            "max_jets": cfg.norm_max_jets,
        }
    )
    name = f"norm_dict.smilejax-{hashlib.sha256(key.encode()).hexdigest()[:12]}.yaml"
    return derived_dir(files[0].path, "ftag_norm") / name
