"""MLPF's published datasets (TFDS ArrayRecord, ``mlpf_format``) as smilejax batches, without TensorFlow.

``data.format: mlpf_tfds`` reads ``data.path`` (a TFDS data directory such as particleflow's
``tensorflow_datasets/``) with TFDS's data-source API (each event's bytes are decoded by ``tf_example``,
2.2× faster than TFDS's own decoder): for every sample in ``data.datasets``
(``clic_edm_qq_pf``, ``clic_edm_ttbar_pf:3.1.0``, ...) and every numbered builder config in
``data.configs`` (particleflow splits each sample into configs ``1`` .. ``10``), the ``train`` split for
training and ``test`` for evaluation; all of them are one set, shuffled globally. With no ``data.path``
a small synthetic set (``smilejax.models.mlpf.make_synthetic``) is made once and cached.

Each event is turned into what particleflow's loader (``TFDSDataSource``) makes: optionally sorted by
element pT, then ``ytarget``'s pT and energy become ``log(target / element)`` (0 where there is no
target or the ratio is not finite); the raw values are kept as ``ytarget_pt_orig``/``ytarget_e_orig``.
A batch holds ``data.fields`` of

* ``X`` [B, W, 17], ``mask`` [B, W] (real elements), ``ytarget`` [B, W, 13], ``ycand`` [B, W, 13],
  ``ytarget_pt_orig``, ``ytarget_e_orig`` [B, W]: elements padded with zeros to the batch's width W;
* ``genmet`` [B], ``genjets``, ``targetjets`` [B, J, 4] (zero rows pad to the batch's most jets),
  ``event_mask`` [B] (all True: every row is a real event).

Batching: events vary from tens to thousands of elements, so an event is padded only to the smallest
of ``data.bucket_widths`` that holds it; one compiled shape per width. With ``data.element_budget = 0``
a batch is ``data.batch_size`` events padded to the width of its longest; with a budget, a batch of
width W holds ``budget // W`` events (a multiple of ``data.batch_multiple``), all of that bucket
(``pipeline.BudgetPlan``), so memory per step is about constant and padding is small.
The element count of every event is read once and cached (next to the data when it is writable); that
first pass checks every event, so a bad record fails before training starts.

Raw inputs (``SPEC.raw``, what exported models take): ``X`` as stored, zero rows padding; the model's
``mask`` is made inside the exported program as above. ``raw_read`` reads events of a data directory.

Errors name the dataset, config, version, split, record and feature: a version or configuration that is
not on disk (with the ones that are), a feature layout other than particleflow's, an element type
other than 1 (track) or 2 (cluster), a class index outside 0..5, NaN or inf in a feature.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from . import mlpf_format as fmt
from . import pipeline
from .mlpf_records import Part, check_on_disk, decode, open_part, part_lengths, prepare
from .spec import ELEMENTS, Batch, DataConfig, DatasetSpec, RawInputs, RawSignature, RawTensor

log = logging.getLogger(__name__)

ELEMENT_FIELDS = ("X", "mask", "ytarget", "ycand", "ytarget_pt_orig", "ytarget_e_orig")
EVENT_FIELDS = ("genmet", "genjets", "targetjets", "event_mask")
FIELDS = ELEMENT_FIELDS + EVENT_FIELDS
EVAL_FIELDS = list(FIELDS)  # what ``smilejax eval`` reads


@dataclasses.dataclass
class MlpfConfig(DataConfig):
    """``path``: the TFDS data directory (null: the synthetic demo set); ``eval_path``: another one for
    evaluation (default ``path``). ``datasets``: sample names, each ``name`` or ``name:version``
    (default version ``version``). ``configs``: builder configs (parts) read together.
    ``fields``: batch keys (training needs ``X`` and ``ytarget``; ``mask`` is always added).
    ``sort_by_pt``: elements in descending pT, as particleflow's ``sort`` option."""

    format: str = "mlpf_tfds"
    batch_size: int = 32
    datasets: list[str] = dataclasses.field(default_factory=lambda: ["clic_edm_qq_pf"])
    configs: list[int] = dataclasses.field(default_factory=lambda: [1])
    version: str = fmt.VERSION
    train_split: str = "train"
    eval_split: str = "test"
    fields: list[str] = dataclasses.field(default_factory=lambda: ["X", "ytarget"])
    bucket_widths: list[int] = dataclasses.field(
        default_factory=lambda: [64, 128, 256, 512, 1024, 2048, 4096, 8192]
    )
    element_budget: int = 0
    batch_multiple: int = 8
    sort_by_pt: bool = False

    resume_free: ClassVar[frozenset[str]] = DataConfig.resume_free | {"fields"}

    def __post_init__(self):
        unknown = sorted(set(self.fields) - set(FIELDS))
        if unknown:
            raise ValueError(f"data.fields has unknown key(s) {unknown}; known: {list(FIELDS)}")
        if not self.datasets:
            raise ValueError("data.datasets is empty; name at least one sample, e.g. clic_edm_qq_pf")
        bad = [c for c in self.configs if not 1 <= int(c) <= fmt.NUM_CONFIGS]
        if bad or not self.configs:
            raise ValueError(f"data.configs must be builder configs 1..{fmt.NUM_CONFIGS}, got {self.configs}")
        try:
            pipeline.Buckets(tuple(self.bucket_widths), np.zeros(0, int))  # validates the widths
        except ValueError as err:
            raise ValueError(f"data.bucket_widths: {err}") from None
        if self.element_budget < 0 or self.batch_multiple < 1:
            raise ValueError(
                f"data.element_budget must be >= 0 and data.batch_multiple >= 1, got "
                f"{self.element_budget} and {self.batch_multiple}"
            )
        if self.element_budget:
            try:
                pipeline.budget_sizes(self.bucket_widths, self.element_budget, self.batch_multiple)
            except ValueError as err:
                raise ValueError(
                    f"data.element_budget / data.batch_multiple / data.bucket_widths: {err}"
                ) from None

    def global_batch_sizes(self) -> list[int]:
        if self.element_budget == 0:
            return [self.batch_size]
        sizes = pipeline.budget_sizes(self.bucket_widths, self.element_budget, self.batch_multiple)
        return sorted(set(sizes))

    def with_batch_size(self, batch_size: int) -> MlpfConfig:
        return dataclasses.replace(self, batch_size=batch_size, element_budget=0)

    def describe_batch(self, size: int) -> str:
        if self.element_budget == 0:
            return "data.batch_size"
        return (
            f"the batch of {size} events (data.element_budget={self.element_budget} // a bucket width, "
            f"rounded to a multiple of data.batch_multiple={self.batch_multiple}: raise data.batch_multiple)"
        )


