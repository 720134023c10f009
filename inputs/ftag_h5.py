"""ATLAS flavour-tagging HDF5 input for GN2: the files training-dataset-dumper (and umami-preprocessing)
write and salt reads.

File layout: a structured 1-D dataset ``jets`` (``pt_btagJes``, ``eta_btagJes``, the label
``flavour_label`` and/or ``HadronConeExclTruthLabelID``, ...) and a structured 2-D dataset ``tracks`` of
shape ``[n_jets, 40]`` with a boolean field ``valid`` and per-track fields; optionally the track truth
labels ``ftagTruthOriginLabel`` (8 classes: Pileup, Fake, Primary, FromB, FromBC, FromC, FromTau,
OtherSecondary) and ``ftagTruthVertexIndex`` (older dumps: ``truthOriginLabel``, ``truthVertexIndex``).

Batch (numpy, what the GN2 model consumes):

=================  =====================================  ==========================================
key                shape, dtype                           content
=================  =====================================  ==========================================
``tracks``         [b, max_tracks, n_track + n_jet] f32   normalised ``track_vars`` then ``jet_vars``
                                                          (jet values repeated on every track);
                                                          0 on padded slots
``valid``          [b, max_tracks] bool                   the file's mask, holes kept
``flavour``        [b] int32                              0 = b, 1 = c, 2 = light, 3 = tau
``track_origin``   [b, max_tracks] int32 (if present)     origin class 0..7, -1 on padded slots; a
                                                          valid track's -1 or -2 (labels salt ignores:
                                                          the loss skips every negative) is kept
``track_vertex``   [b, max_tracks] int32 (if present)     truth vertex index, -1 on padded slots
=================  =====================================  ==========================================

Flavour (``flavour_label="auto"``): ``flavour_label`` when the jets dataset carries the class names in its
``flavour_label`` attribute (umami-preprocessing output; names bjets/cjets/ujets/taujets), else
``HadronConeExclTruthLabelID`` (5/4/0/15, and the extended 54/55/44), else a bare ``flavour_label``
taken as 0..3 = b, c, light, tau. Any other value names the field to use, read the same way.

Splits: ``split="eval"`` reads ``cfg.eval_path``; when that is None, the last ``cfg.eval_fraction`` of
the jets of every training file is held out: ``"train"`` reads the first part of each file and
``"eval"`` the tail. (With ``cfg.path`` None too, both come from ``ftag_synthetic.default_dataset``.)

Normalisation: ``(x - mean) / std`` from a norm dict ``{jets|tracks: {var: {mean, std}}}`` (the
umami-preprocessing/salt format, YAML or JSON). With ``cfg.norm_dict`` None it is computed on the valid
tracks of the first ``cfg.norm_max_jets`` training jets and cached as YAML next to the first file (or in
``$SMILEJAX_CACHE/ftag_norm`` when that folder is read-only).

Reading: sorted indices are split per file; each file's rows are read with one HDF5 read per dataset
(a slice when the rows are dense, else one hyperslab selection of the scattered rows; never a Python
loop over jets or runs: each read call of a compound dataset costs ~0.1-0.3 ms of setup), of only the
needed fields. Files are opened lazily, once per process and thread (never shared across fork), without
HDF5 file locking (Lustre/GPFS). LZ4/Zstd files (atlas-ftag-tools' writer default) need ``hdf5plugin``,
imported when installed.

Order (``SPEC.pipeline = from_config``): the generic ``pipeline.batched`` (global per-jet shuffle) for
uncompressed files; for compressed chunked files, where every scattered jet decompresses its whole chunk,
blocks of ``chunk`` consecutive jets are shuffled instead (``batched``, ``cfg.shuffle_block``), which
keeps the same global-batch and resumption guarantees.

Bucketing (``cfg.bucket_tracks``, e.g. ``[16, 24]``): each global batch is padded only to the smallest
bucket width that holds its jets' valid tracks (``max_tracks`` is always the last bucket, so no jet loses
a track). The valid tracks are then moved to the front of each jet, in their file order (the ``valid``
mask becomes a prefix; GN2 is invariant under permutations of the tracks). The width comes from a
per-jet track-count index (``track_counts``: one scan of the ``valid`` field per file, cached as
``.npy`` next to the norm dict), so every process picks the same width for a global batch. With
``cfg.bucket_window`` > 1 the jets of that many consecutive global batches are sorted by track count and
cut into batches of similar multiplicity, whose order is shuffled (see ``pipeline.Buckets``): this is
what cuts the padding, since a random batch of thousands of jets nearly always holds one long jet,
but it changes the batches (multiplicity-homogeneous, so flavour-correlated); the default window 1
keeps exactly the batches of an unbucketed run and only trims their padding. On compressed chunked
files a window > 1 also scatters each batch over the window's chunks (more decompression).

Class weights (``cfg.class_dict``, salt's ``use_class_dict``): ``SPEC.model_config`` puts the class dict's
``jets/flavour_label`` and ``tracks/ftagTruthOriginLabel`` weights into the model's ``class_weights`` (the
jet-flavour and track-origin losses); a model config that gives ``class_weights`` too is an error, as in
salt. The weights follow the order of the file's classes, which must then be b, c, light, tau.

Checks: ``check(paths)`` scans whole files up front; ``python -m smilejax.inputs.ftag_h5 FILES`` prints
its report.
"""

