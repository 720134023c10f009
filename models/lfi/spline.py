"""Monotone rational-quadratic splines (Durkan et al. 2019, "Neural Spline Flows"), elementwise.

The spline maps [-bound, bound] onto itself through ``bins`` monotone rational-quadratic pieces whose knot
widths, heights and inner derivatives come from a network; outside it is the identity (linear tails,
boundary derivatives 1), so the transform is defined on all of R. Parameters are unconstrained:
``widths`` and ``heights`` [..., K] go through a softmax, ``derivatives`` [..., K-1] through a softplus
shifted so that all-zero parameters give the identity (a flow starts at its base distribution).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

MIN_WIDTH = 1e-3
MIN_HEIGHT = 1e-3
MIN_DERIVATIVE = 1e-3
# softplus(0 + SHIFT) + MIN_DERIVATIVE == 1: zero parameters give unit derivatives, i.e. the identity
SHIFT = math.log(math.expm1(1.0 - MIN_DERIVATIVE))


def elementwise(
    kind: str, v: jax.Array, params: jax.Array, *, bins: int, bound: float, invert: bool
) -> tuple[jax.Array, jax.Array]:
    """A flow layer's per-dimension transform of ``v`` [...] with ``params`` [..., P] and its log|det|
    [...]: ``maf`` affine (P = 2: shift, log-scale), ``nsf`` this spline (P = ``params_per_dim``)."""
    if kind == "maf":
        shift, log_scale = params[..., 0], jnp.clip(params[..., 1], -8.0, 8.0)
        if invert:
            return v * jnp.exp(log_scale) + shift, log_scale
        return (v - shift) * jnp.exp(-log_scale), -log_scale
    fn = inverse if invert else forward
    return fn(v, params, bins=bins, bound=bound)


def elementwise_params(kind: str, bins: int) -> int:
    """Numbers per transformed dimension that ``elementwise`` takes for ``kind``."""
    return 2 if kind == "maf" else params_per_dim(bins)


def params_per_dim(bins: int) -> int:
    """Unconstrained numbers per transformed dimension: K widths, K heights, K-1 inner derivatives."""
    return 3 * bins - 1


def _knots(raw: jax.Array, bound: float, minimum: float) -> tuple[jax.Array, jax.Array]:
    """Bin sizes [..., K] and knot positions [..., K+1] on [-bound, bound] from unconstrained ``raw``."""
    k = raw.shape[-1]
    sizes = minimum + (1.0 - minimum * k) * jax.nn.softmax(raw, axis=-1)
    edges = jnp.cumsum(sizes, axis=-1)
    edges = jnp.concatenate([jnp.zeros_like(edges[..., :1]), edges], axis=-1)
    edges = 2.0 * bound * edges - bound
    edges = edges.at[..., 0].set(-bound).at[..., -1].set(bound)
    return edges[..., 1:] - edges[..., :-1], edges


def _split(params: jax.Array, bins: int, bound: float):
    w_raw, h_raw, d_raw = params[..., :bins], params[..., bins : 2 * bins], params[..., 2 * bins :]
    widths, xs = _knots(w_raw, bound, MIN_WIDTH)
    heights, ys = _knots(h_raw, bound, MIN_HEIGHT)
    inner = MIN_DERIVATIVE + jax.nn.softplus(d_raw + SHIFT)
    ones = jnp.ones_like(inner[..., :1])
    derivs = jnp.concatenate([ones, inner, ones], axis=-1)
    return widths, xs, heights, ys, derivs


def _gather(a: jax.Array, idx: jax.Array) -> jax.Array:
    return jnp.take_along_axis(a, idx[..., None], axis=-1)[..., 0]


def _bin(edges: jax.Array, v: jax.Array, bins: int) -> jax.Array:
    return jnp.clip(jnp.sum(v[..., None] >= edges[..., :-1], axis=-1) - 1, 0, bins - 1)


def forward(x: jax.Array, params: jax.Array, *, bins: int, bound: float) -> tuple[jax.Array, jax.Array]:
    """y = spline(x) and log|dy/dx|, elementwise; ``params`` [..., 3K-1] per element of ``x`` [...]."""
    widths, xs, heights, ys, derivs = _split(params, bins, bound)
    inside = jnp.abs(x) < bound
    xc = jnp.clip(x, -bound, bound)  # keeps the unused branch finite (and its gradient)
    idx = _bin(xs, xc, bins)
    xk, wk, yk, hk = _gather(xs, idx), _gather(widths, idx), _gather(ys, idx), _gather(heights, idx)
    dk, dk1 = _gather(derivs, idx), _gather(derivs, idx + 1)
    delta = hk / wk
    t = (xc - xk) / wk
    tt = t * (1.0 - t)
    den = delta + (dk + dk1 - 2.0 * delta) * tt
    y = yk + hk * (delta * t**2 + dk * tt) / den
    grad = delta**2 * (dk1 * t**2 + 2.0 * delta * tt + dk * (1.0 - t) ** 2) / den**2
    return jnp.where(inside, y, x), jnp.where(inside, jnp.log(grad), 0.0)


def inverse(y: jax.Array, params: jax.Array, *, bins: int, bound: float) -> tuple[jax.Array, jax.Array]:
    """x = spline^-1(y) and log|dx/dy|, elementwise (the root of the piece's quadratic)."""
    widths, xs, heights, ys, derivs = _split(params, bins, bound)
    inside = jnp.abs(y) < bound
    yc = jnp.clip(y, -bound, bound)
    idx = _bin(ys, yc, bins)
    xk, wk, yk, hk = _gather(xs, idx), _gather(widths, idx), _gather(ys, idx), _gather(heights, idx)
    dk, dk1 = _gather(derivs, idx), _gather(derivs, idx + 1)
    delta = hk / wk
    dy = yc - yk
    s = dk + dk1 - 2.0 * delta
    a = hk * (delta - dk) + dy * s
    b = hk * dk - dy * s
    c = -delta * dy
    disc = jnp.maximum(b**2 - 4.0 * a * c, 0.0)
    t = (2.0 * c) / (-b - jnp.sqrt(disc))
    x = xk + t * wk
    tt = t * (1.0 - t)
    den = delta + s * tt
    grad = delta**2 * (dk1 * t**2 + 2.0 * delta * tt + dk * (1.0 - t) ** 2) / den**2
    return jnp.where(inside, x, y), jnp.where(inside, -jnp.log(grad), 0.0)
