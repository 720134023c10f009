"""The records of particleflow's TFDS ArrayRecord datasets, one split of one builder config at a time.

A ``Part`` is what a record number is relative to; ``open_part`` opens TFDS's random-access data source
after checking the feature layout, ``decode`` turns raw records into arrays (``tf_example``), ``prepare``
checks one event and makes particleflow's training targets, ``part_lengths`` counts (and caches) the
elements of every event. ``mlpf_tfds`` builds the format on these.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import mlpf_format as fmt
from . import tf_example
from .cache import derived_dir, locked, save_array


@dataclasses.dataclass(frozen=True)
class Part:
    """One split of one builder config of one sample: what a record number is relative to."""

    name: str
    config: int
    version: str
    split: str
    data_dir: str

    def __str__(self) -> str:
        return f"{self.name}/{self.config}:{self.version} split {self.split!r}"

    @property
    def folder(self) -> Path:
        return Path(self.data_dir) / self.name / str(self.config) / self.version


def check_on_disk(part: Part) -> None:
    sample = Path(part.data_dir) / part.name
    if not sample.is_dir():
        have = sorted(p.name for p in Path(part.data_dir).iterdir() if p.is_dir() and p.name != "downloads")
        raise FileNotFoundError(f"{part}: no dataset {part.name!r} in {part.data_dir} (it has: {have})")
    if not (sample / str(part.config)).is_dir():
        have = sorted(p.name for p in sample.iterdir() if p.is_dir() and p.name.isdigit())
        raise FileNotFoundError(f"{part}: no builder config {part.config} in {sample} (it has: {have})")
    if not (part.folder / "dataset_info.json").is_file():
        have = sorted(
            p.name for p in (sample / str(part.config)).iterdir() if (p / "dataset_info.json").exists()
        )
        raise FileNotFoundError(
            f"{part}: version {part.version} is not on disk (versions there: {have}); set data.version "
            f"or name:version in data.datasets"
        )


def open_part(part: Part):
    """TFDS's random-access data source of ``part``; checks its feature layout against particleflow's."""
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(str(part.folder))
    _check_features(part, builder.info.features)
    if part.split not in builder.info.splits:
        raise FileNotFoundError(f"{part}: no such split; the dataset has {sorted(builder.info.splits)}")
    return builder.as_data_source(split=part.split)


def _check_features(part: Part, features) -> None:
    expected = fmt.features_dict()
    got = {k: (tuple(v.shape), np.dtype(v.np_dtype).name) for k, v in features.items()}
    want = {k: (tuple(v.shape), np.dtype(v.np_dtype).name) for k, v in expected.items()}
    for key, (shape, dtype) in want.items():
        if key not in got:
            raise ValueError(f"{part}: feature {key!r} is missing (the dataset has {sorted(got)})")
        if got[key] != (shape, dtype):
            raise ValueError(
                f"{part}: feature {key!r} is {got[key][1]} of shape {got[key][0]}, particleflow's layout is "
                f"{dtype} of shape {shape}"
            )


@functools.cache
def _shapes() -> dict[str, tuple[int | None, ...]]:
    """particleflow's feature shapes (``None``: any length), from the one declaration of the format."""
    return {key: tuple(feature.shape) for key, feature in fmt.features_dict().items()}


def decode(part: Part, source, records: list[int]) -> list[dict[str, np.ndarray]]:
    """The events at ``records`` of ``part`` (TFDS data source ``source``), decoded from their raw
    bytes by ``tf_example.decode_floats`` (several times faster than TFDS's per-value decoding; the
    feature layout is checked when the part is opened); a record it cannot read is named."""
    out = []
    for record, raw in zip(records, source.data_source.__getitems__(records), strict=True):
        try:
            out.append(tf_example.decode_floats(raw, _shapes()))
        except ValueError as err:
            raise ValueError(f"{part} record {record}: {err}") from None
    return out


