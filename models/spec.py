"""The contract between a model module and the framework."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
from flax import nnx

Batch = dict[str, jax.Array]
LossFn = Callable[[nnx.Module, Batch], tuple[jax.Array, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class Imported:
    """A model trained elsewhere, as an importer hands it to ``smilejax import``.

    config: config sections (``model``, ``data``, ``optimizer``, ...) laid over the model's packaged
        config; files they name (a norm dict) are already written into the run directory.
    params(model) -> the foreign weights as ``model``'s ``nnx.Param`` state (``model`` is built from
        ``config``, possibly abstract); raises naming any weight that does not fit.
    source: provenance for ``run.json`` (the files read, the foreign framework's version, ...).
    """

    config: dict
    params: Callable[[nnx.Module], nnx.State]
    source: dict


# importer(checkpoint, foreign config or None, run directory) -> Imported; its docstring's first paragraph
# describes the source for the user (`smilejax import --help`)
Importer = Callable[[Path, Path | None, Path], Imported]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What the framework needs from a model; a model knows nothing of meshes, files or loggers.

    A module ``smilejax.models.<name>`` exposes ``SPEC = ModelSpec(...)``.

    config: dataclass of hyperparameters; it must have a ``name: str`` field (the registry key).
    build(cfg, *, rngs, dtype) -> nnx.Module whose parameters carry logical axis names through
        ``nnx.with_partitioning`` (``batch``, ``embed``, ``mlp``, ``heads``, ...); ``dtype`` is the
        compute dtype, parameters stay float32.
    loss(model, batch) -> (scalar float32 loss, {name: scalar metric}); ``batch`` is the dict of
        arrays the dataset yields.
    input_spec(cfg, batch_size) -> {name: jax.ShapeDtypeStruct} of the forward inputs (export).
    importers: {source: Importer} for ``smilejax import SOURCE CHECKPOINT`` (e.g. GN2's ``"salt"``).
    """

    name: str
    config: type
    build: Callable[..., nnx.Module]
    loss: LossFn
    input_spec: Callable[[Any, int], dict[str, jax.ShapeDtypeStruct]]
    importers: Mapping[str, Importer] = dataclasses.field(default_factory=dict)
