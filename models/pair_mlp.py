"""An MLP over every ordered pair (i, j) of a set, fused into one GPU kernel per pass (Pallas, Triton).

GN2's vertex head scores each track pair of a jet: ``logit[b, i, j] = MLP(act(u[b, i] + v[b, j]))``,
where ``u`` and ``v`` are the first layer applied to each track (``MLP.project_first``). Written in
jnp, XLA stores every layer's [B, T, T, width] activations and reads them back in the backward pass:
26 GB of memory traffic per GN2 step on an H100 at 40 tracks and 4000 jets, more than a quarter of the
step's (``smilejax bench roofline``, docs/PERFORMANCE.md). Here each jet's pairs stay in registers.
The forward kernel reads ``u``, ``v`` and the weights and writes the logits; the backward kernel
recomputes the activations row by row and writes ``du``, ``dv`` and each jet's share of the weight
gradients, which XLA then sums (a fixed order: no atomics, so a step is reproducible).

``pair_logits`` is the function; ``pair_logits_reference`` the same in jnp, for tests. Off a GPU the
kernels run in Pallas's interpreter (same numbers, slow: for tests only). XLA cannot split a custom
kernel over devices by itself; both kernels are partitioned along the set axis
(``custom_partitioning``), so a jit step sharded over devices (data parallel, FSDP) runs each device's
own sets, and only the weight gradients are summed across devices. JAX 0.12 deprecates Pallas's Triton
backend (Mosaic GPU replaces it): the kernels work with JAX 0.11 and 0.12.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from . import kernel_mode
from .pallas_common import F32, MIN_BLOCK, block_size, compiler_params, dot, split_by_set

ACTIVATIONS = ("relu", "silu")


def _act(name: str, z: jax.Array) -> jax.Array:
    return jax.nn.relu(z) if name == "relu" else jax.nn.silu(z)  # the model's own (relu'(0) = 0)


def _act_grad(name: str, z: jax.Array, g: jax.Array) -> jax.Array:
    """``g * act'(z)``."""
    if name == "relu":
        return jnp.where(z > 0, g, 0.0)
    s = jax.nn.sigmoid(z)
    return g * s * (1.0 + z * (1.0 - s))


def _layers(name: str, u: jax.Array, v: jax.Array, ws, bs, dtype) -> tuple[list, list]:
    """Pre-activations and activations of every layer for the pairs (one row i, all j)."""
    pre = [u + v]
    hs = [_act(name, pre[0])]
    for w, b in zip(ws, bs, strict=True):
        pre.append(dot(hs[-1], w, dtype) + b[None, :])
        hs.append(_act(name, pre[-1]))
    return pre, hs


def _load(v_ref, refs, n: int) -> tuple[jax.Array, list, list, jax.Array]:
    """A set's columns ``v`` and the weights (``refs``: n kernels, n biases, the last kernel, ...)."""
    ws = [r[...] for r in refs[:n]]  # the compute dtype: the matrix products' inputs
    bs = [r[...].astype(F32) for r in refs[n : 2 * n]]
    return v_ref[...].astype(F32), ws, bs, refs[2 * n][...].astype(F32)


def _forward_kernel(rows: int, name: str, n: int, u_ref, v_ref, *refs) -> None:
    v, ws, bs, wl = _load(v_ref, refs, n)
    o_ref, dtype = refs[2 * n + 1], u_ref.dtype

    def row(i, carry):
        _, hs = _layers(name, u_ref[pl.ds(i, 1), :].astype(F32), v, ws, bs, dtype)
        o_ref[pl.ds(i, 1), :] = jnp.sum(hs[-1] * wl[None, :], axis=1)[None, :].astype(o_ref.dtype)
        return carry

    jax.lax.fori_loop(0, rows, row, 0)


