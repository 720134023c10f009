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

Where they live: ``Dense``, ``LayerNorm`` and the initialisers in ``models/dense.py``, the attention
and encoder blocks in ``models/encoder.py``, ``MLP`` and the pooling here; all are importable from here.
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

from collections.abc import Sequence

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
from .dense import (  # noqa: F401 (re-exported: this module is the blocks' home)
    BIAS_INITS,
    Axis,
    Dense,
    LayerNorm,
    activation_fn,
    bias_initializer,
    dropout_or_none,
    torch_linear_init,
)
from .encoder import Encoder, EncoderLayer, FeedForward, SelfAttention  # noqa: F401 (re-exported)


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