from __future__ import annotations

import os

os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")  # before h5py opens anything (Lustre)

import contextlib
import dataclasses
import difflib
import functools
import glob
import hashlib
import json
import logging
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import grain
import h5py
import numpy as np
import yaml
from tqdm import tqdm

from smilejax import host

from . import pipeline
from .cache import derived_dir, save_array
from .spec import Batch, DataConfig, DatasetSpec

try:  # registers the LZ4/Zstd/Blosc filters atlas-ftag-tools' H5Writer compresses with (default "lz4")
    import hdf5plugin
except ImportError:  # gzip/lzf files read without it
    hdf5plugin = None

log = logging.getLogger(__name__)

# GN2's track inputs, as in salt's configs/GN2.yaml
GN2_TRACK_VARS = (
    "d0",
    "z0SinTheta",
    "dphi",
    "deta",
    "qOverP",
    "IP3D_signed_d0_significance",
    "IP3D_signed_z0_significance",
    "phiUncertainty",
    "thetaUncertainty",
    "qOverPUncertainty",
    "numberOfPixelHits",
    "numberOfSCTHits",
    "numberOfInnermostPixelLayerHits",
    "numberOfNextToInnermostPixelLayerHits",
    "numberOfInnermostPixelLayerSharedHits",
    "numberOfInnermostPixelLayerSplitHits",
    "numberOfPixelSharedHits",
    "numberOfPixelSplitHits",
    "numberOfSCTSharedHits",
)
FLAVOURS = ("b", "c", "light", "tau")  # the index of ``flavour``
# umami-preprocessing class names (jets.attrs["flavour_label"]) -> flavour index
FLAVOUR_NAMES = {
    "bjets": 0,
    "cjets": 1,
    "ujets": 2,
    "lightjets": 2,
    "taujets": 3,
    "b": 0,
    "c": 1,
    "u": 2,
    "light": 2,
    "tau": 3,
}
# HadronConeExcl(Extended)TruthLabelID -> flavour index
TRUTH_LABEL_IDS = {5: 0, 54: 0, 55: 0, 4: 1, 44: 1, 0: 2, 15: 3}
TRUTH_LABEL_FIELDS = ("HadronConeExclTruthLabelID", "HadronConeExclExtendedTruthLabelID")
TRACK_ORIGINS = ("Pileup", "Fake", "Primary", "FromB", "FromBC", "FromC", "FromTau", "OtherSecondary")
ORIGIN_FIELDS = ("ftagTruthOriginLabel", "truthOriginLabel")
IGNORED_ORIGINS = (-1, -2)  # salt ignores -1 (ignore_index) and masks -2 (tracks without a usable label)
VERTEX_FIELDS = ("ftagTruthVertexIndex", "truthVertexIndex")

_H5_CACHE_BYTES = 16 << 20  # chunk cache per dataset: helps random reads of compressed, chunked files
_SPAN_FACTOR = 4  # sorted rows spanning at most this times their count are read as one slice
_CHECK_CHUNK = 50_000  # jets per read when scanning a whole file


@dataclasses.dataclass
class FtagConfig(DataConfig):
    """Options of the ATLAS flavour-tagging HDF5 input (all YAML-mappable).

    jet_vars: jet variables appended to every track (normalised with the ``jets`` group); default: the
        calibrated ``pt_btagJes``, ``eta_btagJes`` that training-dataset-dumper writes and salt's GN2 reads.
    track_vars: per-track inputs (default: GN2's 19).
    max_tracks: track slots per jet in the batch (the file's extra slots are cut, missing ones padded).
    norm_dict: YAML/JSON ``{jets|tracks: {var: {mean, std}}}``; None: compute from the training files
        (``norm_max_jets`` jets) and cache it.
    class_dict: salt/umami-preprocessing class dict ``{jets: {flavour_label: [w_b, w_c, w_u, w_tau]},
        tracks: {ftagTruthOriginLabel: [8 weights]}}``: the class weights of the jet-flavour and (when
        given) track-origin losses (``model_config``); None: unweighted losses unless the model config
        gives ``class_weights``.
    flavour_label: ``"auto"`` or the jets field holding the label (see the module doc).
    aux_labels: ``"auto"`` (track labels when every file has them), ``"on"`` (required), ``"off"``.
    eval_fraction: tail of each training file held out for ``split="eval"`` when ``eval_path`` is None.
    check_finite: raise on NaN/inf in the input variables of the rows read.
    shuffle_block: the training order shuffles blocks of this many consecutive jets (see ``batched``):
        1 = single jets (the generic pipeline); 0 = auto: 1 for uncompressed files, the chunk length for
        compressed chunked ones (umami-preprocessing writes LZ4 chunks of 100 jets), where reading single
        scattered jets decompresses a whole chunk each (about 30x slower).
    bucket_tracks: track widths a batch may be padded to (``max_tracks`` is added as the last); empty:
        every batch has ``max_tracks`` slots with the file's masks (holes kept).
    bucket_window: global batches whose jets are sorted by track count together before batching
        (1: the same batches as without buckets, each padded to its longest jet; > 1 cuts much more
        padding but makes batches multiplicity-, hence flavour-correlated, which slowed convergence
        per step in a first test). Evaluation always uses 1.
    """

    format: str = "ftag_h5"
    jets_name: str = "jets"
    tracks_name: str = "tracks"
    jet_vars: list[str] = dataclasses.field(default_factory=lambda: ["pt_btagJes", "eta_btagJes"])
    track_vars: list[str] = dataclasses.field(default_factory=lambda: list(GN2_TRACK_VARS))
    max_tracks: int = 40
    norm_dict: str | None = None
    norm_max_jets: int = 200_000
    class_dict: str | None = None
    flavour_label: str = "auto"
    aux_labels: str = "auto"
    eval_fraction: float = 0.1
    check_finite: bool = True
    shuffle_block: int = 0
    bucket_tracks: list[int] = dataclasses.field(default_factory=list)
    bucket_window: int = 1

    resume_free: ClassVar[frozenset[str]] = DataConfig.resume_free | {"check_finite", "norm_max_jets"}

    def __post_init__(self):
        bad = [w for w in self.bucket_tracks if not 1 <= w <= self.max_tracks]
        if bad or sorted(set(self.bucket_tracks)) != list(self.bucket_tracks):
            raise ValueError(
                f"bucket_tracks must be increasing track counts in 1..max_tracks ({self.max_tracks}), "
                f"got {list(self.bucket_tracks)}"
            )
        if self.bucket_window < 1:
            raise ValueError(f"bucket_window must be at least 1 (global batches), got {self.bucket_window}")


