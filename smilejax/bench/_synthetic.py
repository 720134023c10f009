"""Synthetic training batches for benchmarks: no files, no Grain, identical on every process.

Inputs follow the model's ``input_spec`` (floats: standard normal; boolean masks: a random number of
leading valid entries, at least one); the targets come from the family's ``synthetic_labels`` hook,
because a spec names its inputs but not its targets. ``DATA`` is a placeholder data format so that a
config can be loaded without importing the real reader (a format's reader may pull in Grain, which GPU
benchmark machines need not have).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from smilejax.config import ConfigError
from smilejax.inputs.spec import DataConfig, DatasetSpec
from smilejax.models.spec import ModelSpec

Batch = dict[str, np.ndarray]


def _no_source(cfg: DataConfig, split: str):
    raise ValueError("data.format=smilejax.bench._synthetic:DATA has no files: benchmarks make its batches")


DATA = DatasetSpec(name="smilejax.bench._synthetic:DATA", config=DataConfig, source=_no_source)
FORMAT = "smilejax.bench._synthetic:DATA"


def inputs(spec: ModelSpec, model_cfg: Any, size: int, rng: np.random.Generator) -> Batch:
    """Random inputs of ``size`` examples in the shapes and dtypes of ``spec.input_spec``."""
    made: Batch = {}
    for name, struct in spec.input_spec(model_cfg, size).items():
        shape, dtype = tuple(struct.shape), np.dtype(struct.dtype)
        if dtype == np.bool_:
            lengths = rng.integers(1, shape[-1] + 1, size=shape[:-1])
            made[name] = np.arange(shape[-1]) < lengths[..., None]
        elif np.issubdtype(dtype, np.floating):
            made[name] = rng.standard_normal(shape).astype(dtype)
        else:
            made[name] = np.zeros(shape, dtype)
    return made


def batch(spec: ModelSpec, model_cfg: Any, size: int, seed: int) -> Batch:
    """One global batch of ``size`` examples; the same ``seed`` gives the same arrays everywhere."""
    if spec.synthetic_labels is None:
        raise ConfigError(
            f"model {spec.name!r} has no synthetic_labels hook (ModelSpec.synthetic_labels): benchmarks "
            "cannot make the targets of its synthetic batches"
        )
    rng = np.random.default_rng(seed)
    made = inputs(spec, model_cfg, size, rng)
    return {**made, **spec.synthetic_labels(model_cfg, made, rng)}
