"""A tiny model and an in-memory dataset that exercise the framework in tests (not a product)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from smilejax.inputs.spec import DataConfig, DatasetSpec
from smilejax.models.spec import ModelSpec


@dataclasses.dataclass
class ToyModelConfig:
    name: str = "tests.toy:MODEL"
    features: int = 8
    hidden: int = 32
    dropout: float = 0.0


class ToyMLP(nnx.Module):
    def __init__(self, cfg: ToyModelConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        init = nnx.initializers.lecun_normal()
        self.up = nnx.Linear(
            cfg.features,
            cfg.hidden,
            dtype=dtype,
            rngs=rngs,
            kernel_init=nnx.with_partitioning(init, ("in", "mlp")),
            bias_init=nnx.with_partitioning(nnx.initializers.zeros, ("mlp",)),
        )
        self.mid = nnx.Linear(
            cfg.hidden,
            cfg.hidden,
            dtype=dtype,
            rngs=rngs,
            kernel_init=nnx.with_partitioning(init, ("mlp", "embed")),
            bias_init=nnx.with_partitioning(nnx.initializers.zeros, ("embed",)),
        )
        self.out = nnx.Linear(
            cfg.hidden, 1, dtype=dtype, rngs=rngs, kernel_init=nnx.with_partitioning(init, ("embed", None))
        )
        self.drop = nnx.Dropout(cfg.dropout, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = nnx.gelu(self.up(x))
        h = self.drop(nnx.gelu(self.mid(h)))
        return self.out(h)[..., 0].astype(jnp.float32)


def toy_loss(model: ToyMLP, batch: dict) -> tuple[jax.Array, dict]:
    pred = model(batch["x"])
    err = pred - batch["y"]
    return jnp.mean(err**2), {"mae": jnp.mean(jnp.abs(err))}


MODEL = ModelSpec(
    name="tests.toy:MODEL",
    config=ToyModelConfig,
    build=lambda cfg, *, rngs, dtype: ToyMLP(cfg, rngs=rngs, dtype=dtype),
    loss=toy_loss,
    input_spec=lambda cfg, b: {"x": jax.ShapeDtypeStruct((b, cfg.features), jnp.float32)},
)


@dataclasses.dataclass
class ToyDataConfig(DataConfig):
    format: str = "tests.toy:DATA"
    examples: int = 512
    features: int = 8
    read_delay_s: float = 0.0  # slows reads so tests can signal a run mid-way

    resume_free: ClassVar[frozenset[str]] = DataConfig.resume_free | {"read_delay_s"}


class ToySource:
    """y = sin(x·w) + noise, generated from a seed, or read from an .npz file at ``path``."""

    def __init__(self, cfg: ToyDataConfig, split: str):
        self.delay = cfg.read_delay_s
        if cfg.path:
            if not Path(cfg.path).exists():
                raise FileNotFoundError(f"data.path {cfg.path!r} does not exist")
            with np.load(cfg.path) as f:
                self.x, self.y = f["x"], f["y"]
            return
        rng = np.random.default_rng(0 if split == "train" else 1)
        w = np.random.default_rng(42).normal(size=cfg.features).astype(np.float32)
        self.x = rng.normal(size=(cfg.examples, cfg.features)).astype(np.float32)
        self.y = (np.sin(self.x @ w) + 0.1 * rng.normal(size=cfg.examples)).astype(np.float32)

    def __len__(self) -> int:
        return len(self.x)

    def read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        time.sleep(self.delay)
        return {"x": self.x[indices], "y": self.y[indices]}


DATA = DatasetSpec(name="tests.toy:DATA", config=ToyDataConfig, source=ToySource)


def config(**sections) -> dict:
    """A config tree for the toy model; keyword sections are merged over the defaults."""
    tree = {
        "run": {"steps": 8, "log_every": 1, "checkpoint_every": 4, "seed": 0},
        "data": {"format": "tests.toy:DATA", "batch_size": 16, "read_threads": 1},
        "model": {"name": "tests.toy:MODEL"},
        "optimizer": {"name": "adamw", "lr": 1e-2},
        "mesh": {},
        "logging": {"wandb": "off", "tensorboard": False, "progress": False},
        "train": {},
    }
    for name, values in sections.items():
        tree[name] = {**tree.get(name, {}), **values}
    return tree