# --------------------------------------------------------------------------------------------------
# files


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
class _FileInfo:
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


def inspect_file(path: str, cfg: FtagConfig) -> _FileInfo:
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
        return _FileInfo(
            path, int(jets.shape[0]), int(tracks.shape[1]), field, lut, origin, vertex, chunk_rows
        )


# --------------------------------------------------------------------------------------------------
# reading rows


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


def _read_rows(ds: h5py.Dataset, names: Sequence[str], rows: np.ndarray, path: str) -> np.ndarray:
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


def _norm_arrays(norm: Mapping, group: str, names: Sequence[str], where: str) -> tuple[np.ndarray, ...]:
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


class FtagH5Source:
    """Random access by sorted indices over several files (``BatchSource``), one virtual index.

    segments: ``(file index, first row, end row)`` of each file part in this split, in index order.
    """

    def __init__(
        self,
        files: Sequence[_FileInfo],
        segments: Sequence[tuple[int, int, int]],
        cfg: FtagConfig,
        norm: Mapping,
        *,
        aux: bool,
        norm_source: str = "<dict>",
    ):
        self.files = list(files)
        self.segments = [tuple(int(x) for x in s) for s in segments]
        self.cfg = cfg
        self.aux = aux
        self.jet_vars = list(cfg.jet_vars)
        self.track_vars = list(cfg.track_vars)
        self.max_tracks = int(cfg.max_tracks)
        self.check_finite = bool(cfg.check_finite)
        self.norm_source = norm_source
        self._t_mean, self._t_std = _norm_arrays(norm, "tracks", self.track_vars, norm_source)
        self._j_mean, self._j_std = _norm_arrays(norm, "jets", self.jet_vars, norm_source)
        sizes = [b - a for _, a, b in self.segments]
        self._offsets = np.r_[0, np.cumsum(sizes)].astype(np.int64)
        self._local = threading.local()
        self._pid = os.getpid()
        self._counts: np.ndarray | None = None  # track_counts(), loaded on first use

    @property
    def norm(self) -> dict[str, dict[str, dict[str, float]]]:
        """The normalisation in use, ``{group: {var: {mean, std}}}`` (a std of 0 reads as 1)."""
        groups = (
            ("tracks", self.track_vars, self._t_mean, self._t_std),
            ("jets", self.jet_vars, self._j_mean, self._j_std),
        )
        return {
            group: {v: {"mean": float(m), "std": float(s)} for v, m, s in zip(names, mean, std, strict=True)}
            for group, names, mean, std in groups
        }

    def track_norm(self, name: str) -> tuple[float, float]:
        """(mean, std) that normalised the track input ``name``."""
        if name not in self.track_vars:
            raise ValueError(f"{name!r} is not a track input ({', '.join(self.track_vars)})")
        i = self.track_vars.index(name)
        return float(self._t_mean[i]), float(self._t_std[i])

    # ---- pickling (Grain worker processes): handles never travel
    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_local")
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._local = threading.local()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def n_features(self) -> int:
        return len(self.track_vars) + len(self.jet_vars)

    def _handle(self, i: int) -> h5py.File:
        if self._pid != os.getpid():  # forked: the parent's handles are not ours
            self._local = threading.local()
            self._pid = os.getpid()
        handles = getattr(self._local, "handles", None)
        if handles is None:
            handles = self._local.handles = {}
        if i not in handles:
            handles[i] = open_h5(self.files[i].path)
        return handles[i]

    def track_counts(self) -> np.ndarray:
        """Valid tracks of every jet of this split (within ``max_tracks`` slots), by index."""
        if self._counts is None:
            per_file = {}
            parts = []
            for fi, first, end in self.segments:
                if fi not in per_file:
                    per_file[fi] = file_track_counts(self.files[fi], self.cfg)
                parts.append(per_file[fi][first:end])
            self._counts = np.concatenate(parts)
        return self._counts

    def close(self) -> None:
        for h in getattr(self._local, "handles", {}).values():
            h.close()
        self._local = threading.local()

    def read(self, indices: np.ndarray, width: int | None = None) -> Batch:
        """The batch of rows ``indices``; with ``width``, each jet's valid tracks first (in file order)
        in ``width`` slots, so ``valid`` is a prefix mask (raises if a jet has more valid tracks)."""
        idx = np.asarray(indices, dtype=np.int64).ravel()
        n = len(self)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"indices outside [0, {n})")
        if idx.size > 1 and (np.diff(idx) < 0).any():  # be lenient: sort, read, restore the order
            order = np.argsort(idx, kind="stable")
            batch = self.read(idx[order], width)
            inverse = np.empty_like(order)
            inverse[order] = np.arange(order.size)
            return {k: v[inverse] for k, v in batch.items()}
        if width is not None and not 1 <= width <= self.max_tracks:
            raise ValueError(f"width must be in 1..max_tracks ({self.max_tracks}), got {width}")
        b, t = idx.size, self.max_tracks if width is None else int(width)
        out: Batch = {
            "tracks": np.zeros((b, t, self.n_features), np.float32),
            "valid": np.zeros((b, t), bool),
            "flavour": np.zeros(b, np.int32),
        }
        if self.aux:
            out["track_origin"] = np.full((b, t), -1, np.int32)
            out["track_vertex"] = np.full((b, t), -1, np.int32)
        seg = np.searchsorted(self._offsets, idx, side="right") - 1
        bounds = np.flatnonzero(np.diff(seg)) + 1
        for lo, hi in zip(np.r_[0, bounds].tolist(), np.r_[bounds, b].tolist(), strict=True):
            if lo == hi:
                continue
            s = int(seg[lo])
            fi, first, _ = self.segments[s]
            rows = idx[lo:hi] - self._offsets[s] + first
            self._fill(fi, rows, {k: v[lo:hi] for k, v in out.items()}, compact=width is not None)
        return out

    def _fill(self, fi: int, rows: np.ndarray, out: Batch, *, compact: bool) -> None:
        info = self.files[fi]
        f = self._handle(fi)
        jets_ds, tracks_ds = f[self.cfg.jets_name], f[self.cfg.tracks_name]
        t_use = min(self.max_tracks, info.n_slots)
        aux_fields = [info.origin_field, info.vertex_field] if self.aux else []
        jets = _read_rows(jets_ds, [*self.jet_vars, info.flavour_field], rows, info.path)
        trk = _read_rows(tracks_ds, [*self.track_vars, "valid", *aux_fields], rows, info.path)
        if t_use < info.n_slots:
            trk = trk[:, :t_use]
        valid = trk["valid"]
        # Only the valid tracks are normalised (a fifth of the slots in the synthetic set): gathered in
        # row-major order, they fill either the file's slots (holes kept) or, compacted, the first
        # n_valid slots of each jet, in the same order.
        jet_of, slot_of = np.nonzero(valid)
        sel = trk[jet_of, slot_of]
        width = out["valid"].shape[1]
        if compact:
            counts = valid.sum(1)
            if (counts > width).any():
                r = int(np.argmax(counts > width))
                raise ValueError(
                    f"{info.path}: jet at row {rows[r]} has {counts[r]} valid tracks, more than the bucket "
                    f"width {width}; is the track-count index stale? delete "
                    f"{_counts_cache_path(info, self.cfg)}"
                )
            dest = np.arange(width)[None, :] < counts[:, None]
        else:
            dest = np.zeros((rows.size, width), bool)
            dest[:, :t_use] = valid
        n_t = len(self.track_vars)
        feats = np.empty((sel.size, self.n_features), np.float32)
        for i, name in enumerate(self.track_vars):
            np.subtract(sel[name], self._t_mean[i], out=feats[:, i], casting="unsafe")
            feats[:, i] /= self._t_std[i]
        jet_x = np.empty((rows.size, len(self.jet_vars)), np.float32)
        for i, name in enumerate(self.jet_vars):
            jet_x[:, i] = (jets[name] - self._j_mean[i]) / self._j_std[i]
        feats[:, n_t:] = jet_x[jet_of]
        if self.check_finite and not (np.isfinite(feats).all() and np.isfinite(jet_x).all()):
            self._raise_non_finite(info, rows, feats, jet_x, jet_of, slot_of)
        out["tracks"][dest] = feats
        out["valid"][:] = dest

        flav = self._flavour(info, jets[info.flavour_field], rows)
        out["flavour"][:] = flav
        if self.aux:
            origin = sel[info.origin_field].astype(np.int32)
            bad = ((origin < 0) | (origin >= len(TRACK_ORIGINS))) & ~np.isin(origin, IGNORED_ORIGINS)
            if bad.any():
                k = int(np.argmax(bad))
                raise ValueError(
                    f"{info.path}: tracks/{info.origin_field} = {origin[k]} at row {rows[jet_of[k]]} "
                    f"slot {slot_of[k]} (rows {rows[0]}..{rows[-1]} read) is not a class "
                    f"0..{len(TRACK_ORIGINS) - 1} nor an ignored label {IGNORED_ORIGINS}"
                )
            out["track_origin"][dest] = origin
            out["track_vertex"][dest] = sel[info.vertex_field]

    def _flavour(self, info: _FileInfo, raw: np.ndarray, rows: np.ndarray) -> np.ndarray:
        raw = raw.astype(np.int64)
        ok = (raw >= 0) & (raw < info.flavour_lut.size)
        flav = np.where(ok, info.flavour_lut[np.clip(raw, 0, info.flavour_lut.size - 1)], -1)
        if (flav < 0).any():
            r = int(np.flatnonzero(flav < 0)[0])
            raise ValueError(
                f"{info.path}: jets/{info.flavour_field} = {raw[r]} at row {rows[r]} "
                f"(rows {rows[0]}..{rows[-1]} read) maps to none of b, c, light, tau"
            )
        return flav

    def _raise_non_finite(
        self,
        info: _FileInfo,
        rows: np.ndarray,
        feats: np.ndarray,
        jet_x: np.ndarray,
        jet_of: np.ndarray,
        slot_of: np.ndarray,
    ):
        bad_j = ~np.isfinite(jet_x)
        if bad_j.any():
            r, i = np.argwhere(bad_j)[0]
            raise ValueError(
                f"{info.path}: NaN or inf in input variable jets/{self.jet_vars[i]} at row {rows[r]} "
                f"(rows {rows[0]}..{rows[-1]} read)"
            )
        k, i = np.argwhere(~np.isfinite(feats))[0]
        raise ValueError(
            f"{info.path}: NaN or inf in input variable tracks/{self.track_vars[i]} at row "
            f"{rows[jet_of[k]]} slot {slot_of[k]} (rows {rows[0]}..{rows[-1]} read; normalised with mean "
            f"{self._t_mean[i]:g}, std {self._t_std[i]:g})"
        )


