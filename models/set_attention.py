"""Softmax attention over short sets, one fused GPU kernel per pass (Pallas, Triton).

GN2's sets are short (16-40 tracks and a register). Math attention (``models.attention``) stores the
[B, heads, T, T] scores and softmax weights in float32 and reads them back in the backward pass; cuDNN
pads odd lengths and turns the key mask into a [B, 1, T, T] bias. Both move several times the bytes of
q, k and v (``smilejax bench roofline``, docs/PERFORMANCE.md). Here one program per (set, head) keeps
the whole score block (T padded to a power of two, at most ``MAX_BLOCK``) in registers: the forward
kernel reads q, k, v and writes the output; the backward kernel recomputes the weights from q and k
(no residuals but the inputs) and writes dq, dk and dv.

Masking is that of math attention (``models.attention``), so values and gradients are equal: a query
attends a valid key (``valid``), or, for packed sets (``segment``: the set each element belongs to, one
row holding several), a key of its own group (``attention.token_groups``: valid elements of one
segment; the padded elements form a group of their own). Masked scores become ``MASK_VALUE`` in
float32, so a query with no key to attend gets uniform weights over the row (finite, unused).

``attention`` is the function. Off a GPU the kernels run in Pallas's interpreter (same numbers, slow:
for tests only). Both kernels are partitioned along the set axis (``pair_mlp``'s partitioning): a jit
step sharded over devices runs each device's own sets.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from . import kernel_mode
from .attention import MASK_VALUE, token_groups
from .pallas_common import MIN_BLOCK, block_size, compiler_params, dot, split_by_set

MAX_BLOCK = 128  # the [block, block] float32 scores live in registers: short sets only


def check_supported(length: int, head_dim: int) -> None:
    """ValueError unless the kernels can run sets of ``length`` elements with heads of ``head_dim``."""
    if block_size(length) > MAX_BLOCK:
        raise ValueError(
            f"attention='pallas' is for short sets: at most {MAX_BLOCK} elements (a register, packed "
            f"jets included), got {length}; use attention='cudnn' or 'chunked'"
        )
    if head_dim < MIN_BLOCK or head_dim & (head_dim - 1):
        raise ValueError(
            f"attention='pallas' needs a head dimension (embed / heads) that is a power of two >= "
            f"{MIN_BLOCK} (Triton's tiles), got {head_dim}"
        )


def _rows(block: int, length: int) -> jax.Array:
    """[block, 1]: True for a row inside the set (the block's rows past ``length`` are out of bounds)."""
    return jnp.arange(block)[:, None] < length


def _load(ref, index: tuple, inside: jax.Array) -> jax.Array:
    # Rows past the array's end are read masked, with undefined values: zero them (0 * NaN is NaN).
    return jnp.where(inside, ref[index], 0).astype(ref.dtype)


def _weights(length: int, scale: float, q, k, qg_ref, kg_ref) -> tuple[jax.Array, jax.Array]:
    """(softmax weights [block, block] in float32, the allowed (query, key) pairs)."""
    s = dot(q, k, q.dtype, transpose_b=True) * scale
    allowed = qg_ref[...][:, None] == kg_ref[...][None, :]
    s = jnp.where(allowed, s, MASK_VALUE)
    # Keys past the set's end are no keys at all: zero weight even in a row with no allowed key.
    s = jnp.where(jnp.arange(s.shape[1])[None, :] < length, s, -jnp.inf)
    e = jnp.exp(s - jnp.max(s, axis=1, keepdims=True))
    return e / jnp.sum(e, axis=1, keepdims=True), allowed


def _forward_kernel(length: int, scale: float, qkv_ref, qg_ref, kg_ref, o_ref) -> None:
    inside = _rows(qkv_ref.shape[0], length)
    q, k, v = (_load(qkv_ref, (slice(None), c, slice(None)), inside) for c in range(3))
    p, _ = _weights(length, scale, q, k, qg_ref, kg_ref)
    o_ref[...] = dot(p, v, v.dtype).astype(o_ref.dtype)


def _backward_kernel(length: int, scale: float, qkv_ref, do_ref, qg_ref, kg_ref, dqkv_ref) -> None:
    inside = _rows(qkv_ref.shape[0], length)
    q, k, v = (_load(qkv_ref, (slice(None), c, slice(None)), inside) for c in range(3))
    do = _load(do_ref, (...,), inside)
    p, allowed = _weights(length, scale, q, k, qg_ref, kg_ref)
    dt = q.dtype
    dqkv_ref[:, 2, :] = dot(p, do, dt, transpose_a=True).astype(dt)
    dp = dot(do, v, dt, transpose_b=True)
    ds = p * (dp - jnp.sum(p * dp, axis=1, keepdims=True))
    ds = jnp.where(allowed, ds, 0.0) * scale  # a masked score is a constant: no gradient
    dqkv_ref[:, 0, :] = dot(ds, k, dt).astype(dt)
    dqkv_ref[:, 1, :] = dot(ds, q, dt, transpose_a=True).astype(dt)


def _call(kernel, name: str, interpret: bool, warps: int, inputs: tuple, out: jax.Array) -> jax.Array:
    """Kernel over (set b, head h): its [block, 3, D] rows of qkv [B, T, 3, H, D], [block, D] rows of the
    [B, T, H, D] arrays, [block] of the groups; rows past T are out of bounds (masked)."""
    qkv = inputs[0]
    batch, length, _, heads, head_dim = qkv.shape
    block = block_size(length)
    fused = pl.BlockSpec((None, block, 3, None, head_dim), lambda b, h: (b, 0, 0, h, 0))
    per_head = pl.BlockSpec((None, block, None, head_dim), lambda b, h: (b, 0, h, 0))
    group = pl.BlockSpec((None, block), lambda b, h: (b, 0))
    specs = {5: fused, 4: per_head, 2: group}
    return pl.pallas_call(
        functools.partial(kernel, length, 1.0 / head_dim**0.5),
        out_shape=out,
        grid=(batch, heads),
        in_specs=[specs[x.ndim] for x in inputs],
        out_specs=specs[len(out.shape)],
        compiler_params=compiler_params(warps),
        interpret=interpret,
        name=name,
    )(*inputs)


def _warps(length: int) -> int:
    """Warps per program: the [block, block] float32 blocks spread over more threads past 64 rows."""
    return 4 if block_size(length) <= 64 else 8


def _forward_sets(name: str, interpret: bool, warps: int, qkv, qg, kg) -> jax.Array:
    b, t, _, h, d = qkv.shape
    out = jax.ShapeDtypeStruct((b, t, h, d), qkv.dtype)
    return _call(_forward_kernel, name, interpret, warps, (qkv, qg, kg), out)


def _backward_sets(name: str, interpret: bool, warps: int, qkv, do, qg, kg) -> jax.Array:
    out = jax.ShapeDtypeStruct(qkv.shape, qkv.dtype)
    return _call(_backward_kernel, name, interpret, warps, (qkv, do, qg, kg), out)


_forward_split = split_by_set(_forward_sets, sets=3)
_backward_split = split_by_set(_backward_sets, sets=4)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused(interpret: bool, qkv, qg, kg) -> jax.Array:
    return _forward_split("set_attention_forward", interpret, _warps(qkv.shape[1]), qkv, qg, kg)


def _fused_fwd(interpret, qkv, qg, kg):
    return _fused(interpret, qkv, qg, kg), (qkv, qg, kg)


def _fused_bwd(interpret, residuals, do):
    qkv, qg, kg = residuals
    warps, do = _warps(qkv.shape[1]), do.astype(qkv.dtype)
    return _backward_split("set_attention_backward", interpret, warps, qkv, do, qg, kg), None, None


_fused.defvjp(_fused_fwd, _fused_bwd)


def groups(
    valid: jax.Array | None, segment: jax.Array | None, shape: tuple[int, int]
) -> tuple[jax.Array, jax.Array]:
    """(query groups, key groups) [B, T] int32: a query attends the keys of its group."""
    if segment is not None:
        both = token_groups(valid, segment)
        return both, both
    query = jnp.zeros(shape, jnp.int32)
    return query, (query if valid is None else jnp.where(valid, 0, -1).astype(jnp.int32))


def self_attention(
    qkv: jax.Array,
    valid: jax.Array | None,
    segment: jax.Array | None = None,
    *,
    interpret: bool | None = None,
) -> jax.Array:
    """Multi-head self-attention of the fused projections qkv [B, T, 3, H, D] (q, k, v on axis 2), scale
    1/sqrt(D): [B, T, H, D] in qkv's dtype, and one dqkv array in the backward pass (no slices of qkv
    or concatenation of dq, dk, dv for XLA to copy).

    ``valid`` [B, T] masks keys (None: every key counts); ``segment`` [B, T] int (None: one set per
    row) restricts each query to the keys of its own segment. ``interpret``: run Pallas's interpreter
    (default: off a GPU).
    """
    if kernel_mode.portable_only():
        raise ValueError(
            "attention='pallas': this program asks for portable code (an export, or vectorised trials "
            "that vmap the model); use attention='math', 'chunked' or 'auto'"
        )
    if qkv.ndim != 5 or qkv.shape[2] != 3:
        raise ValueError(f"attention='pallas' takes qkv as [B, T, 3, H, D], got {qkv.shape}")
    check_supported(qkv.shape[1], qkv.shape[4])
    if interpret is None:
        interpret = not kernel_mode.nvidia_gpu()
    qg, kg = groups(valid, segment, qkv.shape[:2])
    return _fused(interpret, qkv, qg, kg)


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    valid: jax.Array | None,
    segment: jax.Array | None = None,
    *,
    interpret: bool | None = None,
) -> jax.Array:
    """``self_attention`` of q, k, v [B, T, H, D] (stacked: XLA folds a stack of qkv's own slices)."""
    if not (q.shape == k.shape == v.shape):
        shapes = f"{q.shape}, {k.shape}, {v.shape}"
        raise ValueError(f"attention='pallas' is self-attention: q, k, v of one shape, got {shapes}")
    qkv = jnp.stack([q, k.astype(q.dtype), v.astype(q.dtype)], axis=2)
    return self_attention(qkv, valid, segment, interpret=interpret)
