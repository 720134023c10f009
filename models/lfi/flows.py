"""Conditional normalising flows in Flax NNX: masked autoregressive flows (MADE networks, Papamakarios et
al. 2017) with affine or rational-quadratic spline transforms (Durkan et al. 2019), conditioned on a
context vector (the embedded observation).

A flow maps theta -> z through layers f_L o ... o f_1 (the normalising direction) with a standard normal
base, so ``log q(theta | c) = log N(z) + sum log|det df_l|``: one network pass per layer. Sampling inverts
each autoregressive layer one dimension at a time (``dim`` passes per layer). Layers alternate the order
of the dimensions (reversed every other layer) so that every dimension conditions on every other.
``conditioner: coupling`` builds coupling layers instead (``models.lfi.coupling``): one pass each way.

Each layer's MADE network starts with a zero output layer, so a new flow is the identity: it starts at
the base distribution, which keeps the first steps of training stable. Parameters carry logical axis
names (``mlp``/``embed`` on hidden widths, replicated tiny axes) like ``models.layers``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..layers import activation_fn, torch_linear_init
from . import spline
from .coupling import Coupling

F32 = jnp.float32
LOG_2PI = math.log(2.0 * math.pi)
KINDS = ("maf", "nsf")
CONDITIONERS = ("made", "coupling")


@dataclasses.dataclass
class FlowConfig:
    """kind: ``maf`` (affine) or ``nsf`` (rational-quadratic spline) transforms. conditioner: ``made``
    (autoregressive: hidden are the MADE's hidden widths) or ``coupling`` (alternating half masks with
    residual-network conditioners, ``models.lfi.coupling``: len(hidden) blocks of width hidden[0]; with
    ``linear: true`` the layout of sbi's ``nsf``). layers: transforms; bins and bound: the spline's (nsf
    only; the spline acts on [-bound, bound], the identity outside, so theta should be standardised)."""

    kind: str = "nsf"
    layers: int = 5
    hidden: list[int] = dataclasses.field(default_factory=lambda: [64, 64])
    activation: str = "relu"
    bins: int = 8
    bound: float = 5.0
    linear: bool = False  # a learned invertible linear map after each layer (LU, identity at start)
    conditioner: str = "made"


def _degrees(dim: int, hidden: Sequence[int]) -> list[np.ndarray]:
    """MADE degrees: inputs 1..dim, hidden units cycling 0..dim-1. A unit of degree 0 sees the context
    alone; without such units the first output of every layer (degree 1, fed by units of degree < 1)
    would be a constant, its transform blind to the observation."""
    degrees = [np.arange(1, dim + 1)]
    for width in hidden:
        degrees.append(np.arange(width) % dim)
    return degrees


class Constant:
    """A fixed array held by a module as static structure (hashed by its bytes), neither a Param nor other
    state: it is not trained, not checkpointed, and a trace reads it as a constant."""

    __slots__ = ("_key", "array")

    def __init__(self, array: np.ndarray):
        self.array = np.array(array, np.float32)
        self.array.setflags(write=False)
        self._key = (self.array.shape, self.array.tobytes())

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Constant) and self._key == other._key


class MaskedDense(nnx.Module):
    """A dense layer whose kernel is multiplied by a fixed 0/1 mask, built once (a ``Constant``)."""

    def __init__(self, mask: np.ndarray, axes: tuple, *, rngs: nnx.Rngs, zero: bool = False):
        fan_in, fan_out = mask.shape
        init = nnx.initializers.zeros_init() if zero else torch_linear_init
        self.kernel = nnx.Param(init(rngs.params(), (fan_in, fan_out), F32), out_sharding=axes)
        self.bias = nnx.Param(jnp.zeros((fan_out,), F32), out_sharding=(axes[1],))
        self.mask = Constant(mask != 0)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ (self.kernel[...] * self.mask.array) + self.bias[...]


class MADE(nnx.Module):
    """Autoregressive network: output block i (``per_dim`` numbers) depends on inputs 1..i-1 and on all of
    the context. Returns [..., dim, per_dim]."""

    def __init__(
        self,
        dim: int,
        context: int,
        hidden: Sequence[int],
        per_dim: int,
        *,
        activation: str,
        rngs: nnx.Rngs,
    ):
        self.dim, self.per_dim = dim, per_dim
        deg = _degrees(dim, hidden)
        in_deg = np.concatenate([deg[0], np.zeros(context, int)])  # context: degree 0, seen by all
        axes = ["mlp" if i % 2 == 0 else "embed" for i in range(len(hidden))]
        layers, prev, prev_axis = [], in_deg, None
        for i, d in enumerate(deg[1:]):
            mask = (d[None, :] >= prev[:, None]).astype(np.float32)
            layers.append(MaskedDense(mask, (prev_axis, axes[i]), rngs=rngs))
            prev, prev_axis = d, axes[i]
        out_deg = np.repeat(np.arange(1, dim + 1), per_dim)
        mask = (out_deg[None, :] > prev[:, None]).astype(np.float32)
        layers.append(MaskedDense(mask, (prev_axis, None), rngs=rngs, zero=True))
        self.layers = nnx.List(layers)
        self.act = activation_fn(activation)

    def __call__(self, theta: jax.Array, context: jax.Array) -> jax.Array:
        h = jnp.concatenate([theta, context], axis=-1)
        for layer in self.layers[:-1]:
            h = self.act(layer(h))
        out = self.layers[-1](h)
        return out.reshape(*out.shape[:-1], self.dim, self.per_dim)


class Autoregressive(nnx.Module):
    """One autoregressive layer z_i = g(theta_i; params_i(theta_<i, c)), g affine or a spline."""

    def __init__(self, dim: int, context: int, cfg: FlowConfig, *, reverse: bool, rngs: nnx.Rngs):
        if cfg.kind not in KINDS:
            raise ValueError(f"unknown flow kind {cfg.kind!r}; choose from {KINDS}")
        self.kind, self.bins, self.bound, self.reverse = cfg.kind, cfg.bins, cfg.bound, reverse
        per_dim = spline.elementwise_params(cfg.kind, cfg.bins)
        self.made = MADE(dim, context, cfg.hidden, per_dim, activation=cfg.activation, rngs=rngs)

    def _order(self, v: jax.Array) -> jax.Array:
        return v[..., ::-1] if self.reverse else v

    def _elementwise(self, v: jax.Array, params: jax.Array, *, inverse: bool):
        return spline.elementwise(self.kind, v, params, bins=self.bins, bound=self.bound, invert=inverse)

    def forward(self, theta: jax.Array, context: jax.Array) -> tuple[jax.Array, jax.Array]:
        """theta -> z, and log|det dz/dtheta| [...]: one network pass."""
        u = self._order(theta)
        z, logdet = self._elementwise(u, self.made(u, context), inverse=False)
        return self._order(z), logdet.sum(-1)

    def inverse(self, z: jax.Array, context: jax.Array) -> tuple[jax.Array, jax.Array]:
        """z -> theta, and log|det dtheta/dz|: dimension i needs the theta_<i just computed, so ``dim``
        passes."""
        zo = self._order(z)
        u = jnp.zeros_like(zo)
        logdet = jnp.zeros_like(zo)
        for i in range(zo.shape[-1]):
            params = self.made(u, context)[..., i, :]
            ui, li = self._elementwise(zo[..., i], params, inverse=True)
            u, logdet = u.at[..., i].set(ui), logdet.at[..., i].set(li)
        return self._order(u), logdet.sum(-1)


class LinearLU(nnx.Module):
    """z = W theta + b with W = L U (L unit lower-triangular, U upper-triangular with diagonal exp(s)):
    mixes the dimensions, which alternating autoregressive orders alone do not rotate. log|det| = sum(s).
    Starts at the identity. The inverse is two triangular substitutions, one row at a time (``dim`` is
    small), in plain array ops that an exported forward keeps."""

    def __init__(self, dim: int):
        zeros = nnx.initializers.zeros_init()
        self.dim = dim
        self.lower = nnx.Param(zeros(None, (dim, dim), F32), out_sharding=(None, None))
        self.upper = nnx.Param(zeros(None, (dim, dim), F32), out_sharding=(None, None))
        self.log_diag = nnx.Param(jnp.zeros((dim,), F32), out_sharding=(None,))
        self.bias = nnx.Param(jnp.zeros((dim,), F32), out_sharding=(None,))

    def _factors(self) -> tuple[jax.Array, jax.Array]:
        eye = jnp.eye(self.dim, dtype=F32)
        lower = jnp.tril(self.lower[...], -1) + eye
        upper = jnp.triu(self.upper[...], 1) + eye * jnp.exp(self.log_diag[...])
        return lower, upper

    def forward(self, theta: jax.Array, context: jax.Array) -> tuple[jax.Array, jax.Array]:
        lower, upper = self._factors()
        z = theta @ (lower @ upper).T + self.bias[...]
        return z, jnp.broadcast_to(jnp.sum(self.log_diag[...]), theta.shape[:-1])

    def inverse(self, z: jax.Array, context: jax.Array) -> tuple[jax.Array, jax.Array]:
        lower, upper = self._factors()
        y = z - self.bias[...]
        v = jnp.zeros_like(y)  # L v = y, forward substitution (unit diagonal)
        for i in range(self.dim):
            v = v.at[..., i].set(y[..., i] - v @ lower[i])
        theta = jnp.zeros_like(v)  # U theta = v, backward substitution
        for i in reversed(range(self.dim)):
            theta = theta.at[..., i].set((v[..., i] - theta @ upper[i]) * jnp.exp(-self.log_diag[i]))
        return theta, jnp.broadcast_to(-jnp.sum(self.log_diag[...]), z.shape[:-1])


class Flow(nnx.Module):
    """A conditional flow over ``dim`` dimensions given a context of ``context`` numbers."""

    def __init__(self, dim: int, context: int, cfg: FlowConfig, *, rngs: nnx.Rngs):
        if cfg.layers < 1:
            raise ValueError(f"a flow needs at least one layer, got flow.layers={cfg.layers}")
        if cfg.conditioner not in CONDITIONERS:
            raise ValueError(f"unknown flow.conditioner {cfg.conditioner!r}; choose from {CONDITIONERS}")
        if cfg.kind not in KINDS:
            raise ValueError(f"unknown flow kind {cfg.kind!r}; choose from {KINDS}")
        self.dim = dim
        layers: list[nnx.Module] = []
        for i in range(cfg.layers):
            if cfg.conditioner == "coupling":
                layers.append(Coupling(dim, context, cfg, parity=i % 2, rngs=rngs))
            else:
                layers.append(Autoregressive(dim, context, cfg, reverse=i % 2 == 1, rngs=rngs))
            if cfg.linear and dim > 1:
                layers.append(LinearLU(dim))
        self.layers = nnx.List(layers)

    def forward(self, theta: jax.Array, context: jax.Array) -> tuple[jax.Array, jax.Array]:
        """theta [..., dim] -> z, log|det dz/dtheta|."""
        total = jnp.zeros(theta.shape[:-1], F32)
        for layer in self.layers:
            theta, logdet = layer.forward(theta, context)
            total = total + logdet
        return theta, total

    def inverse(self, z: jax.Array, context: jax.Array) -> tuple[jax.Array, jax.Array]:
        """z [..., dim] -> theta, log|det dtheta/dz|."""
        total = jnp.zeros(z.shape[:-1], F32)
        for layer in reversed(self.layers):
            z, logdet = layer.inverse(z, context)
            total = total + logdet
        return z, total

    def log_prob(self, theta: jax.Array, context: jax.Array) -> jax.Array:
        """log q(theta | context) [...]."""
        z, logdet = self.forward(theta.astype(F32), context.astype(F32))
        return -0.5 * jnp.sum(z**2, -1) - 0.5 * self.dim * LOG_2PI + logdet

    def sample(self, key: jax.Array, context: jax.Array) -> jax.Array:
        """One draw per row of ``context`` [..., C] -> [..., dim]."""
        z = jax.random.normal(key, (*context.shape[:-1], self.dim), F32)
        return self.inverse(z, context.astype(F32))[0]