# --------------------------------------------------------------------------------------------------
# upfront scan


def check(path: str, cfg: FtagConfig | None = None, *, chunk: int = _CHECK_CHUNK) -> dict:
    """Scan whole files (a path, glob or comma list) in chunks of jets: structure, dtypes, labels and
    NaN/inf in the input variables of valid tracks and jets. Raises naming file, field and rows;
    returns ``{path: {"jets": n, "tracks": n_valid, "flavours": counts[4], "aux": bool}}``."""
    cfg = cfg or FtagConfig()
    report = {}
    for p in expand_paths(path):
        info = inspect_file(p, cfg)
        src = FtagH5Source(
            [info], [(0, 0, info.n_jets)], cfg, _identity_norm(cfg), aux=info.origin_field is not None
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


def _identity_norm(cfg: FtagConfig) -> dict:
    return {
        "jets": {v: {"mean": 0.0, "std": 1.0} for v in cfg.jet_vars},
        "tracks": {v: {"mean": 0.0, "std": 1.0} for v in cfg.track_vars},
    }


# --------------------------------------------------------------------------------------------------
# normalisation and class weights


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
            for a in range(first, stop, _CHECK_CHUNK):
                b = min(a + _CHECK_CHUNK, stop)
                rows = np.arange(a, b)
                jets = _read_rows(jets_ds, cfg.jet_vars, rows, p)
                trk = _read_rows(tracks_ds, [*cfg.track_vars, "valid"], rows, p)[:, : cfg.max_tracks]
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
        files, [(k, 0, i.n_jets) for k, i in enumerate(files)], cfg, _identity_norm(cfg), aux=aux
    )
    flav = np.zeros(len(FLAVOURS), np.int64)
    orig = np.zeros(len(TRACK_ORIGINS), np.int64)
    n = min(len(src), int(max_jets))
    try:
        for a in range(0, n, _CHECK_CHUNK):
            batch = src.read(np.arange(a, min(a + _CHECK_CHUNK, n)))
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


