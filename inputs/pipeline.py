"""The per-process Grain pipeline: global, deterministic shuffling, one shard per process, batch-wise reads.

Global batch k of epoch e holds the examples ``perm_e[k*B:(k+1)*B]``; process p of P reads only its
contiguous slice of that batch. So every process count sees the same global batches in the same order,
and resuming an iterator at step k continues exactly where an uninterrupted run would be.
"""

from __future__ import annotations

import threading

import grain
import numpy as np

from .spec import Batch, BatchSource


class _EpochOrder:
    """Per-epoch permutations, computed once per epoch and shared by the read threads."""

    def __init__(self, n: int, seed: int, shuffle: bool):
        self.n, self.seed, self.shuffle = n, seed, shuffle
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


def local_slice(global_batch: int, process_index: int, process_count: int) -> slice:
    if global_batch % process_count:
        raise ValueError(f"data.batch_size={global_batch} is not divisible by the {process_count} processes")
    per = global_batch // process_count
    return slice(process_index * per, (process_index + 1) * per)


def _read(source: BatchSource, indices: np.ndarray) -> Batch:
    # Sorted reads are what makes HDF5/ArrayRecord slices fast; undo the sort afterwards.
    order = np.argsort(indices, kind="stable")
    batch = source.read(indices[order])
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
) -> grain.IterDataset:
    """An endless stream of this process's share of each global batch (incomplete last batches dropped)."""
    n = len(source)
    per_epoch = n // batch_size
    if per_epoch == 0:
        raise ValueError(f"the dataset has {n} examples, fewer than one batch of {batch_size}")
    part = local_slice(batch_size, process_index, process_count)
    order = _EpochOrder(n, seed, shuffle)

    def read_batch(step: int, _: int) -> Batch:
        epoch, k = divmod(step, per_epoch)
        rows = order(epoch)[k * batch_size : (k + 1) * batch_size][part]
        return _read(source, rows)

    ds = grain.MapDataset.range(per_epoch).repeat(None).map_with_index(read_batch)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch))
    if workers > 0:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return it


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
    return batched(
        source,
        batch_size=cfg.batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        shuffle=cfg.shuffle if shuffle is None else shuffle,
        read_threads=cfg.read_threads,
        prefetch=cfg.prefetch,
        workers=cfg.workers,
    )
