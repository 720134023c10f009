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
    spec = registry.model(cfg.model.name)
    cfg = dataclasses.replace(
        cfg,
        mesh=MeshConfig(data=-1, fsdp=1, tensor=1, rules=cfg.mesh.rules),
        model=portable(spec, cfg.model),
        train=dataclasses.replace(cfg.train, precision="fp32", grad_accum=1),
    )
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


def portable(spec: ModelSpec, model_cfg):
    """The run's model settings with GPU-only choices (a cuDNN or Pallas kernel) made portable, same
    parameters, through the family's ``portable`` hook: evaluation runs in float32 on any device, and an
    export traces code that runs anywhere. Unchanged for a family without the hook."""
    if spec.portable is None:
        return model_cfg
    changed = spec.portable(model_cfg)
    if changed != model_cfg:
        log.info("model settings for evaluation and export: %s", _changes(model_cfg, changed))
    return changed


def _changes(before, after) -> str:
    fields = [f.name for f in dataclasses.fields(before) if getattr(before, f.name) != getattr(after, f.name)]
    return ", ".join(f"{n}: {getattr(before, n)} -> {getattr(after, n)}" for n in fields)
