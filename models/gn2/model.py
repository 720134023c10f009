"""GN2, ATLAS's transformer jet-flavour tagger (salt's ``GN2.yaml``), in Flax NNX.

Architecture (defaults = salt's ``configs/GN2/GN2.yaml``; 2,339,150 parameters, as in salt)::

    tracks [B, T, 21] (normalised track variables + jet pt, eta), valid [B, T]
      -> initial net       21 -> 256 -> 256 (ReLU)                                  per track
      -> encoder           4 pre-LN layers (width 256, 8 heads, ReLU feed-forward 512),
                           1 learned register token appended, projection 256 -> 128, final LayerNorm
      -> pooling           global attention pooling over valid tracks and the register -> jet [B, 128]
      -> jet flavour       MLP 128-128-64-32-4 on the jet embedding            (b, c, light, tau)
      -> track origin      MLP (128+128)-128-64-32-8 on [jet, track]           (8 origin classes)
      -> track vertexing   MLP (128+2*128)-128-64-32-1 on [jet, track_i, track_j] for every ordered pair

As in salt, LayerNorms have no affine parameters, every Linear layer starts as PyTorch's ``nn.Linear``
(kernel and bias U(+-1/sqrt(fan_in)); ``layers.bias_initializer("torch")``), the fused q/k/v projection
Xavier-uniform with a zero bias, the task heads receive the pooled jet embedding
concatenated *in front of* their per-track input, and the register token takes part in pooling but
not in the per-track tasks. Head first layers are applied piecewise (``MLP.project_first``), which is
the same function as salt's concatenation but never builds the [B, T, T, 384] pair tensor.

Padded tracks (``valid == False``; holes allowed) are zeroed on input, never attended to nor pooled,
and their per-track / per-pair outputs are set to 0.

Losses: ``models/gn2/losses.py`` (``loss``, re-exported here).

Packed batches (``"segment" in batch``; built by ``inputs/packing.py``): R rows of T track slots hold
several jets each, ``segment`` [R, T] naming each track's jet slot (0..J-1, -1 empty) and ``jet_valid``
[R, J] the slots that hold a jet; per-jet keys (``flavour``) are [R, J]. Attention stays within a jet
(``models/attention.py``), the encoder appends the registers once per jet slot, pooling gives [R, J]
jet embeddings, the origin and vertex heads take each track's own jet embedding as context, and only
pairs of tracks in one jet are scored. The losses run over the valid jet slots, valid tracks and
same-jet pairs, so values and gradients are those of the padded batch with the same jets (up to
float rounding); ``acc_jet`` is the mean over valid jet slots. Evaluation and export stay padded.

Logical axis names: see ``models/layers.py`` (embed / mlp / heads / kv / in, None for class logits).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from .. import kernel_mode, pair_mlp
from ..layers import MLP, Encoder, GlobalAttentionPooling, check_attention_config
from .losses import loss  # noqa: F401 (re-exported: the model's loss, as before)
from .tasks import AUX_KEYS, JET_CLASSES, ORIGIN_CLASSES, TASKS, pair_mask  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)


@dataclasses.dataclass
class GN2Config:
    """GN2 hyperparameters (plain types, so a YAML mapping fills it).

    class_weights: optional per-class loss weights keyed by task, ``{"jet": [4 floats], "origin":
        [8 floats]}`` (the weights of salt's class dict). ``data.class_dict`` (``ftag_h5``) fills it from
        a class dict file; giving both is an error.
    vertex_loss_norm: what the vertex loss's weighted sum is divided by: ``"matches"`` (default, salt's:
        the matching pairs) or ``"pairs"`` (all valid pairs).
    attention: encoder attention, ``"math"`` (default; the fastest for GN2's short sets on an H100),
        ``"chunked"`` (blocks of ``attention_chunk`` queries), ``"cudnn"`` (cuDNN's fused attention:
        NVIDIA GPUs, ``train.precision=bf16``; faster only at 40 tracks) or ``"auto"`` (``cudnn`` where
        it can run, else ``chunked``); the same function.
    vertex_kernel: the track-pair head, ``"xla"`` (jnp; stores its [B, T, T, width] activations),
        ``"pallas"`` (``models.pair_mlp``: one fused Triton kernel per pass that keeps them in
        registers; needs ReLU or SiLU, power-of-two ``head_hidden`` widths >= 16 and no dropout; off a
        GPU it runs in Pallas's interpreter, slowly) or ``"auto"`` (default: ``pallas`` when tracing
        for an NVIDIA GPU and the head's settings allow it, else ``xla``; 1.04-1.22x faster steps on an
        H100). The same function.
    aux_tasks: ``"auto"`` trains origin / vertex when the batch holds ``track_origin`` /
        ``track_vertex``; ``"on"`` demands both (ValueError naming the missing key); ``"off"`` jet only.
    """

    name: str = "gn2"
    track_features: int = 21
    max_tracks: int = 40
    embed: int = 256
    init_hidden: list[int] = dataclasses.field(default_factory=lambda: [256])
    layers: int = 4
    heads: int = 8
    ff: int = 512
    out: int = 128
    registers: int = 1
    head_hidden: list[int] = dataclasses.field(default_factory=lambda: [128, 64, 32])
    jet_classes: int = len(JET_CLASSES)
    origin_classes: int = len(ORIGIN_CLASSES)
    activation: str = "relu"
    dropout: float = 0.0
    remat: bool = False
    attention: str = "math"
    attention_chunk: int = 1024
    vertex_kernel: Literal["auto", "xla", "pallas"] = "auto"
    aux_tasks: Literal["auto", "on", "off"] = "auto"
    jet_weight: float = 1.0
    origin_weight: float = 0.5
    vertex_weight: float = 1.5
    vertex_origin_weighting: bool = True
    vertex_loss_norm: Literal["matches", "pairs"] = "matches"
    class_weights: dict[str, list[float]] | None = None

    def __post_init__(self):
        check_attention_config(self.attention, self.attention_chunk)
        if self.vertex_kernel not in ("auto", "xla", "pallas"):
            raise ValueError(f"vertex_kernel must be 'auto', 'xla' or 'pallas', got {self.vertex_kernel!r}")
        problem = self.pallas_problem()
        if self.vertex_kernel == "pallas" and problem:
            raise ValueError(f"vertex_kernel='pallas' {problem}")
        if self.aux_tasks not in ("auto", "on", "off"):
            raise ValueError(f"aux_tasks must be 'auto', 'on' or 'off', got {self.aux_tasks!r}")
        if self.vertex_loss_norm not in ("pairs", "matches"):
            raise ValueError(f"vertex_loss_norm must be 'matches' or 'pairs', got {self.vertex_loss_norm!r}")
        sizes = {"jet": self.jet_classes, "origin": self.origin_classes}
        for task, weights in (self.class_weights or {}).items():
            if task not in sizes:
                raise ValueError(f"class_weights: unknown task {task!r}; expected one of {sorted(sizes)}")
            if len(weights) != sizes[task]:
                raise ValueError(
                    f"class_weights[{task!r}] has {len(weights)} entries, expected {sizes[task]}"
                )

    def pallas_problem(self) -> str | None:
        """Why the fused pair kernel cannot run this head (``None``: it can)."""
        if self.dropout:
            return "has no dropout (set dropout=0)"
        if not self.head_hidden:
            return "needs at least one head_hidden layer"
        try:
            pair_mlp.check_supported(self.activation, self.head_hidden)
        except ValueError as err:
            return f"cannot run this head: {err}"
        return None


def portable(cfg: GN2Config) -> GN2Config:
    """``cfg`` with its GPU-only kernel choices made portable, same parameters (``ModelSpec.portable``):
    cuDNN's fused attention (bf16, NVIDIA GPUs only) becomes the default implementation, and an explicit
    fused pair kernel (``vertex_kernel: pallas``) the default choice (``auto``: fused on a GPU, jnp
    elsewhere). Evaluation runs in float32 on any device; an export traces portable code."""
    changes = {}
    for name, gpu_only in (("attention", "cudnn"), ("vertex_kernel", "pallas")):
        if getattr(cfg, name) == gpu_only:
            default = next(f.default for f in dataclasses.fields(GN2Config) if f.name == name)
            log.info("%s: %s (training) -> %s (evaluation and export)", name, gpu_only, default)
            changes[name] = default
    return dataclasses.replace(cfg, **changes) if changes else cfg


class GN2(nnx.Module):
    """``model(tracks, valid) -> {"jet_logits": [B, 4], "origin_logits": [B, T, 8], "vertex_logits":
    [B, T, T]}``; ``tasks=`` restricts which heads run; ``segment=``, ``jet_valid=``: a packed batch."""

    def __init__(self, cfg: GN2Config, *, rngs: nnx.Rngs, dtype=jnp.float32):
        dtype = jnp.dtype(dtype)
        self.dtype = dtype
        # Only hashable, plain values on the module, so its graphdef can be a static jit argument.
        self.aux_tasks = cfg.aux_tasks
        self.task_weights = (float(cfg.jet_weight), float(cfg.origin_weight), float(cfg.vertex_weight))
        self.vertex_origin_weighting = bool(cfg.vertex_origin_weighting)
        # "auto" is settled when tracing (kernel_mode.fused_kernels): the same module traces for CPU or GPU;
        # a head the kernel cannot run is the jnp head everywhere.
        problem = cfg.pallas_problem()
        self.vertex_kernel = "xla" if cfg.vertex_kernel == "auto" and problem else cfg.vertex_kernel
        if self.vertex_kernel != cfg.vertex_kernel:
            log.info("vertex_kernel=auto: the jnp pair head everywhere (the fused kernel %s)", problem)
        self.vertex_loss_norm = cfg.vertex_loss_norm
        cw = cfg.class_weights or {}
        self.jet_class_weights = tuple(float(w) for w in cw["jet"]) if "jet" in cw else None
        self.origin_class_weights = tuple(float(w) for w in cw["origin"]) if "origin" in cw else None

        # bias_init="torch": salt's layers start as PyTorch's, with random biases
        common = dict(
            activation=cfg.activation, dropout=cfg.dropout, bias_init="torch", rngs=rngs, dtype=dtype
        )
        self.init_net = MLP(
            [cfg.track_features, *cfg.init_hidden, cfg.embed], in_axis="in", out_axis="embed", **common
        )
        self.encoder = Encoder(
            cfg.layers,
            cfg.embed,
            cfg.heads,
            cfg.ff,
            out_dim=cfg.out,
            num_registers=cfg.registers,
            attention=cfg.attention,
            attention_chunk=cfg.attention_chunk,
            remat=cfg.remat,
            **common,
        )
        self.pool = GlobalAttentionPooling(cfg.out, bias_init="torch", rngs=rngs, dtype=dtype)
        hidden = list(cfg.head_hidden)
        self.jet_head = MLP([cfg.out, *hidden, cfg.jet_classes], **common)
        self.origin_head = MLP([2 * cfg.out, *hidden, cfg.origin_classes], **common)
        self.vertex_head = MLP([3 * cfg.out, *hidden, 1], **common)

    def __call__(
        self,
        tracks: jax.Array,
        valid: jax.Array,
        *,
        tasks: tuple[str, ...] = TASKS,
        segment: jax.Array | None = None,
        jet_valid: jax.Array | None = None,
    ) -> dict[str, jax.Array]:
        """``segment`` [R, T] and ``jet_valid`` [R, J]: a packed batch (module docstring); the jet logits
        are then [R, J, 4] (0 in an empty jet slot) and a pair's logit is 0 unless both tracks are in
        the same jet."""
        if (segment is None) != (jet_valid is None):
            raise ValueError("a packed batch needs both segment and jet_valid")
        valid = valid.astype(bool)
        n_tracks = tracks.shape[1]
        x = jnp.where(valid[..., None], tracks, 0).astype(self.dtype)  # garbage in padding never leaks
        # named scopes: `smilejax bench train --profile` reports device time per scope
        with jax.named_scope("init_net"):
            x = self.init_net(x)
        with jax.named_scope("encoder"):
            x, valid_all = self.encoder(x, valid, segment, jet_valid)  # registers appended at the end
        with jax.named_scope("pooling"):
            if segment is None:
                jet = self.pool(x, valid_all)
            else:
                slots = jet_valid.shape[1]
                jet = self.pool(x, valid_all, self.encoder.register_segments(segment, slots), slots=slots)
        trk = x[:, :n_tracks]

        def per_track(ctx: jax.Array) -> jax.Array:
            """A head's projected jet context [B, H] or, packed, [R, J, H], for each track: [B|R, T|1, H].
            Packed, the jets are projected before the gather (J rows, not T), with one dropout mask per jet
            as unpacked."""
            if segment is None:
                return ctx[:, None, :]
            return jnp.take_along_axis(ctx, jnp.maximum(segment, 0)[..., None], 1)

        out = {}
        if "jet" in tasks:
            with jax.named_scope("jet_head"):
                logits = self.jet_head(jet)
                out["jet_logits"] = logits if segment is None else jnp.where(jet_valid[..., None], logits, 0)
        if "origin" in tasks:
            with jax.named_scope("origin_head"):
                if segment is None:
                    logits = self.origin_head(trk, context=jet)
                else:
                    ctx, xt = self.origin_head.project_first(jet, trk)
                    logits = self.origin_head.finish(per_track(ctx) + xt)
                out["origin_logits"] = jnp.where(valid[..., None], logits, 0)
        if "vertex" in tasks:
            with jax.named_scope("vertex_head"):
                ctx, xi, xj = self.vertex_head.project_first(jet, trk, trk)
                ctx = per_track(ctx)
                if self.fused_pairs():
                    logits = self.vertex_head.finish_pairs(ctx + xi, xj)
                else:
                    # a pair in one jet: the context of track i is that of track j
                    h = ctx[:, :, None, :] + xi[:, :, None, :] + xj[:, None, :, :]
                    logits = self.vertex_head.finish(h)[..., 0]
                out["vertex_logits"] = jnp.where(pair_mask(valid, segment), logits, 0)
        return out

    def fused_pairs(self) -> bool:
        """Whether the vertex head runs the fused pair kernel in the program being traced."""
        if kernel_mode.reference_only():
            return False
        if self.vertex_kernel == "auto":
            return kernel_mode.fused_kernels()
        if self.vertex_kernel == "pallas" and kernel_mode.portable_only():
            raise ValueError(
                "vertex_kernel='pallas': this program asks for portable code (vectorised trials vmap the "
                "model, and the fused pair kernel has no batching rule); use vertex_kernel=auto or xla"
            )
        return self.vertex_kernel == "pallas"


def build(cfg: GN2Config, *, rngs: nnx.Rngs, dtype=jnp.float32) -> GN2:
    return GN2(cfg, rngs=rngs, dtype=dtype)


def input_spec(cfg: GN2Config, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    return {
        "tracks": jax.ShapeDtypeStruct((batch_size, cfg.max_tracks, cfg.track_features), jnp.float32),
        "valid": jax.ShapeDtypeStruct((batch_size, cfg.max_tracks), jnp.bool_),
    }
