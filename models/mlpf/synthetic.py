"""Synthetic MLPF batches for benchmarks and tests: no files, numpy only, the same arrays for a seed.

``events`` makes CLIC-like events (element types, positive pT and energies) for the MLPF study of
``smilejax bench train``; ``labels`` is the spec's ``synthetic_labels`` hook: targets for the generic
synthetic batch, whose ``X`` is standard normal (``smilejax.bench._synthetic``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

Batch = dict[str, np.ndarray]
CLASS_P = (0.3, 0.3, 0.1, 0.2, 0.05, 0.05)  # none, 211, 130, 22, 11, 13 (particleflow's CLIC classes)
YTARGET_WIDTH = 13  # particleflow's ytarget columns; the loss reads 0 and 2..6


def events(seed: int, events: int, elements: int) -> Batch:
    """``events`` CLIC-like MLPF events padded to ``elements`` (``X`` [B, N, 17], ``mask``, ``ytarget``
    [B, N, 13], particleflow's layout: see ``model.py``).

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
    cls = rng.choice(6, size=shape, p=CLASS_P)
    y = _targets(rng, cls, eta, phi, valid & (cls != 0))
    return {"X": np.where(valid[..., None], X, 0.0).astype(np.float32), "mask": valid, "ytarget": y}


def labels(cfg: Any, inputs: Batch, rng: np.random.Generator) -> Batch:
    """``ytarget`` for inputs that follow ``input_spec`` (any ``X``): a target particle only on real
    elements whose pT column is positive, so the loss's sqrt(target pT) weights stay finite."""
    X, mask = inputs["X"], inputs["mask"]
    shape = mask.shape
    real = mask & (X[..., 0] != 0) & (X[..., 1] > 0)
    cls = rng.choice(cfg.num_classes, size=shape, p=_class_p(cfg.num_classes))
    phi = np.arctan2(X[..., 3], X[..., 4])
    return {"ytarget": _targets(rng, cls, X[..., 2], phi, real & (cls != 0))}


def _class_p(num_classes: int) -> np.ndarray:
    if num_classes == len(CLASS_P):
        return np.asarray(CLASS_P)
    return np.full(num_classes, 1.0 / num_classes)


def _targets(
    rng: np.random.Generator, cls: np.ndarray, eta: np.ndarray, phi: np.ndarray, particle: np.ndarray
) -> np.ndarray:
    """particleflow's ytarget [..., 13]: columns 0..6 set where ``particle``, zero elsewhere."""
    shape = cls.shape
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
    y = np.zeros((*shape, YTARGET_WIDTH), np.float32)
    y[..., :7] = np.where(particle[..., None], target, 0.0)
    return y
