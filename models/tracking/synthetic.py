"""Labels (and graph structure) of synthetic batches: ``ModelSpec.synthetic_labels`` of the tracking
models, so ``smilejax bench train`` runs without files. The generic synthetic batch gives random hits,
masks with a random number of leading real entries, and zero edges; these hooks replace the edges with
random ones between each event's real hits and add the truth the losses read."""

from __future__ import annotations

from typing import Any

import numpy as np

Batch = dict[str, np.ndarray]


def _particles(rng: np.random.Generator, hit_mask: np.ndarray, hits_per_particle: int = 8) -> np.ndarray:
    """Hits in runs of ``hits_per_particle`` of one particle (1..), padding 0."""
    slot = np.arange(hit_mask.shape[1])
    return np.where(hit_mask, slot // hits_per_particle + 1, 0).astype(np.int32)


def _true_pairs(particle: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    b, n = particle.shape
    same = (particle[:, 1:] == particle[:, :-1]) & (particle[:, 1:] > 0)
    pairs = np.zeros((b, n, 2), np.int32)
    mask = np.zeros((b, n), bool)
    for row in range(b):
        idx = np.flatnonzero(same[row])
        pairs[row, : idx.size] = np.stack([idx, idx + 1], 1)
        mask[row, : idx.size] = True
    return pairs, mask


def ign_labels(cfg: Any, inputs: Batch, rng: np.random.Generator) -> Batch:
    hit_mask, edge_mask = inputs["hit_mask"], inputs["edge_mask"]
    n_real = np.maximum(hit_mask.sum(1, keepdims=True), 1)
    particle = _particles(rng, hit_mask)
    # half the edges join a hit to the next one (true when of one particle), half are random
    a = (rng.random(edge_mask.shape) * n_real).astype(np.int32)
    step = np.where(
        rng.random(edge_mask.shape) < 0.5, 1, (rng.random(edge_mask.shape) * n_real).astype(np.int32)
    )
    b = np.minimum(a + step, n_real - 1).astype(np.int32)
    edges = np.where(edge_mask[..., None], np.stack([a, b], -1), 0).astype(np.int32)
    rows = np.arange(len(a))[:, None]
    y = (particle[rows, a] == particle[rows, b]) & (particle[rows, a] > 0) & edge_mask & (a != b)
    pt = np.where(hit_mask, rng.exponential(1.0, hit_mask.shape) + 0.1, 0).astype(np.float32)
    return {"edges": edges, "edge_y": y, "particle": particle, "pt": pt}


def embedding_labels(cfg: Any, inputs: Batch, rng: np.random.Generator) -> Batch:
    particle = _particles(rng, inputs["hit_mask"])
    pairs, mask = _true_pairs(particle)
    return {"particle": particle, "true_edges": pairs, "true_edge_mask": mask}
