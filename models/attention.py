"""Attention as a function: q [B, Q, H, D] over k, v [B, K, H, D] with a key mask, in one of several
implementations (the modules that project q/k/v live in ``models.layers``).

``"math"`` materialises the [B, heads, T, T] scores; ``"chunked"`` computes the same rows in blocks of
``chunk_size`` queries, each block rematerialised in the backward pass, so memory grows as T * chunk
rather than T^2 (events of thousands of elements train); ``"cudnn"`` is cuDNN's fused flash attention
through ``jax.nn.dot_product_attention`` (NVIDIA GPUs, bfloat16/float16 compute, no attention dropout);
``"auto"`` picks ``"cudnn"`` where it can run (tracing for an NVIDIA GPU, ``models.kernel_mode``, with
bfloat16/float16 compute and no attention dropout), else ``"chunked"`` (``"math"`` with dropout).
``"pallas"`` (``models.set_attention``) is self-attention over short sets (at most 128 elements, head
dimension a power of two >= 16, no attention dropout): one fused Triton kernel per pass keeps each
(set, head)'s scores in registers; off a GPU it runs in Pallas's interpreter (slow: tests only).

Packed sets (several sets in one row of elements): ``segment`` [B, T] gives each element its set's id
in the row, and a query attends to a key iff both are valid and share a segment, so attention is
block-diagonal per set and each set's rows equal those it has alone. Padded elements (``valid``
False, whatever their segment) form one more group that attends only within itself: every query row
has a key (no fully masked row, which cuDNN's kernel would not keep finite), and padding never
reaches a valid element, in the forward or the backward pass.

Scores, their mask and softmax are computed in float32 whatever the compute dtype, and the mask value
(-1e30) is only ever applied in float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from . import kernel_mode

MASK_VALUE = -1e30  # applied to float32 scores only
F32 = jnp.float32


ATTENTION_IMPLEMENTATIONS = ("math", "chunked", "cudnn", "pallas", "auto")


def check_attention_implementation(implementation: str) -> None:
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(
            f"unknown attention implementation {implementation!r}; choose from {ATTENTION_IMPLEMENTATIONS}"
        )


def check_attention_config(attention: str, attention_chunk: int) -> None:
    """The ``attention`` / ``attention_chunk`` fields of a model config, with errors naming them."""
    try:
        check_attention_implementation(attention)
    except ValueError as err:
        raise ValueError(f"attention: {err}") from None
    if attention_chunk < 1:
        raise ValueError(f"attention_chunk must be >= 1, got {attention_chunk}")


def token_groups(valid: jax.Array | None, segment: jax.Array) -> jax.Array:
    """[B, T] int32: each element's segment, and -1 for every padded one (its own group; ``valid`` None:
    none is padded)."""
    if valid is None:
        return segment.astype(jnp.int32)
    return jnp.where(valid.astype(bool), segment.astype(jnp.int32), -1)


def _same_group(groups: tuple[jax.Array, jax.Array]) -> jax.Array:
    """[B, 1, Q, K] bool from query groups [B, Q] and key groups [B, K]."""
    gq, gk = groups
    return (gq[:, :, None] == gk[:, None, :])[:, None]


def _math_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    valid: jax.Array | None,
    dropout: nnx.Dropout | None,
    groups: tuple[jax.Array, jax.Array] | None = None,
) -> jax.Array:
    """Softmax attention of q [B, Q, H, D] over k, v [B, K, H, D]; scores, mask and softmax in float32.

    ``groups`` (query groups [B, Q], key groups [B, K]; ``token_groups``) replaces the key mask ``valid``:
    a query attends to the keys of its group."""
    scores = jnp.einsum("bqnh,bknh->bnqk", q, k, preferred_element_type=F32)
    scores = scores.astype(F32) * (1.0 / math.sqrt(q.shape[-1]))
    if groups is not None:
        scores = jnp.where(_same_group(groups), scores, MASK_VALUE)
    elif valid is not None:
        scores = jnp.where(valid[:, None, None, :], scores, MASK_VALUE)
    weights = jax.nn.softmax(scores, axis=-1)
    if dropout is not None:
        weights = dropout(weights)
    return jnp.einsum("bnqk,bknh->bqnh", weights.astype(v.dtype), v)


def _chunked_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    valid: jax.Array | None,
    chunk_size: int,
    groups: jax.Array | None = None,
) -> jax.Array:
    """``_math_attention`` in blocks of ``chunk_size`` queries; ``groups`` [B, T] (``token_groups``) are
    the query and key groups of a self-attention."""
    t = q.shape[1]
    # A symbolic element count (an export for any event size) cannot be cut into a static number of
    # blocks; inference holds no backward-pass activations, so the plain computation is what it needs.
    if not isinstance(t, int) or t <= chunk_size:
        return _math_attention(q, k, v, valid, None, None if groups is None else (groups, groups))
    n = -(-t // chunk_size)

    def split(x: jax.Array, fill) -> jax.Array:  # [B, T, ...] -> [n, B, chunk, ...]
        x = jnp.pad(x, ((0, 0), (0, n * chunk_size - t)) + ((0, 0),) * (x.ndim - 2), constant_values=fill)
        return jnp.moveaxis(x.reshape(x.shape[0], n, chunk_size, *x.shape[2:]), 1, 0)

    # Rematerialised blocks: the backward pass keeps only the query blocks, never a [T, T] tensor.
    if groups is None:
        block = jax.checkpoint(lambda qb: _math_attention(qb, k, v, valid, None))
        out = jax.lax.map(block, split(q, 0))
    else:  # the appended queries are in group -2, with no key; their rows are dropped below
        block = jax.checkpoint(lambda qg: _math_attention(qg[0], k, v, None, None, (qg[1], groups)))
        out = jax.lax.map(block, (split(q, 0), split(groups, -2)))
    out = jnp.moveaxis(out, 0, 1).reshape(q.shape[0], n * chunk_size, *q.shape[2:])
    return out[:, :t]


def resolve_attention(implementation: str, dtype: jnp.dtype, *, dropout: bool = False) -> str:
    """The implementation that runs for ``implementation`` in the program being traced: ``"auto"``
    settled (``models.kernel_mode``), and ``"math"`` for every one inside ``kernel_mode.reference()`` (the
    same rows, with every FLOP visible)."""
    check_attention_implementation(implementation)
    if kernel_mode.reference_only():
        return "math"
    if implementation != "auto":
        return implementation
    if kernel_mode.fused_kernels() and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and not dropout:
        return "cudnn"
    return "math" if dropout else "chunked"


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    valid: jax.Array | None,
    *,
    implementation: str = "math",
    chunk_size: int = 1024,
    dropout: nnx.Dropout | None = None,
    segment: jax.Array | None = None,
) -> jax.Array:
    """Multi-head attention of q [B, Q, H, D] over k, v [B, K, H, D], scale 1/sqrt(D).

    ``valid`` [B, K] masks keys (None: every key counts). ``segment`` [B, T] (int, self-attention: Q ==
    K == T) packs several sets in a row: a query attends to a key iff both are valid and in the same
    segment (module docstring). ``"math"`` and ``"chunked"`` compute the same rows; attention-weight
    dropout needs ``"math"``.
    """
    implementation = resolve_attention(implementation, q.dtype, dropout=dropout is not None)
    if dropout is not None and implementation != "math":
        raise ValueError(f"attention dropout needs implementation='math', not {implementation!r}")
    groups = None
    if segment is not None:
        if q.shape[1] != k.shape[1] or segment.shape != k.shape[:2]:
            raise ValueError(
                f"segment {segment.shape} needs a self-attention of [B, T], got q {q.shape}, k {k.shape}"
            )
        groups = token_groups(valid, segment)
    if implementation == "math":
        return _math_attention(q, k, v, valid, dropout, None if groups is None else (groups, groups))
    if implementation == "chunked":
        return _chunked_attention(q, k, v, valid, chunk_size, groups)
    if implementation == "pallas":  # short sets, fused Triton kernels (imported here: it imports this module)
        from . import set_attention

        return set_attention.attention(q, k, v, valid, segment)
    return _cudnn_attention(q, k, v, valid, groups)


def _cudnn_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array | None, groups: jax.Array | None = None
) -> jax.Array:
    if q.dtype not in (jnp.bfloat16, jnp.float16):
        raise ValueError(
            f"attention='cudnn' needs bf16 or fp16 compute (train.precision=bf16), not {q.dtype}; "
            "use attention='math' or 'chunked' in float32"
        )
    if not kernel_mode.nvidia_gpu():
        raise ValueError(
            f"attention='cudnn' needs an NVIDIA GPU, and this run's backend is {jax.default_backend()!r}; "
            "use attention='math' or 'chunked'"
        )
    t = q.shape[1]
    if groups is not None:
        q, k, v, mask = cudnn_segment_inputs(q, k, v, groups)
    elif valid is not None:
        q, k, v, mask = cudnn_masked_inputs(q, k, v, valid)
    else:
        return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")[:, :t]


def cudnn_masked_inputs(
    q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """q, k, v and the key mask in the shapes cuDNN's fused attention accepts: an even length
    (``pad_to_even_length``), and the mask as [B, 1, T, S] (cuDNN turns it into a bias, which must span
    both sequence axes; a [B, 1, 1, S] mask is refused with "Bias must have same seq length as QKV")."""
    q, k, v, valid = pad_to_even_length(q, k, v, valid)
    b, t, s = q.shape[0], q.shape[1], k.shape[1]
    return q, k, v, jnp.broadcast_to(valid[:, None, None, :], (b, 1, t, s))


def cudnn_segment_inputs(
    q: jax.Array, k: jax.Array, v: jax.Array, groups: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """``cudnn_masked_inputs`` for packed sets: the [B, 1, T, T] mask of same-group pairs
    (``token_groups``; jax.nn's cuDNN path takes no segment ids, only a mask, which it turns into a
    bias). An element appended for an even length joins the padding group -1."""
    q, k, v, groups = pad_to_even_length(q, k, v, groups, fill=-1)
    return q, k, v, _same_group((groups, groups))


def pad_to_even_length(
    q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array, fill: bool | int = False
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """q, k, v and ``valid`` (or any [B, T] array, padded with ``fill``) with one masked element appended
    when the length is odd.

    cuDNN's fused attention trains with a mask (a bias to cuDNN) only on even sequence lengths, and
    GN2's sets are odd (40 tracks and a register). The extra key is masked and its query row is dropped
    by the caller, so the function is unchanged.
    """
    if not isinstance(q.shape[1], int) or q.shape[1] % 2 == 0:  # symbolic (export): left as it is
        return q, k, v, valid
    pad = ((0, 0), (0, 1), (0, 0), (0, 0))
    return (
        jnp.pad(q, pad),
        jnp.pad(k, pad),
        jnp.pad(v, pad),
        jnp.pad(valid, ((0, 0), (0, 1)), constant_values=fill),
    )