def load_class_dict(path: str | os.PathLike) -> Mapping:
    """A YAML or JSON class dict ``{group: {label: [weights]}}``."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such class dict")
    content = json.loads(p.read_text()) if p.suffix == ".json" else yaml.safe_load(p.read_text())
    if not isinstance(content, Mapping):
        raise ValueError(f"{p}: not a class dict {{group: {{label: [weights]}}}}")
    return content


def class_weights(
    class_dict: str | os.PathLike | Mapping,
    group: str = "jets",
    label: str = "flavour_label",
    n_classes: int | None = None,
) -> np.ndarray:
    """The weights list of ``class_dict[group][label]`` (a salt/umami-preprocessing class dict, path or
    mapping) as float32, e.g. ``class_weights(path)`` for the jet flavour and
    ``class_weights(path, "tracks", "ftagTruthOriginLabel", 8)`` for the track origin."""
    where = str(class_dict) if not isinstance(class_dict, Mapping) else "<dict>"
    if not isinstance(class_dict, Mapping):
        class_dict = load_class_dict(class_dict)
    if group not in class_dict or label not in (class_dict[group] or {}):
        have = {g: list(v or {}) for g, v in class_dict.items()}
        raise ValueError(f"class dict {where} has no {group}/{label} (it has {have})")
    w = np.asarray(class_dict[group][label], np.float32)
    if w.ndim != 1 or (n_classes is not None and w.size != n_classes) or not np.isfinite(w).all():
        raise ValueError(
            f"class dict {where}: {group}/{label} = {w.tolist()} is not {n_classes or 'n'} finite weights"
        )
    return w


def model_config(cfg: FtagConfig, model_cfg: Any) -> Any:
    """``model_cfg`` with the class weights of ``cfg.class_dict`` (``DatasetSpec.model_config``), as salt's
    ``use_class_dict`` reads them: ``jets/flavour_label`` for the jet-flavour loss and, when the class
    dict has it, ``tracks/ftagTruthOriginLabel`` for the track-origin loss. Unchanged without a class dict;
    an error when the model config gives ``class_weights`` too (salt refuses both as well). A class dict
    that is not here (a run exported on another machine) leaves the weights out with a warning: only the
    loss uses them, and reading the data (``source``: training, evaluation) refuses a missing one."""
    if not cfg.class_dict:
        return model_cfg
    if "class_weights" not in {f.name for f in dataclasses.fields(model_cfg)}:
        raise ValueError(f"data.class_dict is set, but model {model_cfg.name!r} takes no class weights")
    if model_cfg.class_weights:
        raise ValueError(
            f"data.class_dict ({cfg.class_dict}) and model.class_weights both give class weights; keep one"
        )
    path = Path(cfg.class_dict).expanduser()
    if not path.exists():
        log.warning("data.class_dict %s is not here: the model's losses have no class weights", path)
        return model_cfg
    weights = _class_dict_weights(str(path), *_version(path))
    return dataclasses.replace(model_cfg, class_weights={task: list(w) for task, w in weights.items()})


def _check_class_dict(cfg: FtagConfig, files: Sequence[_FileInfo]) -> None:
    """``cfg.class_dict`` exists and holds weights for the model's classes, which the files list in the
    model's order."""
    path = Path(cfg.class_dict).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data.class_dict: {path}: no such class dict")
    _class_dict_weights(str(path), *_version(path))
    _check_class_order(files)