def prepare(ev: dict, part: Part, record: int, *, sort_by_pt: bool = False) -> dict:
    """Check one decoded event and make particleflow's training targets (see the module docstring)."""
    where = f"{part} record {record}"
    x = np.asarray(ev["X"], np.float32)
    for key in ("X", "ytarget", "ycand", "genjets", "targetjets", "genmet"):
        value = np.asarray(ev[key])
        if not np.isfinite(value).all():
            bad = np.argwhere(~np.isfinite(value))
            at = f" (element {bad[0][0]}, column {bad[0][1]})" if value.ndim == 2 else ""
            raise ValueError(f"{where}: feature {key!r} has NaN/inf{at}")
    types = x[:, 0]
    odd = ~np.isin(types, fmt.ELEMENT_TYPES)
    if odd.any():
        i = int(np.flatnonzero(odd)[0])
        raise ValueError(
            f"{where}: feature 'X' element {i} has element type {types[i]:g}; CLIC elements are 1 (track) "
            f"or 2 (cluster)"
        )
    y, cand = np.array(ev["ytarget"], np.float32), np.array(ev["ycand"], np.float32)
    for key, arr in (("ytarget", y), ("ycand", cand)):
        cls = arr[:, 0]
        odd = (cls != np.round(cls)) | (cls < 0) | (cls >= len(fmt.CLASSES))
        if odd.any():
            i = int(np.flatnonzero(odd)[0])
            raise ValueError(
                f"{where}: feature {key!r} element {i} has class index {cls[i]:g}, "
                f"outside 0..{len(fmt.CLASSES) - 1}"
            )
    if sort_by_pt:
        order = np.argsort(x[:, 1], kind="stable")[::-1]
        x, y, cand = x[order], y[order], cand[order]
    pt_orig, e_orig = y[:, 2].copy(), y[:, 6].copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        log_pt = np.log(pt_orig / x[:, 1])
        log_e = np.log(e_orig / x[:, 5])
    log_e[y[:, 0] == 0] = 0
    y[:, 2] = np.where(np.isfinite(log_pt), log_pt, 0)
    y[:, 6] = np.where(np.isfinite(log_e), log_e, 0)
    return {
        "X": x,
        "ytarget": y,
        "ycand": cand,
        "ytarget_pt_orig": pt_orig,
        "ytarget_e_orig": e_orig,
        "genmet": np.float32(ev["genmet"]),
        "genjets": np.asarray(ev["genjets"], np.float32).reshape(-1, 4),
        "targetjets": np.asarray(ev["targetjets"], np.float32).reshape(-1, 4),
    }


# ---------------------------------------------------------------- element counts


def _lengths_cache_path(part: Part) -> Path:
    files = sorted(part.folder.glob(f"{part.name}-{part.split}.array_record-*"))
    key = json.dumps(
        [str(part.folder.resolve()), part.split]
        + [[f.name, f.stat().st_size, int(f.stat().st_mtime)] for f in files]
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return (
        derived_dir(part.folder / "dataset_info.json", "mlpf_lengths")
        / f"{part.split}.lengths.smilejax-{digest}.npy"
    )


def part_lengths(part: Part, source) -> np.ndarray:
    """Elements per event of a part, from one pass over its records that also checks every event (so a
    bad record fails before training starts), cached as ``.npy``; one process of a job counts while the
    others wait for the cache."""
    path = _lengths_cache_path(part)
    with locked(path.with_name(path.name + ".lock")):
        if path.exists():
            lengths = np.load(path)
            if lengths.shape == (len(source),):
                return lengths
        lengths = np.empty(len(source), np.int32)
        chunk = 512
        for a in tqdm(
            range(0, len(source), chunk),
            desc=f"element counts {part}",
            unit="chunk",
            disable=len(source) < 20 * chunk,
        ):
            records = list(range(a, min(a + chunk, len(source))))
            for record, ev in zip(records, decode(part, source, records), strict=True):
                prepare(ev, part, record)  # this pass reads every event: check each before training
                lengths[record] = len(ev["X"])
        save_array(path, lengths, f"the element counts of {part}")
    return lengths
