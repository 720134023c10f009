"""Synthetic training batches for benchmarks: no files, no Grain, identical on every process.

Inputs follow the model's ``input_spec`` (floats: standard normal; boolean masks: a random number of
leading valid entries, at least one); labels come from a per-model maker, because a model's spec
names its inputs but not its targets. ``DATA`` is a placeholder data format so that a config can be
loaded without importing the real reader (GN2's ``ftag_h5`` pulls in Grain, which GPU benchmark
machines need not have).
"""

from __future__ import annotations

from collections.abc import Callable
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


def _gn2_labels(cfg: Any, inputs: Batch, rng: np.random.Generator) -> Batch:
    """The ATLAS ftag batch's labels (inputs/ftag_h5.py): flavour, and track origin / vertex with -1
    on padded tracks; a few vertices per jet so the vertexing loss has matching pairs."""
    valid = inputs["valid"]
    b, t = valid.shape
    origin = rng.integers(0, cfg.origin_classes, size=(b, t), dtype=np.int32)
    vertex = rng.integers(0, 4, size=(b, t), dtype=np.int32)
    return {
        "flavour": rng.integers(0, cfg.jet_classes, size=b, dtype=np.int32),
        "track_origin": np.where(valid, origin, -1).astype(np.int32),
        "track_vertex": np.where(valid, vertex, -1).astype(np.int32),
    }


LABELS: dict[str, Callable[[Any, Batch, np.random.Generator], Batch]] = {"gn2": _gn2_labels}


def batch(spec: ModelSpec, model_cfg: Any, size: int, seed: int) -> Batch:
    """One global batch of ``size`` examples; the same ``seed`` gives the same arrays everywhere."""
    if spec.name not in LABELS:
        raise ConfigError(
            f"benchmarks make synthetic labels for {', '.join(sorted(LABELS))} only, not model "
            f"{spec.name!r}: add a label maker to smilejax/bench/_synthetic.py"
        )
    rng = np.random.default_rng(seed)
    inputs: Batch = {}
    for name, struct in spec.input_spec(model_cfg, size).items():
        shape, dtype = tuple(struct.shape), np.dtype(struct.dtype)
        if dtype == np.bool_:
            lengths = rng.integers(1, shape[-1] + 1, size=shape[:-1])
            inputs[name] = np.arange(shape[-1]) < lengths[..., None]
        elif np.issubdtype(dtype, np.floating):
            inputs[name] = rng.standard_normal(shape).astype(dtype)
        else:
            inputs[name] = np.zeros(shape, dtype)
    return {**inputs, **LABELS[spec.name](model_cfg, inputs, rng)}


def mlpf_events(seed: int, events: int, elements: int) -> Batch:
    """``events`` CLIC-like MLPF events padded to ``elements`` (``X`` [B, N, 17], ``mask``, ``ytarget``
    [B, N, 13], particleflow's layout: see ``models/mlpf.py``).

    Each event has a uniform N/2..N real elements (tracks, then clusters), so a batch is about 75% full
    (particleflow's CLIC samples pad events of a few hundred elements the same way); about 70% of the
    elements have a target particle. Padded rows are zero, as particleflow's loader writes them.
    """
    rng = np.random.default_rng(seed)
    shape = (events, elements)
    n_real = rng.integers(max(1, elements // 2), elements + 1, size=(events, 1))
    n_tracks = rng.binomial(n_real, 0.4)
    slot = np.arange(elements)
    valid = slot < n_real
    pt, eta = rng.lognormal(0.0, 1.0, shape), rng.normal(0.0, 1.5, shape)
    phi = rng.uniform(-np.pi, np.pi, shape)
    X = np.concatenate(
        [
            np.where(slot < n_tracks, 1.0, 2.0)[..., None],  # element type: track, cluster
            np.stack([pt, eta, np.sin(phi), np.cos(phi)], axis=-1),
            (pt * np.cosh(eta) * rng.uniform(1.0, 1.2, shape))[..., None],  # track p / cluster E
            rng.normal(size=(*shape, 11)),
        ],
        axis=-1,
    )
    cls = rng.choice(6, size=shape, p=[0.3, 0.3, 0.1, 0.2, 0.05, 0.05])  # none, 211, 130, 22, 11, 13
    phi_t = phi + rng.normal(0.0, 0.05, shape)
    target = np.stack(
        [
            cls,
            rng.integers(-1, 2, size=shape),  # charge
            rng.normal(0.0, 0.2, shape),  # log(pT_target / pT_element)
            eta + rng.normal(0.0, 0.05, shape),
            np.sin(phi_t),
            np.cos(phi_t),
            rng.normal(0.0, 0.2, shape),  # log(E_target / E_element)
        ],
        axis=-1,
    )
    particle = valid & (cls != 0)
    y = np.zeros((*shape, 13), np.float32)
    y[..., :7] = np.where(particle[..., None], target, 0.0)
    return {"X": np.where(valid[..., None], X, 0.0).astype(np.float32), "mask": valid, "ytarget": y}
