"""`smilejax train` under a real Slurm scheduler: srun launches, and a job signalled before its limit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from smilejax import metrics
from smilejax.preemption import EXIT_PREEMPTED
from tests.conftest import ROOT, slurm_env

pytestmark = pytest.mark.slurm


def test_srun_two_processes_train_in_one_runtime(slurm_conf, toy_yaml, tmp_path):
    cfg = toy_yaml(run={"steps": 6, "checkpoint_every": 3})
    run_dir = tmp_path / "run"
    cmd = [
        "srun",
        "--ntasks=2",
        "--nodes=1",
        "--kill-on-bad-exit=1",
        "--time=3",
        sys.executable,
        "-m",
        "smilejax",
        "train",
        str(cfg),
        f"run.dir={run_dir}",
    ]
    proc = subprocess.run(
        cmd, env=slurm_env(slurm_conf), cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["launcher"] == "slurm" and info["process_count"] == 2 and info["device_count"] == 4
    assert "slurm: process 0/2" in proc.stderr
    assert "topology: 1 node(s), 2 process(es)" in proc.stderr
    assert [r["step"] for r in metrics.read(run_dir / "metrics.jsonl")] == list(range(1, 7))
    assert (run_dir / "checkpoints" / "6").is_dir()


def test_sbatch_job_signalled_before_limit_checkpoints_and_resumes(slurm_conf, toy_yaml, tmp_path):
    steps = 2000
    cfg = toy_yaml(
        run={"steps": steps, "checkpoint_every": 500, "log_every": 10, "preemption_check_every": 2}
    )
    run_dir = tmp_path / "run"
    job = tmp_path / "job.sh"
    # --wait rather than --kill-on-bad-exit: rank 0's exit 75 must not get rank 1 killed mid-exit.
    # Each rank starts through rank.sh, as in smilejax launch's scripts: Slurm may send the warning up
    # to a minute early, here before Python has started, and USR1's default action would kill the rank.
    rank = ROOT / "launch" / "templates" / "rank.sh"
    job.write_text(
        f'#!/bin/bash\nsrun --wait=60 bash {rank} {sys.executable} -m smilejax train "$@"\n'
        'rc=$?\necho "SRUN_EXIT=$rc"\nexit $rc\n'
    )
    env = slurm_env(slurm_conf)

    def sbatch(log, *options_and_args):
        cmd = ["sbatch", "--wait", "--ntasks=2", "--nodes=1", f"--output={log}", *options_and_args]
        return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)

    # A one-minute limit with USR1 50 s before it: the run must stop itself well before it is killed.
    first = tmp_path / "first.log"
    proc = sbatch(
        first,
        "--time=1",
        "--signal=USR1@50",
        str(job),
        str(cfg),
        f"run.dir={run_dir}",
        "data.read_delay_s=0.05",
    )
    log = first.read_text()
    assert f"SRUN_EXIT={EXIT_PREEMPTED}" in log, log[-4000:]
    assert proc.returncode == EXIT_PREEMPTED
    saved = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and 0 < saved[-1] < steps
    assert "stop requested (SIGUSR1)" in log

    second = tmp_path / "second.log"
    proc = sbatch(second, "--time=5", str(job), str(cfg), f"run.dir={run_dir}")
    log = second.read_text()
    assert proc.returncode == 0, log[-4000:]
    assert f"resumed from step {saved[-1]}" in log
    records = [r for r in metrics.read(run_dir / "metrics.jsonl") if "loss" in r]
    assert records[-1]["step"] == steps
    assert [r["step"] for r in records] == sorted({r["step"] for r in records})  # no duplicated steps
