"""Stored simulations: (theta, x) pairs in a file, for simulators that are not written in JAX.

A file is ``.npz`` (numpy) or ``.h5``/``.hdf5`` (datasets at the top level) with two arrays of the same
length N: ``theta`` [N, theta_dim] and ``x`` [N, x_dim] (more axes of x are flattened), numeric; theta
finite, x without inf (NaN in x is a set's padding or a failed simulation, which the loss leaves out).
``data.path`` is the training file, ``data.eval_path`` the held-out one (default: the training
file). Everything is checked when the source opens, with an error naming the file and what is wrong.

``model_config`` completes an LFI model's config from the file: unless given, the standardisation
(``model.theta_loc`` ...) is the file's moments (the model then checks their sizes against its task).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .spec import Batch, DataConfig, DatasetSpec

KEYS = ("theta", "x")
SUFFIXES = (".npz", ".h5", ".hdf5")


@dataclasses.dataclass
class StoredSimulationsConfig(DataConfig):
    format: str = "stored_simulations"


class MalformedFile(ValueError):
    """A stored-simulation file that cannot be trained on; the message names the file and the problem."""


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in KEYS if k not in f.files]
            if missing:
                raise MalformedFile(f"{path}: no array {missing} (has {sorted(f.files)}); need theta and x")
            return {k: np.asarray(f[k]) for k in KEYS}
    import h5py

    with h5py.File(path, "r") as f:
        missing = [k for k in KEYS if k not in f]
        if missing:
            raise MalformedFile(f"{path}: no dataset {missing} (has {sorted(f)}); need theta and x")
        return {k: np.asarray(f[k][...]) for k in KEYS}


def load(path: str) -> dict[str, np.ndarray]:
    """theta [N, d] and x [N, D] as float32, checked; raises MalformedFile or FileNotFoundError. Read once
    per process while the file stays the same (the config check, the model config and the source)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"stored simulations {path!r}: no such file")
    stat = p.stat()
    return _load(str(p.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _load(path: str, _mtime: int, _size: int) -> dict[str, np.ndarray]:
    p = Path(path)
    if p.suffix not in SUFFIXES:
        raise MalformedFile(f"{path}: unknown file type {p.suffix!r}; use one of {SUFFIXES}")
    try:
        arrays = _read_arrays(p)
    except MalformedFile:
        raise
    except Exception as err:  # not a zip / HDF5 file, truncated, ...
        raise MalformedFile(f"{path}: cannot be read as {p.suffix}: {err}") from err
    theta, x = arrays["theta"], arrays["x"]
    for name, a in arrays.items():
        if a.dtype.kind not in "fiu":
            raise MalformedFile(f"{path}: {name} has dtype {a.dtype}, expected numbers")
        if a.ndim < 1 or len(a) == 0:
            raise MalformedFile(f"{path}: {name} is empty (shape {a.shape})")
    if theta.ndim != 2:
        raise MalformedFile(f"{path}: theta must be [N, theta_dim], got shape {theta.shape}")
    if len(theta) != len(x):
        raise MalformedFile(f"{path}: theta has {len(theta)} rows and x {len(x)}; they must pair up")
    x = x.reshape(len(x), -1)
    # NaN in x is allowed: a set's padding, or a simulation that failed (the model's loss drops it)
    for name, bad in (
        ("theta", ~np.isfinite(theta.astype(np.float64)).all(axis=1)),
        ("x", np.isinf(x.astype(np.float64)).any(axis=1)),
    ):
        if bad.any():
            what = "NaN or inf" if name == "theta" else "inf"
            first = int(np.argmax(bad))
            raise MalformedFile(f"{path}: {name} has {int(bad.sum())} rows with {what} (first: {first})")
    return {"theta": theta.astype(np.float32), "x": x.astype(np.float32)}


class StoredSource:
    def __init__(self, cfg: StoredSimulationsConfig, split: str):
        path = cfg.eval_path if split == "eval" and cfg.eval_path else cfg.path
        if not path:
            raise ValueError("the stored_simulations format needs data.path (an .npz or .h5 of theta and x)")
        self.arrays = load(str(path))

    def __len__(self) -> int:
        return len(self.arrays["theta"])

    def read(self, indices: np.ndarray) -> Batch:
        return {k: v[indices] for k, v in self.arrays.items()}


def model_config(cfg: StoredSimulationsConfig, model_cfg: Any) -> Any:
    """The LFI model config standardised by the file's moments where it gives none (a config without
    ``theta_loc`` fields is returned as is); the model checks their sizes against its task."""
    if not hasattr(model_cfg, "theta_loc") or not cfg.path:
        return model_cfg
    arrays = load(str(cfg.path))
    changes = {}
    for name in KEYS:
        a = arrays[name]
        if getattr(model_cfg, f"{name}_loc") is None and getattr(model_cfg, f"{name}_scale") is None:
            with np.errstate(all="ignore"), warnings.catch_warnings():  # an all-NaN column: 0 and 1
                warnings.simplefilter("ignore", RuntimeWarning)
                mean, std = np.nanmean(a, 0), np.nanstd(a, 0)
            changes[f"{name}_loc"] = [float(v) if np.isfinite(v) else 0.0 for v in mean]
            changes[f"{name}_scale"] = [float(v) if v > 1e-6 else 1.0 for v in std]
    return dataclasses.replace(model_cfg, **changes) if changes else model_cfg


SPEC = DatasetSpec(
    name="stored_simulations", config=StoredSimulationsConfig, source=StoredSource, model_config=model_config
)
