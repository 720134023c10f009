"""A columnar HDF5 cache of TrackML events, built once from the CSVs and rebuilt when they change.

One file per event, ``<cache>/event000001000.h5``, holding the four tables as structured datasets (the
same arrays ``csv.read`` returns); its ``stamp`` attribute records the size and modification time of
every CSV it came from, and a file whose stamp differs from the CSVs' is rebuilt on the next read.
``<cache>/index.json`` lists the cached events with their hit counts, so a reader knows every event's
size without opening it. ``<cache>`` is ``cache_dir`` when given, else ``.smilejax-trackml`` next to the
CSVs (or ``$SMILEJAX_CACHE/trackml/<hash>`` when their folder is read-only).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import h5py
import numpy as np

from ..cache import cache_root, locked
from . import csv as tcsv

VERSION = 1


def cache_dir(folder: str | os.PathLike, override: str | os.PathLike | None = None) -> Path:
    if override:
        return Path(override).expanduser()
    folder = Path(folder).resolve()
    if os.access(folder, os.W_OK):
        return folder / ".smilejax-trackml"
    return cache_root() / "trackml" / hashlib.sha256(str(folder).encode()).hexdigest()[:16]


def stamp(folder: str | os.PathLike, event: str, kinds) -> list:
    """[kind, file name, size, mtime_ns] of each CSV of the event (what invalidates its cache)."""
    out = []
    for kind in kinds:
        path = tcsv.event_file(folder, event, kind)
        if path is None:
            raise FileNotFoundError(f"{Path(folder) / event}-{kind}.csv(.gz): no such file")
        st = path.stat()
        out.append([kind, path.name, st.st_size, st.st_mtime_ns])
    return out


def _key(st: list) -> str:
    return json.dumps({"version": VERSION, "files": st})


def load(folder: str | os.PathLike, event: str, kinds=tcsv.KINDS, cache: Path | None = None) -> dict:
    """The event's tables from the cache, (re)built from the CSVs when missing or stale."""
    cache = cache or cache_dir(folder)
    path = cache / f"{event}.h5"
    key = _key(stamp(folder, event, kinds))
    tables = _read(path, key, kinds)
    if tables is not None:
        return tables
    with locked(cache / f".{event}.lock"):
        tables = _read(path, key, kinds)  # another process may have built it meanwhile
        if tables is None:
            tables = tcsv.read_event(folder, event, kinds)
            _write(path, key, tables)
            _index_update(cache, event, len(tables["hits"]), key)
    return tables


def _read(path: Path, key: str, kinds) -> dict | None:
    if not path.exists():
        return None
    try:
        with h5py.File(path, "r", locking=False) as f:
            if f.attrs.get("stamp") != key or any(k not in f for k in kinds):
                return None
            return {k: f[k][:] for k in kinds}
    except OSError:
        return None  # a truncated cache file: rebuild it


def _write(path: Path, key: str, tables: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with h5py.File(tmp, "w", locking=False) as f:
            for kind, rows in tables.items():
                f.create_dataset(kind, data=rows, chunks=None)
            f.attrs["stamp"] = key
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _index_update(cache: Path, event: str, hits: int, key: str) -> None:
    with locked(cache / ".index.lock"):
        index = read_index(cache)
        index[event] = {"hits": hits, "stamp": key}
        tmp = cache / f".index.{uuid.uuid4().hex[:8]}.tmp"
        tmp.write_text(json.dumps(index, indent=0))
        os.replace(tmp, cache / "index.json")


def read_index(cache: Path) -> dict:
    try:
        return json.loads((cache / "index.json").read_text())
    except (OSError, ValueError):
        return {}


def hit_counts(folder: str | os.PathLike, events: list[str], kinds=tcsv.KINDS, cache: Path | None = None):
    """Hits per event from the index (events missing there or stale are cached first)."""
    cache = cache or cache_dir(folder)
    index = read_index(cache)
    out = np.empty(len(events), np.int64)
    for i, event in enumerate(events):
        entry = index.get(event)
        if entry is None or entry["stamp"] != _key(stamp(folder, event, kinds)):
            out[i] = len(load(folder, event, kinds, cache)["hits"])
        else:
            out[i] = entry["hits"]
    return out
