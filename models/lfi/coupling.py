"""Coupling layers with residual-network conditioners (``flow.conditioner: coupling``): the layout of
sbi's ``nsf`` (nflows' coupling spline flow; Dinh et al. 2017, Durkan et al. 2019).

A coupling layer splits theta by a fixed mask: one half passes unchanged, the other goes through the
elementwise transform (spline or affine) whose parameters a residual network computes from the unchanged
half and the context, so both directions are one network pass. Layers alternate which half (even
indices first, then odd) so every dimension is transformed and conditions the others. With one dimension
there is no other half: the network reads the context alone (sbi uses a plain MLP of the context there).

The residual network (as nflows' ``ResidualNet``): a dense layer of (identity half, context) to the width,
then blocks h + gate(c) * W2 act(W1 act(h)) whose gate is sigmoid(a dense layer of the context), then a
dense layer to the transform's parameters. Each block's second layer starts near zero (uniform +-1e-3,
as nflows) and the output layer at zero, so a new layer is the identity. Spline widths and heights are
divided by sqrt(width), as nflows does, which slows their learning relative to the derivatives.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..layers import Dense, activation_fn
from . import spline

if TYPE_CHECKING:
    from .flows import FlowConfig

F32 = jnp.float32


def _small_uniform(key: jax.Array, shape: tuple, dtype=F32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -1e-3, 1e-3)


def halves(dim: int, parity: int) -> tuple[np.ndarray, np.ndarray]:
    """(transformed, identity) indices of a layer: indices of ``parity`` (0 even, 1 odd) transformed;
    one dimension is always transformed."""
    idx = np.arange(dim)
    if dim == 1:
        return idx, idx[:0]
    return idx[idx % 2 == parity], idx[idx % 2 != parity]


class ResidualBlock(nnx.Module):
    """h + sigmoid(gate(c)) * W2 act(W1 act(h)), pre-activation, gated by the context."""

    def __init__(self, width: int, context: int, *, activation: str, rngs: nnx.Rngs):
        self.first = Dense(width, width, in_axis="mlp", out_axis="embed", rngs=rngs)
        self.second = Dense(
            width, width, in_axis="embed", out_axis="mlp", kernel_init=_small_uniform, rngs=rngs
        )
        self.gate = Dense(context, width, in_axis=None, out_axis="mlp", rngs=rngs) if context else None
        self.act = activation_fn(activation)

    def __call__(self, h: jax.Array, context: jax.Array) -> jax.Array:
        t = self.second(self.act(self.first(self.act(h))))
        if self.gate is not None:
            t = t * jax.nn.sigmoid(self.gate(context))
        return h + t


class ResidualNet(nnx.Module):
    """(inputs, context) -> outputs through ``blocks`` residual blocks of ``width`` units."""

    def __init__(
        self, n_in: int, context: int, n_out: int, *, width: int, blocks: int, activation: str, rngs: nnx.Rngs
    ):
        self.initial = Dense(n_in + context, width, in_axis=None, out_axis="mlp", rngs=rngs)
        self.blocks = nnx.List(
            [ResidualBlock(width, context, activation=activation, rngs=rngs) for _ in range(blocks)]
        )
        zeros = nnx.initializers.zeros_init()
        self.final = Dense(width, n_out, in_axis="mlp", out_axis=None, kernel_init=zeros, rngs=rngs)

    def __call__(self, inputs: jax.Array, context: jax.Array) -> jax.Array:
        h = self.initial(jnp.concatenate([inputs, context], axis=-1))
        for block in self.blocks:
            h = block(h, context)
        return self.final(h)


class Coupling(nnx.Module):
    """One coupling layer: theta[transformed] -> g(theta[transformed]; net(theta[identity], c))."""

    def __init__(self, dim: int, context: int, cfg: FlowConfig, *, parity: int, rngs: nnx.Rngs):
        if len(set(cfg.hidden)) != 1:
            raise ValueError(
                "flow.conditioner: coupling builds len(flow.hidden) residual blocks of one width; "
                f"flow.hidden must repeat one width, got {cfg.hidden}"
            )
        self.dim, self.parity = dim, parity
        self.kind, self.bins, self.bound = cfg.kind, cfg.bins, cfg.bound
        self.per_dim = spline.elementwise_params(cfg.kind, cfg.bins)
        moving, fixed = halves(dim, parity)
        self.width = cfg.hidden[0]
        self.net = ResidualNet(
            len(fixed),
            context,
            len(moving) * self.per_dim,
            width=self.width,
            blocks=len(cfg.hidden),
            activation=cfg.activation,
            rngs=rngs,
        )

    def _params(self, theta: jax.Array, context: jax.Array) -> jax.Array:
        moving, fixed = halves(self.dim, self.parity)
        out = self.net(theta[..., fixed], context)
        params = out.reshape(*out.shape[:-1], len(moving), self.per_dim)
        if self.kind == "nsf":  # widths and heights scaled down, as nflows does
            scale = np.ones(self.per_dim, np.float32)
            scale[: 2 * self.bins] = 1.0 / math.sqrt(self.width)
            params = params * scale
        return params

    def _apply(self, v: jax.Array, context: jax.Array, *, invert: bool) -> tuple[jax.Array, jax.Array]:
        moving, _ = halves(self.dim, self.parity)
        params = self._params(v, context)
        out, logdet = spline.elementwise(
            self.kind, v[..., moving], params, bins=self.bins, bound=self.bound, invert=invert
        )
        return v.at[..., moving].set(out), logdet.sum(-1)

    def forward(self, theta: jax.Array, context: jax.Array) -> tuple[jax.Array, jax.Array]:
        """theta -> z, and log|det dz/dtheta| [...]: one network pass."""
        return self._apply(theta, context, invert=False)

    def inverse(self, z: jax.Array, context: jax.Array) -> tuple[jax.Array, jax.Array]:
        """z -> theta, and log|det dtheta/dz|: one network pass too (the identity half is unchanged)."""
        return self._apply(z, context, invert=True)
