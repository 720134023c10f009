"""Opening the files, checking their datasets and variables, and reading rows; per-jet track counts.

Files are opened read-only without HDF5 file locking (Lustre/GPFS). Rows are read with one HDF5 read per
dataset (a slice when the rows are dense, else one hyperslab selection of the scattered rows; never a
Python loop over jets or runs: each read call of a compound dataset costs ~0.1-0.3 ms of setup), of only
the needed fields; uncompressed contiguous datasets are read through a memory map instead. LZ4/Zstd files
(atlas-ftag-tools' writer default) need ``hdf5plugin``, imported when installed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import glob
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np
from tqdm import tqdm

from smilejax import host

from ..cache import derived_dir, save_array
from .labels import FLAVOUR_NAMES, FLAVOURS, ORIGIN_FIELDS, TRUTH_LABEL_FIELDS, TRUTH_LABEL_IDS, VERTEX_FIELDS

if TYPE_CHECKING:
    from .config import FtagConfig

try:  # registers the LZ4/Zstd/Blosc filters atlas-ftag-tools' H5Writer compresses with (default "lz4")
    import hdf5plugin
except ImportError:  # gzip/lzf files read without it
    hdf5plugin = None

_H5_CACHE_BYTES = 16 << 20  # chunk cache per dataset: helps random reads of compressed, chunked files
_SPAN_FACTOR = 4  # sorted rows spanning at most this times their count are read as one slice
CHECK_CHUNK = 50_000  # jets per read when scanning a whole file


def expand_paths(path: str | os.PathLike | Sequence[str]) -> list[str]:
    """A path, a glob, a directory (its ``*.h5``) or a comma-separated list of these -> existing files."""
    parts: Iterable[str]
    if isinstance(path, str | os.PathLike):
        parts = [p.strip() for p in str(path).split(",") if p.strip()]
    else:
        parts = [str(p) for p in path]
    files: list[str] = []
    for part in parts:
        part = os.path.expanduser(os.path.expandvars(part))
        if glob.has_magic(part):
            found = sorted(glob.glob(part))
            if not found:
                raise FileNotFoundError(f"no file matches {part!r}")
        elif os.path.isdir(part):
            found = sorted(glob.glob(os.path.join(part, "*.h5")))
            if not found:
                raise FileNotFoundError(f"directory {part!r} holds no *.h5 file")
        elif os.path.exists(part):
            found = [part]
        else:
            raise FileNotFoundError(f"{part}: no such file")
        files += [f for f in found if f not in files]
    if not files:
        raise FileNotFoundError(f"no input file in {path!r}")
    return files


def open_h5(path: str) -> h5py.File:
    """Open read-only without file locking; a missing or unreadable file raises naming it."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        try:
            return h5py.File(path, "r", locking=False, rdcc_nbytes=_H5_CACHE_BYTES)
        except OSError as err:
            # The file is already open in this process with locking on (h5py was imported before
            # HDF5_USE_FILE_LOCKING was set): HDF5 refuses a second handle with other flags.
            if "locking" not in str(err):
                raise
            return h5py.File(path, "r", rdcc_nbytes=_H5_CACHE_BYTES)
    except OSError as err:
        raise ValueError(f"{path}: not a readable HDF5 file (truncated or corrupt?): {err}") from err


def _dataset(f: h5py.File, path: str, name: str, ndim: int) -> h5py.Dataset:
    if name not in f:
        raise ValueError(f"{path}: no dataset {name!r} (the file has {sorted(f.keys())})")
    ds = f[name]
    if not isinstance(ds, h5py.Dataset) or ds.dtype.names is None:
        raise ValueError(f"{path}: {name!r} is not a structured (compound) dataset")
    if ds.ndim != ndim:
        raise ValueError(f"{path}: dataset {name!r} has shape {ds.shape}, expected {ndim} dimensions")
    return ds


def _require(path: str, ds: h5py.Dataset, names: Iterable[str], kinds: str, what: str) -> None:
    fields = ds.dtype.names or ()
    for name in names:
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=4, cutoff=0.5)
            hint = f"; close names: {close}" if close else ""
            raise ValueError(
                f"{path}: dataset {ds.name.lstrip('/')!r} has no variable {name!r}{hint} "
                f"({len(fields)} variables: {', '.join(fields[:30])}{' ...' if len(fields) > 30 else ''})"
            )
        dt = ds.dtype[name]
        if dt.kind not in kinds or dt.shape:
            raise ValueError(f"{path}: variable {ds.name.lstrip('/')}/{name} has dtype {dt}, expected {what}")


