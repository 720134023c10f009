"""Graph construction from a trained metric-learning run (``tracking_embedding``), for the trackml
format's graph hook: ``data.graph: smilejax.models.tracking.construction:embedding_graph`` with the run
named by ``$SMILEJAX_TRACKING_EMBEDDING`` (radius ``$SMILEJAX_TRACKING_RADIUS``, default the run's
``r_train``; neighbours ``$SMILEJAX_TRACKING_KNN``, default the run's ``knn``).

The embedding and the radius search run on the device (``embedding.radius_graph``: fixed-size
neighbour lists, queries in chunks); events are padded to a multiple of 1024 hits so a few shapes
compile. Edges come back inner -> outer (by the hit's radius), each pair once.

Note: the trackml format caches candidate edges per graph stage by ``data.graph`` and the module-map
settings, not by the run: use a fresh ``data.cache_dir`` when the run or the radius changes.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import jax
import numpy as np

from . import embedding

PAD = 1024


class EmbeddingGraph:
    """``fn(tables, data_cfg) -> [E, 2]`` candidate edges from the trained embedding of ``run_dir``."""

    def __init__(self, run_dir: str | Path, radius: float | None = None, knn: int | None = None):
        from smilejax import trained

        self.trained = trained.load(run_dir)
        cfg = self.trained.cfg.model
        self.radius = cfg.r_train if radius is None else radius
        self.knn = cfg.knn if knn is None else knn
        self.chunk = cfg.chunk
        model = self.trained.model

        @jax.jit
        def run(hits, mask):
            emb = model(hits[None], mask[None])["embedding"][0]
            idx, valid = embedding.radius_graph(emb, mask, self.radius, self.knn, self.chunk)
            return embedding.edges_from_neighbours(idx, valid, hits[:, 0])

        self._run = run

    def edges(self, features: np.ndarray) -> np.ndarray:
        """[E, 2] edges of one event's hit features ([n, F] as the trackml format makes them)."""
        n = len(features)
        width = max(PAD, -(-n // PAD) * PAD)
        hits = np.zeros((width, features.shape[1]), np.float32)
        hits[:n] = features
        edges, mask = jax.device_get(self._run(hits, np.arange(width) < n))
        return edges[mask].astype(np.int32)

    def __call__(self, tables: dict, data_cfg) -> np.ndarray:
        from smilejax.inputs.trackml.features import hit_features

        cells = tables.get("cells") if data_cfg.cell_features else None
        return self.edges(hit_features(tables["hits"], cells))


@functools.cache
def _from_environment() -> EmbeddingGraph:
    run = os.environ.get("SMILEJAX_TRACKING_EMBEDDING")
    if not run:
        raise ValueError(
            "data.graph=...construction:embedding_graph needs SMILEJAX_TRACKING_EMBEDDING=RUN_DIR (a run of "
            "smilejax train tracking-embedding)"
        )
    radius = os.environ.get("SMILEJAX_TRACKING_RADIUS")
    knn = os.environ.get("SMILEJAX_TRACKING_KNN")
    return EmbeddingGraph(run, float(radius) if radius else None, int(knn) if knn else None)


def embedding_graph(tables: dict, data_cfg) -> np.ndarray:
    """The trackml format's graph hook (see the module doc)."""
    return _from_environment()(tables, data_cfg)


def edge_metrics(edges: np.ndarray, true_pairs: np.ndarray, n_hits: int) -> dict[str, float]:
    """Efficiency (true consecutive pairs found) and purity (found pairs that are true) of a graph."""
    key = lambda e: np.minimum(e[:, 0], e[:, 1]) * n_hits + np.maximum(e[:, 0], e[:, 1])  # noqa: E731
    found, true = np.unique(key(edges)), np.unique(key(true_pairs))
    hit = np.isin(true, found).sum()
    return {
        "efficiency": float(hit / max(true.size, 1)),
        "purity": float(np.isin(found, true).sum() / max(found.size, 1)),
        "edges": int(found.size),
    }


__all__ = ["EmbeddingGraph", "edge_metrics", "embedding_graph"]