def _backward_kernel(rows: int, name: str, n: int, u_ref, v_ref, gt_ref, *refs) -> None:
    v, ws, bs, wl = _load(v_ref, refs, n)
    du_ref, dv_ref = refs[2 * n + 1], refs[2 * n + 2]
    dw_refs, db_refs, dwl_ref = refs[2 * n + 3 : 3 * n + 3], refs[3 * n + 3 : 4 * n + 3], refs[4 * n + 3]
    dtype = u_ref.dtype

    def row(i, carry):
        dv, dws, dbs, dwl = carry
        pre, hs = _layers(name, u_ref[pl.ds(i, 1), :].astype(F32), v, ws, bs, dtype)
        g = gt_ref[:, pl.ds(i, 1)].astype(F32)  # [J, 1]: d loss / d logit[i, j]
        dwl = dwl + jnp.sum(hs[-1] * g, axis=0)
        dh = g * wl[None, :]
        dws, dbs = list(dws), list(dbs)
        for k in reversed(range(n)):
            dz = _act_grad(name, pre[k + 1], dh)
            dws[k] = dws[k] + dot(hs[k], dz, dtype, transpose_a=True)
            dbs[k] = dbs[k] + jnp.sum(dz, axis=0)
            dh = dot(dz, ws[k], dtype, transpose_b=True)
        dpre = _act_grad(name, pre[0], dh)
        du_ref[pl.ds(i, 1), :] = jnp.sum(dpre, axis=0)[None, :].astype(du_ref.dtype)
        return dv + dpre, tuple(dws), tuple(dbs), dwl

    zeros = (
        jnp.zeros(v.shape, F32),
        tuple(jnp.zeros(w.shape, F32) for w in ws),
        tuple(jnp.zeros(b.shape, F32) for b in bs),
        jnp.zeros(wl.shape, F32),
    )
    dv, dws, dbs, dwl = jax.lax.fori_loop(0, rows, row, zeros)
    dv_ref[...] = dv.astype(dv_ref.dtype)
    for ref, value in zip((*dw_refs, *db_refs, dwl_ref), (*dws, *dbs, dwl), strict=True):
        ref[...] = value


def _whole(x: jax.Array) -> pl.BlockSpec:
    zeros = (0,) * x.ndim
    return pl.BlockSpec(x.shape, lambda b: zeros)


def _per_set(*shape: int) -> pl.BlockSpec:
    """Set b's block of an array whose leading axis is the set."""
    zeros = (0,) * len(shape)
    return pl.BlockSpec((None, *shape), lambda b: (b, *zeros))


def _forward_sets(name: str, interpret: bool, n: int, u, v, *weights) -> jax.Array:
    """The logits [B, T, T] of every set; ``weights``: n kernels, n biases, the last kernel."""
    batch, rows, width = u.shape
    block = block_size(rows)
    v = jnp.pad(v, ((0, 0), (0, block - rows), (0, 0)))  # padded columns: sliced off below
    out = pl.pallas_call(
        functools.partial(_forward_kernel, rows, name, n),
        out_shape=jax.ShapeDtypeStruct((batch, rows, block), u.dtype),
        grid=(batch,),
        in_specs=[_per_set(rows, width), _per_set(block, width), *map(_whole, weights)],
        out_specs=_per_set(rows, block),
        compiler_params=compiler_params(4),
        interpret=interpret,
        name="pair_mlp_forward",
    )(u, v, *weights)
    return out[:, :, :rows]


def _backward_sets(name: str, interpret: bool, n: int, u, v, g, *weights) -> tuple[jax.Array, ...]:
    """(du, dv, each set's share of every weight gradient), all float32 and led by the set axis."""
    batch, rows, width = u.shape
    block = block_size(rows)
    pad = ((0, 0), (0, block - rows), (0, 0))
    v = jnp.pad(v, pad)
    # Zero gradients in the padded columns: those pairs add nothing to any gradient.
    gt = jnp.pad(jnp.swapaxes(g, 1, 2).astype(F32), pad)  # [B, J, I]: row i's gradients are a column
    du, dv, *parts = pl.pallas_call(
        functools.partial(_backward_kernel, rows, name, n),
        out_shape=[
            jax.ShapeDtypeStruct(u.shape, F32),
            jax.ShapeDtypeStruct((batch, block, width), F32),
            *(jax.ShapeDtypeStruct((batch, *w.shape), F32) for w in weights),
        ],
        grid=(batch,),
        in_specs=[
            _per_set(rows, width),
            _per_set(block, width),
            _per_set(block, rows),
            *map(_whole, weights),
        ],
        out_specs=[
            _per_set(rows, width),
            _per_set(block, width),
            *(_per_set(*w.shape) for w in weights),
        ],
        compiler_params=compiler_params(8),
        interpret=interpret,
        name="pair_mlp_backward",
    )(u, v, gt, *weights)
    return (du, dv[:, :rows], *parts)