def _version(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=8)
def _class_dict_weights(path: str, mtime_ns: int, size: int) -> dict[str, tuple[float, ...]]:
    """The loss weights of a class dict file, read (and logged) once per version (time, size) of the file."""
    content = load_class_dict(path)
    class_weights(path, "jets", "flavour_label", len(FLAVOURS))  # checked, errors naming the file
    weights = {"jet": tuple(float(w) for w in content["jets"]["flavour_label"])}  # as written, not float32
    tracks = content.get("tracks") or {}
    origin = next((label for label in ORIGIN_FIELDS if label in tracks), None)
    if origin:
        class_weights(path, "tracks", origin, len(TRACK_ORIGINS))
        weights["origin"] = tuple(float(w) for w in tracks[origin])
    log.info("class weights from %s: %s", path, weights)
    return weights


def _check_class_order(files: Sequence[_FileInfo]) -> None:
    """A class dict's jet weights follow the file's classes, so those must be the model's b, c, light, tau."""
    for info in files:
        lut = info.flavour_lut
        if info.flavour_field == "flavour_label" and not np.array_equal(lut, np.arange(lut.size)):
            order = [FLAVOURS[k] for k in lut]
            raise ValueError(
                f"{info.path}: jets/flavour_label lists its classes as {order}; data.class_dict's weights "
                f"follow that order, and GN2's classes are {list(FLAVOURS)}: write the files with the "
                "classes in that order, or give model.class_weights in it instead of data.class_dict"
            )


# --------------------------------------------------------------------------------------------------
# the DatasetSpec entry point


def _split_segments(files: Sequence[_FileInfo], frac: float, part: str) -> list[tuple[int, int, int]]:
    """Per file: the first (1 - frac) of the jets for "train", the tail for "eval"."""
    out = []
    for k, info in enumerate(files):
        cut = info.n_jets - round(info.n_jets * frac)
        a, b = (0, cut) if part == "train" else (cut, info.n_jets)
        if b > a:
            out.append((k, a, b))
    return out


def _norm_cache_path(cfg: FtagConfig, files: Sequence[_FileInfo], segments) -> Path:
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


