"""Graph construction from a trained metric-learning run (``tracking_embedding``), for the trackml
format's graph hook: ``data.graph: smilejax.models.tracking.construction:embedding_graph`` with the run
named by ``$SMILEJAX_TRACKING_EMBEDDING`` (radius ``$SMILEJAX_TRACKING_RADIUS``, default the run's
``r_train``; neighbours ``$SMILEJAX_TRACKING_KNN``, default the run's ``knn``).

The embedding and the radius search run on the device (``embedding.radius_graph``: fixed-size
neighbour lists, queries in chunks); events are padded to a multiple of 1024 hits so a few shapes
compile. Edges come back inner -> outer (by the hit's radius), each pair once.

``data.graph: smilejax.models.tracking.construction:filtered_graph`` applies a trained edge filter
(``tracking-filter``, the run named by ``$SMILEJAX_TRACKING_FILTER``) to the candidate edges of the graph
stage that run trained on (its own ``data.graph`` and module-map settings) and keeps the edges scoring
above ``$SMILEJAX_TRACKING_FILTER_CUT`` (default: the run's ``edge_cut``).

The trackml format caches candidate edges per graph stage: its key holds ``data.graph``, the module-map
settings and each hook's ``cache_key()`` (the run's path and checkpoints, the radius, knn or cut read from
the environment), so a changed run or setting builds the edges again.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import jax
import numpy as np

from . import embedding
from .filter import FilterConfig

PAD = 1024
EDGE_PAD = 8192  # the filter's edges are padded to a multiple of this (a few compiled shapes)
FILTER_FAMILY = FilterConfig.name


def padded(rows: np.ndarray, multiple: int, dtype) -> np.ndarray:
    """``rows`` [n, ...] zero-padded to a multiple of ``multiple`` rows (at least one multiple), so a
    few shapes compile across events."""
    out = np.zeros((max(multiple, -(-len(rows) // multiple) * multiple), *rows.shape[1:]), dtype)
    out[: len(rows)] = rows
    return out


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
        hits = padded(features, PAD, np.float32)
        edges, mask = jax.device_get(self._run(hits, np.arange(len(hits)) < len(features)))
        return edges[mask].astype(np.int32)

    def __call__(self, tables: dict, data_cfg) -> np.ndarray:
        return self.edges(run_features(tables, self.trained.cfg.data, "metric-learning embedding"))


def run_features(tables: dict, run_data, stage: str) -> np.ndarray:
    """The hit features a trained graph stage read in training: its own run's ``data.cell_features``,
    whatever the GNN's config says (``tables`` then needs the cells)."""
    from smilejax.inputs.trackml.features import hit_features

    if not run_data.cell_features:
        return hit_features(tables["hits"], None)
    if tables.get("cells") is None:
        raise ValueError(
            f"the {stage} reads cell features (its run has data.cell_features: true): set "
            "data.cell_features: true here too"
        )
    return hit_features(tables["hits"], tables["cells"])


def _run_from_environment(var: str, hook: str, config: str) -> str:
    """The run directory a graph hook reads from ``var``; a named error when it is not set."""
    run = os.environ.get(var)
    if not run:
        raise ValueError(
            f"data.graph=...construction:{hook} needs {var}=RUN_DIR (a run of smilejax train {config})"
        )
    return run


# a hook's loaded model, kept per (run, settings) as read from the environment, so a changed variable
# loads the other run, in step with the edge cache's key (``_environment_key``)
_embedding = functools.cache(EmbeddingGraph)


def _from_environment() -> EmbeddingGraph:
    run = _run_from_environment("SMILEJAX_TRACKING_EMBEDDING", "embedding_graph", "tracking-embedding")
    radius = os.environ.get("SMILEJAX_TRACKING_RADIUS")
    knn = os.environ.get("SMILEJAX_TRACKING_KNN")
    return _embedding(run, float(radius) if radius else None, int(knn) if knn else None)


def embedding_graph(tables: dict, data_cfg) -> np.ndarray:
    """The trackml format's graph hook (see the module doc)."""
    return _from_environment()(tables, data_cfg)


def _environment_key(run_var: str, *setting_vars: str) -> list:
    """What a learned graph reads from the environment, for the trackml edge cache's key: the run (its
    resolved path and its checkpoints' names and times, so a retrained run counts as new) and settings."""
    run = os.environ.get(run_var)
    path = Path(run).expanduser().resolve() if run else None
    steps = sorted((p.name, p.stat().st_mtime_ns) for p in path.glob("checkpoints/*")) if path else []
    return [str(path), steps, *(os.environ.get(v) for v in setting_vars)]


