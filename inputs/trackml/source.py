"""TrackML events as padded graph batches: the config, the splits, graph construction and the reader."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from .. import pipeline
from ..cache import locked, save_array
from ..spec import Batch, DataConfig
from . import cache as tcache
from . import csv as tcsv
from . import module_map as mm
from .features import CELL_FEATURES, COORDINATES, hit_features, particle_truth

log = logging.getLogger(__name__)

NODE_FIELDS = ("hits", "hit_mask", "particle", "pt", "eta", "weight")
EDGE_FIELDS = ("edges", "edge_mask", "edge_y")
TRUTH_FIELDS = ("true_edges", "true_edge_mask")  # opt-in: consecutive hits of each particle
FIELDS = NODE_FIELDS + EDGE_FIELDS + TRUTH_FIELDS

# graph builders by name: (event tables, config) -> [E, 2] hit rows; "module:attr" names any other
GRAPH_BUILDERS: dict[str, Callable] = {}


@dataclasses.dataclass
class TrackmlConfig(DataConfig):
    """``path``: folders of TrackML event CSVs (comma-separated or a glob); ``eval_path`` likewise, else
    the last ``eval_events`` events (default 10 %, at least 1) of ``path`` are held out.
    ``graph``: candidate edges: ``module_map`` (learned from at most ``module_map_events`` training
    events, or read from ``module_map`` when that file exists; ``module_map_triplets``: keep only edges in
    a learned module triplet within its ranges, as acorn's doublet + triplet map), ``none`` (no edges:
    a later stage builds them), or ``package.module:function`` / a name in ``GRAPH_BUILDERS``
    (``fn(tables, cfg) -> [E, 2]``).
    ``node_widths`` / ``edge_widths``: the padded shapes (one compiled shape per level); an event goes to
    the first level holding both its hits and its edges. ``node_budget``: with it, a batch of level k
    holds ``node_budget // node_widths[k]`` events (a multiple of ``batch_multiple``), else ``batch_size``.
    """

    format: str = "trackml"
    batch_size: int = 1
    eval_events: int = 0
    cache_dir: str | None = None
    cell_features: bool = True
    graph: str = "module_map"
    module_map: str | None = None
    module_map_events: int = 1000
    module_map_margin: float = 0.05
    module_map_triplets: bool = False
    node_widths: list[int] = dataclasses.field(default_factory=lambda: [4096, 16384, 65536, 196608])
    edge_widths: list[int] = dataclasses.field(default_factory=lambda: [32768, 131072, 1048576, 3145728])
    node_budget: int = 0
    batch_multiple: int = 1
    fields: list[str] = dataclasses.field(default_factory=lambda: list(NODE_FIELDS + EDGE_FIELDS))

    resume_free: ClassVar[frozenset[str]] = DataConfig.resume_free | {"cache_dir"}

    def __post_init__(self):
        unknown = sorted(set(self.fields) - set(FIELDS))
        if unknown:
            raise ValueError(f"data.fields has unknown key(s) {unknown}; known: {list(FIELDS)}")
        if len(self.node_widths) != len(self.edge_widths) or not self.node_widths:
            raise ValueError(
                f"data.node_widths and data.edge_widths need one entry per level, got {self.node_widths} "
                f"and {self.edge_widths}"
            )
        for name in ("node_widths", "edge_widths"):
            w = np.asarray(getattr(self, name))
            if (w < 1).any() or (np.diff(w) < 0).any():
                raise ValueError(f"data.{name} must be positive and non-decreasing, got {list(w)}")
        if self.node_budget:
            pipeline.budget_sizes(self.node_widths, self.node_budget, self.batch_multiple)

    @property
    def n_features(self) -> int:
        return len(COORDINATES) + (len(CELL_FEATURES) if self.cell_features else 0)

    def kinds(self) -> tuple[str, ...]:
        return tcsv.KINDS if self.cell_features else ("hits", "particles", "truth")

    def global_batch_sizes(self) -> list[int]:
        if not self.node_budget:
            return [self.batch_size]
        return sorted(set(pipeline.budget_sizes(self.node_widths, self.node_budget, self.batch_multiple)))

    def with_batch_size(self, batch_size: int) -> TrackmlConfig:
        return dataclasses.replace(self, batch_size=batch_size, node_budget=0)

    def describe_batch(self, size: int) -> str:
        if not self.node_budget:
            return "data.batch_size"
        return f"the batch of {size} events (data.node_budget // a node width, data.batch_multiple)"


def _folders(spec: str) -> list[Path]:
    import glob

    out = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        matches = sorted(glob.glob(os.path.expanduser(part))) or [part]
        for m in matches:
            if not Path(m).is_dir():
                raise FileNotFoundError(f"data.path {m!r} is not a folder of TrackML event CSVs")
            out.append(Path(m))
    return out


def events(cfg: TrackmlConfig, split: str) -> list[tuple[Path, str]]:
    """(folder, event name) of a split."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if cfg.path is None:
        raise ValueError(
            "data.path is not set: give a folder of TrackML CSVs (make one with `smilejax data make "
            "trackml-synthetic --events 20 --out DIR`)"
        )
    use_eval_path = split == "eval" and cfg.eval_path
    found = [
        (f, e) for f in _folders(cfg.eval_path if use_eval_path else cfg.path) for e in tcsv.find_events(f)
    ]
    if not found:
        raise FileNotFoundError(f"no event*-hits.csv(.gz) in {cfg.eval_path if use_eval_path else cfg.path}")
    if cfg.eval_path:
        return found
    n_eval = cfg.eval_events or max(1, round(0.1 * len(found)))
    if n_eval >= len(found):
        raise ValueError(f"{len(found)} events in {cfg.path}: too few to hold out {n_eval} for evaluation")
    return found[-n_eval:] if split == "eval" else found[:-n_eval]


