"""The files of ``smilejax infer``: a data file read as the export takes it (``file_reader``) and the
scores file written beside it (``scores_path``, ``ScoresFile``). ``smilejax.serve.stream`` streams one
through the other and re-exports these names."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

SUFFIX = ".scores.h5"


class Reader(Protocol):
    """Examples by index (a ``BatchSource``): ``read`` returns the model's inputs (and maybe labels)."""

    def __len__(self) -> int: ...

    def read(self, indices: np.ndarray) -> dict[str, np.ndarray]: ...


def scores_path(path: str | Path) -> Path:
    """``<stem>.scores.h5`` beside ``path`` (a file or a dataset folder)."""
    path = Path(path)
    stem = path.stem if path.suffix and not path.is_dir() else path.name
    return path.with_name(stem + SUFFIX)


def file_reader(path: str | Path, metadata: Mapping[str, Any], workdir: Path) -> Reader:
    """``path``'s examples as the export takes them: the variables as the file stores them for a raw
    export (``client.raw_batch``), else through the run's data format, configured as the run was and
    normalised with the numbers the export recorded (written into ``workdir``)."""
    from smilejax import registry

    data = dict(metadata.get("data") or {})
    if "format" not in data:
        raise ValueError("the export's metadata has no data section: re-export the run with smilejax export")
    spec = registry.dataset(data["format"])
    if metadata.get("raw"):
        return _RawReader(spec.config(**data), str(path))
    fields = {f.name for f in dataclasses.fields(spec.config) if f.init}
    overrides: dict[str, Any] = {"path": str(path), "eval_path": str(path), "shuffle": False}
    norm = (metadata.get("normalisation") or {}).get("groups")
    if norm and "norm_dict" in fields:  # the run's numbers, not ones computed from this file
        norm_file = workdir / "norm.json"
        norm_file.write_text(json.dumps(norm))
        overrides["norm_dict"] = str(norm_file)
    cfg = spec.config(**{k: v for k, v in {**data, **overrides}.items() if k in fields})
    return spec.source(cfg, "eval")


class _RawReader:
    """A file's raw examples (``client.raw_batch``) as a ``Reader`` of consecutive examples."""

    def __init__(self, cfg: Any, path: str):
        from smilejax.serve.client import raw_length

        self.cfg, self.path = cfg, path
        self._n = raw_length(cfg, path)

    def __len__(self) -> int:
        return self._n

    def read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        from smilejax.serve.client import raw_batch

        first, n = int(indices[0]), len(indices)
        if n and int(indices[-1]) != first + n - 1:
            raise ValueError("the raw reader reads consecutive examples only")
        return raw_batch(self.cfg, self.path, n, start=first)


class ScoresFile:
    """``<stem>.scores.h5``: datasets made on the first batch, filled by row (batches arrive in any order)."""

    def __init__(self, path: Path, rows: int, attrs: Mapping[str, str]):
        import h5py

        self.path, self.rows = path, rows
        self._tmp = path.with_name(path.name + ".partial")
        self._file = h5py.File(self._tmp, "w")
        self._file.attrs.update(dict(attrs))

    def write(self, first: int, outputs: dict[str, np.ndarray]) -> None:
        for name, array in outputs.items():
            if name not in self._file:
                chunk = (min(self.rows, 1024), *array.shape[1:])
                self._file.create_dataset(
                    name, shape=(self.rows, *array.shape[1:]), dtype=array.dtype, chunks=chunk
                )
            self._file[name][first : first + len(array)] = array

    def close(self, complete: bool) -> None:
        """Keeps the file only when every row was written; a failed run leaves no partial scores."""
        self._file.close()
        if complete:
            self._tmp.replace(self.path)
        else:
            self._tmp.unlink(missing_ok=True)
