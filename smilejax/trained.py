"""A trained model back from its run directory, for evaluation, export and benchmarks."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import jax
from flax import nnx

from smilejax import checkpoint, config, registry, steps
from smilejax import mesh as meshlib
from smilejax.config import Config, MeshConfig
from smilejax.models.spec import ModelSpec

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainedModel:
    run_dir: Path
    cfg: Config
    spec: ModelSpec
    model: nnx.Module  # float32 compute, evaluation mode (no dropout)
    step: int


def load(run_dir: str | Path, *, step: int | None = None, overrides: list[str] | tuple = ()) -> TrainedModel:
    """The model of ``run_dir`` at its newest readable checkpoint (or ``step``), on this process's devices.

    The run's mesh is not needed: parameters come back replicated over a data-parallel mesh of the
    devices at hand, in float32 compute, whatever the run trained with.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.exists():
        raise FileNotFoundError(f"{run_dir} is not a smilejax run directory (no config.yaml)")
    if not (run_dir / "checkpoints").is_dir():
        raise FileNotFoundError(f"{run_dir} has no checkpoints/ folder: nothing to load")
    cfg = config.load(config_path, list(overrides))
    cfg = dataclasses.replace(
        cfg,
        mesh=MeshConfig(data=-1, fsdp=1, tensor=1, rules=cfg.mesh.rules),
        model=_portable_kernels(cfg.model),
        train=dataclasses.replace(cfg.train, precision="fp32", grad_accum=1),
    )
    spec = registry.model(cfg.model.name)
    program = steps.build(spec, cfg, meshlib.build_mesh(cfg.mesh, jax.local_devices()))
    ckpt = checkpoint.Checkpointer(run_dir / "checkpoints", keep=cfg.run.keep_checkpoints, async_save=False)
    try:
        if step is not None and step not in ckpt.steps():
            raise FileNotFoundError(f"{run_dir} has no checkpoint of step {step}; it has {ckpt.steps()}")
        state = ckpt.restore(program.abstract_state, step=step)
    finally:
        ckpt.close()
    if state is None:
        raise FileNotFoundError(f"{run_dir / 'checkpoints'} holds no checkpoint")
    model = nnx.merge(program.graphdef, state.params, state.rest)
    model.eval()
    return TrainedModel(
        run_dir=run_dir, cfg=cfg, spec=spec, model=model, step=int(jax.device_get(state.step))
    )


def _portable_kernels(model_cfg):
    """The run's model settings with its GPU-only kernel choices made portable, same parameters:
    cuDNN's fused attention (bf16, NVIDIA GPUs only) becomes the model's default implementation, and an
    explicit fused kernel (``vertex_kernel: pallas``) becomes the default choice (``auto``: fused on a
    GPU, jnp elsewhere). Evaluation runs in float32 on any device; an export traces portable code."""
    changes = {}
    for name, gpu_only in (("attention", "cudnn"), ("vertex_kernel", "pallas")):
        if getattr(model_cfg, name, None) == gpu_only:
            default = next(f.default for f in dataclasses.fields(model_cfg) if f.name == name)
            log.info("%s: %s (training) -> %s (evaluation and export)", name, gpu_only, default)
            changes[name] = default
    return dataclasses.replace(model_cfg, **changes) if changes else model_cfg
