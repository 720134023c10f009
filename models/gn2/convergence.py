"""GN2's part of ``smilejax bench convergence``: the batching variants it compares, its quality metric,
light and c rejection at the 77 % b-efficiency working point (D_b with ATLAS GN2v01's fractions), and its
PyTorch reference line (``--torch``: ``torch_train.py`` in the salt reference environment)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..reference_env import find_python
from ..spec import Convergence, TorchTraining
from . import flavour
from .features import SALT_REF_DIR, SALT_REF_VAR
from .model import JET_CLASSES, GN2Config
from .tasks import active_tasks

WORKING_POINT = 0.77
FC, FTAU = 0.2, 0.01  # the default fractions of ``smilejax eval`` (ATLAS GN2v01)

# The first is the reference: the others are timed to its final validation loss.
VARIANTS: dict[str, tuple[str, ...]] = {
    # as salt: every batch padded to data.max_tracks
    "padded": ("data.bucket_tracks=[]", "data.bucket_window=1"),
    # the same batches, each padded only to the smallest width that holds its longest jet
    "bucketed": ("data.bucket_tracks=[16,24]", "data.bucket_window=1"),
    # the jets of 16 batches sorted by track count first: less padding, multiplicity-correlated batches
    "window16": ("data.bucket_tracks=[16,24]", "data.bucket_window=16"),
    # several jets per row of track slots (inputs/packing.py), a uniform random sample of jets per batch
    "packed": ("data.bucket_tracks=[]", "data.pack_tracks=80", "data.pack_jets=16"),
}


def predict(model, batch: dict) -> dict[str, jax.Array]:
    """Per-jet flavour log-probabilities (float32) and the truth flavour of an unpacked batch."""
    logits = model(batch["tracks"], batch["valid"], tasks=("jet",))["jet_logits"]
    return {"log_probs": jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), "flavour": batch["flavour"]}


def quality(outputs: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Light and c rejection at 77 % b-efficiency of D_b, with their binomial errors; NaN for a flavour
    the held-out jets lack."""
    probs = np.exp(np.asarray(outputs["log_probs"], np.float64))
    labels = np.asarray(outputs["flavour"])
    db = flavour.discriminant(probs, FC, FTAU)
    b = db[labels == JET_CLASSES.index("b")]
    result: dict[str, float] = {}
    for name in ("light", "c"):
        bkg = db[labels == JET_CLASSES.index(name)]
        if b.size and bkg.size:
            (rej,) = flavour.rejections(b, bkg, [WORKING_POINT])
            value, error = rej["rejection"], rej["stat_err"]
        else:
            value = error = float("nan")
        key = f"{name}_rej_{round(100 * WORKING_POINT)}"
        result[key], result[f"{key}_err"] = value, error
    return result


def _torch_python(explicit: str | None) -> Path:
    """The interpreter of the salt reference environment (it has torch)."""
    return find_python(
        explicit,
        env_var=SALT_REF_VAR,
        env_dir=SALT_REF_DIR,
        root=Path(__file__).resolve().parents[2],
        name="salt",
        install="make reference` (or `bash launch/install_salt_reference.sh [ENV_DIR]`",
        requires="torch; on a GPU machine a CUDA build of it",
        alone="leave out --torch",
    )


def _torch_options(cfg: GN2Config, batch: Mapping[str, np.ndarray]) -> dict:
    """The loss settings of ``torch_peer.loss_fn`` (the network's come from ``Bench.torch_config``),
    with the tasks GN2 trains on ``batch``'s keys (``aux_tasks``)."""
    if cfg.dropout:
        raise SystemExit("bench convergence --torch: the PyTorch peer has no dropout; set model.dropout=0")
    loss = {
        "tasks": list(active_tasks(cfg.aux_tasks, batch)),
        "task_weights": [cfg.jet_weight, cfg.origin_weight, cfg.vertex_weight],
        "vertex_origin_weighting": cfg.vertex_origin_weighting,
        "vertex_loss_norm": cfg.vertex_loss_norm,
        "class_weights": dict(cfg.class_weights or {}),
    }
    return {"loss": loss}


def _peer_name(path: tuple) -> str:
    """The peer's ``state_dict`` name of our parameter at ``path`` (``torch_peer.GN2``)."""
    names = [str(p) for p in path]
    leaf = "weight" if names[-1] in ("kernel", "qkv_kernel", "out_kernel") else "bias"
    match names:
        case ["encoder", "layers", i, "attn", "qkv_kernel" | "qkv_bias"]:
            return f"layers.{i}.qkv.{leaf}"
        case ["encoder", "layers", i, "attn", _]:
            return f"layers.{i}.out.{leaf}"
        case ["encoder", "layers", i, "ff", part, _]:
            return f"layers.{i}.ff.{0 if part == 'up' else 2}.{leaf}"
        case ["encoder", "registers"]:
            return "registers"
        case ["encoder", "out_proj", _]:
            return f"out_proj.{leaf}"
        case ["pool", "gate", _]:
            return f"gate.{leaf}"
        case [("init_net" | "jet_head" | "origin_head" | "vertex_head") as net, "layers", i, _]:
            return f"{net}.layers.{i}.{leaf}"
    raise KeyError(f"no PyTorch peer name for GN2 parameter {'.'.join(names)}")


def torch_weights(model: nnx.Module) -> dict[str, np.ndarray]:
    """GN2's parameters as the peer's ``state_dict``: [in, out] kernels transposed to PyTorch's [out, in],
    the q/k/v kernel [E, 3, H, D] and output kernel [H, D, E] flattened to the peer's [3E, E] and [E, E]."""
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        x = np.asarray(var.get_value(), np.float32)
        name = _peer_name(path)
        if name.endswith("weight"):
            x = (x.reshape(-1, x.shape[-1]) if path[-1] == "out_kernel" else x.reshape(x.shape[0], -1)).T
        out[name] = np.ascontiguousarray(x.reshape(-1) if name.endswith("bias") else x)
    return out


TORCH = TorchTraining(
    script=Path(__file__).with_name("torch_train.py"),
    python=_torch_python,
    keys=("tracks", "valid", "flavour", "track_origin", "track_vertex"),
    options=_torch_options,
    weights=torch_weights,
)

CONVERGENCE = Convergence(
    variants=VARIANTS, predict=predict, quality=quality, headline="light_rej_77", torch=TORCH
)
