"""PyTorch checkpoint files (``torch.save``: a ``.pt`` state dict, a Lightning ``.ckpt``) read as numpy,
without torch (smilejax never depends on it).

``torch.save`` writes a zip archive: ``<name>/data.pkl`` (a pickle of the saved object whose tensors
refer to storages by key) and ``<name>/data/<key>`` (each storage's raw little-endian bytes). The
unpickler here rebuilds tensors as numpy arrays and containers as dicts, lists and tuples; every other
class the pickle names (a Lightning checkpoint's hyperparameters may hold whole modules) becomes an
inert ``Opaque`` placeholder: nothing from the file is imported or executed.
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

# torch storage class -> numpy dtype (bytes on disk are little-endian)
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class Opaque:
    """Stands for an object of a class this reader does not rebuild; keeps what the pickle gave it."""

    qualname = "?"

    def __init__(self, *args: Any, **kwargs: Any):
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<opaque {self.qualname}>"


def _opaque(module: str, name: str) -> type:
    return type(name, (Opaque,), {"qualname": f"{module}.{name}"})


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple, stride: tuple, *_: Any) -> np.ndarray:
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
    )
    return np.array(view, order="C")  # a C-ordered copy, detached from the read-only storage


def _rebuild_parameter(data: np.ndarray, *_: Any) -> np.ndarray:
    return data


_REBUILT = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, path: Path):
        import io

        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.path = archive, prefix, path
        self.storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _REBUILT:
            return _REBUILT[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return name  # only used as the storage's type tag in persistent ids
        return _opaque(module, name)

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise ValueError(f"{self.path}: unsupported PyTorch storage reference {pid!r}")
        _, kind, key, _location, numel = pid
        dtype = _STORAGE_DTYPES.get(kind) if isinstance(kind, str) else None
        if dtype is None:
            raise ValueError(f"{self.path}: tensors of storage type {kind!r} are not supported")
        if key not in self.storages:
            raw = self.archive.read(f"{self.prefix}/data/{key}")
            self.storages[key] = np.frombuffer(raw, dtype, count=numel)
        return self.storages[key]


def load(path: str | Path) -> Any:
    """The object ``torch.save`` wrote to ``path``, tensors as numpy arrays (float32 stays float32)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is not a PyTorch zip checkpoint (torch.save since PyTorch 1.6); re-save it with "
            "torch.save(obj, path) in a current PyTorch"
        )
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError(f"{path}: expected one <name>/data.pkl in the archive, found {pickles}")
        prefix = pickles[0].split("/")[0]
        byteorder = f"{prefix}/byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
            raise ValueError(f"{path}: big-endian PyTorch checkpoints are not supported")
        try:
            return _Unpickler(archive.read(pickles[0]), archive, prefix, path).load()
        except (pickle.UnpicklingError, EOFError, KeyError) as err:
            raise ValueError(f"{path}: unreadable PyTorch checkpoint ({err})") from err