_forward_split = split_by_set(_forward_sets, sets=2)
_backward_split = split_by_set(_backward_sets, sets=3)


def _forward(name: str, interpret: bool, u, v, ws, bs, wl) -> jax.Array:
    return _forward_split(name, interpret, len(ws), u, v, *ws, *bs, wl)


def _backward(name: str, interpret: bool, u, v, ws, bs, wl, g):
    n = len(ws)
    du, dv, *parts = _backward_split(name, interpret, n, u, v, g, *ws, *bs, wl)
    sums = [p.sum(axis=0) for p in parts]  # each set's share of the weight gradients
    dws, dbs, dwl = sums[:n], sums[n : 2 * n], sums[2 * n]
    cast = lambda grads, like: [d.astype(x.dtype) for d, x in zip(grads, like, strict=True)]  # noqa: E731
    return (
        du.astype(u.dtype),
        dv.astype(v.dtype),
        cast(dws, ws),
        cast(dbs, bs),
        dwl.astype(wl.dtype),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _fused(name: str, interpret: bool, u, v, ws, bs, wl) -> jax.Array:
    return _forward(name, interpret, u, v, ws, bs, wl)


def _fused_fwd(name, interpret, u, v, ws, bs, wl):
    return _forward(name, interpret, u, v, ws, bs, wl), (u, v, ws, bs, wl)


def _fused_bwd(name, interpret, residuals, g):
    return _backward(name, interpret, *residuals, g)


_fused.defvjp(_fused_fwd, _fused_bwd)


def check_supported(activation: str, widths: Sequence[int]) -> None:
    """ValueError unless the kernels can run this MLP (``widths``: first hidden width ... last hidden)."""
    if activation.lower() not in ACTIVATIONS:
        raise ValueError(f"the fused pair MLP supports activations {ACTIVATIONS}, not {activation!r}")
    bad = [w for w in widths if w < MIN_BLOCK or w & (w - 1)]
    if bad:
        raise ValueError(
            f"the fused pair MLP needs hidden widths that are powers of two >= {MIN_BLOCK} "
            f"(Triton's tiles), got {list(widths)}"
        )


def pair_logits(
    u: jax.Array,
    v: jax.Array,
    kernels: Sequence[jax.Array],
    biases: Sequence[jax.Array],
    last_kernel: jax.Array,
    last_bias: jax.Array,
    *,
    activation: str = "relu",
    interpret: bool | None = None,
) -> jax.Array:
    """``logit[b, i, j] = act(...act(act(u[b, i] + v[b, j]) @ W1 + b1)...) @ last_kernel + last_bias``.

    u, v: [B, T, H0] (the first layer, its bias included in one of them); ``kernels[k]`` [H_k, H_k+1]
    and ``biases[k]`` [H_k+1] the hidden layers; ``last_kernel`` [H_last] or [H_last, 1]. Returns
    [B, T, T] in u's dtype, the compute dtype of the matrix products (accumulated in float32).
    ``interpret``: run Pallas's interpreter (default: off a GPU).
    """
    name = activation.lower()
    check_supported(name, [u.shape[-1], *(w.shape[-1] for w in kernels)])
    if interpret is None:
        interpret = not kernel_mode.nvidia_gpu()
    dtype = u.dtype
    ws = [w.astype(dtype) for w in kernels]
    bs = [b.astype(dtype) for b in biases]
    wl = last_kernel.reshape(-1).astype(dtype)
    logits = _fused(name, interpret, u, v.astype(dtype), ws, bs, wl)
    return logits + last_bias.reshape(()).astype(dtype)


def pair_logits_reference(u, v, kernels, biases, last_kernel, last_bias, *, activation: str = "relu"):
    """``pair_logits`` in jnp, materialising every [B, T, T, width] activation (for tests)."""
    name = activation.lower()
    h = _act(name, (u[:, :, None, :] + v[:, None, :, :]).astype(F32))
    for w, b in zip(kernels, biases, strict=True):
        h = _act(name, h @ w.astype(F32) + b.astype(F32))
    return (h @ last_kernel.reshape(-1).astype(F32) + last_bias.reshape(()).astype(F32)).astype(u.dtype)
