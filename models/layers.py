"""Generic Flax NNX building blocks for set/sequence models (GN2 now, MLPF later).

Blocks: ``Dense`` (a ``nnx.Linear`` with logical axis names), ``LayerNorm``, masked multi-head
``SelfAttention``, ``FeedForward``, the pre-LayerNorm ``EncoderLayer``, the ``Encoder`` stack (optional
learned register tokens, optional output projection, final norm, optional per-layer rematerialisation),
``MLP`` (a list of widths, optional context concatenated in front of the input as salt's ``Dense`` does)
and masked ``GlobalAttentionPooling``.

Masks are ``valid`` booleans, ``True`` for a real element (the opposite of PyTorch's padding masks).
Padded elements never send information: they are masked out as attention keys and pooling inputs.
They may still receive (their outputs are finite but meaningless), and a fully padded row is safe:
its attention or pooling weights come out uniform or zero, never NaN. (``SelfAttention(mask_keys=False)``
lets padded keys take part, for ports of models that were trained that way, such as particleflow's MLPF.)

Attention itself (``dot_product_attention`` and its implementations, ``SelfAttention(implementation=...)``)
is in ``models/attention.py``; its names are re-exported here.

Packed sets (several sets in one row, a ``segment`` id per element): ``SelfAttention``, ``EncoderLayer``
and ``Encoder`` take ``segment`` (attention within a set; the encoder's registers once per set slot),
``GlobalAttentionPooling`` pools per set slot -> [B, J, dim].

Numerics: parameters are float32; ``dtype`` is the compute dtype handed to every layer. Attention
scores, their mask and softmax, LayerNorm statistics and pooling weights are computed in float32
whatever the compute dtype, and the mask value (-1e30) is only ever applied in float32.

Logical axis names of the parameters (the first kernel axis is the input side, the last the output):

==========================  ===================================  ==========================
parameter                   shape                                names
==========================  ===================================  ==========================
attention q/k/v (fused)     [embed, 3, heads, head_dim]          ('embed', None, 'heads', 'kv')
attention q/k/v bias        [3, heads, head_dim]                 (None, 'heads', 'kv')
attention output kernel     [heads, head_dim, embed]             ('heads', 'kv', 'embed')
attention output bias       [embed]                              ('embed',)
feed-forward in / out       [embed, ff] / [ff, embed]            ('embed', 'mlp') / ('mlp', 'embed')
Encoder output projection   [embed, out]                         ('embed', 'mlp')
register tokens             [registers, embed]                   (None, 'embed')
LayerNorm scale/bias        [dim]                                ('embed',) (only if affine)
MLP layer i                 [w_i, w_i+1]                         alternating, see below
pooling gate                [dim, 1]                             ('embed', None)
==========================  ===================================  ==========================

An ``MLP`` starts from ``in_axis`` (``'in'`` for raw input features, ``'embed'`` for an embedding),
alternates ``'mlp'`` / ``'embed'`` on hidden widths (so consecutive kernels can be sharded
Megatron-style and no kernel names one axis twice) and ends on ``out_axis``. Tiny dimensions that must
never be sharded (class logits, a pooling gate, the fused q/k/v index, the register count) are ``None``,
i.e. replicated. Biases carry the name of their kernel's output axis.

Initialisation follows salt/PyTorch: ``Linear`` kernels U(+-1/sqrt(fan_in)), the fused q/k/v kernel
Xavier-uniform. Biases start at zero (``bias_init="zeros"``, the default, which MLPF keeps) or, with
``bias_init="torch"``, as PyTorch's ``nn.Linear`` starts them, U(+-1/sqrt(fan_in)) (salt's layers; GN2
uses it); the fused q/k/v bias starts at zero either way, as in salt's attention.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from . import pair_mlp
from .attention import (  # noqa: F401 (re-exported: the attention API's older home)
    ATTENTION_IMPLEMENTATIONS,
    F32,
    MASK_VALUE,
    check_attention_config,
    check_attention_implementation,
    cudnn_masked_inputs,
    dot_product_attention,
    pad_to_even_length,
    resolve_attention,
)

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


def _mlp_axes(n_layers: int, in_axis: Axis, out_axis: Axis) -> list[Axis]:
    """Axis names for the n_layers + 1 widths: alternate 'mlp'/'embed' between the ends, never
    giving a kernel the same name twice."""
    axes: list[Axis] = [in_axis]
    for i in range(1, n_layers):
        forbidden = {axes[-1]} | ({out_axis} if i == n_layers - 1 else set())
        axes.append(next((a for a in ("mlp", "embed") if a not in forbidden), None))
    if n_layers >= 1:
        axes.append(out_axis if out_axis is None or out_axis != axes[-1] else None)
    return axes


class MLP(nnx.Module):
    """Dense layers of ``widths = [in, hidden..., out]`` with ``activation`` between them.

    As in salt's ``Dense``: dropout before every layer, no activation after the last (unless
    ``final_activation``), and an optional ``context`` concatenated *in front of* the input, in which
    case ``widths[0]`` is ``context_size + input_size``. The first layer is applied piecewise
    (``project_first`` and ``finish``), so a broadcast context, or a pairwise input, is never
    materialised at full width.
    """

    def __init__(
        self,
        widths: Sequence[int],
        *,
        activation: str = "relu",
        final_activation: str | None = None,
        dropout: float = 0.0,
        in_axis: Axis = "embed",
        out_axis: Axis = None,
        bias_init: str = "zeros",
        rngs: nnx.Rngs,
        dtype=F32,
    ):
        widths = [int(w) for w in widths]
        if len(widths) < 2:
            raise ValueError(f"an MLP needs at least an input and an output width, got {widths}")
        axes = _mlp_axes(len(widths) - 1, in_axis, out_axis)
        self.widths = tuple(widths)
        self.dtype = dtype
        self.layers = nnx.List(
            [
                Dense(
                    widths[i],
                    widths[i + 1],
                    in_axis=axes[i],
                    out_axis=axes[i + 1],
                    bias_init=bias_init,
                    rngs=rngs,
                    dtype=dtype,
                )
                for i in range(len(widths) - 1)
            ]
        )
        self.activation = activation
        self.act = activation_fn(activation)
        self.final_act = activation_fn(final_activation) if final_activation else None
        self.dropout = dropout_or_none(dropout, rngs)

    def _drop(self, x: jax.Array) -> jax.Array:
        return self.dropout(x) if self.dropout is not None else x

    def project_first(self, *parts: jax.Array) -> list[jax.Array]:
        """First-layer kernel applied to consecutive input slices (no bias): ``concat(parts) @ W`` ==
        ``sum(project_first(*parts))`` once the results are broadcast against each other."""
        kernel = self.layers[0].kernel[...].astype(self.dtype)
        sizes = [p.shape[-1] for p in parts]
        if sum(sizes) != kernel.shape[0]:
            raise ValueError(f"input widths {sizes} do not add up to the MLP input width {kernel.shape[0]}")
        out, start = [], 0
        for p, n in zip(parts, sizes, strict=True):
            out.append(self._drop(p.astype(self.dtype)) @ kernel[start : start + n])
            start += n
        return out

    def finish(self, h: jax.Array) -> jax.Array:
        """The rest of the network from the first layer's bias-free pre-activation ``h``."""
        first = self.layers[0]
        if first.bias is not None:
            h = h + first.bias[...].astype(self.dtype)
        for layer in self.layers[1:]:
            h = layer(self._drop(self.act(h)))
        return self.final_act(h) if self.final_act is not None else h

    def finish_pairs(self, rows: jax.Array, cols: jax.Array) -> jax.Array:
        """``finish(rows[:, :, None] + cols[:, None, :])[..., 0]`` for a one-output MLP: a score for every
        ordered pair (i, j) of a set from the first layer's per-element parts, in one fused GPU kernel
        per pass (``models.pair_mlp``) that never stores the [B, T, T, width] activations."""
        if self.widths[-1] != 1 or self.final_act is not None or self.dropout is not None:
            raise ValueError("finish_pairs needs one output, no final activation and no dropout")
        first, *hidden, last = self.layers
        if first.bias is not None:
            rows = rows + first.bias[...].astype(self.dtype)
        return pair_mlp.pair_logits(
            rows,
            cols,
            [layer.kernel[...] for layer in hidden],
            [layer.bias[...] for layer in hidden],
            last.kernel[...],
            last.bias[...],
            activation=self.activation,
        )

    def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        if context is None:
            (h,) = self.project_first(x)
            return self.finish(h)
        c, h = self.project_first(context, x)
        c = c.reshape(c.shape[:1] + (1,) * (h.ndim - c.ndim) + c.shape[1:])
        return self.finish(h + c)


