"""Batch plans of the per-process pipeline (``inputs.pipeline``): which examples global batch k of an
epoch holds, and how they are padded or packed; every process computes the same plan.

Global batch k of epoch e holds the examples ``perm_e[k*B:(k+1)*B]``; process p of P reads only its
contiguous slice of that batch. So every process count sees the same global batches in the same order,
and resuming an iterator at step k continues exactly where an uninterrupted run would be. For files
compressed in chunks, ``orders.BlockOrder`` (``batched(block=)``) permutes blocks of consecutive examples
instead, with the same guarantees, so that each touched chunk is decompressed once per batch.

Bucketing (``Buckets``): for sets padded to a fixed length (tracks of a jet), each global batch is padded
only to the smallest of a few widths that holds its longest example. The width is a function of the
global batch's rows and of a per-example length index that every process holds, so all processes pick
the same width without talking to each other, and only ``len(widths)`` shapes are ever compiled. With
``window > 1`` the examples of ``window`` consecutive global batches are first sorted by length and cut
into batches of similar length, whose order is then shuffled: random batches of thousands of jets
almost always contain one long jet, sorted ones mostly fit a small width. Everything stays a
deterministic function of (seed, epoch, k), so the resumption guarantee above is unchanged.

Packing (``Packed``): instead of padding every example to one width, the examples of a global batch
share rows of track slots (``inputs.packing``), so padding falls without sorting and the batch stays a
uniform random sample. Each process packs its own contiguous slice of the global batch (the examples
it would read unpacked) by first-fit decreasing. All agree on the row count: the largest slice's rows,
rounded up so that the global batch's rows (per process × processes) are a multiple of the row
multiple. Every process computes it from the length index: it places its own slice's jets and only
counts the rows of the others' slices (``packing.count_rows``, all in one vectorised pass per track
count), not a placement of every slice per process, whose cost grew with the process count.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import packing as packing_lib
from .orders import Order


@dataclasses.dataclass(frozen=True, eq=False)  # eq/hash over a length array would be meaningless
class Buckets:
    """Pad each global batch to the smallest of ``widths`` that holds its longest example.

    widths: increasing; the last must hold every example (``lengths.max() <= widths[-1]``).
    lengths: valid elements of every example of the source, by source index.
    window: global batches sorted together by length before they are cut (1: batches as shuffled).
    """

    widths: tuple[int, ...]
    lengths: np.ndarray
    window: int = 1

    def __post_init__(self):
        w = np.asarray(self.widths)
        if w.size == 0 or (w < 1).any() or (np.diff(w) <= 0).any():
            raise ValueError(f"bucket widths must be increasing positive lengths, got {list(self.widths)}")
        if self.window < 1:
            raise ValueError(f"the bucket window must be at least 1 batch, got {self.window}")
        longest = int(self.lengths.max()) if self.lengths.size else 0
        if longest > w[-1]:
            raise ValueError(f"an example has {longest} elements, more than the largest bucket {w[-1]}")

    def width(self, rows: np.ndarray) -> int:
        longest = int(self.lengths[rows].max()) if rows.size else 0
        return int(self.widths[int(np.searchsorted(self.widths, longest))])


@dataclasses.dataclass(frozen=True, eq=False)  # eq/hash over a length array would be meaningless
class Packed:
    """Pack each process's share of a global batch into rows of ``slots`` element slots holding at most
    ``jets_per_row`` examples (``inputs.packing``).

    lengths: valid elements of every example of the source, by source index (the source's
        ``read(indices, width=w)`` must return exactly these many valid elements, first, in ``w`` slots).
    row_multiple: the rows of a global batch are a multiple of it (a multiple of the process count,
        so that every process feeds an equal number of rows).
    track_keys: the batch keys laid out per element (``[B, width, ...]``, ``valid`` aside); the others
        are per example. None: guessed from each batch's shapes (``packing.split_keys``), which cannot
        tell a per-example ``[B, k]`` key from a per-element one in a batch of width k.
    """

    slots: int
    jets_per_row: int
    lengths: np.ndarray
    row_multiple: int = 1
    track_keys: tuple[str, ...] | None = None

    def __post_init__(self):
        packing_lib.check_sizes(self.slots, self.jets_per_row, self.row_multiple)
        longest = int(self.lengths.max()) if self.lengths.size else 0
        if longest > self.slots:
            raise ValueError(
                f"an example has {longest} elements, more than the {self.slots} slots of a packed row"
            )

    def check_processes(self, process_count: int) -> None:
        """Raises unless the row multiple divides over ``process_count`` processes."""
        if self.row_multiple % process_count:
            raise ValueError(
                f"the packed row multiple {self.row_multiple} does not divide over {process_count} processes"
            )

    def _slices(self, rows: np.ndarray, process_count: int) -> np.ndarray:
        """The lengths of each process's contiguous slice of the global batch ``rows``: ``[P, n]``."""
        self.check_processes(process_count)
        local_slice(len(rows), 0, process_count)  # equal slices, or the usual error
        return self.lengths[rows].reshape(process_count, -1)

    def _rounded(self, used_rows: int, process_count: int) -> int:
        """Rows per process: the fullest slice's (at least 1), rounded up so that all processes' rows
        are a multiple of ``row_multiple``."""
        per = self.row_multiple // process_count
        return -(-max(used_rows, 1) // per) * per

    def row_count(self, rows: np.ndarray, process_count: int) -> int:
        """The rows every process feeds for the global batch ``rows`` (row counts only, no placement)."""
        counts = packing_lib.count_rows(self._slices(rows, process_count), self.slots, self.jets_per_row)
        return self._rounded(int(counts.max(initial=0)), process_count)

    def plan(self, rows: np.ndarray, process_index: int, process_count: int) -> packing_lib.Packing:
        """Process ``process_index``'s packing of its slice of the global batch ``rows``, with the row
        count all processes agree on: its own first-fit plan, and only the row counts of the others'
        slices (``packing.count_rows``, all slices in one pass), not their placements."""
        lengths = self._slices(rows, process_count)
        own = packing_lib.plan_rows(lengths[process_index], self.slots, self.jets_per_row)
        others = np.delete(lengths, process_index, axis=0)
        most = max(
            own.used_rows, int(packing_lib.count_rows(others, self.slots, self.jets_per_row).max(initial=0))
        )
        return dataclasses.replace(own, rows=self._rounded(most, process_count))

    def plans(self, rows: np.ndarray, process_count: int) -> list[packing_lib.Packing]:
        """Each process's packing of its slice of the global batch ``rows``, all with the same row count
        (every slice placed: for checks and reports; a process packs with ``plan``)."""
        parts = [
            packing_lib.plan_rows(lengths, self.slots, self.jets_per_row)
            for lengths in self._slices(rows, process_count)
        ]
        n = self._rounded(max(p.used_rows for p in parts), process_count)
        return [dataclasses.replace(p, rows=n) for p in parts]

    def width(self, indices: np.ndarray) -> int:
        """The read width of examples ``indices``: their longest (at least 1)."""
        return max(int(self.lengths[indices].max()) if indices.size else 0, 1)


class _Plan:
    """What the batch plans share: computed batches cached per key for the read threads (the cache and
    its lock are dropped when a plan is pickled into Grain workers), and the padding share."""

    buckets: Buckets | None
    per_epoch: int
    packed: Packed | None = None
    process_count: int = 1

    def _start_cache(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict = {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_lock"], state["_cache"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._start_cache()

    def _cached(self, key, make: Callable[[], Any], keep: Callable[[Any], bool]) -> Any:
        """``make()`` once per ``key``; older keys that ``keep`` rejects are dropped."""
        with self._lock:
            got = self._cache.get(key)
        if got is None:
            got = make()
            with self._lock:
                self._cache = {k: v for k, v in self._cache.items() if keep(k)}
                self._cache[key] = got
        return got

    def padding_fraction(self, steps: int | None = None) -> float:
        """Padded share of the element slots of ``steps`` global batches (default: one epoch), from
        the bucket or packing lengths alone (nothing is read); packed: of all processes' rows."""
        steps = self.per_epoch if steps is None else steps
        if self.buckets is None and self.packed is None:
            raise ValueError("padding_fraction needs Buckets or Packed (their lengths)")
        used = slots = 0
        for step in range(steps):
            rows, width = self(step)
            if self.packed is not None:
                used += int(self.packed.lengths[rows].sum())
                per_process = self.packed.row_count(rows, self.process_count)
                slots += per_process * self.process_count * self.packed.slots
            else:
                used += int(self.buckets.lengths[rows].sum())
                slots += rows.size * width
        return 1.0 - used / slots


class BatchPlan(_Plan):
    """Which rows (and which width, when bucketed) global batch ``step`` holds; one epoch after another.
    With ``packed`` (not with buckets), ``packings(step)`` says how ``process_count`` processes pack it.

    A pure function of (seed, step), shared by the read threads and picklable into Grain workers.
    """

    def __init__(
        self,
        order: Order,
        batch_size: int,
        buckets: Buckets | None = None,
        seed: int = 0,
        *,
        packed: Packed | None = None,
        process_count: int = 1,
    ):
        if packed is not None and buckets is not None:
            raise ValueError("a batch is either packed or padded to a bucket width, not both")
        self.order, self.batch_size, self.buckets, self.seed = order, batch_size, buckets, seed
        self.packed, self.process_count = packed, process_count
        self.per_epoch = order.size // batch_size
        if self.per_epoch == 0:
            raise ValueError(f"the dataset has {order.size} examples, fewer than one batch of {batch_size}")
        self.window = buckets.window if buckets is not None else 1
        self._start_cache()  # (epoch, window) -> (batches, widths)

    def __call__(self, step: int) -> tuple[np.ndarray, int | None]:
        epoch, k = divmod(step, self.per_epoch)
        b = self.batch_size
        if self.buckets is None:
            return self.order.rows(epoch, k * b, (k + 1) * b), None
        if self.window == 1:
            rows = self.order.rows(epoch, k * b, (k + 1) * b)
            return rows, self.buckets.width(rows)
        w, j = divmod(k, self.window)
        batches, widths = self._window(epoch, w)
        return batches[j], int(widths[j])

    def packings(self, step: int) -> list[packing_lib.Packing]:
        """Every process's packing of global batch ``step`` (needs ``packed``)."""
        if self.packed is None:
            raise ValueError("packings needs a plan with Packed")
        return self.packed.plans(self(step)[0], self.process_count)

    def packing(self, step: int, process_index: int) -> packing_lib.Packing:
        """Process ``process_index``'s packing of global batch ``step`` (``Packed.plan``)."""
        if self.packed is None:
            raise ValueError("packing needs a plan with Packed")
        return self.packed.plan(self(step)[0], process_index, self.process_count)

    def _window(self, epoch: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """The window's batches (sorted by length, then shuffled) and their widths."""
        return self._cached((epoch, w), lambda: self._make_window(epoch, w), lambda k: k >= (epoch, w - 2))

    def _make_window(self, epoch: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        b = self.batch_size
        first = w * self.window
        n = min(self.window, self.per_epoch - first)
        rows = self.order.rows(epoch, first * b, (first + n) * b)
        # stable sort: among equal lengths the shuffled order stays, so batches remain random samples
        rows = rows[np.argsort(self.buckets.lengths[rows], kind="stable")].reshape(n, b)
        perm = np.random.default_rng([self.seed, epoch, w, 0xB0C4E7]).permutation(n)
        batches = rows[perm]
        widths = np.array([self.buckets.width(r) for r in batches])
        return batches, widths


class BudgetPlan(_Plan):
    """Batches of about ``budget`` element slots: variable-size examples (events of many elements) go to
    the smallest of ``widths`` that holds them, and a batch of width ``w`` holds ``sizes[w]`` examples.

    Per epoch (a pure function of (seed, epoch), like ``BatchPlan``): examples in shuffled order are
    split by bucket, each bucket is cut into whole batches (the remainder waits for a later epoch, in
    which another shuffle leaves other examples over), and the batches of all buckets are shuffled
    together. So there are ``len(widths)`` batch shapes, padding is bounded by the bucket spacing, and
    every epoch has the same number of batches per bucket.
    """

    def __init__(
        self, lengths: np.ndarray, widths: Sequence[int], sizes: Sequence[int], seed: int, shuffle: bool
    ):
        self.buckets = Buckets(tuple(int(w) for w in widths), np.asarray(lengths))
        self.sizes = tuple(int(s) for s in sizes)
        if len(self.sizes) != len(self.buckets.widths) or min(self.sizes, default=0) < 1:
            raise ValueError(f"need one positive batch size per bucket width, got {list(self.sizes)}")
        self.seed, self.shuffle = seed, shuffle
        self.bucket_of = np.searchsorted(self.buckets.widths, self.buckets.lengths).astype(np.int32)
        self.counts = np.bincount(self.bucket_of, minlength=len(self.sizes))
        self.batches_per_bucket = self.counts // np.asarray(self.sizes)
        self.per_epoch = int(self.batches_per_bucket.sum())
        if self.per_epoch == 0:
            raise ValueError(
                f"no bucket has enough examples for one batch: examples per bucket {self.counts.tolist()}, "
                f"batch sizes {list(self.sizes)} (widths {list(self.buckets.widths)})"
            )
        self._start_cache()  # epoch -> (batches, widths)

    def unused(self) -> dict[int, int]:
        """Examples per width that never fill one batch (they are never read)."""
        starved = (self.batches_per_bucket == 0) & (self.counts > 0)
        return {int(self.buckets.widths[b]): int(self.counts[b]) for b in np.flatnonzero(starved)}

    def __call__(self, step: int) -> tuple[np.ndarray, int]:
        epoch, k = divmod(step, self.per_epoch)
        batches, widths = self._epoch(epoch)
        return batches[k], int(widths[k])

    def _epoch(self, epoch: int) -> tuple[list[np.ndarray], np.ndarray]:
        return self._cached(epoch, lambda: self._make_epoch(epoch), lambda e: e >= epoch - 1)

    def _make_epoch(self, epoch: int) -> tuple[list[np.ndarray], np.ndarray]:
        n = self.bucket_of.size
        order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        batches: list[np.ndarray] = []
        widths: list[int] = []
        for b, (size, count) in enumerate(zip(self.sizes, self.batches_per_bucket, strict=True)):
            rows = order[self.bucket_of[order] == b][: count * size]
            batches.extend(rows.reshape(count, size))
            widths.extend([self.buckets.widths[b]] * int(count))
        # Shuffled: a new batch order each epoch. Unshuffled (evaluation): one fixed order that still mixes
        # the buckets, so the first batches are not all of the smallest events.
        key = [self.seed, epoch, 0xB0C4E7] if self.shuffle else [self.seed, 0xE7A1]
        perm = np.random.default_rng(key).permutation(len(batches))
        return [batches[i] for i in perm], np.asarray([widths[i] for i in perm])


def budget_sizes(widths: Sequence[int], budget: int, multiple: int) -> tuple[int, ...]:
    """Examples per batch for each width: ``budget // width`` rounded down to a multiple of ``multiple``.
    Every batch must fit the budget, so ``multiple * max(widths)`` may not exceed it."""
    if budget < 1 or multiple < 1:
        raise ValueError(f"the element budget and batch multiple must be positive, got {budget}, {multiple}")
    widest = max(int(w) for w in widths)
    if multiple * widest > budget:
        raise ValueError(
            f"an element budget of {budget} slots cannot hold {multiple} examples (the batch multiple) of "
            f"the widest bucket {widest}: raise the budget to at least {multiple * widest}, or lower the "
            f"multiple or the widest bucket"
        )
    return tuple(budget // int(w) // multiple * multiple for w in widths)


def local_slice(global_batch: int, process_index: int, process_count: int) -> slice:
    if global_batch % process_count:
        raise ValueError(
            f"a global batch of {global_batch} examples is not divisible by the {process_count} processes"
        )
    per = global_batch // process_count
    return slice(process_index * per, (process_index + 1) * per)
