"""The transformer encoder: masked multi-head ``SelfAttention``, ``FeedForward``, the pre-LayerNorm
``EncoderLayer`` and the ``Encoder`` stack (registers, packed sets, rematerialisation).

Part of the ``models.layers`` blocks (its docstring: masks, packed sets, numerics, axis names); import
them from there or from here. Attention itself is ``models.attention``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from .attention import F32, check_attention_implementation, dot_product_attention
from .dense import Dense, LayerNorm, activation_fn, bias_initializer, dropout_or_none


class SelfAttention(nnx.Module):
    """Multi-head self-attention with a key padding mask (``valid``: True = real element).

    The q/k/v projection is one fused kernel. Scores are accumulated, masked and soft-maxed in float32;
    masked keys get exactly zero weight; a row with no valid key gets uniform weights (finite, unused).
    ``queries`` (optional, [B, T, embed]) replaces ``x`` as the input of the query projection only.
    ``mask_keys=False`` lets padded elements take part as keys and values (particleflow's MLPF does).
    ``implementation`` / ``chunk_size``: see ``dot_product_attention``; ``segment`` [B, T] (packed sets):
    attention within a segment only (``models.attention``).
    """

    def __init__(
        self,
        embed: int,
        heads: int,
        *,
        dropout: float = 0.0,
        implementation: str = "math",
        chunk_size: int = 1024,
        mask_keys: bool = True,
        bias_init: str = "zeros",
        rngs: nnx.Rngs,
        dtype=F32,
    ):
        if embed % heads:
            raise ValueError(f"embed={embed} is not divisible by heads={heads}")
        check_attention_implementation(implementation)
        if chunk_size < 1:
            raise ValueError(f"attention chunk_size must be >= 1, got {chunk_size}")
        self.heads = heads
        self.head_dim = embed // heads
        self.dtype = dtype
        self.implementation = implementation
        self.chunk_size = int(chunk_size)
        self.mask_keys = bool(mask_keys)
        qkv_init = nnx.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2, 3))
        self.qkv_kernel = nnx.Param(
            nnx.with_partitioning(qkv_init, ("embed", None, "heads", "kv"))(
                rngs.params(), (embed, 3, heads, self.head_dim), F32
            )
        )
        self.qkv_bias = nnx.Param(
            nnx.with_partitioning(nnx.initializers.zeros_init(), (None, "heads", "kv"))(
                None, (3, heads, self.head_dim), F32
            )
        )
        out_init = nnx.initializers.variance_scaling(
            1.0 / 3.0, "fan_in", "uniform", in_axis=(0, 1), out_axis=2
        )
        self.out_kernel = nnx.Param(
            nnx.with_partitioning(out_init, ("heads", "kv", "embed"))(
                rngs.params(), (heads, self.head_dim, embed), F32
            )
        )
        out_bias_init = nnx.with_partitioning(bias_initializer(bias_init, embed), ("embed",))
        # a key only for a random bias, so that the zero-bias default draws the keys it always drew
        self.out_bias = nnx.Param(
            out_bias_init(rngs.params() if bias_init != "zeros" else None, (embed,), F32)
        )
        self.dropout = dropout_or_none(dropout, rngs)

    @jax.named_scope("attention")
    def __call__(
        self,
        x: jax.Array,
        valid: jax.Array,
        queries: jax.Array | None = None,
        segment: jax.Array | None = None,
    ) -> jax.Array:
        dt = self.dtype
        x = x.astype(dt)
        kernel, bias = self.qkv_kernel[...].astype(dt), self.qkv_bias[...].astype(dt)
        if queries is None:
            qkv = jnp.einsum("bte,ecnh->btcnh", x, kernel) + bias
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        else:
            q = jnp.einsum("bte,enh->btnh", queries.astype(dt), kernel[:, 0]) + bias[0]
            kv = jnp.einsum("bte,ecnh->btcnh", x, kernel[:, 1:]) + bias[1:]
            k, v = kv[:, :, 0], kv[:, :, 1]
        out = dot_product_attention(
            q,
            k,
            v,
            valid if self.mask_keys else None,
            implementation=self.implementation,
            chunk_size=self.chunk_size,
            dropout=self.dropout,
            segment=segment,
        )
        out = jnp.einsum("bqnh,nhe->bqe", out, self.out_kernel[...].astype(dt))
        return out + self.out_bias[...].astype(dt)


class FeedForward(nnx.Module):
    """embed -> hidden (activation, dropout) -> embed."""

    def __init__(
        self,
        embed: int,
        hidden: int,
        *,
        activation: str = "relu",
        dropout: float = 0.0,
        bias_init: str = "zeros",
        rngs: nnx.Rngs,
        dtype=F32,
    ):
        dense = dict(bias_init=bias_init, rngs=rngs, dtype=dtype)
        self.up = Dense(embed, hidden, in_axis="embed", out_axis="mlp", **dense)
        self.down = Dense(hidden, embed, in_axis="mlp", out_axis="embed", **dense)
        self.act = activation_fn(activation)
        self.dropout = dropout_or_none(dropout, rngs)

    @jax.named_scope("feed_forward")
    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.act(self.up(x))
        if self.dropout is not None:
            h = self.dropout(h)
        return self.down(h)


class EncoderLayer(nnx.Module):
    """Pre-LayerNorm transformer layer: ``x + attn(norm(x))`` then ``x + ff(norm(x))``."""

    def __init__(
        self,
        embed: int,
        heads: int,
        ff: int,
        *,
        activation: str = "relu",
        dropout: float = 0.0,
        affine_norm: bool = False,
        attention: str = "math",
        attention_chunk: int = 1024,
        bias_init: str = "zeros",
        rngs: nnx.Rngs,
        dtype=F32,
    ):
        self.attn_norm = LayerNorm(embed, affine=affine_norm, dtype=dtype)
        self.attn = SelfAttention(
            embed,
            heads,
            dropout=dropout,
            implementation=attention,
            chunk_size=attention_chunk,
            bias_init=bias_init,
            rngs=rngs,
            dtype=dtype,
        )
        self.ff_norm = LayerNorm(embed, affine=affine_norm, dtype=dtype)
        self.ff = FeedForward(
            embed, ff, activation=activation, dropout=dropout, bias_init=bias_init, rngs=rngs, dtype=dtype
        )

    def __call__(self, x: jax.Array, valid: jax.Array, segment: jax.Array | None = None) -> jax.Array:
        x = x + self.attn(self.attn_norm(x), valid, segment=segment)
        return x + self.ff(self.ff_norm(x))


def _layer_forward(
    layer: EncoderLayer, x: jax.Array, valid: jax.Array, segment: jax.Array | None
) -> jax.Array:
    return layer(x, valid, segment)


class Encoder(nnx.Module):
    """A stack of pre-LN ``EncoderLayer`` s, then an optional projection to ``out_dim`` and a final norm.

    ``num_registers`` learned tokens (salt's "registers") are appended after the sequence and always
    valid, so that a fully padded set still has something to attend to and pool. ``__call__`` returns
    ``(y, valid)`` with the registers kept at the end of ``y`` and ``valid`` (slice ``[:, :T]`` for the
    original elements). ``remat=True`` rematerialises each layer in the backward pass.

    Packed sets (``segment`` [B, T], the set slot of each element, and ``slot_valid`` [B, J], which of
    the row's J set slots hold a set): the registers are appended once per set slot (J * registers
    tokens, slot-major; ``register_segments``), each in its slot's segment and valid iff the slot is,
    and attention stays within a segment. A set with no valid element still has its registers.
    """

    def __init__(
        self,
        num_layers: int,
        embed: int,
        heads: int,
        ff: int,
        *,
        out_dim: int | None = None,
        num_registers: int = 0,
        activation: str = "relu",
        dropout: float = 0.0,
        final_norm: bool = True,
        affine_norm: bool = False,
        attention: str = "math",
        attention_chunk: int = 1024,
        remat: bool = False,
        bias_init: str = "zeros",
        rngs: nnx.Rngs,
        dtype=F32,
    ):
        self.dtype = dtype
        self.remat = remat
        self.num_registers = num_registers
        self.layers = nnx.List(
            [
                EncoderLayer(
                    embed,
                    heads,
                    ff,
                    activation=activation,
                    dropout=dropout,
                    affine_norm=affine_norm,
                    attention=attention,
                    attention_chunk=attention_chunk,
                    bias_init=bias_init,
                    rngs=rngs,
                    dtype=dtype,
                )
                for _ in range(num_layers)
            ]
        )
        if num_registers:
            init = nnx.with_partitioning(nnx.initializers.normal(1e-4), (None, "embed"))
            self.registers = nnx.Param(init(rngs.params(), (num_registers, embed), F32))
        dense = dict(bias_init=bias_init, rngs=rngs, dtype=dtype)
        self.out_proj = Dense(embed, out_dim, in_axis="embed", out_axis="mlp", **dense) if out_dim else None
        width = out_dim or embed
        self.norm = LayerNorm(width, affine=affine_norm, dtype=dtype) if final_norm else None

    def __call__(
        self,
        x: jax.Array,
        valid: jax.Array,
        segment: jax.Array | None = None,
        slot_valid: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        x = x.astype(self.dtype)
        valid = valid.astype(bool)
        if (segment is None) != (slot_valid is None):
            raise ValueError("packed sets need both segment and slot_valid")
        b = x.shape[0]
        if self.num_registers and segment is None:
            reg = jnp.broadcast_to(self.registers[...].astype(self.dtype), (b, *self.registers.shape))
            x = jnp.concatenate([x, reg], axis=1)
            valid = jnp.concatenate([valid, jnp.ones((b, self.num_registers), bool)], axis=1)
        elif self.num_registers:
            slots = slot_valid.shape[1]
            reg = jnp.tile(self.registers[...].astype(self.dtype), (slots, 1))  # slot-major
            x = jnp.concatenate([x, jnp.broadcast_to(reg, (b, *reg.shape))], axis=1)
            valid = jnp.concatenate([valid, jnp.repeat(slot_valid.astype(bool), self.num_registers, 1)], 1)
            segment = self.register_segments(segment, slots)
        forward = nnx.remat(_layer_forward) if self.remat else _layer_forward
        for layer in self.layers:
            x = forward(layer, x, valid, segment)
        if self.out_proj is not None:
            x = self.out_proj(x)
        if self.norm is not None:
            x = self.norm(x)
        return x, valid

    def register_segments(self, segment: jax.Array, slots: int) -> jax.Array:
        """``segment`` [B, T] with the segments of the packed registers appended (``__call__``)."""
        reg = jnp.repeat(jnp.arange(slots, dtype=segment.dtype), self.num_registers)
        return jnp.concatenate([segment, jnp.broadcast_to(reg, (segment.shape[0], reg.size))], axis=1)
