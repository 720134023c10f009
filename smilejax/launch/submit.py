"""Writes a job's files into ``RUN_DIR/launch/`` and hands the script to ``sbatch`` or ``qsub``."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
import time
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
    # Slurm: no `sbatch --wait`, which judges a job by its base state alone and so can return while a
    # job that requeues itself passes through "cancelled, requeue pending"; we poll instead.
    cmd = [tool, "-W", "block=true"] if pbs and wait else [tool] if pbs else [tool, "--parsable"]
    cmd.append(str(path))
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
    if not wait:
        return 0
    return proc.returncode if pbs else wait_slurm(job_id)


# Slurm's final job states. scontrol names a state by its flags first (COMPLETING, REQUEUED, ...), so a
# job on its way to a requeue never shows one of these.
SLURM_FINAL = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE",
    "OUT_OF_MEMORY",
}  # fmt: skip


def wait_slurm(job_id: str, *, poll_s: float = 1.0) -> int:
    """Waits until Slurm job ``job_id`` has ended, requeues included, and returns its exit code (128 +
    the signal for a job killed by one; 1 for a job that ended otherwise than COMPLETED without a code)."""
    while True:
        done = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True)
        fields = dict(f.split("=", 1) for f in done.stdout.split() if "=" in f)
        state = fields.get("JobState", "")
        if done.returncode or not state:
            raise LaunchError(
                f"job {job_id} left Slurm's queue unseen in a final state (scontrol: "
                f"{(done.stderr or done.stdout).strip()[:200]}); see its log for how it ended"
            )
        if state in SLURM_FINAL:
            code, _, signal = fields.get("ExitCode", "0:0").partition(":")
            if int(code or 0):
                return int(code)
            if int(signal or 0):
                return 128 + int(signal)
            return 0 if state == "COMPLETED" else 1
        time.sleep(poll_s)


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
