"""Writes a job's files into ``RUN_DIR/launch/`` and hands the script to ``sbatch`` or ``qsub``."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from smilejax.launch import script
from smilejax.launch.job import Job
from smilejax.launch.systems import LaunchError


def launch_dir(run_dir: Path) -> Path:
    return run_dir / "launch"


def write(job: Job, cfg, text: str) -> Path:
    """``job.sh`` (the batch script), ``config.yaml`` (the resolved config the job trains with, frozen at
    submission so later edits of the YAML do not change a requeued run) and ``rank.sh``."""
    from smilejax import config

    folder = launch_dir(job.run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    config.save(cfg, folder / "config.yaml")
    path = folder / "job.sh"
    path.write_text(text)
    path.chmod(0o755)
    _, wrapper = script.template(script.RANK_WRAPPER)
    (folder / script.RANK_WRAPPER).write_text(wrapper)
    (folder / script.RANK_WRAPPER).chmod(0o755)
    return path


def submit(job: Job, path: Path, *, wait: bool, on_id: Callable[[str], None]) -> int:
    """Submits ``path``; ``on_id(job_id)`` runs as soon as the scheduler answers. Returns 0, or with
    ``wait`` the job's exit code once it has ended (requeues included)."""
    pbs = job.system.scheduler == "pbs"
    tool = "qsub" if pbs else "sbatch"
    if shutil.which(tool) is None:
        raise LaunchError(
            f"{tool} is not on PATH: submit from a login node of {job.system.name}, "
            "or print the script with --dry-run"
        )
    if pbs:
        cmd = [tool, *(["-W", "block=true"] if wait else []), str(path)]
    else:
        cmd = [tool, "--parsable", *(["--wait"] if wait else []), str(path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=job.workdir)
    first = proc.stdout.readline().strip()  # the id comes at once, also when waiting for the end
    job_id = first.split(";")[0]
    if job_id:
        _record(job, path, job_id)
        on_id(job_id)
    rest, err = proc.communicate()
    if not job_id:
        raise LaunchError(f"{tool} refused the job (exit code {proc.returncode}): {(err or rest).strip()}")
    if err.strip():
        print(err.strip(), file=sys.stderr)
    return proc.returncode if wait else 0


def _record(job: Job, path: Path, job_id: str) -> None:
    entry = {
        "job_id": job_id,
        "submitted": datetime.datetime.now().isoformat(timespec="seconds"),
        "system": job.system.name,
        "nodes": job.nodes,
        "tasks_per_node": job.tasks_per_node,
        "gpus_per_node": job.gpus_per_node,
        "time_limit_s": job.time_s,
        "script": str(path),
        "command": [os.path.basename(sys.argv[0]), *sys.argv[1:]],
    }
    with open(launch_dir(job.run_dir) / "jobs.jsonl", "a") as f:
        f.write(json.dumps(entry) + "\n")
