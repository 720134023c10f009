"""The `sbi` side of the LFI benchmark: its environment, its settings and its run.

`sbi` (PyTorch) lives in its own Python 3.11 environment (``make reference``,
launch/install_sbi_reference.sh) and trains in a subprocess, ``sbi_run.py``, on simulations written to an
.npz: the same simulations smilejax trains on, in the same session. It runs before JAX trains, so that
each framework has the machine to itself.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import numpy as np
from smilejax.models.reference_env import find_python

ENV_VAR = "SMILEJAX_SBI_REF"
ENV_DIR = ".sbi-ref"
INSTALL = "make reference` (or `bash launch/install_sbi_reference.sh [ENV_DIR]`"
SCRIPT = Path(__file__).with_name("sbi_run.py")  # run by that env's interpreter
ROOT = Path(__file__).resolve().parents[2]  # the repository, in a source checkout


def python(explicit: str | None = None) -> Path:
    """The sbi interpreter: ``explicit`` (``--torch-python``), else ``$SMILEJAX_SBI_REF/bin/python``, else
    ``.sbi-ref/bin/python`` in the repository or the current directory."""
    return find_python(
        explicit,
        env_var=ENV_VAR,
        env_dir=ENV_DIR,
        root=ROOT,
        name="sbi",
        install=INSTALL,
        requires="Python 3.11, sbi 0.27.0",
        alone="run smilejax alone with --no-sbi",
    )


@dataclasses.dataclass(frozen=True)
class Settings:
    """sbi's NPE settings; the study fills them from smilejax's run config so both train the same flow
    (kind, width, depth) with the same batch, learning rate and early stopping."""

    density_estimator: str = "nsf"
    hidden_features: int = 50
    num_transforms: int = 5
    num_bins: int = 10
    training_batch_size: int = 200
    learning_rate: float = 5e-4
    validation_fraction: float = 0.1
    stop_after_epochs: int = 20
    max_num_epochs: int = 2**31 - 1
    num_samples: int = 10_000
    threads: int = 0  # torch's intra-op threads; 0: torch's default
    device: str = "auto"  # auto: CUDA where that environment's torch has a GPU, else cpu


@dataclasses.dataclass
class Job:
    """One training: ``key`` names its simulations (a task and budget), ``seed`` its initialisation."""

    key: str
    seed: int
    theta: np.ndarray  # [N, theta_dim]
    x: np.ndarray  # [N, x_dim]
    observations: np.ndarray  # [K, x_dim]


@dataclasses.dataclass
class Result:
    info: dict  # versions, device, threads
    rows: dict[tuple[str, int], dict]  # (key, seed) -> train_s, sample_s, epochs, best_validation_loss
    samples: dict[tuple[str, int], np.ndarray]  # (key, seed) -> [K, num_samples, theta_dim]


def run(
    interpreter: Path, jobs: list[Job], settings: Settings, tmp: Path, timeout: float | None = None
) -> Result:
    """Trains sbi's NPE for every job in one subprocess; raises RuntimeError with its output on failure."""
    data, spec = tmp / "sbi-sims.npz", tmp / "sbi-jobs.json"
    arrays = {}
    for job in jobs:  # a key's simulations are written once, whatever its seeds
        arrays[f"{job.key}/theta"] = np.asarray(job.theta, np.float32)
        arrays[f"{job.key}/x"] = np.asarray(job.x, np.float32)
        arrays[f"{job.key}/observations"] = np.asarray(job.observations, np.float32)
    np.savez(data, **arrays)
    spec.write_text(
        json.dumps(
            {"settings": dataclasses.asdict(settings), "jobs": [{"key": j.key, "seed": j.seed} for j in jobs]}
        )
    )
    out, samples = tmp / "sbi-result.json", tmp / "sbi-samples.npz"
    command = [str(interpreter), str(SCRIPT), "--data", str(data), "--jobs", str(spec)]
    command += ["--out", str(out), "--samples", str(samples)]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    # cwd: sbi writes its TensorBoard logs (sbi-logs/) into the working directory
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, cwd=tmp)
    if proc.returncode != 0 or not out.exists():
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise RuntimeError(f"sbi reference failed (exit {proc.returncode}):\n{tail}")
    result = json.loads(out.read_text())
    stored = np.load(samples)
    rows = {(r["key"], int(r["seed"])): r for r in result.pop("rows")}
    draws = {k: stored[f"{k[0]}/{k[1]}/samples"] for k in rows}
    return Result(info=result, rows=rows, samples=draws)
