"""Metrics: ``metrics.jsonl`` (the record every study reads), Weights & Biases, TensorBoard, and MFU."""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import jax
import jax.extend

from smilejax.config import Config, LoggingConfig, to_dict

log = logging.getLogger(__name__)

# Dense bf16 peak FLOP/s per device, by jax's device_kind (substring match, first hit wins).
PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "GH200": 989e12,
    "A100": 312e12,
    "A40": 150e12,
    "L40S": 362e12,
    "V100": 125e12,
    "MI250X": 191.5e12,  # per GCD: JAX sees each of the two dies as a device
    "MI300X": 1307e12,
    "TPU v4": 275e12,
    "TPU v5p": 459e12,
    "TPU v5 lite": 197e12,
}


def peak_flops(device: jax.Device) -> float | None:
    kind = device.device_kind
    return next((v for k, v in PEAK_FLOPS.items() if k.lower() in kind.lower()), None)


def step_flops(lowered, *, devices: int = 1, repeats: int = 1) -> float | None:
    """FLOPs per device of one step: XLA's cost analysis of the *lowered* (not yet optimised) program,
    times ``repeats``, divided by the ``devices`` that share its work.

    Not the compiled program's count: XLA's GPU backend turns matrix products into cuBLAS calls that
    its cost analysis then misses (jax-ml/jax#22249; an H100 GN2 step counted 0.6 of its 2.8 TFLOP).
    GPU plugins do not analyse lowered programs at all (jax-ml/jax#22713), so there the same HLO is
    analysed by the CPU backend. A jit-sharded step lowers as the global program (``devices`` = mesh
    size); a step that is one ``shard_map`` lowers as one device's body (``devices`` = 1). A loop body
    counts once whatever its trip count, so gradient accumulation passes ``repeats``.
    Fused kernels behind custom calls (cuDNN attention, Pallas) count nothing, and other loops (chunked
    attention's query blocks) count once: ``steps.Program.step_flops`` therefore passes the step as the
    model's plain jnp implementations compute it (``models.kernel_mode.reference``), with all three set.
    """
    flops = _lowered_flops(lowered)
    return flops * repeats / devices if flops else None


def _lowered_flops(lowered) -> float | None:
    def flops_of(cost) -> float | None:
        if isinstance(cost, list | tuple):
            cost = cost[0] if cost else None
        value = (cost or {}).get("flops")
        return float(value) if value and value > 0 else None

    try:
        own = flops_of(lowered.cost_analysis())  # None where the backend does not implement it
    except Exception:
        own = None
    if own is not None:
        return own
    try:  # the backend's plugin does not analyse HLO: the CPU backend counts the same program
        from jax._src.lib import _jax

        cpu = jax.extend.backend.get_backend("cpu")
        return flops_of(_jax.hlo_module_cost_analysis(cpu, lowered.compiler_ir("hlo").as_hlo_module()))
    except Exception:  # no CPU backend (JAX_PLATFORMS without cpu) or another jaxlib: no MFU
        return None


class MetricsLog:
    """Appends one JSON object per logged step; on resume, drops records past the restored step."""

    def __init__(self, path: Path, *, resume_step: int | None):
        self.path = path
        if resume_step is not None and path.exists():
            kept = [
                line
                for line in path.read_text().splitlines()
                if line and json.loads(line)["step"] <= resume_step
            ]
            path.write_text("".join(line + "\n" for line in kept))
        self._file = path.open("a")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read(path: Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` in file order; a line that is not a JSON record with an integer
    ``step`` (a file cut short mid-line, or not smilejax's) is a ValueError naming the file and line."""
    records = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} line {number} is not JSON: {err.msg}") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise ValueError(f"{path} line {number} has no integer 'step'")
        records.append(record)
    return records


class Loggers:
    """W&B and TensorBoard behind one ``log``; created on process 0 only."""

    def __init__(self, cfg: Config, run_dir: Path, run_info: dict, *, resume: bool):
        self.wandb = None
        self.tb = None
        lc: LoggingConfig = cfg.logging
        mode = os.environ.get("WANDB_MODE") or lc.wandb
        if mode in ("disabled", "off"):
            mode = "off"
        if mode != "off":
            import wandb

            self.wandb = wandb.init(
                project=lc.project,
                group=lc.group,
                name=lc.name or run_dir.name,
                id=_wandb_id(run_dir),
                resume="allow" if resume else None,
                dir=str(run_dir),
                mode=mode,
                config={**to_dict(cfg), "run_info": run_info},
            )
        if lc.tensorboard:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, step: int, values: dict[str, float]) -> None:
        if self.wandb is not None:
            self.wandb.log(values, step=step)
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
        if self.tb is not None:
            self.tb.close()


def _wandb_id(run_dir: Path) -> str:
    """A stable id per run directory so that a resumed run continues the same W&B run."""
    path = run_dir / "wandb_id"
    if not path.exists():
        path.write_text(uuid.uuid4().hex[:12])
    return path.read_text().strip()
