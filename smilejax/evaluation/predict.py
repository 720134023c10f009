"""Stream a split through the run's own data pipeline and a jitted forward pass, batch by batch.

The model is split once into graph and state and a pure function is jitted over the state (as
``steps.py`` does: ``nnx.jit`` costs small models too much Python time). Batches are sharded over the
local devices along the batch axis, as training places them; a batch that the device count does not
divide is padded with copies of its last row, which are dropped again on the host.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from smilejax import mesh as meshlib
from smilejax import registry
from smilejax.config import MeshConfig
from smilejax.inputs import pipeline as pipelines
from smilejax.inputs.spec import BatchSource
from smilejax.trained import TrainedModel

Forward = Callable[[nnx.Module, dict], dict]


def source(trained: TrainedModel, split: str) -> BatchSource:
    """The run's dataset source of ``split``, with the run's own data config (files, normalisation)."""
    return registry.dataset(trained.cfg.data.format).source(trained.cfg.data, split)


def available(src: BatchSource, batch_size: int) -> int:
    """Examples one pass of the unshuffled pipeline yields (it drops the incomplete last batch)."""
    return len(src) // batch_size * batch_size


def batches(
    trained: TrainedModel,
    src: BatchSource,
    forward: Forward,
    n: int,
    *,
    desc: str = "eval",
    unit: str = "jet",
    inputs: tuple[str, ...] | None = None,
) -> Iterator[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """(input batch, ``forward(model, batch)``) as numpy, for the first ``n`` examples of ``src`` in order.

    ``n`` must not exceed ``available(src, batch_size)``; the last batch is cut to ``n``. ``inputs``: the
    batch keys ``forward`` reads (default: all), the only ones sent to the devices, so that fields of
    varying shape that only the evaluation reads (a list of jets per event, say) cause no recompilation.
    """
    cfg = trained.cfg
    batch_size = cfg.data.batch_size
    if n > available(src, batch_size):
        raise ValueError(f"asked for {n} examples, the split yields {available(src, batch_size)}")
    build = registry.dataset(cfg.data.format).pipeline or pipelines.from_config
    stream = iter(build(src, cfg.data, seed=cfg.run.seed, process_index=0, process_count=1, shuffle=False))

    devices = jax.local_devices()
    mesh = meshlib.build_mesh(MeshConfig(data=-1, fsdp=1, tensor=1, rules=cfg.mesh.rules), devices)
    sharding = meshlib.batch_sharding(mesh, cfg.mesh.rules)
    graphdef, state = nnx.split(trained.model)
    run = jax.jit(lambda state, batch: forward(nnx.merge(graphdef, state), batch))
    pad = -batch_size % len(devices)

    with tqdm(total=n, desc=desc, unit=unit, disable=not cfg.logging.progress, dynamic_ncols=True) as bar:
        done = 0
        while done < n:
            batch = next(stream)
            padded = {
                k: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)])
                for k, v in batch.items()
                if inputs is None or k in inputs
            }
            out = jax.device_get(run(state, jax.device_put(padded, sharding)))
            keep = min(batch_size, n - done)
            yield _rows(batch, keep), _rows(out, keep)
            done += keep
            bar.update(keep)


def _rows(tree: dict[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
    return {key: np.asarray(v)[:k] for key, v in tree.items()}


@dataclasses.dataclass
class Gathered:
    """Per-example arrays appended batch by batch and joined at the end."""

    parts: dict[str, list[np.ndarray]] = dataclasses.field(default_factory=dict)

    def add(self, **arrays: np.ndarray) -> None:
        for key, value in arrays.items():
            self.parts.setdefault(key, []).append(np.asarray(value))

    def join(self) -> dict[str, np.ndarray]:
        return {key: np.concatenate(v) for key, v in self.parts.items()}
