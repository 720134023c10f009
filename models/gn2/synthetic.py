"""GN2's labels of a synthetic batch (``ModelSpec.synthetic_labels``): benchmarks and tests without files."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def labels(cfg: Any, inputs: Mapping[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The labels of an ATLAS flavour-tagging batch (the ``ftag_h5`` format's): flavour, and track origin
    / vertex with -1 on padded tracks; a few vertices per jet so the vertexing loss has matching pairs."""
    valid = inputs["valid"]
    b, t = valid.shape
    origin = rng.integers(0, cfg.origin_classes, size=(b, t), dtype=np.int32)
    vertex = rng.integers(0, 4, size=(b, t), dtype=np.int32)
    return {
        "flavour": rng.integers(0, cfg.jet_classes, size=b, dtype=np.int32),
        "track_origin": np.where(valid, origin, -1).astype(np.int32),
        "track_vertex": np.where(valid, vertex, -1).astype(np.int32),
    }
