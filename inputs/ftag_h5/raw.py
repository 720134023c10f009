"""The raw inputs of a flavour-tagging run: the jet and track variables as the HDF5 files store them.

An exported model takes, per jet (names from ``data.jets_name`` / ``data.tracks_name``)::

    jets    [B, n_jet_vars] float32        data.jet_vars, in the file's units (pt_btagJes in MeV)
    tracks  [B, T, n_track_vars] float32   data.track_vars per track slot; any value (NaN included)
                                           on slots that are not valid
    valid   [B, T] bool                    the file's ``valid`` field

and makes inside what the pipeline makes from them (``source.FtagH5Source``): each variable
``(x - mean) / std`` with the run's norm dict, the jet variables appended to every track, and 0 on the
slots that are not valid. T is any track count (the file's slots: the pipeline would keep the first
``data.max_tracks``). A NaN on a valid track gives that jet NaN outputs (the pipeline refuses such a
file: ``data.check_finite``). ``read`` gives these arrays for rows of one file, labels or not.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..spec import ELEMENTS, Batch, RawInputs, RawSignature, RawTensor
from .config import FtagConfig
from .hdf5 import _dataset, _require, expand_paths, open_h5
from .norm import load_norm_dict, norm_arrays


def run_norm(cfg: FtagConfig) -> tuple[dict, str]:
    """The norm dict a run trained with and where it comes from: ``data.norm_dict`` (no data needed), else
    the cache the training source finds or computes (the training files must be readable)."""
    if cfg.norm_dict:
        return load_norm_dict(cfg.norm_dict), str(cfg.norm_dict)
    from .source import source

    src = source(cfg, "train")
    try:
        return src.norm, src.norm_source
    finally:
        src.close()


def signature(cfg: FtagConfig) -> RawSignature:
    norm, where = run_norm(cfg)
    t_mean, t_std = norm_arrays(norm, "tracks", cfg.track_vars, where)
    j_mean, j_std = norm_arrays(norm, "jets", cfg.jet_vars, where)
    jets_name, tracks_name = cfg.jets_name, cfg.tracks_name

    def prepare(**raw: Any) -> dict[str, Any]:
        import jax.numpy as jnp

        valid = raw["valid"].astype(bool)
        tracks = (raw[tracks_name].astype(jnp.float32) - t_mean) / t_std
        jets = (raw[jets_name].astype(jnp.float32) - j_mean) / j_std
        # the jet variables on every track; an add broadcasts where the track count is symbolic
        per_track = jnp.zeros_like(tracks[..., :1]) + jets[:, None, :]
        x = jnp.concatenate([tracks, per_track], axis=-1)
        return {"tracks": jnp.where(valid[..., None], x, 0.0), "valid": valid}

    inputs = (
        RawTensor(
            jets_name,
            "float32",
            (len(cfg.jet_vars),),
            tuple(cfg.jet_vars),
            "jet variables as stored (units of the file)",
        ),
        RawTensor(
            tracks_name,
            "float32",
            (ELEMENTS, len(cfg.track_vars)),
            tuple(cfg.track_vars),
            "track variables as stored, per track slot; any value on slots that are not valid",
        ),
        RawTensor("valid", "bool", (ELEMENTS,), (), "the file's tracks/valid: which slots hold a track"),
    )
    about = {
        "mask": f"{tracks_name} slots where valid is false are set to 0 after normalisation",
        "normalisation": "(x - mean) / std per variable (std 0 read as 1), then the jet variables are "
        "appended to every track, as the training pipeline does",
        "norm_source": where,
    }
    return RawSignature(inputs=inputs, prepare=prepare, about=about)


def read(cfg: FtagConfig, path: str, start: int, n: int) -> Batch:
    """Jets ``start .. start + n`` of one file as stored: the raw arrays (float32; NaN kept)."""
    (file,) = _one_file(path)
    with open_h5(file) as f:
        jets_ds = _dataset(f, file, cfg.jets_name, 1)
        tracks_ds = _dataset(f, file, cfg.tracks_name, 2)
        _require(file, jets_ds, cfg.jet_vars, "fiub", "a number")
        _require(file, tracks_ds, cfg.track_vars, "fiub", "a number")
        _require(file, tracks_ds, ["valid"], "b", "bool")
        total = len(jets_ds)
        if not 0 <= start <= total or n < 0:
            raise ValueError(f"{file}: rows {start}..{start + n} are outside its {total} jets")
        stop = min(start + n, total)
        jets = jets_ds.fields(list(cfg.jet_vars))[start:stop]
        tracks = tracks_ds.fields([*cfg.track_vars, "valid"])[start:stop]
    return {
        cfg.jets_name: _stack(jets, cfg.jet_vars),
        cfg.tracks_name: _stack(tracks, cfg.track_vars),
        "valid": np.ascontiguousarray(tracks["valid"], bool),
    }


def length(cfg: FtagConfig, path: str) -> int:
    (file,) = _one_file(path)
    with open_h5(file) as f:
        return len(_dataset(f, file, cfg.jets_name, 1))


def _one_file(path: str) -> list[str]:
    files = expand_paths(path)
    if len(files) != 1:
        raise ValueError(f"{path!r} names {len(files)} files; read them one at a time")
    return files


def _stack(rows: np.ndarray, names: list[str]) -> np.ndarray:
    """Structured rows -> float32 [..., len(names)]."""
    out = np.empty((*rows.shape, len(names)), np.float32)
    for i, name in enumerate(names):
        out[..., i] = rows[name]
    return out


RAW = RawInputs(signature=signature, read=read, length=length)