def _attr_names(ds: h5py.Dataset, attr: str) -> list[str] | None:
    if attr not in ds.attrs:
        return None
    raw = np.atleast_1d(ds.attrs[attr])
    return [x.decode() if isinstance(x, bytes) else str(x) for x in raw]


@dataclasses.dataclass(frozen=True)
class FileInfo:
    """What one file holds, checked once up front."""

    path: str
    n_jets: int
    n_slots: int
    flavour_field: str
    flavour_lut: np.ndarray  # raw label -> flavour index, -1 = unknown
    origin_field: str | None
    vertex_field: str | None
    chunk_rows: int = 0  # jets per chunk of a compressed 'tracks' dataset, 0 when not compressed


def _flavour_lut(path: str, jets: h5py.Dataset, choice: str) -> tuple[str, np.ndarray]:
    fields = jets.dtype.names or ()
    if choice == "auto":
        if "flavour_label" in fields and _attr_names(jets, "flavour_label"):
            field = "flavour_label"
        else:
            field = next((f for f in (*TRUTH_LABEL_FIELDS, "flavour_label") if f in fields), None)
            if field is None:
                raise ValueError(
                    f"{path}: dataset 'jets' has no flavour label (looked for 'flavour_label', "
                    f"{', '.join(TRUTH_LABEL_FIELDS)}); set data.flavour_label to the field to use"
                )
    else:
        field = choice
    _require(path, jets, [field], "iu", "an integer label")
    names = _attr_names(jets, field)
    if names:  # class names in the attribute, as umami-preprocessing writes them
        unknown = [n for n in names if n not in FLAVOUR_NAMES]
        if unknown:
            raise ValueError(
                f"{path}: jets/{field} has classes {names}; {unknown} map to none of b, c, light, tau"
            )
        return field, np.array([FLAVOUR_NAMES[n] for n in names], np.int32)
    if "TruthLabelID" in field:
        lut = np.full(max(TRUTH_LABEL_IDS) + 1, -1, np.int32)
        for raw, k in TRUTH_LABEL_IDS.items():
            lut[raw] = k
        return field, lut
    return field, np.arange(len(FLAVOURS), dtype=np.int32)


def inspect_file(path: str, cfg: FtagConfig) -> FileInfo:
    """Check one file's structure against ``cfg`` (datasets, variables, dtypes); returns what it holds."""
    with open_h5(path) as f:
        jets = _dataset(f, path, cfg.jets_name, 1)
        tracks = _dataset(f, path, cfg.tracks_name, 2)
        if tracks.shape[0] != jets.shape[0]:
            raise ValueError(
                f"{path}: {cfg.tracks_name!r} has {tracks.shape[0]} rows but {cfg.jets_name!r} has "
                f"{jets.shape[0]}"
            )
        _require(path, jets, cfg.jet_vars, "biuf", "a number")
        _require(path, tracks, cfg.track_vars, "biuf", "a number")
        _require(path, tracks, ["valid"], "b", "bool")
        field, lut = _flavour_lut(path, jets, cfg.flavour_label)
        fields = tracks.dtype.names or ()
        origin = next((n for n in ORIGIN_FIELDS if n in fields), None)
        vertex = next((n for n in VERTEX_FIELDS if n in fields), None)
        if origin and vertex:
            _require(path, tracks, [origin, vertex], "iu", "an integer label")
        else:
            origin = vertex = None
        compressed = tracks.chunks is not None and tracks.id.get_create_plist().get_nfilters() > 0
        chunk_rows = int(tracks.chunks[0]) if compressed else 0
        return FileInfo(
            path, int(jets.shape[0]), int(tracks.shape[1]), field, lut, origin, vertex, chunk_rows
        )


_MAPPED: dict[tuple, np.ndarray | None] = {}  # (pid, file and its identity, dataset) -> view or None
_MAPPED_MAX = 256  # maps kept per process (each holds a file descriptor); the oldest goes first