def _parse_name(entry: str, default_version: str) -> tuple[str, str]:
    name, _, version = entry.partition(":")
    return name.strip(), (version.strip() or default_version)


def parts(cfg: MlpfConfig, split: str) -> list[Part]:
    """The parts a split reads (``split``: "train" or "eval"), checked to exist on disk."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if cfg.path is None:
        from smilejax.models.mlpf import make_synthetic as mlpf_synthetic

        if cfg.datasets != ["clic_edm_qq_pf"] or any(
            c not in mlpf_synthetic.DEFAULT_EVENTS for c in cfg.configs
        ):
            raise ValueError(
                "with no data.path the synthetic demo set has only clic_edm_qq_pf configs "
                f"{sorted(mlpf_synthetic.DEFAULT_EVENTS)}; set data.path to a TFDS data directory"
            )
        data_dir = mlpf_synthetic.default_dataset()
    else:
        data_dir = cfg.eval_path if split == "eval" and cfg.eval_path else cfg.path
    data_dir = os.path.expanduser(data_dir)
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"data.path {data_dir!r} is not a directory (a TFDS data_dir is expected)")
    tfds_split = cfg.train_split if split == "train" else cfg.eval_split
    out = []
    for entry in cfg.datasets:
        name, version = _parse_name(entry, cfg.version)
        for config in cfg.configs:
            part = Part(name, int(config), version, tfds_split, data_dir)
            check_on_disk(part)
            out.append(part)
    return out


class MlpfSource:
    """Random access to the events of several parts as one index space (``BatchSource``)."""

    def __init__(self, parts_: Sequence[Part], cfg: MlpfConfig, fields: Sequence[str] | None = None):
        self.parts = list(parts_)
        self.fields = tuple(dict.fromkeys([*(fields or cfg.fields), "mask"]))
        self.sort_by_pt = cfg.sort_by_pt
        self.max_width = max(cfg.bucket_widths)
        self._sources = [open_part(p) for p in self.parts]
        self.offsets = np.cumsum([0] + [len(s) for s in self._sources])
        self._lengths: np.ndarray | None = None

    def __getstate__(self) -> dict:  # Grain worker processes reopen the files
        state = self.__dict__.copy()
        del state["_sources"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._sources = [open_part(p) for p in self.parts]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def lengths(self) -> np.ndarray:
        """Elements of every event, by index (read once per part, cached on disk)."""
        if self._lengths is None:
            self._lengths = np.concatenate(
                [part_lengths(p, s) for p, s in zip(self.parts, self._sources, strict=True)]
            )
            longest = int(self._lengths.max()) if self._lengths.size else 0
            if longest > self.max_width:
                i = int(self._lengths.argmax())
                part, record = self.locate(i)
                raise ValueError(
                    f"{part} record {record} has {longest} elements, more than the largest of "
                    f"data.bucket_widths ({self.max_width}); add a larger width"
                )
        return self._lengths

    def locate(self, index: int) -> tuple[Part, int]:
        k = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.parts[k], int(index - self.offsets[k])

    def events(self, indices: np.ndarray) -> list[tuple[Part, int, dict]]:
        """Decoded events (part, record, features), in the order of ``indices``."""
        indices = np.asarray(indices)
        k = np.searchsorted(self.offsets, indices, side="right") - 1
        out: list = [None] * len(indices)
        for part_index in np.unique(k):
            pos = np.flatnonzero(k == part_index)
            records = (indices[pos] - self.offsets[part_index]).tolist()
            decoded = decode(self.parts[part_index], self._sources[part_index], records)
            for p, r, ev in zip(pos, records, decoded, strict=True):
                out[p] = (self.parts[part_index], r, ev)
        return out

    def read(self, indices: np.ndarray, width: int | None = None) -> Batch:
        events = self.events(indices)
        n_max = max((len(ev["X"]) for _, _, ev in events), default=0)
        width = width if width is not None else max(n_max, 1)
        if n_max > width:
            raise ValueError(f"an event of {n_max} elements does not fit the batch width {width}")
        b = len(events)
        want = set(self.fields)
        out: Batch = {}
        if want & {"X", "mask"}:
            out["X"] = np.zeros((b, width, fmt.N_X), np.float32)
        for key in ("ytarget", "ycand"):
            if key in want:
                out[key] = np.zeros((b, width, fmt.N_Y), np.float32)
        for key in ("ytarget_pt_orig", "ytarget_e_orig"):
            if key in want:
                out[key] = np.zeros((b, width), np.float32)
        if "genmet" in want:
            out["genmet"] = np.zeros(b, np.float32)
        for key in ("genjets", "targetjets"):
            if key in want:
                j = max((len(ev[key]) for _, _, ev in events), default=0)
                out[key] = np.zeros((b, max(j, 1), 4), np.float32)
        for i, (part, record, ev) in enumerate(events):
            ev = prepare(ev, part, record, sort_by_pt=self.sort_by_pt)
            n = len(ev["X"])
            for key in ("X", "ytarget", "ycand", "ytarget_pt_orig", "ytarget_e_orig"):
                if key in out:
                    out[key][i, :n] = ev[key]
            if "genmet" in out:
                out["genmet"][i] = ev["genmet"]
            for key in ("genjets", "targetjets"):
                if key in out:
                    out[key][i, : len(ev[key])] = ev[key]
        out["mask"] = out["X"][..., 0] != 0
        if "event_mask" in want:
            out["event_mask"] = np.ones(b, bool)
        return {k: v for k, v in out.items() if k in want}


# ---------------------------------------------------------------- the spec


def source(cfg: MlpfConfig, split: str = "train", fields: Sequence[str] | None = None) -> MlpfSource:
    src = MlpfSource(parts(cfg, split), cfg, fields)
    if len(src) == 0:
        raise ValueError(f"{', '.join(map(str, src.parts))}: no events")
    return src


def from_config(
    src: MlpfSource,
    cfg: MlpfConfig,
    *,
    seed: int,
    process_index: int,
    process_count: int,
    shuffle: bool | None = None,
):
    """Bucketed batches: ``batch_size`` events each, or an element budget (see the module docstring)."""
    shuffle = cfg.shuffle if shuffle is None else shuffle
    widths = pipeline.bucket_widths(cfg.bucket_widths, max(cfg.bucket_widths))
    options = pipeline.config_options(
        cfg, seed=seed, process_index=process_index, process_count=process_count, shuffle=shuffle
    )
    if cfg.element_budget == 0:
        return pipeline.batched(src, buckets=pipeline.Buckets(widths, src.lengths), **options)
    sizes = pipeline.budget_sizes(widths, cfg.element_budget, cfg.batch_multiple)
    plan = pipeline.BudgetPlan(src.lengths, widths, sizes, seed, shuffle)
    unused = plan.unused()
    if unused:
        log.warning("events never read (too few to fill one batch of their width): %s", unused)
    return pipeline.batched(src, plan=plan, **options)


# ---------------------------------------------------------------- raw inputs (exported models)

# a column's variable on track rows | on cluster rows (the 17th column is 0 on tracks)
X_VARIABLES = tuple(
    t if t == c else f"{t}|{c}" for t, c in zip((*fmt.TRACK_FEATURES, "-"), fmt.CLUSTER_FEATURES, strict=True)
)


def raw_signature(cfg: MlpfConfig) -> RawSignature:
    """``X`` as stored, elements padded with zero rows; ``mask`` (real elements) is made inside, as the
    pipeline makes it. The elements stay in the order sent (``data.sort_by_pt`` is not applied)."""

    def prepare(X):
        return {"X": X, "mask": X[..., 0] != 0}

    x = RawTensor(
        "X",
        "float32",
        (ELEMENTS, fmt.N_X),
        X_VARIABLES,
        "the dataset's X per element (column 0: element type 1 track, 2 cluster); rows of zeros pad",
    )
    about = {"mask": "mask = X[..., 0] != 0: rows whose element type is 0 are padding"}
    return RawSignature(inputs=(x,), prepare=prepare, about=about)


def _raw_source(cfg: MlpfConfig, path: str) -> MlpfSource:
    """The evaluation split (``data.eval_split``) of the TFDS data directory ``path``."""
    return MlpfSource(parts(dataclasses.replace(cfg, path=path, eval_path=None), "eval"), cfg, ["X"])


def raw_read(cfg: MlpfConfig, path: str, start: int, n: int) -> Batch:
    """Events ``start .. start + n`` of the data directory ``path`` (``data.datasets`` and ``data.configs``,
    evaluation split): ``X`` as stored, padded with zero rows to the longest event read."""
    src = _raw_source(cfg, path)
    if not 0 <= start <= len(src) or n < 0:
        raise ValueError(f"{path}: events {start}..{start + n} are outside its {len(src)} events")
    events = [ev["X"] for _, _, ev in src.events(np.arange(start, min(start + n, len(src))))]
    x = np.zeros((len(events), max((len(e) for e in events), default=1), fmt.N_X), np.float32)
    for i, e in enumerate(events):
        x[i, : len(e)] = e
    return {"X": x}


RAW = RawInputs(signature=raw_signature, read=raw_read, length=lambda cfg, path: len(_raw_source(cfg, path)))

SPEC = DatasetSpec(name="mlpf_tfds", config=MlpfConfig, source=source, pipeline=from_config, raw=RAW)
