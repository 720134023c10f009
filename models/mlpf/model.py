"""MLPF, particleflow's machine-learned particle-flow transformer, in Flax NNX.

A port of the attention model of the ``particleflow`` package 3.1.0 (``mlpf/model/mlpf.py``, loss in
``mlpf/model/losses.py``). Defaults = particleflow's CLIC configuration, 3,250,450 parameters as there::

    X [B, N, 17] (element features; column 0 the element type: 1 track, 2 cluster, 0 padding)
      -> input encoding  per stack (id, reg): ffn 17 -> 256 -> 2*256, then each element keeps the
                         256-wide embedding of its own type ("split"; "joint": one 256-wide output)
      -> id / reg stacks 3 pre-LN self-attention layers each (16 heads x 16 dims, ELU feed-forward
                         256 -> 256 -> 256 with ELU after both linears); the last layer's queries are
                         the stack's input embedding; then a final LayerNorm (``use_pre_layernorm``)
      -> id heads        ffn(256 -> 256 -> 2) particle / no particle, ffn(256 -> 256 -> 6) particle type
                         over (none, 211, 130, 22, 11, 13)
      -> reg heads       pT ("direct-elemtype-split": one ffn(256 -> 256 -> 1) per element type),
                         eta, sin phi, cos phi ("linear": a * x_element + b), energy (as pT, added with a
                         ReLU to the log-energy implied by the predicted pT and eta, which is not
                         differentiated)

``ffn`` is particleflow's head block: Linear, activation, LayerNorm, dropout, Linear (``blocks``: it, the
attention layer and the regression outputs). Every LayerNorm
has PyTorch's affine parameters and eps 1e-5. Regression modes, input encoding, learned representation
(``last`` / ``concat``), activations (PyTorch's ELU, ReLU, ReLU6, LeakyReLU(0.01), exact GELU) and
dropouts follow particleflow's config names and values.

Batch (what the MLPF dataset yields; particleflow's ``PFBatch`` after ``TFDSDataSource``)
-----------------------------------------------------------------------------------------
* ``X`` float32 [B, N, 17]: CLIC element features in particleflow's order (``mlpf.conf``): 0 element
  type (1 track, 2 cluster, 0 padding), 1 pT (track pT / cluster ET), 2 eta, 3 sin phi, 4 cos phi,
  5 p (track) / energy (cluster), 6..16 the remaining track | cluster features. Padded rows are 0.
* ``mask`` bool [B, N], optional: True for a real element. As in particleflow, an element is real when
  ``X[..., 0] != 0``; a given ``mask`` is and-ed with that, and ``X`` is zeroed where the result is
  False, so garbage in padded rows never reaches a valid output.
* ``ytarget`` float32 [B, N, 13]: particleflow's target per element, columns ``ParticleFeatures``:
  0 class index in (0..5) for (none, 211, 130, 22, 11, 13), 1 charge, 2 log(pT_target / X[..., 1]),
  3 eta, 4 sin phi, 5 cos phi, 6 log(E_target / X[..., 5]), 7 ispu, 8 generatorStatus,
  9 simulatorStatus, 10 gp_to_track, 11 gp_to_cluster, 12 jet_idx. Columns 2 and 6 are the log-ratio
  targets particleflow's loader makes (0 where there is no target particle, or the ratio is not finite);
  only columns 0 and 2..6 enter the loss (7..12 may be absent).

Outputs (``model(X, mask)``, float32): ``binary_logits`` [B, N, 2] (particleflow's
``preds_binary_particle``), ``pid_logits`` [B, N, 6] (``preds_pid``), ``momentum`` [B, N, 5]
(``preds_momentum``: pT and energy as log ratios, eta, sin phi, cos phi); non-finite values are set to 0
as particleflow does.

Padding
-------
Padded elements are zeroed after every layer and in the loss. Like particleflow, they still take part
in attention as keys and values (a zero row normalises to the LayerNorm bias), so a valid element's
outputs depend on how many padded slots its event has: particleflow's function, needed to use its
trained weights. ``mask_padded_keys=True`` removes padded keys (padding-invariant outputs; no longer
particleflow's function).

Loss: ``loss.py`` (particleflow's ``mlpf_loss``).

Attention memory: ``attention="chunked"`` computes blocks of ``attention_chunk`` queries and
rematerialises them in the backward pass (memory ~ N x chunk, not N^2; identical to ``"math"`` up to
float rounding, and the same program when N <= chunk). For one 8,000-element event (CLIC, float32) the
gradient's compiled temporaries are 2.5 GiB chunked against 81 GiB with ``"math"``. ``"cudnn"`` uses
cuDNN flash attention on NVIDIA GPUs with bf16 compute (1.9x faster steps than ``"chunked"`` on an
H100 at 256 elements). ``"auto"`` (default) is ``"cudnn"`` where it can run, else ``"chunked"``. See
``models/layers.py``.

Weights trained with particleflow load with ``torch_weights.load_particleflow_state_dict``: module and
parameter names here mirror particleflow's.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from ..layers import F32, LayerNorm, check_attention_config
from .blocks import ACTIVATIONS, FFN, AttentionLayer, RegressionOutput

CLASS_LABELS = (0, 211, 130, 22, 11, 13)  # particleflow's CLIC classes (PDG ids, 0 = no particle)
MOMENTUM = ("pt", "eta", "sin_phi", "cos_phi", "energy")  # order of ``momentum`` and ytarget[..., 2:7]
REGRESSION_MODES = (
    "direct",
    "additive",
    "multiplicative",
    "direct-elemtype",
    "direct-elemtype-split",
    "linear",
    "linear-elemtype",
)


@dataclasses.dataclass
class MLPFConfig:
    """MLPF hyperparameters with particleflow's names (``mlpf.conf``); defaults = its CLIC model.

    The embedding and every hidden width are num_heads * head_dim (particleflow's attention model).
    Ours only: ``attention`` / ``attention_chunk`` (implementation, see the module doc),
    ``mask_padded_keys``, ``remat`` (rematerialise each attention layer in the backward pass),
    ``max_elements`` (export example input), and the loss constants particleflow hard-codes
    (``binary_weight``, ``focal_gamma``, ``angle_weight``). Plain field types, so YAML fills it.
    """

    name: str = "mlpf"
    input_dim: int = 17
    num_classes: int = len(CLASS_LABELS)
    elemtypes_nonzero: list[int] = dataclasses.field(default_factory=lambda: [1, 2])
    max_elements: int = 512  # element count of the example input (export)
    input_encoding: str = "split"
    learned_representation_mode: str = "last"
    pt_mode: str = "direct-elemtype-split"
    eta_mode: str = "linear"
    sin_phi_mode: str = "linear"
    cos_phi_mode: str = "linear"
    energy_mode: str = "direct-elemtype-split"
    num_convs: int = 3
    num_heads: int = 16
    head_dim: int = 16
    activation: str = "elu"
    use_pre_layernorm: bool = True
    dropout_ff: float = 0.0
    dropout_conv_id_mha: float = 0.0
    dropout_conv_id_ff: float = 0.0
    dropout_conv_reg_mha: float = 0.0
    dropout_conv_reg_ff: float = 0.0
    attention: str = "auto"
    attention_chunk: int = 1024
    mask_padded_keys: bool = False
    remat: bool = False
    binary_weight: float = 10.0
    focal_gamma: float = 2.0
    angle_weight: float = 1e-2  # eta, sin phi, cos phi

    def __post_init__(self):
        choices = {
            "input_encoding": ("split", "joint"),
            "learned_representation_mode": ("last", "concat"),
            "activation": tuple(ACTIVATIONS),
            **{f"{m}_mode": REGRESSION_MODES for m in MOMENTUM},
        }
        for field, allowed in choices.items():
            if getattr(self, field) not in allowed:
                value = getattr(self, field)
                close = difflib.get_close_matches(str(value), allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"{field}={value!r}; choose from {list(allowed)}{hint}")
        check_attention_config(self.attention, self.attention_chunk)
        for field in ("input_dim", "num_heads", "head_dim", "max_elements"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")
        if self.num_convs < 0:
            raise ValueError(f"num_convs must be >= 0, got {self.num_convs}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if not self.elemtypes_nonzero or 0 in self.elemtypes_nonzero:
            raise ValueError(
                f"elemtypes_nonzero={self.elemtypes_nonzero}: list the element types (non-zero; "
                "0 marks padding)"
            )
        dropouts = [f.name for f in dataclasses.fields(self) if f.name.startswith("dropout")]
        for field in dropouts:
            if not 0.0 <= getattr(self, field) < 1.0:
                raise ValueError(f"{field} must be in [0, 1), got {getattr(self, field)}")
        attn_dropout = [f for f in dropouts if f.endswith("_mha") and getattr(self, f) > 0]
        if attn_dropout and self.attention not in ("math", "auto"):
            raise ValueError(f"{', '.join(attn_dropout)} > 0 needs attention='math', not {self.attention!r}")
        if self.learned_representation_mode == "concat" and self.num_convs == 0:
            raise ValueError("learned_representation_mode='concat' needs num_convs >= 1")

    @property
    def embed(self) -> int:
        return self.num_heads * self.head_dim


def _where_finite(x: jax.Array) -> jax.Array:
    return jnp.where(jnp.isfinite(x), x, 0)


def valid_elements(X: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Real elements: a non-zero element type (particleflow's ``PFBatch.mask``), and-ed with ``mask``."""
    valid = X[..., 0] != 0
    return valid if mask is None else valid & jnp.asarray(mask).astype(bool)


def _layer_forward(layer: AttentionLayer, x: jax.Array, valid: jax.Array, queries: jax.Array | None):
    return layer(x, valid, queries)


class MLPF(nnx.Module):
    """``model(X, mask=None) -> {"binary_logits", "pid_logits", "momentum"}`` (see the module doc)."""

    def __init__(self, cfg: MLPFConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        dtype = jnp.dtype(dtype)
        e, n_types = cfg.embed, len(cfg.elemtypes_nonzero)
        self.dtype = dtype
        self.elemtypes = tuple(int(t) for t in cfg.elemtypes_nonzero)
        self.input_encoding = cfg.input_encoding
        self.concat = cfg.learned_representation_mode == "concat"
        self.remat = cfg.remat
        # Plain values only on the module, so its graphdef can be a static jit argument.
        self.loss_weights = (float(cfg.binary_weight), float(cfg.focal_gamma), float(cfg.angle_weight))
        ffn_kw = dict(activation=cfg.activation, dropout=cfg.dropout_ff, rngs=rngs, dtype=dtype)

        enc_out = n_types * e if cfg.input_encoding == "split" else e
        self.nn0_id = FFN(cfg.input_dim, enc_out, e, in_axis="in", out_axis="embed", **ffn_kw)
        self.nn0_reg = FFN(cfg.input_dim, enc_out, e, in_axis="in", out_axis="embed", **ffn_kw)

        def stack(mha: float, ff: float) -> nnx.List:
            layer = functools.partial(
                AttentionLayer, cfg, dropout_mha=mha, dropout_ff=ff, rngs=rngs, dtype=dtype
            )
            return nnx.List([layer() for _ in range(cfg.num_convs)])

        self.conv_id = stack(cfg.dropout_conv_id_mha, cfg.dropout_conv_id_ff)
        self.conv_reg = stack(cfg.dropout_conv_reg_mha, cfg.dropout_conv_reg_ff)

        dec = cfg.num_convs * e if self.concat else e
        self.final_norm_id = LayerNorm(dec, affine=True, dtype=dtype) if cfg.use_pre_layernorm else None
        self.final_norm_reg = LayerNorm(dec, affine=True, dtype=dtype) if cfg.use_pre_layernorm else None
        head_kw = dict(in_axis="embed", out_axis=None, **ffn_kw)
        self.nn_binary_particle = FFN(dec, 2, e, **head_kw)
        self.nn_pid = FFN(dec, cfg.num_classes, e, **head_kw)
        for name in MOMENTUM:
            mode = getattr(cfg, f"{name}_mode")
            setattr(self, f"nn_{name}", RegressionOutput(mode, dec, e, n_types, **ffn_kw))

    def _encode(self, nn0: FFN, x: jax.Array, type_onehot: jax.Array) -> jax.Array:
        out = nn0(x)
        if self.input_encoding == "joint":
            return out
        out = out.reshape(*out.shape[:-1], len(self.elemtypes), -1)
        return jnp.sum(jnp.where(type_onehot[..., None], out, 0), axis=-2)

    def _stack(self, layers: nnx.List, x0: jax.Array, valid: jax.Array, norm: LayerNorm | None) -> jax.Array:
        forward = nnx.remat(_layer_forward) if self.remat else _layer_forward
        outs, x = [], x0
        for i, layer in enumerate(layers):
            x = forward(layer, x, valid, x0 if i == len(layers) - 1 else None)
            outs.append(x)
        x = jnp.concatenate(outs, axis=-1) if (self.concat and outs) else x
        return norm(x) if norm is not None else x

    def __call__(self, X: jax.Array, mask: jax.Array | None = None) -> dict[str, jax.Array]:
        X = jnp.asarray(X, F32)
        valid = valid_elements(X, mask)
        X = jnp.where(valid[..., None], X, 0)  # garbage in padded rows never leaks
        type_onehot = X[..., 0:1] == jnp.asarray(self.elemtypes, F32)  # [B, N, types]
        x = X.astype(self.dtype)

        # named scopes: `smilejax bench train --profile` reports device time per scope
        with jax.named_scope("id_encoder"):
            emb_id = self._stack(
                self.conv_id, self._encode(self.nn0_id, x, type_onehot), valid, self.final_norm_id
            )
        with jax.named_scope("reg_encoder"):
            emb_reg = self._stack(
                self.conv_reg, self._encode(self.nn0_reg, x, type_onehot), valid, self.final_norm_reg
            )

        with jax.named_scope("class_heads"):
            binary = self.nn_binary_particle(emb_id).astype(F32)
            pid = self.nn_pid(emb_id).astype(F32)
        with jax.named_scope("momentum_heads"):
            reg = {
                name: getattr(self, f"nn_{name}")(type_onehot, emb_reg, X[..., i + 1 : i + 2]).astype(F32)
                for i, name in enumerate(MOMENTUM)
            }
        # particleflow: energy = log(|p| implied by the predicted pT and eta / element energy), not
        # differentiated, plus a non-negative learned correction.
        pt = jnp.exp(jax.lax.stop_gradient(reg["pt"])) * X[..., 1:2]
        eta = jax.lax.stop_gradient(reg["eta"])
        pz = pt * (jnp.exp(eta) - jnp.exp(-eta)) / 2.0
        e_implied = jnp.log(jnp.sqrt(pt**2 + pz**2) / X[..., 5:6])
        e_implied = jnp.where(valid[..., None] & jnp.isfinite(e_implied), e_implied, 0)
        reg["energy"] = e_implied + jax.nn.relu(reg["energy"])
        momentum = jnp.concatenate([reg[name] for name in MOMENTUM], axis=-1)
        return {
            "binary_logits": _where_finite(binary),
            "pid_logits": _where_finite(pid),
            "momentum": _where_finite(momentum),
        }


def build(cfg: MLPFConfig, *, rngs: nnx.Rngs, dtype=jnp.float32) -> MLPF:
    return MLPF(cfg, rngs=rngs, dtype=dtype)


def input_spec(cfg: MLPFConfig, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    return {
        "X": jax.ShapeDtypeStruct((batch_size, cfg.max_elements, cfg.input_dim), jnp.float32),
        "mask": jax.ShapeDtypeStruct((batch_size, cfg.max_elements), jnp.bool_),
    }
