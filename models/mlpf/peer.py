"""The particleflow side of ``smilejax bench train mlpf``: its environment, model config, run and rows.

particleflow 3.1.0 needs Python 3.11 and torch, so it lives in its own environment (``make reference``)
and trains in a subprocess, ``reference.py``, on batches written to an .npz; it returns JSON and
its initial weights. It runs before JAX touches the devices, so that each framework has the accelerator
to itself (JAX preallocates most of a GPU's memory when its backend starts).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

from smilejax.models.reference_env import find_python

from smilejax.config import Config

log = logging.getLogger(__name__)

ENV_VAR = "SMILEJAX_MLPF_REF"
ENV_DIR = ".mlpf-ref"
INSTALL = "make reference` (or `bash launch/install_mlpf_reference.sh [ENV_DIR]`"
SCRIPT = Path(__file__).with_name("reference.py")  # run by that env's interpreter
ROOT = Path(__file__).resolve().parents[2]  # the repository, in a source checkout

# Our settings that particleflow's model has no counterpart for, with the value that is its function.
_PARTICLEFLOW_FIXED = {
    "mask_padded_keys": False,
    "binary_weight": 10.0,
    "focal_gamma": 2.0,
    "angle_weight": 1e-2,
}


def python(explicit: str | None) -> Path:
    """The reference interpreter: ``--torch-python``, else ``$SMILEJAX_MLPF_REF/bin/python``, else
    ``.mlpf-ref/bin/python`` in the repository or the current directory."""
    return find_python(
        explicit,
        env_var=ENV_VAR,
        env_dir=ENV_DIR,
        root=ROOT,
        name="particleflow",
        install=INSTALL,
        requires=(
            "Python 3.11, particleflow 3.1.0; on a GPU machine set MLPF_REF_TORCH to a CUDA build of torch"
        ),
        alone="time JAX alone with --impls jax",
    )


def particleflow_config(model: Any) -> dict:
    """particleflow's ``MLPFConfig`` mapping for our ``MLPFConfig`` (its attention model; the attention
    kernel is chosen by the reference script). Refuses settings particleflow's model cannot express."""
    differs = {k: getattr(model, k) for k, v in _PARTICLEFLOW_FIXED.items() if getattr(model, k) != v}
    if differs:
        settings = ", ".join(f"model.{k}={v}" for k, v in differs.items())
        raise SystemExit(f"{settings}: particleflow has no such setting; time JAX alone with --impls jax")
    attention = {
        "num_convs": model.num_convs,
        "num_heads": model.num_heads,
        "head_dim": model.head_dim,
        "embedding_dim": model.embed,
        "width": model.embed,
        "activation": model.activation,
        "use_pre_layernorm": model.use_pre_layernorm,
        "dropout_ff": model.dropout_ff,
        **{
            f"dropout_conv_{s}_{p}": getattr(model, f"dropout_conv_{s}_{p}")
            for s in ("id", "reg")
            for p in ("mha", "ff")
        },
    }
    modes = {f"{m}_mode": getattr(model, f"{m}_mode") for m in ("pt", "eta", "sin_phi", "cos_phi", "energy")}
    return {
        "dataset": "clic",
        "data_dir": ".",
        "conv_type": "attention",
        "input_dim": model.input_dim,
        "num_classes": model.num_classes,
        "elemtypes_nonzero": list(model.elemtypes_nonzero),
        "model": {
            "type": "attention",
            "input_encoding": model.input_encoding,
            "learned_representation_mode": model.learned_representation_mode,
            **modes,
            "attention": attention,
        },
    }


@dataclasses.dataclass
class Reference:
    result: dict | None  # the script's JSON: versions, device, attention, rows
    weights: Path | None  # its initial weights (numpy state_dict .npz)
    note: str | None = None  # why there is no result


def check_optimizer(cfg: Config) -> None:
    """The reference trains with AdamW at a constant learning rate, without clipping."""
    opt = cfg.optimizer
    if opt.name != "adamw" or opt.clip_norm > 0:
        raise SystemExit(
            f"optimizer.name={opt.name}, optimizer.clip_norm={opt.clip_norm}: the particleflow reference "
            "trains with AdamW and no clipping; set optimizer.name=adamw optimizer.clip_norm=0"
        )


def run(python: Path, cfg: Config, args, modes: list[str], batches: Path, tmp: Path) -> Reference:
    """particleflow's measurements of every shape in ``batches`` for each of ``modes`` (eager, compile)."""
    out, weights = tmp / "reference.json", tmp / "reference-weights.npz"
    command = [
        str(python),
        str(SCRIPT),
        f"--batches={batches}",
        f"--out={out}",
        f"--weights={weights}",
        f"--config={json.dumps(particleflow_config(cfg.model))}",
        f"--modes={','.join(modes)}",
        f"--steps={args.steps}",
        f"--repeats={args.repeats}",
        f"--warmup={args.warmup}",
        f"--precision={args.precision}",
        f"--attention={args.torch_attention}",
        f"--lr={cfg.optimizer.lr}",
        f"--weight-decay={cfg.optimizer.weight_decay}",
    ]
    from smilejax.bench._train_torch import run_echoing

    log.info("particleflow reference: %s", " ".join(command))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing of smilejax's environment
    returncode, tail = run_echoing(command, env=env)
    if returncode or not out.exists():
        log.error("the particleflow reference failed (exit %d):\n%s", returncode, "\n".join(tail))
        last = tail[-1] if tail else f"exit {returncode}"
        return Reference(None, None, f"failed: {last[:120]}")
    return Reference(json.loads(out.read_text()), weights if weights.exists() else None)


def rows(reference: Reference, modes: list[str], todo: list, params: int | None) -> list[dict]:
    """The table rows of particleflow's measurements (or of why there are none) per mode and shape;
    ``params``: the JAX model's parameter count, to compare."""
    if reference.result is None:
        return [
            {"impl": f"torch-{m}", "elements": n, "events": b, "note": reference.note}
            for m in modes
            for n, b in todo
        ]
    result = reference.result
    device = result["device"]
    out = []
    for r in result["rows"]:
        if params is not None and r["params"] != params:
            log.warning("particleflow: %d parameters, JAX model: %d", r["params"], params)
        out.append(
            {
                "impl": f"torch-{r['mode']}",
                "attention": result["attention"],
                **{k: r[k] for k in ("elements", "events", "ms_per_step", "first_loss", "last_loss")},
                "warmup_s": r["warmup_s"],
                "first_losses": r["first_losses"],
                "mem_gb": r["peak_mem_gb"],
                "params": r["params"],
                "note": f"particleflow {result['particleflow']}, torch {result['torch']} on {device}; "
                f"{r['params']:,} params",
            }
        )
    return out


def problem(reference: Reference, modes: list[str]) -> str | None:
    """Why the requested reference gives no comparison: it failed, or it ran on the CPU while JAX had
    an accelerator (its torch has no CUDA)."""
    if not modes:
        return None
    if reference.result is None:
        return f"the particleflow reference {reference.note}"
    import jax

    platform = jax.devices()[0].platform
    if platform != "cpu" and reference.result.get("device_type") == "cpu":
        return (
            f"the particleflow reference ran on the CPU while JAX ran on {platform}: its torch has no "
            "CUDA; give --torch-python a Python 3.11 with a CUDA build of torch and particleflow 3.1.0 "
            "(what it needs: launch/install_mlpf_reference.sh)"
        )
    return None