def _counts_cache_path(info: _FileInfo, cfg: FtagConfig) -> Path:
    stat = os.stat(info.path)
    key = json.dumps(
        [os.path.realpath(info.path), stat.st_size, int(stat.st_mtime), cfg.tracks_name, cfg.max_tracks]
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return derived_dir(info.path, "ftag_norm") / f"{Path(info.path).stem}.track_counts.smilejax-{digest}.npy"


def file_track_counts(info: _FileInfo, cfg: FtagConfig) -> np.ndarray:
    """Valid tracks of every jet of a file within its first ``max_tracks`` slots (uint8 or uint16),
    from one scan of the ``valid`` field, cached as ``.npy`` (memory-mapped when read back)."""
    path = _counts_cache_path(info, cfg)
    if path.exists():
        counts = np.load(path, mmap_mode="r")
        if counts.shape == (info.n_jets,):
            return counts
    t = min(cfg.max_tracks, info.n_slots)
    counts = np.empty(info.n_jets, np.uint8 if t < 256 else np.uint16)
    with open_h5(info.path) as f:
        valid = f[cfg.tracks_name].fields("valid")
        for a in tqdm(
            range(0, info.n_jets, _CHECK_CHUNK),
            desc=f"track counts {Path(info.path).name}",
            unit="chunk",
            disable=info.n_jets < 20 * _CHECK_CHUNK,
        ):
            b = min(a + _CHECK_CHUNK, info.n_jets)
            try:
                counts[a:b] = valid[a:b][:, :t].sum(1)
            except (OSError, RuntimeError) as err:
                msg = f"{info.path}: reading tracks/valid rows {a}..{b - 1} failed: {err}"
                raise ValueError(msg) from err
    save_array(path, counts, f"the track counts of {info.path}")
    return counts


def _resolve(cfg: FtagConfig, split: str) -> tuple[list[str], list[str] | None]:
    """(training files, eval files or None = held-out tail) of a config."""
    if cfg.path is None:
        from . import ftag_synthetic

        train = [ftag_synthetic.default_dataset(split="train")]
        return train, [ftag_synthetic.default_dataset(split="eval")]
    train = expand_paths(cfg.path)
    return train, expand_paths(cfg.eval_path) if cfg.eval_path else None


def _aux_enabled(cfg: FtagConfig, files: Sequence[_FileInfo]) -> bool:
    if cfg.aux_labels not in ("auto", "on", "off"):
        raise ValueError(f"data.aux_labels must be auto, on or off, not {cfg.aux_labels!r}")
    if cfg.aux_labels == "off":
        return False
    lacking = [i.path for i in files if i.origin_field is None]
    if cfg.aux_labels == "on" and lacking:
        more = f" (and {len(lacking) - 1} more files)" if len(lacking) > 1 else ""
        raise ValueError(
            f"data.aux_labels=on but {lacking[0]}{more} has no track truth labels (no "
            f"{' or '.join(ORIGIN_FIELDS)} with {' or '.join(VERTEX_FIELDS)} in 'tracks'); "
            "use aux_labels=auto or off"
        )
    if lacking and len(lacking) < len(files):
        raise ValueError(
            f"only some files have track truth labels ({lacking[0]} lacks them); batches need the same "
            "keys: set data.aux_labels=off or use files that all have them"
        )
    return not lacking


def source(cfg: FtagConfig, split: str = "train") -> FtagH5Source:
    """The ``BatchSource`` of a split ("train" or "eval"): checks every file's structure up front and
    loads (or computes and caches) the normalisation from the training part."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', not {split!r}")
    if not 0 <= cfg.eval_fraction < 1:
        raise ValueError(f"data.eval_fraction must be in [0, 1), not {cfg.eval_fraction}")
    train_paths, eval_paths = _resolve(cfg, split)
    train_files = [inspect_file(p, cfg) for p in train_paths]
    holdout = cfg.eval_fraction if eval_paths is None else 0.0
    train_segments = _split_segments(train_files, holdout, "train")
    if split == "train":
        files, segments = train_files, train_segments
    elif eval_paths is None:
        files, segments = train_files, _split_segments(train_files, holdout, "eval")
    else:
        files = [inspect_file(p, cfg) for p in eval_paths]
        segments = [(k, 0, i.n_jets) for k, i in enumerate(files)]
    if not segments:
        raise ValueError(f"the {split} split of {cfg.path or 'the default set'} is empty")
    if cfg.class_dict:
        _check_class_dict(cfg, files)

    if cfg.norm_dict:
        norm_source = str(cfg.norm_dict)
        norm = load_norm_dict(cfg.norm_dict)
    else:
        cache = _norm_cache_path(cfg, train_files, train_segments)
        norm_source = str(cache)
        if cache.exists():
            norm = load_norm_dict(cache)
        else:
            log.info("computing the normalisation on up to %d training jets", cfg.norm_max_jets)
            norm = compute_norm_dict(
                [],
                cfg,
                cfg.norm_max_jets,
                segments=[(train_files[k].path, a, b) for k, a, b in train_segments],
            )
            try:
                write_norm_dict(norm, cache)
                log.info("normalisation cached in %s", cache)
            except OSError as err:
                log.warning("could not cache the normalisation in %s: %s", cache, err)

    aux = _aux_enabled(cfg, files)
    log.info(
        "ftag_h5 %s: %d files, %d jets; track truth labels %s",
        split,
        len(files),
        sum(b - a for _, a, b in segments),
        "present: batches carry track_origin, track_vertex"
        if aux
        else ("absent" if any(i.origin_field is None for i in files) else "present, off by config"),
    )
    return FtagH5Source(files, segments, cfg, norm, aux=aux, norm_source=norm_source)


def batch_schema(cfg: FtagConfig, aux: bool = True) -> dict[str, tuple[tuple, np.dtype]]:
    """Per-example shapes and dtypes of a batch (without the batch dimension)."""
    t, f = cfg.max_tracks, len(cfg.track_vars) + len(cfg.jet_vars)
    schema = {
        "tracks": ((t, f), np.dtype(np.float32)),
        "valid": ((t,), np.dtype(bool)),
        "flavour": ((), np.dtype(np.int32)),
    }
    if aux:
        schema["track_origin"] = ((t,), np.dtype(np.int32))
        schema["track_vertex"] = ((t,), np.dtype(np.int32))
    return schema


# --------------------------------------------------------------------------------------------------
# the training order


class _BlockOrder:
    """Per-epoch order of blocks of ``block`` consecutive jets, plus a random start offset.

    The epoch's example order is ``offset + perm[i // block] * block + i % block``: a permutation of
    ``n_blocks * block`` rows, so global batches, process slices and resumption behave exactly as in
    ``pipeline.batched``. No lock (it pickles into Grain workers): concurrent threads at worst compute
    the same deterministic permutation twice.
    """

    def __init__(self, n: int, block: int, seed: int):
        self.n, self.block, self.seed = n, block, seed
        self.n_blocks = n // block
        self.size = self.n_blocks * block  # positions per epoch (pipeline.Order)
        self._cache: dict[int, tuple[np.ndarray, int]] = {}

    def _epoch(self, epoch: int) -> tuple[np.ndarray, int]:
        got = self._cache.get(epoch)
        if got is None:
            rng = np.random.default_rng([self.seed, epoch, 0xB10C])
            spare = self.n - self.n_blocks * self.block
            got = rng.permutation(self.n_blocks), int(rng.integers(0, spare + 1))
            self._cache = {k: v for k, v in self._cache.items() if k >= epoch - 1} | {epoch: got}
        return got

    def rows(self, epoch: int, lo: int, hi: int) -> np.ndarray:
        perm, offset = self._epoch(epoch)
        pos = np.arange(lo, hi)
        return offset + perm[pos // self.block] * self.block + pos % self.block


def batched(
    source: FtagH5Source,
    *,
    batch_size: int,
    seed: int,
    block: int = 1,
    process_index: int = 0,
    process_count: int = 1,
    shuffle: bool = True,
    read_threads: int = 2,
    prefetch: int = 4,
    workers: int = 0,
    buckets: pipeline.Buckets | None = None,
) -> grain.IterDataset:
    """``pipeline.batched`` whose shuffle moves blocks of ``block`` consecutive jets (1: single jets,
    exactly ``pipeline.batched``). A global batch then holds ``batch_size / block`` runs of neighbouring
    jets from random places of all files, which a compressed chunked file serves by decompressing each
    touched chunk once. Like salt's batch sampler this assumes the files' rows are already shuffled
    (umami-preprocessing output is). Same global batches for every process count, same resumption."""
    order = None
    if block > 1 and shuffle:
        order = _BlockOrder(len(source), block, seed)
        if order.size < batch_size:
            raise ValueError(
                f"the dataset has {len(source)} examples, fewer than one batch of {batch_size} "
                f"in blocks of {block}"
            )
    return pipeline.batched(
        source,
        batch_size=batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        shuffle=shuffle,
        read_threads=read_threads,
        prefetch=prefetch,
        workers=workers,
        order=order,
        buckets=buckets,
    )


def buckets(source: FtagH5Source, cfg: FtagConfig) -> pipeline.Buckets | None:
    """The track buckets ``cfg.bucket_tracks`` asks for (None when empty), with the source's counts."""
    if not cfg.bucket_tracks:
        return None
    return pipeline.Buckets(
        widths=pipeline.bucket_widths(cfg.bucket_tracks, source.max_tracks),
        lengths=source.track_counts(),
        window=cfg.bucket_window,
    )


def shuffle_block(source: FtagH5Source, cfg: FtagConfig) -> int:
    """The block length ``cfg.shuffle_block`` asks for (0 = auto, from the files' compression)."""
    if cfg.shuffle_block < 0:
        raise ValueError(f"data.shuffle_block must be >= 0, not {cfg.shuffle_block}")
    if cfg.shuffle_block:
        return int(cfg.shuffle_block)
    block = max([i.chunk_rows for i in getattr(source, "files", [])] + [1])
    if block > 1:
        log.info(
            "ftag_h5: compressed files in chunks of %d jets: shuffling blocks of %d consecutive jets "
            "(data.shuffle_block=1 shuffles single jets, slower)",
            block,
            block,
        )
    return block


def from_config(
    source: FtagH5Source,
    cfg: FtagConfig,
    *,
    seed: int,
    process_index: int,
    process_count: int,
    shuffle: bool | None = None,
) -> grain.IterDataset:
    """The per-process pipeline of a config (``DatasetSpec.pipeline``, called as ``pipeline.from_config``)."""
    return batched(
        source,
        batch_size=cfg.batch_size,
        seed=seed,
        block=shuffle_block(source, cfg),
        process_index=process_index,
        process_count=process_count,
        shuffle=cfg.shuffle if shuffle is None else shuffle,
        read_threads=cfg.read_threads,
        prefetch=cfg.prefetch,
        workers=cfg.workers,
        buckets=buckets(source, cfg),
    )


SPEC = DatasetSpec(
    name="ftag_h5", config=FtagConfig, source=source, pipeline=from_config, model_config=model_config
)


if __name__ == "__main__":  # python -m smilejax.inputs.ftag_h5 FILE_OR_GLOB ...: scan files upfront
    import sys

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for arg in sys.argv[1:] or ["--help"]:
        if arg in ("-h", "--help"):
            print("usage: python -m smilejax.inputs.ftag_h5 FILE_OR_GLOB ... (default variables of GN2)")
            sys.exit(0)
        print(yaml.safe_dump(check(arg), sort_keys=False), end="")
