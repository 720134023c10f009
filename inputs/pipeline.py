"""The per-process Grain pipeline: global, deterministic shuffling, one shard per process, batch-wise reads.

Every process reads its contiguous slice of each global batch, the same global batches in the same order
for any process count, so resuming at step k continues exactly where an uninterrupted run would be.

The batch plans (buckets, packing, element budgets) are in ``inputs.plans``, the epoch orders in
``inputs.orders``; their names are re-exported here.
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Sequence

import grain
import numpy as np

from . import packing as packing_lib
from .orders import BlockOrder, Order, _EpochOrder
from .plans import (  # noqa: F401  (re-exported: the pipeline's public names)
    BatchPlan,
    Buckets,
    BudgetPlan,
    Packed,
    budget_sizes,
    local_slice,
)
from .spec import Batch, BatchSource


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
        packed.check_processes(process_count)  # the row multiple's check, now

    def read_batch(step: int, _: int) -> Batch:
        rows, width = plan(step)
        mine = rows[local_slice(len(rows), process_index, process_count)]
        if packed is None:
            return _read(source, mine, width)
        packing = packed.plan(rows, process_index, process_count)
        batch = _read(source, mine, packed.width(mine))
        if packed.track_keys is None:
            return packing_lib.pack(batch, packing)
        track_keys = [k for k in packed.track_keys if k in batch and k != "valid"]
        jet_keys = [k for k in batch if k != "valid" and k not in track_keys]
        return packing_lib.pack(batch, packing, track_keys=track_keys, jet_keys=jet_keys)

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
