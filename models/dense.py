"""Dense, LayerNorm and the initialisers and activations the set/sequence blocks share.

Part of the ``models.layers`` blocks (its docstring: axis names, initialisation, numerics); import them
from there or from here.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from .attention import F32

Axis = str | None

# PyTorch's nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) == variance_scaling(1/3, fan_in, uniform)
torch_linear_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "gelu": jax.nn.gelu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "identity": lambda x: x,
}


BIAS_INITS = ("zeros", "torch")


def bias_initializer(kind: str, fan_in: int) -> Callable:
    """The bias initializer ``kind`` of a layer with ``fan_in`` inputs: ``"zeros"``, or ``"torch"``
    (PyTorch's ``nn.Linear`` default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)))."""
    if kind == "zeros":
        return nnx.initializers.zeros_init()
    if kind == "torch":
        bound = 1.0 / math.sqrt(fan_in)
        return lambda key, shape, dtype=F32: jax.random.uniform(key, shape, dtype, -bound, bound)
    raise ValueError(f"unknown bias_init {kind!r}; choose from {BIAS_INITS}")


def activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation called ``name`` (case-insensitive: ``ReLU``, ``SiLU``, ``GELU``, ...)."""
    try:
        return _ACTIVATIONS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(_ACTIVATIONS)}") from None


class Dense(nnx.Linear):
    """``nnx.Linear`` whose kernel is named ``(in_axis, out_axis)`` and bias ``(out_axis,)``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        in_axis: Axis,
        out_axis: Axis,
        rngs: nnx.Rngs,
        dtype=F32,
        use_bias: bool = True,
        kernel_init=torch_linear_init,
        bias_init: str = "zeros",
    ):
        super().__init__(
            in_features,
            out_features,
            use_bias=use_bias,
            dtype=dtype,
            param_dtype=F32,
            kernel_init=nnx.with_partitioning(kernel_init, (in_axis, out_axis)),
            bias_init=nnx.with_partitioning(bias_initializer(bias_init, in_features), (out_axis,)),
            rngs=rngs,
        )


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis with float32 statistics.

    ``affine=False`` (salt's choice: its ``LayerNorm`` sets ``elementwise_affine=False``) has no
    parameters. The output has the compute dtype (the input's dtype when ``dtype`` is None).
    """

    def __init__(
        self, dim: int, *, affine: bool = False, eps: float = 1e-5, dtype=None, axis: Axis = "embed"
    ):
        self.eps = eps
        self.dtype = dtype
        self.affine = affine
        if affine:
            self.scale = nnx.Param(
                nnx.with_partitioning(nnx.initializers.ones_init(), (axis,))(None, (dim,), F32)
            )
            self.bias = nnx.Param(
                nnx.with_partitioning(nnx.initializers.zeros_init(), (axis,))(None, (dim,), F32)
            )

    def __call__(self, x: jax.Array) -> jax.Array:
        out_dtype = self.dtype or x.dtype
        xf = x.astype(F32)
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.scale[...] + self.bias[...]
        return y.astype(out_dtype)


def dropout_or_none(rate: float, rngs: nnx.Rngs) -> nnx.Dropout | None:
    # No dropout module (and no RNG state in the model) unless it is used.
    return nnx.Dropout(rate, rngs=rngs) if rate > 0 else None