def load_event(folder: Path, event: str, cfg: TrackmlConfig) -> dict:
    return tcache.load(folder, event, cfg.kinds(), tcache.cache_dir(folder, cfg.cache_dir))


def _vertex(particles: np.ndarray) -> np.ndarray:
    return np.r_[np.zeros((1, 3)), np.stack([particles[k] for k in ("vx", "vy", "vz")], 1)]


def module_map_for(cfg: TrackmlConfig) -> mm.ModuleMap:
    """The module map of the config: its file when it exists, else learned from the training events
    (and saved there, or in the cache of the first training folder)."""
    train = events(cfg, "train")[: max(cfg.module_map_events, 1)]
    if cfg.module_map:
        path = Path(cfg.module_map).expanduser()
        if path.exists():
            return mm.ModuleMap.load(path)
    else:
        stamps = [tcache.stamp(f, e, ("hits", "truth", "particles")) for f, e in train]
        key = [str(train[0][0].resolve()), stamps, mm.VERSION]
        digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:12]
        path = tcache.cache_dir(train[0][0], cfg.cache_dir) / f"module_map-{digest}.npz"
    with locked(path.with_name(path.name + ".lock")):
        if path.exists():
            return mm.ModuleMap.load(path)

        def learning():
            for folder, event in train:
                t = load_event(folder, event, cfg)
                yield (
                    t["hits"],
                    particle_truth(t["truth"], t["particles"])["particle"],
                    _vertex(t["particles"]),
                )

        mmap = mm.learn(learning())
        mmap.save(path)
        log.info("module map: %d module pairs from %d events -> %s", len(mmap), mmap.events, path)
    return mmap


def graph_builder(cfg: TrackmlConfig) -> Callable[[dict], np.ndarray]:
    """``fn(tables) -> [E, 2]`` candidate edges of an event, as ``cfg.graph`` says."""
    if cfg.graph == "none":
        return lambda tables: np.zeros((0, 2), np.int32)
    if cfg.graph == "module_map":
        mmap = module_map_for(cfg)
        return lambda tables: mmap.apply(tables["hits"], cfg.module_map_margin, cfg.module_map_triplets)
    fn = _hook(cfg.graph)
    return lambda tables: np.asarray(fn(tables, cfg), np.int32).reshape(-1, 2)


def _hook(name: str) -> Callable:
    """The graph builder ``data.graph`` names (one of GRAPH_BUILDERS or ``module:function``)."""
    if name in GRAPH_BUILDERS:
        return GRAPH_BUILDERS[name]
    if ":" in name:
        module, _, attr = name.partition(":")
        return getattr(importlib.import_module(module), attr)
    raise ValueError(
        f"data.graph {name!r}: use module_map, none, a name of {sorted(GRAPH_BUILDERS)} or module:function"
    )


def hook_key(name: str) -> object:
    """For the edge cache's key: what hook ``name`` reads outside the config (a learned graph's run, radius
    or cut, from the environment) by its ``cache_key()``; None for a hook without one."""
    key = getattr(_hook(name), "cache_key", None)
    return key() if callable(key) else None


