"""The reader of the ATLAS flavour-tagging files (``FtagH5Source``) and the source of a split (``source``);
the whole-file scans built on the reader (``check``, ``compute_class_dict``) are in ``scans``.

Splits: ``split="eval"`` reads ``cfg.eval_path``; when that is None, the last ``cfg.eval_fraction`` of
the jets of every training file is held out: ``"train"`` reads the first part of each file and
``"eval"`` the tail. (With ``cfg.path`` None too, both come from GN2's synthetic maker's default set.)
Sorted indices are split per file; files are opened lazily, once per process and thread (never shared
across fork).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence

import h5py
import numpy as np

from ..spec import Batch
from .config import FtagConfig
from .hdf5 import (
    FileInfo,
    counts_cache_path,
    expand_paths,
    file_track_counts,
    inspect_file,
    open_h5,
    read_rows,
)
from .labels import IGNORED_ORIGINS, ORIGIN_FIELDS, TRACK_ORIGINS, VERTEX_FIELDS, check_class_dict
from .norm import (
    compute_norm_dict,
    load_norm_dict,
    norm_arrays,
    norm_cache_path,
    write_norm_dict,
)

log = logging.getLogger(__name__)


class FtagH5Source:
    """Random access by sorted indices over several files (``BatchSource``), one virtual index.

    segments: ``(file index, first row, end row)`` of each file part in this split, in index order.
    split: which split it reads ("train" or "eval"; None: none, e.g. a scan of a file): only the "train"
        split is packed and sorts bucket windows.
    """

    def __init__(
        self,
        files: Sequence[FileInfo],
        segments: Sequence[tuple[int, int, int]],
        cfg: FtagConfig,
        norm: Mapping,
        *,
        aux: bool,
        norm_source: str = "<dict>",
        split: str | None = None,
    ):
        self.split = split
        self.files = list(files)
        self.segments = [tuple(int(x) for x in s) for s in segments]
        self.cfg = cfg
        self.aux = aux
        self.jet_vars = list(cfg.jet_vars)
        self.track_vars = list(cfg.track_vars)
        self.max_tracks = int(cfg.max_tracks)
        self.check_finite = bool(cfg.check_finite)
        self.norm_source = norm_source
        self._t_mean, self._t_std = norm_arrays(norm, "tracks", self.track_vars, norm_source)
        self._j_mean, self._j_std = norm_arrays(norm, "jets", self.jet_vars, norm_source)
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
        jets = read_rows(jets_ds, [*self.jet_vars, info.flavour_field], rows, info.path)
        trk = read_rows(tracks_ds, [*self.track_vars, "valid", *aux_fields], rows, info.path)
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
                    f"{counts_cache_path(info, self.cfg)}"
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

    def _flavour(self, info: FileInfo, raw: np.ndarray, rows: np.ndarray) -> np.ndarray:
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
        info: FileInfo,
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


def _split_segments(files: Sequence[FileInfo], frac: float, part: str) -> list[tuple[int, int, int]]:
    """Per file: the first (1 - frac) of the jets for "train", the tail for "eval"."""
    out = []
    for k, info in enumerate(files):
        cut = info.n_jets - round(info.n_jets * frac)
        a, b = (0, cut) if part == "train" else (cut, info.n_jets)
        if b > a:
            out.append((k, a, b))
    return out


def _resolve(cfg: FtagConfig, split: str) -> tuple[list[str], list[str] | None]:
    """(training files, eval files or None = held-out tail) of a config."""
    if cfg.path is None:
        from smilejax.models.gn2 import make_synthetic  # the synthetic set of the family this format serves

        train = [make_synthetic.default_dataset(split="train")]
        return train, [make_synthetic.default_dataset(split="eval")]
    train = expand_paths(cfg.path)
    return train, expand_paths(cfg.eval_path) if cfg.eval_path else None


def _aux_enabled(cfg: FtagConfig, files: Sequence[FileInfo]) -> bool:
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
        check_class_dict(cfg, files)

    if cfg.norm_dict:
        norm_source = str(cfg.norm_dict)
        norm = load_norm_dict(cfg.norm_dict)
    else:
        cache = norm_cache_path(cfg, train_files, train_segments)
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
    return FtagH5Source(files, segments, cfg, norm, aux=aux, norm_source=norm_source, split=split)
