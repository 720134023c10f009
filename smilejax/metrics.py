"""Metrics: ``metrics.jsonl`` (the record every study reads), Weights & Biases and TensorBoard.

The FLOPs and peaks behind MFU are ``smilejax.xla``'s (``xla.step_flops``, ``xla.peak_flops``)."""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

from smilejax.config import Config, LoggingConfig, to_dict

log = logging.getLogger(__name__)


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
