"""Epoch orders of the per-process pipeline (``inputs.plans``, ``inputs.pipeline``): which example sits at
each position of an epoch. Global batch k of epoch e is positions ``k*B..(k+1)*B-1`` of epoch e's order.
"""

from __future__ import annotations

import threading
from typing import Protocol

import numpy as np


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
