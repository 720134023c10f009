"""TrackML event files as graph inputs of the GNN tracking pipeline (``data.format: trackml``).

Files: the challenge's per-event CSVs as published (``event000001000-hits.csv``, ``-cells.csv``,
``-particles.csv``, ``-truth.csv``, each also ``.csv.gz``), read by ``csv`` with errors naming the file,
column and row. ``cache`` keeps a columnar HDF5 copy of each event (built on first read, rebuilt when a
CSV changes, with an index of hit counts). ``smilejax data make trackml-synthetic|trackml-pythia`` writes
such folders (``smilejax.models.tracking.make_events``).

Batch (each event padded to its level ``k``: ``N = data.node_widths[k]``, ``E = data.edge_widths[k]``):

==================  ========================  ==========================================================
key                 shape, dtype              content
==================  ========================  ==========================================================
``hits``            [b, N, 3 or 7] float32    r/1000, phi/pi, z/1000 (mm); with ``data.cell_features``:
                                              log(1 + cells), summed charge, cluster lengths along ch0, ch1
``hit_mask``        [b, N] bool               real hits (the first ones); padding after
``particle``        [b, N] int32              the hit's particle as a dense index 1..P (0: noise, padding)
``pt``, ``eta``     [b, N] float32            of the hit's particle at production (0 for noise)
``weight``          [b, N] float32            the truth file's weight (the TrackML score's)
``edges``           [b, E, 2] int32           candidate edges (hit rows, inner -> outer) from ``data.graph``
``edge_mask``       [b, E] bool               real edges (the first ones; padded edges are (0, 0))
``edge_y``          [b, E] bool               both hits belong to one particle (not noise)
``true_edges``      [b, N, 2] int32           opt-in (``data.fields``): consecutive hits of each particle,
                                              ordered by distance from its vertex (metric-learning targets)
``true_edge_mask``  [b, N] bool               real rows of ``true_edges``
==================  ========================  ==========================================================

Graph construction: ``data.graph: module_map`` (``module_map``: the module pairs joined by consecutive
hits of true particles in training events, with doublet-feature ranges, optionally module triplets
(``data.module_map_triplets``); learned once and cached);
``none``; or a hook ``package.module:function`` / a name registered in ``source.GRAPH_BUILDERS``
(a metric-learning stage plugs in there). Candidate edges are cached per event and stage.
Batching: an event goes to the first level that holds both its hits and its edges, so there are
``len(data.node_widths)`` compiled shapes; ``data.batch_size`` events per batch, or with
``data.node_budget`` about that many node slots per batch (``pipeline.BudgetPlan``).
"""

from __future__ import annotations

from ..spec import DatasetSpec
from . import cache, csv, features, module_map
from .csv import CsvError, read, read_event
from .module_map import ModuleMap
from .source import (
    FIELDS,
    GRAPH_BUILDERS,
    TRUTH_FIELDS,
    TrackmlConfig,
    TrackmlSource,
    events,
    from_config,
    source,
)

SPEC = DatasetSpec(name="trackml", config=TrackmlConfig, source=source, pipeline=from_config)

__all__ = [
    "FIELDS",
    "GRAPH_BUILDERS",
    "SPEC",
    "TRUTH_FIELDS",
    "CsvError",
    "ModuleMap",
    "TrackmlConfig",
    "TrackmlSource",
    "cache",
    "csv",
    "events",
    "features",
    "from_config",
    "module_map",
    "read",
    "read_event",
    "source",
]
