"""Embedding networks: the observation x [B, x_dim] -> a context vector [B, out] for the flow or the
classifier.

* ``mlp``: an MLP of the flattened observation (``models.layers.MLP``).
* ``set``: a set transformer for observations that are sets (particles, jets, hits): x holds
  ``x_dim / set_features`` elements of ``set_features`` numbers each (rows of NaN are padding), embedded
  by a dense layer, a ``models.layers.Encoder`` and masked attention pooling, then an MLP.
* ``none``: the standardised observation itself.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from .. import layers

KINDS = ("mlp", "set", "none")


@dataclasses.dataclass
class EmbeddingConfig:
    """kind: mlp, set or none. hidden: the MLP's hidden widths; out: the context size (mlp and set).
    set_features, set_layers, set_embed, set_heads: the set transformer's element size and shape."""

    kind: str = "mlp"
    hidden: list[int] = dataclasses.field(default_factory=lambda: [64, 64])
    out: int = 32
    activation: str = "gelu"
    set_features: int = 1
    set_layers: int = 2
    set_embed: int = 64
    set_heads: int = 4


def out_size(cfg: EmbeddingConfig, x_dim: int) -> int:
    return x_dim if cfg.kind == "none" else cfg.out


def check(cfg: EmbeddingConfig, x_dim: int) -> None:
    if cfg.kind not in KINDS:
        raise ValueError(f"unknown embedding kind {cfg.kind!r}; choose from {KINDS}")
    if cfg.kind == "set" and (cfg.set_features < 1 or x_dim % cfg.set_features):
        raise ValueError(
            f"embedding.set_features={cfg.set_features} must divide the observation size {x_dim} "
            "(x holds elements of set_features numbers each)"
        )


class Embedding(nnx.Module):
    def __init__(self, cfg: EmbeddingConfig, x_dim: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        check(cfg, x_dim)
        self.kind, self.features = cfg.kind, cfg.set_features
        self.dtype = dtype
        if cfg.kind == "mlp":
            widths = [x_dim, *cfg.hidden, cfg.out]
            self.net = layers.MLP(widths, activation=cfg.activation, in_axis=None, rngs=rngs, dtype=dtype)
        elif cfg.kind == "set":
            dense = dict(rngs=rngs, dtype=dtype)
            self.proj = layers.Dense(cfg.set_features, cfg.set_embed, in_axis=None, out_axis="embed", **dense)
            self.encoder = layers.Encoder(
                cfg.set_layers, cfg.set_embed, cfg.set_heads, 2 * cfg.set_embed, activation="gelu", **dense
            )
            self.pool = layers.GlobalAttentionPooling(cfg.set_embed, **dense)
            widths = [cfg.set_embed, *cfg.hidden, cfg.out]
            self.net = layers.MLP(widths, activation=cfg.activation, in_axis="embed", **dense)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.kind == "none":
            return x
        if self.kind == "mlp":
            return self.net(x).astype(jnp.float32)
        elements = x.reshape(x.shape[0], -1, self.features)
        valid = ~jnp.any(jnp.isnan(elements), axis=-1)
        h = self.proj(jnp.where(valid[..., None], elements, 0.0))
        h, valid = self.encoder(h, valid)
        return self.net(self.pool(h, valid)).astype(jnp.float32)
