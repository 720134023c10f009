"""GN2's classes and tasks: the jet and track-origin classes, the auxiliary tasks and their batch keys,
which tasks a batch trains, and which track pairs the vertex task scores."""

from __future__ import annotations

import jax

JET_CLASSES = ("b", "c", "light", "tau")
ORIGIN_CLASSES = ("pileup", "fake", "primary", "fromB", "fromBC", "fromC", "fromTau", "otherSecondary")
TASKS = ("jet", "origin", "vertex")
AUX_KEYS = {"origin": "track_origin", "vertex": "track_vertex"}

# salt's vertexing pair weights: origin indices of fakes and of heavy-flavour tracks
FAKE = ORIGIN_CLASSES.index("fake")
HEAVY_FLAVOUR = tuple(ORIGIN_CLASSES.index(c) for c in ("fromB", "fromBC", "fromC"))


def active_tasks(mode: str, batch) -> tuple[str, ...]:
    """The tasks a batch trains: ``aux_tasks`` ``mode`` off, on (the batch must hold the auxiliary
    labels) or auto (those whose labels it holds)."""
    if mode == "off":
        return ("jet",)
    if mode == "on":
        for key in AUX_KEYS.values():
            if key not in batch:
                raise ValueError(f"aux_tasks='on' needs batch key {key!r}, which the batch lacks")
        return TASKS
    return ("jet", *(task for task, key in AUX_KEYS.items() if key in batch))


def pair_mask(valid: jax.Array, segment: jax.Array | None) -> jax.Array:
    """[B, T, T]: both tracks valid (and in the same jet, packed)."""
    pairs = valid[:, :, None] & valid[:, None, :]
    return pairs if segment is None else pairs & (segment[:, :, None] == segment[:, None, :])
