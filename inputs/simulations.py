"""Fresh simulations every step: batches of per-example seeds (uint32) from which the model's loss draws
its training examples on the device (``models.lfi``: theta from the prior, x from the simulator, vmapped).

A batch is ``{"seed": uint32 [local batch]}``, sharded over the mesh like any batch; each process reads
only its slice of the global batch (``pipeline.batched``), so under ``srun`` every process simulates its
own share and no simulation is repeated. Seeds are a hash of (``data.seed``, split, example index):
the train and eval splits never share a simulation, and a resumed run continues the same sequence.

``data.examples``: 0 (default) draws new simulations forever (an endless, unshuffled index); N reuses a
fixed budget of N simulations, reshuffled every epoch, as a benchmark at a simulation budget does.
``data.eval_examples``: the held-out simulations that evaluation scores. Numpy only.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from . import pipeline
from .spec import Batch, DataConfig, DatasetSpec

ENDLESS = 1 << 40  # indices per "epoch" of the endless stream: never reached
_SPLIT_SALT = {"train": 0, "eval": 1}
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@dataclasses.dataclass
class SimulationsConfig(DataConfig):
    format: str = "simulations"
    seed: int = 0
    examples: int = 0
    eval_examples: int = 4096

    def __post_init__(self):
        if self.examples < 0 or self.eval_examples < 1:
            raise ValueError(
                f"data.examples must be >= 0 (0: endless) and data.eval_examples >= 1, got "
                f"{self.examples} and {self.eval_examples}"
            )


def seeds(indices: np.ndarray, salt: int) -> np.ndarray:
    """SplitMix64 of (salt, index) -> uint32: distinct, well-mixed seeds for neighbouring indices."""
    with np.errstate(over="ignore"):
        z = indices.astype(np.uint64) + np.uint64(salt) * _GOLDEN + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(32)).astype(np.uint32)


class SeedSource:
    """``len`` examples whose ``read`` gives their seeds; ``endless``: an unbounded index."""

    def __init__(self, cfg: SimulationsConfig, split: str):
        if split not in _SPLIT_SALT:
            raise ValueError(f"unknown split {split!r}; the simulations format has {list(_SPLIT_SALT)}")
        self.salt = 2 * int(cfg.seed) + _SPLIT_SALT[split]
        size = cfg.eval_examples if split == "eval" else cfg.examples
        self.endless = size == 0
        self.size = ENDLESS if self.endless else size

    def __len__(self) -> int:
        return self.size

    def read(self, indices: np.ndarray) -> Batch:
        return {"seed": seeds(np.asarray(indices), self.salt)}


class _Sequential:
    """Positions lo..hi-1 of epoch e are indices e * size + lo..hi-1: no permutation to hold in memory."""

    def __init__(self, size: int):
        self.size = size

    def rows(self, epoch: int, lo: int, hi: int) -> np.ndarray:
        return np.arange(lo, hi, dtype=np.int64) + epoch * self.size


def build_pipeline(source, cfg: SimulationsConfig, *, seed, process_index, process_count, shuffle=None):
    """``pipeline.batched``; the endless stream in index order (a permutation of 2^40 would not fit; the
    hashed seeds need none)."""
    shuffle = cfg.shuffle if shuffle is None else shuffle
    order = _Sequential(len(source)) if getattr(source, "endless", False) else None
    options = pipeline.config_options(
        cfg, seed=seed, process_index=process_index, process_count=process_count, shuffle=shuffle
    )
    return pipeline.batched(source, order=order, **options)


SPEC = DatasetSpec(name="simulations", config=SimulationsConfig, source=SeedSource, pipeline=build_pipeline)
