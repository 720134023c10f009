"""The contract between a dataset module and the framework."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import numpy as np

Batch = dict[str, np.ndarray]
ELEMENTS = "elements"  # the name of a raw input's set axis (tracks, particles): any size in an export


@dataclasses.dataclass
class DataConfig:
    """Fields every dataset config has; a format subclasses it with its own options.

    path: files (a path, a glob, or a comma-separated list); None lets a format make its default set.
    batch_size: the global batch (all processes together).
    """

    format: str = ""
    path: str | None = None
    eval_path: str | None = None
    batch_size: int = 32
    shuffle: bool = True
    read_threads: int = 2
    prefetch: int = 4
    workers: int = 0

    # Fields a resumed run may change: where the files are (staging moves them) and speed settings; any
    # other change would continue another batch sequence from the restored position. Formats add theirs.
    resume_free: ClassVar[frozenset[str]] = frozenset(
        {"path", "eval_path", "read_threads", "prefetch", "workers"}
    )

    def global_batch_sizes(self) -> list[int]:
        """Every global batch size the pipeline yields (formats with varying batches override this); each
        must divide over the processes, the batch-sharded devices and the gradient-accumulation steps."""
        return [self.batch_size]

    def microbatch_problem(self) -> str | None:
        """Why this input's batches cannot be split into equal microbatches (``train.grad_accum``), or
        None: each microbatch's loss is a mean over its own examples, so they must hold equal shares."""
        return None

    def with_batch_size(self, batch_size: int) -> DataConfig:
        """This config yielding fixed batches of ``batch_size`` examples (evaluation, serving benchmarks)."""
        return dataclasses.replace(self, batch_size=batch_size)

    def describe_batch(self, size: int) -> str:
        """How an error names the global batch ``size``: the config keys it comes from."""
        return "data.batch_size"


class BatchSource(Protocol):
    """Random access by batches: ``read`` takes many sorted indices at once, so a format reads slices
    instead of one record at a time in Python."""

    def __len__(self) -> int: ...

    def read(self, indices: np.ndarray) -> Batch: ...


@dataclasses.dataclass(frozen=True)
class RawTensor:
    """One input as a client sends it, per example (no batch axis): ``dims`` holds ints and ``ELEMENTS``
    for the set axis; ``variables`` names the last axis' entries as the files name them."""

    name: str
    dtype: str  # numpy's name: float32, bool, ...
    dims: tuple[int | str, ...]
    variables: tuple[str, ...] = ()
    about: str = ""


@dataclasses.dataclass(frozen=True)
class RawSignature:
    """A run's raw inputs: the tensors, and ``prepare(**raw) -> {model input: array}``, a pure jnp
    function (it is traced into exported programs) that makes what the pipeline would make from the
    same examples (masks, normalisation with the run's numbers). ``about``: what an export records."""

    inputs: tuple[RawTensor, ...]
    prepare: Callable[..., dict[str, Any]]
    about: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class RawInputs:
    """The variables as the files store them (names, units), before the pipeline's masks and normalisation.

    signature(cfg) -> RawSignature of a run's data config (reads the run's normalisation where it has one).
    read(cfg, path, start, n) -> Batch: examples ``start .. start + n`` of the file ``path`` as the
        signature's arrays (the last batch may be shorter).
    length(cfg, path) -> int: how many examples ``path`` holds.
    """

    signature: Callable[[DataConfig], RawSignature]
    read: Callable[[DataConfig, str, int, int], Batch]
    length: Callable[[DataConfig, str], int]


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A module ``smilejax.inputs.<format>`` exposes ``SPEC = DatasetSpec(...)``.

    config: subclass of ``DataConfig``.
    source(cfg, split) -> BatchSource for split ``"train"`` or ``"eval"``; raises a clear error on
        missing or malformed files before training starts.
    pipeline: optional replacement for ``pipeline.from_config`` (for bucketing and the like), same signature.
    model_config(cfg, model_cfg) -> model_cfg: optional; the model config completed with the settings the
        data config decides (``ftag_h5``: class weights from ``data.class_dict``), applied wherever a model
        is built; raises naming the fields when the two sections conflict.
    raw: optional ``RawInputs``: exported models then take the files' variables and apply the masks and
        normalisation inside (without it they take the pipeline's batches).
    """

    name: str
    config: type
    source: Callable[[DataConfig, str], BatchSource]
    pipeline: Callable | None = None
    model_config: Callable[[DataConfig, Any], Any] | None = None
    raw: RawInputs | None = None