class TrackmlSource:
    """Random access to events (``BatchSource``); ``read(indices, width=level)`` pads to that level."""

    def __init__(
        self, items: Sequence[tuple[Path, str]], cfg: TrackmlConfig, fields: Sequence[str] | None = None
    ):
        self.items = list(items)
        self.cfg = cfg
        self.fields = tuple(fields or cfg.fields)
        self._graph: Callable | None = None
        self._digest: str | None = None
        self._levels: np.ndarray | None = None
        self.nodes = np.zeros(len(self.items), np.int64)
        for folder in dict.fromkeys(f for f, _ in self.items):  # one index read per folder
            rows = [i for i, (f, _) in enumerate(self.items) if f == folder]
            names = [self.items[i][1] for i in rows]
            cache = tcache.cache_dir(folder, cfg.cache_dir)
            self.nodes[rows] = tcache.hit_counts(folder, names, cfg.kinds(), cache)

    def __len__(self) -> int:
        return len(self.items)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_graph"] = None
        return state

    @property
    def graph(self) -> Callable:
        if self._graph is None:
            self._graph = graph_builder(self.cfg)
        return self._graph

    def edges_of(self, i: int, tables: dict | None = None) -> np.ndarray:
        """Candidate edges of event ``i``, cached as .npy per event and graph stage."""
        folder, event = self.items[i]
        if self.cfg.graph == "none":
            return np.zeros((0, 2), np.int32)
        path = tcache.cache_dir(folder, self.cfg.cache_dir) / f"{event}.edges-{self._graph_digest()}.npy"
        stamp = json.dumps(tcache.stamp(folder, event, self.cfg.kinds()))
        meta = path.with_suffix(".json")
        if path.exists() and meta.exists() and meta.read_text() == stamp:
            return np.load(path)
        edges = self.graph(tables or load_event(folder, event, self.cfg))
        save_array(path, edges, f"the candidate edges of {event}")
        with contextlib.suppress(OSError):  # a read-only cache: the edges are made again next time
            meta.write_text(stamp)
        return edges

    def _graph_digest(self) -> str:
        """Names the graph stage (and for a learned module map, its training events) in cache files."""
        if self._digest is None:
            cfg = self.cfg
            key = [cfg.graph, cfg.module_map, cfg.module_map_margin, cfg.module_map_triplets, mm.VERSION]
            given = Path(cfg.module_map).expanduser() if cfg.module_map else None
            if cfg.graph == "module_map" and given is not None and given.exists():
                key.append([given.stat().st_size, given.stat().st_mtime_ns])  # a map file replaced
            if self.cfg.graph == "module_map" and not self.cfg.module_map:
                train = events(self.cfg, "train")[: max(self.cfg.module_map_events, 1)]
                # the training events' stamps too: a changed event relearns the map (module_map_for),
                # so edges built with the old map must not be read back
                stamps = [tcache.stamp(f, e, ("hits", "truth", "particles")) for f, e in train]
                key.append([[str(f.resolve()), e] for f, e in train] + stamps)
            if cfg.graph not in ("none", "module_map"):
                key.append(hook_key(cfg.graph))
            self._digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:12]
        return self._digest

    def edge_counts(self) -> np.ndarray:
        """Candidate edges per event. The counts are kept per cache folder and graph stage
        (``edge_counts-<digest>.json``: event -> its CSVs' stamp and its count), so opening the events
        again reads one file instead of every event's edges; an event missing there, or whose CSVs
        changed since, is counted (its edges built or read) and written back."""
        out = np.zeros(len(self), np.int64)
        if self.cfg.graph == "none":
            return out
        for folder in dict.fromkeys(f for f, _ in self.items):
            path = tcache.cache_dir(folder, self.cfg.cache_dir) / f"edge_counts-{self._graph_digest()}.json"
            known, fresh = _read_json(path), {}
            for i in (i for i, (f, _) in enumerate(self.items) if f == folder):
                event = self.items[i][1]
                stamp = json.dumps(tcache.stamp(folder, event, self.cfg.kinds()))
                entry = known.get(event)
                if entry is not None and entry.get("stamp") == stamp:
                    out[i] = entry["edges"]
                else:
                    out[i] = len(self.edges_of(i))
                    fresh[event] = {"stamp": stamp, "edges": int(out[i])}
            if fresh:
                _merge_json(path, fresh)
        return out

    @property
    def levels(self) -> np.ndarray:
        """The padding level (1-based) of every event, from its hit and edge counts."""
        if self._levels is None:
            n_edges = self.edge_counts()
            nw, ew = np.asarray(self.cfg.node_widths), np.asarray(self.cfg.edge_widths)
            level = np.maximum(np.searchsorted(nw, self.nodes), np.searchsorted(ew, n_edges))
            if (level >= nw.size).any():
                i = int(np.flatnonzero(level >= nw.size)[0])
                raise ValueError(
                    f"{self.items[i][0] / self.items[i][1]}: {self.nodes[i]} hits and {n_edges[i]} edges do "
                    f"not fit the largest level ({nw[-1]} nodes, {ew[-1]} edges): raise data.node_widths / "
                    "data.edge_widths"
                )
            self._levels = (level + 1).astype(np.int64)
        return self._levels

    def read(self, indices: np.ndarray, width: int | None = None) -> Batch:
        indices = np.asarray(indices)
        level = width if width is not None else int(self.levels[indices].max(initial=1))
        n_w, e_w = self.cfg.node_widths[level - 1], self.cfg.edge_widths[level - 1]
        b = len(indices)
        out = {
            "hits": np.zeros((b, n_w, self.cfg.n_features), np.float32),
            "hit_mask": np.zeros((b, n_w), bool),
            "particle": np.zeros((b, n_w), np.int32),
            "pt": np.zeros((b, n_w), np.float32),
            "eta": np.zeros((b, n_w), np.float32),
            "weight": np.zeros((b, n_w), np.float32),
            "edges": np.zeros((b, e_w, 2), np.int32),
            "edge_mask": np.zeros((b, e_w), bool),
            "edge_y": np.zeros((b, e_w), bool),
        }
        if set(TRUTH_FIELDS) & set(self.fields):  # fewer true pairs than hits: node width
            out["true_edges"] = np.zeros((b, n_w, 2), np.int32)
            out["true_edge_mask"] = np.zeros((b, n_w), bool)
        for row, i in enumerate(indices.tolist()):
            folder, event = self.items[i]
            t = load_event(folder, event, self.cfg)
            n = len(t["hits"])
            edges = self.edges_of(i, t)
            if n > n_w or len(edges) > e_w:
                raise ValueError(f"{folder / event}: {n} hits, {len(edges)} edges exceed level {level}")
            truth = particle_truth(t["truth"], t["particles"])
            out["hits"][row, :n] = hit_features(t["hits"], t.get("cells") if self.cfg.cell_features else None)
            out["hit_mask"][row, :n] = True
            for key in ("particle", "pt", "eta", "weight"):
                out[key][row, :n] = truth[key]
            m = len(edges)
            out["edges"][row, :m] = edges
            out["edge_mask"][row, :m] = True
            p = truth["particle"]
            out["edge_y"][row, :m] = (p[edges[:, 0]] == p[edges[:, 1]]) & (p[edges[:, 0]] > 0)
            if "true_edges" in out:
                pairs = mm.true_pairs(t["hits"], p, _vertex(t["particles"]))
                out["true_edges"][row, : len(pairs)] = pairs
                out["true_edge_mask"][row, : len(pairs)] = True
        return {k: v for k, v in out.items() if k in self.fields}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _merge_json(path: Path, entries: dict) -> None:
    """Adds ``entries`` to the JSON object in ``path`` (under its lock: several processes may count);
    a read-only cache keeps nothing (the counts are made again next time)."""
    with contextlib.suppress(OSError), locked(path.with_name(path.name + ".lock")):
        merged = {**_read_json(path), **entries}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(merged, indent=0))
        os.replace(tmp, path)


def source(cfg: TrackmlConfig, split: str = "train", fields: Sequence[str] | None = None) -> TrackmlSource:
    return TrackmlSource(events(cfg, split), cfg, fields)


def from_config(
    src: TrackmlSource, cfg: TrackmlConfig, *, seed: int, process_index: int, process_count: int, shuffle=None
):
    """Batches padded to a level each (a few compiled shapes); see ``TrackmlConfig``."""
    shuffle = cfg.shuffle if shuffle is None else shuffle
    levels = tuple(range(1, len(cfg.node_widths) + 1))
    options = pipeline.config_options(
        cfg, seed=seed, process_index=process_index, process_count=process_count, shuffle=shuffle
    )
    if not cfg.node_budget:
        return pipeline.batched(src, buckets=pipeline.Buckets(levels, src.levels), **options)
    sizes = pipeline.budget_sizes(cfg.node_widths, cfg.node_budget, cfg.batch_multiple)
    plan = pipeline.BudgetPlan(src.levels, levels, sizes, seed, shuffle)
    if plan.unused():
        log.warning("events never read (too few to fill one batch of their level): %s", plan.unused())
    return pipeline.batched(src, plan=plan, **options)
