"""The contract between a model module and the framework."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

Batch = dict[str, jax.Array]
LossFn = Callable[[nnx.Module, Batch], tuple[jax.Array, dict[str, jax.Array]]]


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
    """

    name: str
    config: type
    build: Callable[..., nnx.Module]
    loss: LossFn
    input_spec: Callable[[Any, int], dict[str, jax.ShapeDtypeStruct]]