class GlobalAttentionPooling(nnx.Module):
    """Weighted sum of the valid elements, weights = masked softmax of a learned linear gate.

    Weights are computed in float32; padded elements get weight 0, so a fully padded set pools to 0.
    Packed sets: ``segment`` [B, T] and ``slots`` J pool each set slot's valid elements -> [B, J, dim].
    """

    def __init__(self, dim: int, *, bias_init: str = "zeros", rngs: nnx.Rngs, dtype=F32):
        self.gate = Dense(dim, 1, in_axis="embed", out_axis=None, bias_init=bias_init, rngs=rngs, dtype=dtype)

    def __call__(
        self, x: jax.Array, valid: jax.Array, segment: jax.Array | None = None, *, slots: int = 0
    ) -> jax.Array:
        valid = valid.astype(bool)
        gate = self.gate(x)[..., 0].astype(F32)
        if segment is None:
            scores = jnp.where(valid, gate, MASK_VALUE)
            weights = jnp.where(valid, jax.nn.softmax(scores, axis=-1), 0.0)
            return jnp.einsum("bt,btd->bd", weights, x.astype(F32)).astype(x.dtype)
        # [B, J, T]: element t is pooled into slot j
        valid = valid[:, None, :] & (segment[:, None, :] == jnp.arange(slots)[None, :, None])
        scores = jnp.where(valid, gate[:, None, :], MASK_VALUE)
        weights = jnp.where(valid, jax.nn.softmax(scores, axis=-1), 0.0)
        return jnp.einsum("bjt,btd->bjd", weights, x.astype(F32)).astype(x.dtype)
