"""Packed sets: several jets share one row of track slots (numpy, no JAX).

``plan_rows`` places jets by track count into rows of ``slots`` track slots holding at most
``jets_per_row`` jets (first-fit decreasing), ``pack`` moves a padded batch into those rows, and
``unpack_jets`` brings per-jet values of packed rows back into the jets' order.

Packed batch (R rows, T = ``slots``, J = ``jets_per_row``):

- per-track keys ``[R, T, ...]`` (``tracks``, ``track_origin``, ``track_vertex``): a jet's valid tracks
  contiguous from its ``offset``, in their padded order; empty slots hold the key's fill value;
- ``valid`` ``[R, T]`` bool and ``segment`` ``[R, T]`` int32: the jet slot 0..J-1 of the track, -1 when
  the slot is empty;
- per-jet keys ``[R, J, ...]`` (``flavour`` filled with -1, any other with 0) and ``jet_valid``
  ``[R, J]`` bool. A jet with no valid track still has its jet slot.

First-fit decreasing over identical lengths is vectorised: the jets of one track count go to the open
rows in order, each taking as many as fit, then to new rows. So the plan costs one numpy pass per
distinct track count (at most ``slots + 1``), not a Python step per jet. ``count_rows`` runs the same
passes for many batches at once but keeps only the rows' fill: the row count of every process's slice,
which all processes need to agree on a shape, without placing the other processes' jets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# Fill of an empty slot, as in the unpacked ftag_h5 batch; any other key is filled with 0 (False).
FILL: dict[str, Any] = {"flavour": -1, "track_origin": -1, "track_vertex": -1}


@dataclasses.dataclass(frozen=True, eq=False)  # eq over arrays would be meaningless
class Packing:
    """Where each jet of a batch goes: its ``row``, first track slot ``offset`` and jet ``slot`` in the
    row (int32 arrays, by jet index), the track counts it was planned for and the packed shape."""

    row: np.ndarray
    offset: np.ndarray
    slot: np.ndarray
    lengths: np.ndarray
    rows: int
    slots: int
    jets_per_row: int

    @property
    def used_rows(self) -> int:
        """Rows holding a jet (``rows`` less the rounding)."""
        return int(self.row.max()) + 1 if self.row.size else 0

    @property
    def padding_fraction(self) -> float:
        """Share of the ``rows * slots`` track slots that hold no track."""
        total = self.rows * self.slots
        return 1.0 - float(self.lengths.sum()) / total if total else 0.0


def check_sizes(slots: int, jets_per_row: int, row_multiple: int) -> None:
    """Raises unless the three sizes of a packing are positive."""
    if slots < 1:
        raise ValueError(f"slots (track slots per packed row) must be at least 1, got {slots}")
    if jets_per_row < 1:
        raise ValueError(f"jets_per_row must be at least 1, got {jets_per_row}")
    if row_multiple < 1:
        raise ValueError(f"row_multiple must be at least 1, got {row_multiple}")


def plan_rows(lengths: np.ndarray, slots: int, jets_per_row: int, row_multiple: int = 1) -> Packing:
    """First-fit decreasing of jets with ``lengths`` tracks into rows of ``slots`` track slots and at
    most ``jets_per_row`` jets; the row count is rounded up to a multiple of ``row_multiple`` (at least
    one multiple). Deterministic: equal lengths keep their index order."""
    check_sizes(slots, jets_per_row, row_multiple)
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or not (lengths.size == 0 or np.issubdtype(lengths.dtype, np.integer)):
        raise ValueError(f"lengths must be a 1-D integer array, got {lengths.dtype} of shape {lengths.shape}")
    if lengths.size and lengths.min() < 0:
        raise ValueError(f"track counts must be >= 0, got {int(lengths.min())}")
    if lengths.size and lengths.max() > slots:
        j = int(np.argmax(lengths > slots))
        raise ValueError(
            f"jet {j} has {int(lengths[j])} tracks, more than the {slots} track slots of a packed row "
            "(raise the slots per row to at least the longest jet)"
        )
    n = lengths.size
    order = np.argsort(-lengths.astype(np.int64), kind="stable")
    ordered = lengths[order].astype(np.int64)
    row, offset, slot = (np.empty(n, np.int32) for _ in range(3))
    used = np.zeros(n, np.int64)  # tracks per row (n rows at most)
    count = np.zeros(n, np.int64)  # jets per row
    n_rows = 0
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if n else np.zeros(0, np.int64)
    for a, b in zip(starts.tolist(), np.r_[starts[1:], n][: starts.size].tolist(), strict=True):
        size, k = int(ordered[a]), b - a
        # identical jets fill the first row with room to its capacity, then the next: first fit
        cap = jets_per_row - count[:n_rows]
        per_new = jets_per_row
        if size:
            cap = np.minimum(cap, (slots - used[:n_rows]) // size)
            per_new = min(jets_per_row, slots // size)
        extra = max(0, k - int(cap.sum()))
        n_new = -(-extra // per_new)
        cap = np.r_[cap, np.full(n_new, per_new, np.int64)]
        end = np.cumsum(cap)
        item = np.arange(k)
        r = np.searchsorted(end, item, side="right")
        within = item - (end[r] - cap[r])
        jets = order[a:b]
        row[jets] = r
        offset[jets] = used[r] + within * size
        slot[jets] = count[r] + within
        taken = np.bincount(r, minlength=n_rows + n_new)
        used[: n_rows + n_new] += taken * size
        count[: n_rows + n_new] += taken
        n_rows += n_new
    rows = -(-max(n_rows, 1) // row_multiple) * row_multiple
    return Packing(row, offset, slot, lengths.astype(np.int32), rows, int(slots), int(jets_per_row))


def count_rows(lengths: np.ndarray, slots: int, jets_per_row: int) -> np.ndarray:
    """``plan_rows(lengths[s], slots, jets_per_row).used_rows`` for every batch ``s`` of ``lengths``
    ``[S, n]`` (int64 ``[S]``), all batches at once: the row count alone, for agreeing on a shape.

    The same first-fit decreasing, by track count from the longest: the ``k`` jets of one count fill
    the open rows in order, each to its room, then new rows of ``per_new`` jets each. Only the tracks and
    jets per row are kept (no per-jet placement), in ``[S, width]`` arrays, so the Python loop runs once
    per distinct track count for all ``S`` batches together."""
    check_sizes(slots, jets_per_row, 1)
    lengths = np.asarray(lengths)
    if lengths.ndim != 2 or not (lengths.size == 0 or np.issubdtype(lengths.dtype, np.integer)):
        raise ValueError(f"lengths must be a 2-D integer array, got {lengths.dtype} of shape {lengths.shape}")
    s, n = lengths.shape
    if s == 0:
        return np.zeros(0, np.int64)
    if lengths.size and (lengths.min() < 0 or lengths.max() > slots):
        raise ValueError(f"track counts must be in 0..{slots} (the track slots of a row)")
    key = (np.arange(s)[:, None] * (slots + 1) + lengths).ravel()
    hist = np.bincount(key, minlength=s * (slots + 1)).reshape(s, slots + 1)  # jets per (batch, count)
    # a lower bound on the rows (grown when a batch needs more)
    width = max(1, -(-n // jets_per_row), -(-int(lengths.sum(1).max(initial=0)) // slots)) + 1
    used = np.zeros((s, width), np.int64)  # tracks per row
    count = np.zeros((s, width), np.int64)  # jets per row
    n_rows = np.zeros(s, np.int64)
    for size in np.flatnonzero(hist.any(0))[::-1].tolist():
        k = hist[:, size]
        col = np.arange(used.shape[1])
        room = jets_per_row - count
        if size:
            room = np.minimum(room, (slots - used) // size)
        cap = np.where(col < n_rows[:, None], room, 0)
        before = np.cumsum(cap, 1) - cap
        taken = np.clip(k[:, None] - before, 0, cap)
        per_new = min(jets_per_row, slots // size) if size else jets_per_row
        extra = np.maximum(k - cap.sum(1), 0)
        n_new = -(-extra // per_new)
        need = int((n_rows + n_new).max())
        if need > used.shape[1]:  # grow the row axis
            grow = max(need, 2 * used.shape[1]) - used.shape[1]
            used, count, taken = (np.pad(a, ((0, 0), (0, grow))) for a in (used, count, taken))
            col = np.arange(used.shape[1])
        ahead = col - n_rows[:, None]  # new row index, from each batch's first new row
        new = (ahead >= 0) & (ahead < n_new[:, None])
        taken = taken + np.where(new, np.minimum(per_new, extra[:, None] - ahead * per_new), 0)
        used += taken * size
        count += taken
        n_rows += n_new
    return n_rows


def split_keys(batch: Mapping[str, np.ndarray]) -> tuple[list[str], list[str]]:
    """(per-track keys, per-jet keys) of a padded batch: those shaped ``[B, T, ...]`` like ``valid``,
    the rest. ``valid`` itself is in neither."""
    shape = np.shape(batch["valid"])
    track = [k for k, v in batch.items() if k != "valid" and np.ndim(v) >= 2 and np.shape(v)[:2] == shape]
    return track, [k for k in batch if k != "valid" and k not in track]


def pack(
    batch: Mapping[str, np.ndarray],
    packing: Packing,
    *,
    track_keys: Sequence[str] | None = None,
    jet_keys: Sequence[str] | None = None,
    fill: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """The packed batch of a padded one (``valid`` ``[B, T]``, ``T`` any width; holes allowed: the valid
    tracks are moved, in order). Keys: ``track_keys`` and ``jet_keys`` (default: ``split_keys``; every
    key of ``batch`` must be in one of them), plus ``valid``, ``segment``, ``jet_valid``. ``fill``: the
    value of empty slots per key (default ``FILL``, else 0)."""
    valid = np.asarray(batch["valid"], bool)
    if valid.ndim != 2:
        raise ValueError(f"valid must be [jets, tracks], got shape {valid.shape}")
    default_track, default_jet = split_keys(batch)
    track_keys = list(default_track if track_keys is None else track_keys)
    jet_keys = list(default_jet if jet_keys is None else jet_keys)
    loose = set(batch) - {"valid", *track_keys, *jet_keys}
    if loose:
        raise ValueError(f"batch keys {sorted(loose)} are neither track_keys nor jet_keys")
    lengths = valid.sum(1)
    if lengths.shape != packing.lengths.shape or (lengths != packing.lengths).any():
        raise ValueError("the batch's valid track counts differ from those the packing was planned for")
    fills = {**FILL, **(fill or {})}
    n_rows, t, j = packing.rows, packing.slots, packing.jets_per_row

    # valid tracks in row-major order (each jet's in order) go to flat slot row * T + offset + rank
    jet_of = np.repeat(np.arange(lengths.size), lengths)
    rank = np.arange(jet_of.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    dest = packing.row[jet_of].astype(np.int64) * t + packing.offset[jet_of] + rank
    src = np.flatnonzero(valid.ravel())
    out: dict[str, np.ndarray] = {}
    for k in track_keys:
        v = np.asarray(batch[k])
        if v.shape[:2] != valid.shape:
            raise ValueError(
                f"track key {k!r} has shape {v.shape}, not [{valid.shape[0]}, {valid.shape[1]}, ...]"
            )
        o = np.full((n_rows * t, *v.shape[2:]), fills.get(k, 0), v.dtype)
        # flat take and put: several times faster than a boolean [B, W] mask or index pairs
        o[dest] = np.take(v.reshape(valid.size, *v.shape[2:]), src, axis=0)
        out[k] = o.reshape(n_rows, t, *v.shape[2:])
    out["valid"] = np.zeros(n_rows * t, bool)
    out["valid"][dest] = True
    out["valid"] = out["valid"].reshape(n_rows, t)
    out["segment"] = np.full(n_rows * t, -1, np.int32)
    out["segment"][dest] = packing.slot[jet_of]
    out["segment"] = out["segment"].reshape(n_rows, t)
    for k in jet_keys:
        v = np.asarray(batch[k])
        if v.shape[:1] != lengths.shape:
            raise ValueError(f"jet key {k!r} has shape {v.shape}, not [{lengths.size}, ...]")
        o = np.full((n_rows, j, *v.shape[1:]), fills.get(k, 0), v.dtype)
        o[packing.row, packing.slot] = v
        out[k] = o
    out["jet_valid"] = np.zeros((n_rows, j), bool)
    out["jet_valid"][packing.row, packing.slot] = True
    return out


def pack_padded(
    batch: Mapping[str, np.ndarray], slots: int, jets_per_row: int, row_multiple: int = 1, **kw: Any
) -> tuple[dict[str, np.ndarray], Packing]:
    """``plan_rows`` on the batch's valid track counts, then ``pack`` (keyword options passed on)."""
    packing = plan_rows(np.asarray(batch["valid"], bool).sum(1), slots, jets_per_row, row_multiple)
    return pack(batch, packing, **kw), packing


def unpack_jets(values: np.ndarray, packing: Packing) -> np.ndarray:
    """Per-jet values of packed rows (``[R, J, ...]``, numpy or JAX) in the jets' order (``[B, ...]``)."""
    return values[packing.row, packing.slot]


def is_packed(batch: Mapping[str, Any]) -> bool:
    """Whether ``batch`` is packed rows (``pack``'s output), so that code outside a family can refuse
    packed batches without naming the family's keys."""
    return "segment" in batch and "jet_valid" in batch


def examples(batch: Mapping[str, Any]) -> int:
    """How many examples (jets) ``batch`` holds: a packed batch's valid jet slots, else its rows."""
    if "jet_valid" in batch:
        return int(np.asarray(batch["jet_valid"]).sum())
    return len(next(iter(batch.values())))
