"""The per-process Grain pipeline: global, deterministic shuffling, one shard per process, batch-wise reads.

Global batch k of epoch e holds the examples ``perm_e[k*B:(k+1)*B]``; process p of P reads only its
contiguous slice of that batch. So every process count sees the same global batches in the same order,
and resuming an iterator at step k continues exactly where an uninterrupted run would be. For files
compressed in chunks, ``BlockOrder`` (``batched(block=)``) permutes blocks of consecutive examples instead,
with the same guarantees, so that each touched chunk is decompressed once per batch.

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
it would read unpacked) by first-fit decreasing; every process plans every slice from the length index,
so all agree on the row count: the largest slice's rows, rounded up to the row multiple.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import grain
import numpy as np

from . import packing as packing_lib
from .spec import Batch, BatchSource


class Order(Protocol):
    """The example order of each epoch: ``rows(epoch, lo, hi)`` are its positions lo..hi-1."""

    size: int  # positions per epoch

    def rows(self, epoch: int, lo: int, hi: int) -> np.ndarray: ...


class _EpochOrder:
    """Per-epoch permutations, computed once per epoch and shared by the read threads."""

    def __init__(self, n: int, seed: int, shuffle: bool):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.size = n
        self._lock = threading.Lock()
        self._cache: dict[int, np.ndarray] = {}

    def __getstate__(self) -> dict:  # Grain worker processes get a copy without the lock
        return {"n": self.n, "seed": self.seed, "shuffle": self.shuffle}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def __call__(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        with self._lock:
            if epoch not in self._cache:
                self._cache = {k: v for k, v in self._cache.items() if k >= epoch - 1}
                self._cache[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            return self._cache[epoch]

    def rows(self, epoch: int, lo: int, hi: int) -> np.ndarray:
        return np.arange(lo, hi) if not self.shuffle else self(epoch)[lo:hi]


class BlockOrder:
    """Per-epoch order of blocks of ``block`` consecutive examples, plus a random start offset.

    The epoch's example order is ``offset + perm[i // block] * block + i % block``: a permutation of
    ``n_blocks * block`` rows, so global batches, process slices and resumption behave exactly as with the
    per-example order. For files compressed in chunks, where every scattered read decompresses its whole
    chunk: a batch then holds runs of neighbouring examples. No lock (it pickles into Grain workers):
    concurrent threads at worst compute the same deterministic permutation twice.
    """

    def __init__(self, n: int, block: int, seed: int):
        self.n, self.block, self.seed = n, block, seed
        self.n_blocks = n // block
        self.size = self.n_blocks * block  # positions per epoch (Order)
        self._cache: dict[int, tuple[np.ndarray, int]] = {}

    def _epoch(self, epoch: int) -> tuple[np.ndarray, int]:
        got = self._cache.get(epoch)
        if got is None:
            rng = np.random.default_rng([self.seed, epoch, 0xB10C])
            spare = self.n - self.n_blocks * self.block
            got = rng.permutation(self.n_blocks), int(rng.integers(0, spare + 1))
            self._cache = {k: v for k, v in self._cache.items() if k >= epoch - 1} | {epoch: got}
        return got

    def rows(self, epoch: int, lo: int, hi: int) -> np.ndarray:
        perm, offset = self._epoch(epoch)
        pos = np.arange(lo, hi)
        return offset + perm[pos // self.block] * self.block + pos % self.block


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
    """

    slots: int
    jets_per_row: int
    lengths: np.ndarray
    row_multiple: int = 1

    def __post_init__(self):
        packing_lib.check_sizes(self.slots, self.jets_per_row, self.row_multiple)
        longest = int(self.lengths.max()) if self.lengths.size else 0
        if longest > self.slots:
            raise ValueError(
                f"an example has {longest} elements, more than the {self.slots} slots of a packed row"
            )

    def plans(self, rows: np.ndarray, process_count: int) -> list[packing_lib.Packing]:
        """Each process's packing of its slice of the global batch ``rows``, all with the same row count."""
        if self.row_multiple % process_count:
            raise ValueError(
                f"the packed row multiple {self.row_multiple} does not divide over {process_count} processes"
            )
        parts = [
            packing_lib.plan_rows(
                self.lengths[rows[local_slice(len(rows), p, process_count)]], self.slots, self.jets_per_row
            )
            for p in range(process_count)
        ]
        per = self.row_multiple // process_count
        n = -(-max(max(p.used_rows for p in parts), 1) // per) * per
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
                plans = self.packed.plans(rows, self.process_count)
                used += int(self.packed.lengths[rows].sum())
                slots += sum(p.rows for p in plans) * self.packed.slots
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


def _read(source: BatchSource, indices: np.ndarray, width: int | None = None) -> Batch:
    # Sorted reads are what makes HDF5/ArrayRecord slices fast; undo the sort afterwards.
    order = np.argsort(indices, kind="stable")
    batch = source.read(indices[order]) if width is None else source.read(indices[order], width=width)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(order.size)
    return {k: v[inverse] for k, v in batch.items()}


def batched(
    source: BatchSource,
    *,
    batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    shuffle: bool = True,
    read_threads: int = 2,
    prefetch: int = 4,
    workers: int = 0,
    order: Order | None = None,
    block: int = 1,
    buckets: Buckets | None = None,
    plan: BudgetPlan | None = None,
    packed: Packed | None = None,
) -> grain.IterDataset:
    """An endless stream of this process's share of each global batch (incomplete last batches dropped).

    order: the epoch order (default: a global per-example permutation per epoch, or none without
        ``shuffle``). block: with ``shuffle`` and no ``order``, shuffle blocks of this many consecutive
        examples instead (``BlockOrder``; 1: single examples); this assumes the files' rows are already
        shuffled. buckets: pad each batch to a bucket width; the source's ``read(indices, width=w)`` must
        then return the valid elements first in ``w`` slots. Without ``shuffle`` (evaluation) the bucket
        window is 1, so that the first batches are not a length-biased sample.
        plan: batches of varying size (``BudgetPlan``) instead of ``batch_size``, ``order`` and ``buckets``.
        packed: pack each process's slice of a global batch into rows (``Packed``; not with buckets or
        plan): batches carry ``inputs.packing``'s keys, with the same examples as unpacked.
    """
    if packed is not None and (plan is not None or buckets is not None):
        raise ValueError("packed batches take neither buckets nor a budget plan")
    if plan is None:
        if order is None and block > 1 and shuffle:
            order = BlockOrder(len(source), block, seed)
            if order.size < batch_size:
                raise ValueError(
                    f"the dataset has {len(source)} examples, fewer than one batch of {batch_size} "
                    f"in blocks of {block}"
                )
        order = order if order is not None else _EpochOrder(len(source), seed, shuffle)
        if buckets is not None and not shuffle and buckets.window > 1:
            buckets = dataclasses.replace(buckets, window=1)
        plan = BatchPlan(order, batch_size, buckets, seed, packed=packed, process_count=process_count)
    for size in getattr(plan, "sizes", (batch_size,)):
        local_slice(size, process_index, process_count)  # fail now, not in a read thread
    if packed is not None:
        packed.plans(np.zeros(0, np.int64), process_count)  # the row multiple's check, now

    def read_batch(step: int, _: int) -> Batch:
        rows, width = plan(step)
        mine = rows[local_slice(len(rows), process_index, process_count)]
        if packed is None:
            return _read(source, mine, width)
        packing = packed.plans(rows, process_count)[process_index]
        return packing_lib.pack(_read(source, mine, packed.width(mine)), packing)

    ds = grain.MapDataset.range(plan.per_epoch).repeat(None).map_with_index(read_batch)
    # Grain keeps at most prefetch_buffer_size batches in flight, so more threads than that would idle.
    buffer = max(prefetch, read_threads)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=buffer))
    if workers > 0:
        _absl_flags_parsed()
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=workers), worker_init_fn=_leave_stops_to_main
        )
    return it