embedding_graph.cache_key = functools.partial(  # type: ignore[attr-defined]
    _environment_key, "SMILEJAX_TRACKING_EMBEDDING", "SMILEJAX_TRACKING_RADIUS", "SMILEJAX_TRACKING_KNN"
)


class FilteredGraph:
    """``fn(tables, data_cfg) -> [E, 2]``: the candidate edges of the graph stage ``run_dir`` (a trained
    ``tracking_filter`` run) trained on, those its filter scores above ``cut`` (default the run's
    ``edge_cut``)."""

    def __init__(self, run_dir: str | Path, cut: float | None = None):
        from smilejax.inputs.trackml.source import graph_builder

        from smilejax import config, registry, trained

        path = Path(run_dir) / "config.yaml"
        if not path.is_file():
            raise FileNotFoundError(
                f"{run_dir} is not a smilejax run directory (no config.yaml): filtered_graph needs a run of "
                "smilejax train tracking-filter"
            )
        family = registry.model(config.load(path).model.name).name  # before the (slower) model load
        if family != FILTER_FAMILY:
            raise ValueError(
                f"{run_dir} is a run of {family}, not of {FILTER_FAMILY} (smilejax train tracking-filter): "
                "filtered_graph needs a trained edge filter"
            )
        self.trained = trained.load(run_dir)
        self.cut = self.trained.cfg.model.edge_cut if cut is None else cut
        if not 0 <= self.cut < 1:
            raise ValueError(f"the filter's cut must be in [0, 1), not {self.cut}")
        self.data = self.trained.cfg.data
        if self.data.graph.endswith(":filtered_graph"):
            raise ValueError(f"{run_dir} trained on filtered graphs itself: its candidates would recurse")
        self.candidates = graph_builder(self.data)
        model = self.trained.model

        @jax.jit
        def scores(hits, edges, edge_mask):
            n = hits.shape[0]
            hit_mask = np.ones(n, bool)
            return model(hits[None], hit_mask[None], edges[None], edge_mask[None])["edge_scores"][0]

        self._scores = scores

    def scores(self, features: np.ndarray, edges: np.ndarray) -> np.ndarray:
        """[E] filter scores of one event's candidate ``edges`` ([E, 2] rows of ``features``)."""
        m = len(edges)
        hits, rows = padded(features, PAD, np.float32), padded(edges, EDGE_PAD, np.int32)
        return np.asarray(jax.device_get(self._scores(hits, rows, np.arange(len(rows)) < m)))[:m]

    def keep(self, features: np.ndarray, edges: np.ndarray) -> np.ndarray:
        """The ``edges`` whose score is above the cut, in their order."""
        return edges[self.scores(features, edges) > self.cut].astype(np.int32)

    def __call__(self, tables: dict, data_cfg) -> np.ndarray:
        return self.keep(run_features(tables, self.data, "edge filter"), self.candidates(tables))


_filter = functools.cache(FilteredGraph)


def _filter_from_environment() -> FilteredGraph:
    run = _run_from_environment("SMILEJAX_TRACKING_FILTER", "filtered_graph", "tracking-filter")
    text = os.environ.get("SMILEJAX_TRACKING_FILTER_CUT")
    try:
        cut = float(text) if text else None
    except ValueError:
        raise ValueError(f"SMILEJAX_TRACKING_FILTER_CUT must be a score in [0, 1), not {text!r}") from None
    return _filter(run, cut)


def filtered_graph(tables: dict, data_cfg) -> np.ndarray:
    """The trackml format's graph hook of a trained edge filter (see the module doc)."""
    return _filter_from_environment()(tables, data_cfg)


def _filter_key() -> list:
    """The filter's run and cut, and the key of the graph stage it filters (a filter trained on an
    embedding graph also reads that embedding's run and radius from the environment)."""
    from smilejax.inputs.trackml.source import hook_key

    from smilejax import config

    key = _environment_key("SMILEJAX_TRACKING_FILTER", "SMILEJAX_TRACKING_FILTER_CUT")
    run = os.environ.get("SMILEJAX_TRACKING_FILTER")
    path = Path(run).expanduser() / "config.yaml" if run else None
    if path is not None and path.is_file():
        stage = config.load(path).data.graph
        key.append(hook_key(stage) if stage not in ("none", "module_map") else stage)
    return key


filtered_graph.cache_key = _filter_key  # type: ignore[attr-defined]


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


__all__ = ["EmbeddingGraph", "FilteredGraph", "edge_metrics", "embedding_graph", "filtered_graph"]
