"""Attention as a function: q [B, Q, H, D] over k, v [B, K, H, D] with a key mask, in one of several
implementations (the modules that project q/k/v live in ``models.layers``).

``"math"`` materialises the [B, heads, T, T] scores; ``"chunked"`` computes the same rows in blocks of
``chunk_size`` queries, each block rematerialised in the backward pass, so memory grows as T * chunk
rather than T^2 (events of thousands of elements train); ``"cudnn"`` is cuDNN's fused flash attention
through ``jax.nn.dot_product_attention`` (NVIDIA GPUs, bfloat16/float16 compute, no attention dropout);
``"auto"`` picks ``"cudnn"`` where it can run (tracing for an NVIDIA GPU, ``models.kernel_mode``, with
bfloat16/float16 compute and no attention dropout), else ``"chunked"`` (``"math"`` with dropout).

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


ATTENTION_IMPLEMENTATIONS = ("math", "chunked", "cudnn", "auto")


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


def _math_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array | None, dropout: nnx.Dropout | None
) -> jax.Array:
    """Softmax attention of q [B, Q, H, D] over k, v [B, K, H, D]; scores, mask and softmax in float32."""
    scores = jnp.einsum("bqnh,bknh->bnqk", q, k, preferred_element_type=F32)
    scores = scores.astype(F32) * (1.0 / math.sqrt(q.shape[-1]))
    if valid is not None:
        scores = jnp.where(valid[:, None, None, :], scores, MASK_VALUE)
    weights = jax.nn.softmax(scores, axis=-1)
    if dropout is not None:
        weights = dropout(weights)
    return jnp.einsum("bnqk,bknh->bqnh", weights.astype(v.dtype), v)


def _chunked_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array | None, chunk_size: int
) -> jax.Array:
    t = q.shape[1]
    # A symbolic element count (an export for any event size) cannot be cut into a static number of
    # blocks; inference holds no backward-pass activations, so the plain computation is what it needs.
    if not isinstance(t, int) or t <= chunk_size:
        return _math_attention(q, k, v, valid, None)
    n = -(-t // chunk_size)
    q = jnp.pad(q, ((0, 0), (0, n * chunk_size - t), (0, 0), (0, 0)))
    blocks = jnp.moveaxis(q.reshape(q.shape[0], n, chunk_size, *q.shape[2:]), 1, 0)
    # Rematerialised blocks: the backward pass keeps only the query blocks, never a [T, T] tensor.
    out = jax.lax.map(jax.checkpoint(lambda qb: _math_attention(qb, k, v, valid, None)), blocks)
    out = jnp.moveaxis(out, 0, 1).reshape(q.shape)
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
) -> jax.Array:
    """Multi-head attention of q [B, Q, H, D] over k, v [B, K, H, D], scale 1/sqrt(D).

    ``valid`` [B, K] masks keys (None: every key counts). ``"math"`` and ``"chunked"`` compute the same
    rows; attention-weight dropout needs ``"math"``.
    """
    implementation = resolve_attention(implementation, q.dtype, dropout=dropout is not None)
    if dropout is not None and implementation != "math":
        raise ValueError(f"attention dropout needs implementation='math', not {implementation!r}")
    if implementation == "math":
        return _math_attention(q, k, v, valid, dropout)
    if implementation == "chunked":
        return _chunked_attention(q, k, v, valid, chunk_size)
    return _cudnn_attention(q, k, v, valid)


def _cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array | None) -> jax.Array:
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
    if valid is None:
        return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
    t = q.shape[1]
    q, k, v, mask = cudnn_masked_inputs(q, k, v, valid)
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


def pad_to_even_length(
    q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """q, k, v and ``valid`` with one masked element appended when the length is odd.

    cuDNN's fused attention trains with a mask (a bias to cuDNN) only on even sequence lengths, and
    GN2's sets are odd (40 tracks and a register). The extra key is masked and its query row is dropped
    by the caller, so the function is unchanged.
    """
    if not isinstance(q.shape[1], int) or q.shape[1] % 2 == 0:  # symbolic (export): left as it is
        return q, k, v, valid
    pad = ((0, 0), (0, 1), (0, 0), (0, 0))
    return jnp.pad(q, pad), jnp.pad(k, pad), jnp.pad(v, pad), jnp.pad(valid, ((0, 0), (0, 1)))