def _leave_stops_to_main(_worker: int, _workers: int) -> None:
    """Grain worker processes ignore Ctrl-C and the scheduler's warning: a terminal signals the whole
    process group and Slurm every process of the step, and a worker that died of it would leave the run
    without batches before its checkpoint. The main process handles both (``smilejax.preemption``); it
    ends the workers when it closes. SIGTERM stays fatal: it is how multiprocessing stops them at exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def _absl_flags_parsed() -> None:
    # Grain's worker processes read absl flags, which only an absl.app entry point parses; with
    # unparsed flags the first batch raises UnparsedFlagAccessError. Their defaults are what we want.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def bucket_widths(requested: Sequence[int], max_length: int) -> tuple[int, ...]:
    """``requested`` widths capped at ``max_length``, with ``max_length`` itself as the last bucket."""
    return tuple(sorted({int(w) for w in requested if w < max_length} | {int(max_length)}))


def config_options(
    cfg, *, seed: int, process_index: int, process_count: int, shuffle: bool | None = None
) -> dict:
    """The keyword arguments of ``batched`` that a ``DataConfig`` gives (a format's own pipeline adds its
    buckets, plan or block to them)."""
    return dict(
        batch_size=cfg.batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        shuffle=cfg.shuffle if shuffle is None else shuffle,
        read_threads=cfg.read_threads,
        prefetch=cfg.prefetch,
        workers=cfg.workers,
    )


def from_config(
    source: BatchSource,
    cfg,
    *,
    seed: int,
    process_index: int,
    process_count: int,
    shuffle: bool | None = None,
) -> grain.IterDataset:
    """``batched`` with the options of a ``DataConfig``."""
    options = config_options(
        cfg, seed=seed, process_index=process_index, process_count=process_count, shuffle=shuffle
    )
    return batched(source, **options)
