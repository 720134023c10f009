"""MLPF's building blocks, as particleflow names them (``model``: the model they make): its ``ffn``
head block, the pre-LN self-attention layer and the regression outputs, with its activations."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import nnx

from ..layers import Axis, Dense, LayerNorm, SelfAttention, dropout_or_none

if TYPE_CHECKING:  # model imports this module
    from .model import MLPFConfig

# particleflow's activations are PyTorch modules: LeakyReLU slope 0.01 and GELU with the exact erf.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "elu": jax.nn.elu,
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "leakyrelu": functools.partial(jax.nn.leaky_relu, negative_slope=0.01),
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
}


class FFN(nnx.Module):
    """particleflow's ``ffn``: Linear, activation, LayerNorm, dropout, Linear (names 0, 2, 4 there)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        width: int,
        *,
        activation: str,
        dropout: float,
        in_axis: Axis,
        out_axis: Axis,
        rngs: nnx.Rngs,
        dtype,
    ):
        self.lin0 = Dense(in_dim, width, in_axis=in_axis, out_axis="mlp", rngs=rngs, dtype=dtype)
        self.norm = LayerNorm(width, affine=True, axis="mlp", dtype=dtype)
        self.lin1 = Dense(width, out_dim, in_axis="mlp", out_axis=out_axis, rngs=rngs, dtype=dtype)
        self.act = ACTIVATIONS[activation]
        self.dropout = dropout_or_none(dropout, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.norm(self.act(self.lin0(x)))
        if self.dropout is not None:
            h = self.dropout(h)
        return self.lin1(h)


class AttentionLayer(nnx.Module):
    """particleflow's ``PreLnSelfAttentionLayer``: x + mha(norm0(x)), then x + act(seq(norm1(x))), then
    padded rows zeroed. ``queries`` replaces norm0(x) as the attention queries (the last layer)."""

    def __init__(self, cfg: MLPFConfig, *, dropout_mha: float, dropout_ff: float, rngs: nnx.Rngs, dtype):
        e = cfg.embed
        self.norm0 = LayerNorm(e, affine=True, dtype=dtype)
        self.mha = SelfAttention(
            e,
            cfg.num_heads,
            dropout=dropout_mha,
            implementation=cfg.attention,
            chunk_size=cfg.attention_chunk,
            mask_keys=cfg.mask_padded_keys,
            rngs=rngs,
            dtype=dtype,
        )
        self.norm1 = LayerNorm(e, affine=True, dtype=dtype)
        self.seq0 = Dense(e, e, in_axis="embed", out_axis="mlp", rngs=rngs, dtype=dtype)
        self.seq2 = Dense(e, e, in_axis="mlp", out_axis="embed", rngs=rngs, dtype=dtype)
        self.act = ACTIVATIONS[cfg.activation]
        self.dropout = dropout_or_none(dropout_ff, rngs)

    def __call__(self, x: jax.Array, valid: jax.Array, queries: jax.Array | None = None) -> jax.Array:
        x = x + self.mha(self.norm0(x), valid, queries=queries)
        h = self.act(self.seq2(self.act(self.seq0(self.norm1(x)))))
        if self.dropout is not None:
            h = self.dropout(h)
        return jnp.where(valid[..., None], x + h, 0)


class RegressionOutput(nnx.Module):
    """particleflow's ``RegressionOutput``: one momentum component from the embedding, the element
    features and the element's own value of that component (``orig``)."""

    def __init__(self, mode: str, embed: int, width: int, n_types: int, *, rngs: nnx.Rngs, **ffn_kw):
        self.mode = mode

        def ffn(out: int) -> FFN:
            return FFN(embed, out, width, in_axis="embed", out_axis=None, rngs=rngs, **ffn_kw)

        if mode in ("direct", "additive", "multiplicative"):
            self.nn = ffn(1)
        elif mode == "direct-elemtype":
            self.nn = ffn(n_types)
        elif mode == "direct-elemtype-split":
            self.nn = nnx.List([ffn(1) for _ in range(n_types)])
        elif mode == "linear":
            self.nn = ffn(2)
        else:  # linear-elemtype
            self.nn1 = ffn(n_types)
            self.nn2 = ffn(n_types)

    def __call__(self, type_onehot: jax.Array, x: jax.Array, orig: jax.Array) -> jax.Array:
        def pick(out):  # the output column of the element's own type
            return jnp.sum(jnp.where(type_onehot, out, 0), axis=-1, keepdims=True)

        mode = self.mode
        if mode == "direct":
            return self.nn(x)
        if mode == "additive":
            return orig + self.nn(x)
        if mode == "multiplicative":
            return orig * self.nn(x)
        if mode == "direct-elemtype":
            return pick(self.nn(x))
        if mode == "direct-elemtype-split":
            return pick(jnp.concatenate([f(x) for f in self.nn], axis=-1))
        if mode == "linear":
            out = self.nn(x)
            return orig * out[..., 0:1] + out[..., 1:2]
        return orig * pick(self.nn1(x)) + pick(self.nn2(x))