def _mapped(ds: h5py.Dataset) -> np.ndarray | None:
    """A read-only numpy memory map of an uncompressed, contiguous dataset, else None.

    HDF5 calls run under h5py's global lock, so read threads cannot overlap them (about 70 % of a batch
    read was spent there); rows gathered from a memory map need no HDF5 call and no lock. The map is
    checked against h5py's own reading of the first and last rows before it is used.
    """
    offset = ds.id.get_offset() if ds.chunks is None and ds.size else None
    if offset is None:
        return None
    st = os.stat(ds.file.filename)  # a file rewritten under the same name gets a new map
    key = (os.getpid(), ds.file.filename, st.st_ino, st.st_mtime_ns, st.st_size, ds.name, offset)
    try:
        return _MAPPED[key]
    except KeyError:
        pass
    view = None
    try:
        view = np.memmap(ds.file.filename, dtype=ds.dtype, mode="r", offset=offset, shape=ds.shape)
        ends = sorted({0, ds.shape[0] - 1})  # h5py reads increasing indices only
        if view[ends].tobytes() != ds[ends].tobytes():  # a layout numpy reads otherwise than HDF5
            view = None
    except (ValueError, OSError, TypeError):  # truncated file, external storage: HDF5 reports it
        view = None
    while len(_MAPPED) >= _MAPPED_MAX:  # many files, or files rewritten in place: the oldest maps go
        with contextlib.suppress(KeyError, StopIteration, RuntimeError):  # another read thread's pop
            _MAPPED.pop(next(iter(_MAPPED)))
    _MAPPED[key] = view
    return view


def read_rows(ds: h5py.Dataset, names: Sequence[str], rows: np.ndarray, path: str) -> np.ndarray:
    """``ds[rows]`` (sorted ``rows``) with at least the fields ``names``, in one HDF5 read (or, for an
    uncompressed contiguous dataset, one gather from its memory map).

    Each H5Dread of a compound dataset costs a few hundred microseconds of type-conversion setup, so
    the rows are never read in a Python loop: sorted rows that span little more than their count are
    read as one slice and picked out in numpy, scattered rows as one hyperslab selection (h5py's
    increasing-index read), which HDF5 serves chunk by chunk. Only the needed fields are converted
    when they are a small part of a row; otherwise the whole rows are read and viewed.
    """
    mapped = _mapped(ds)
    if mapped is not None:
        return mapped[rows]
    names = list(dict.fromkeys(names))
    need = sum(ds.dtype[n].itemsize for n in names)
    reader = ds.fields(names) if 2 * need < ds.dtype.itemsize else ds
    first, last = int(rows[0]), int(rows[-1]) + 1
    try:
        if last - first <= _SPAN_FACTOR * rows.size:
            buf = reader[first:last]
            if last - first != rows.size:
                buf = buf[rows - first]
        else:
            unique = rows.size < 2 or bool((np.diff(rows) > 0).all())
            if unique:
                buf = reader[rows]
            else:
                u, inverse = np.unique(rows, return_inverse=True)
                buf = reader[u][inverse]
    except (OSError, RuntimeError, KeyError) as err:
        hint = "truncated or corrupt file?"
        if "filter" in str(err) and hdf5plugin is None:
            hint = f"compressed with a filter plugin: {host.pip_install('hdf5plugin')}"
        raise ValueError(
            f"{path}: reading {ds.name.lstrip('/')!r} rows {first}..{last - 1} failed ({hint}): {err}"
        ) from err
    return buf


def counts_cache_path(info: FileInfo, cfg: FtagConfig) -> Path:
    stat = os.stat(info.path)
    key = json.dumps(
        [os.path.realpath(info.path), stat.st_size, int(stat.st_mtime), cfg.tracks_name, cfg.max_tracks]
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return derived_dir(info.path, "ftag_norm") / f"{Path(info.path).stem}.track_counts.smilejax-{digest}.npy"


def file_track_counts(info: FileInfo, cfg: FtagConfig) -> np.ndarray:
    """Valid tracks of every jet of a file within its first ``max_tracks`` slots (uint8 or uint16),
    from one scan of the ``valid`` field, cached as ``.npy`` (memory-mapped when read back)."""
    path = counts_cache_path(info, cfg)
    if path.exists():
        counts = np.load(path, mmap_mode="r")
        if counts.shape == (info.n_jets,):
            return counts
    t = min(cfg.max_tracks, info.n_slots)
    counts = np.empty(info.n_jets, np.uint8 if t < 256 else np.uint16)
    with open_h5(info.path) as f:
        valid = f[cfg.tracks_name].fields("valid")
        for a in tqdm(
            range(0, info.n_jets, CHECK_CHUNK),
            desc=f"track counts {Path(info.path).name}",
            unit="chunk",
            disable=info.n_jets < 20 * CHECK_CHUNK,
        ):
            b = min(a + CHECK_CHUNK, info.n_jets)
            try:
                counts[a:b] = valid[a:b][:, :t].sum(1)
            except (OSError, RuntimeError) as err:
                msg = f"{info.path}: reading tracks/valid rows {a}..{b - 1} failed: {err}"
                raise ValueError(msg) from err
    save_array(path, counts, f"the track counts of {info.path}")
    return counts
