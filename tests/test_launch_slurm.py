"""`smilejax launch --system local` against the real local Slurm cluster: a two-process job with staged
inputs, and a job warned before its time limit that requeues itself and ends as an uninterrupted run."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from smilejax import metrics
from tests import toy
from tests.conftest import ROOT, cli_env, free_port, slurm_env, smilejax_cmd, wait_for

pytestmark = pytest.mark.slurm


def launch_local(*args: str) -> list[str]:
    return smilejax_cmd("launch", "--system", "local", "--tasks-per-node", "2", *args)


def write_config(path: Path, **sections) -> Path:
    path.write_text(yaml.safe_dump(toy.config(**sections)))
    return path


def job_state(job_id: str, slurm_conf: Path) -> str:
    out = subprocess.run(
        ["squeue", "-h", "-j", job_id, "-o", "%T %r"],
        env=slurm_env(slurm_conf),
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def node_state(slurm_conf: Path) -> str:
    time.sleep(0.5)
    sinfo = ["sinfo", "-h", "-o", "%T"]
    return subprocess.run(sinfo, env=slurm_env(slurm_conf), capture_output=True, text=True).stdout.strip()


def test_two_process_job_stages_its_inputs_trains_and_finishes(slurm_conf, tmp_path):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(256, 8)).astype(np.float32)
    np.savez(tmp_path / "toy.npz", x=x, y=np.sin(x.sum(1)).astype(np.float32))
    cfg = write_config(
        tmp_path / "toy.yaml", run={"steps": 4, "checkpoint_every": 2}, data={"path": "toy.npz"}
    )
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        launch_local("--time", "3", "--stage", "--wait", str(cfg), f"run.dir={run_dir}"),
        env=slurm_env(slurm_conf),
        cwd=tmp_path,  # the relative data.path is found from the submit directory
        capture_output=True,
        text=True,
        timeout=240,
    )
    job_id = proc.stdout.strip()
    log_path = run_dir / "launch" / f"slurm-{job_id}.out"
    log = log_path.read_text() if log_path.exists() else ""
    assert proc.returncode == 0 and job_id.isdigit(), proc.stderr[-3000:] + log[-3000:]

    # one JAX runtime over both processes of the job
    assert "slurm: process 0/2 on 1 node(s)" in log
    info = json.loads((run_dir / "run.json").read_text())
    assert (info["launcher"], info["process_count"], info["device_count"]) == ("slurm", 2, 4)
    assert [r["step"] for r in metrics.read(run_dir / "metrics.jsonl") if "loss" in r] == [1, 2, 3, 4]
    # trained from the node-local copy, which went away with the job
    stage = f"/dev/shm/smilejax-{job_id}"
    assert "1 of 1 file(s) copied" in log and stage in log
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["path"] == f"{stage}/toy.npz"
    assert not Path(stage).exists()
    assert json.loads((run_dir / "launch" / "jobs.jsonl").read_text())["job_id"] == job_id


def test_job_warned_before_its_limit_requeues_itself_and_ends_as_an_uninterrupted_run(slurm_conf, tmp_path):
    steps = 500
    run = {"steps": steps, "checkpoint_every": 250, "log_every": 1, "preemption_check_every": 2}
    # Slow reads (0.1 s a step) keep the run going past Slurm's warning, which comes 0-40 s into the job.
    cfg = write_config(tmp_path / "toy.yaml", run=run, data={"read_delay_s": 0.1})

    # The uninterrupted reference, meanwhile: the job's layout (2 processes × 2 devices), fast reads.
    ref_dir, port = tmp_path / "reference", free_port()
    reference = [
        subprocess.Popen(
            smilejax_cmd("train", str(cfg), f"run.dir={ref_dir}", "data.read_delay_s=0"),
            env=cli_env(
                2, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(r)
            ),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]

    # A one-minute limit, warned 50 s before it.
    run_dir = tmp_path / "run"
    launcher = subprocess.Popen(
        launch_local("--time", "1", "--signal-margin", "50", "--wait", str(cfg), f"run.dir={run_dir}"),
        env=slurm_env(slurm_conf),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    job_id = launcher.stdout.readline().strip()
    assert job_id.isdigit(), launcher.communicate()[1][-3000:]

    def requeued() -> bool:
        time.sleep(0.5)
        return job_state(job_id, slurm_conf) == "PENDING BeginTime"

    wait_for(requeued, 150, "the job to checkpoint and requeue itself", proc=launcher)
    # Slurm holds a requeued job for two minutes, so that its node has revoked the first run's job
    # credential (whole seconds) before a new one is made: a restart within that second is killed as
    # "Job credential revoked". The test waits for the node to be idle and two seconds more, then lets
    # the job go, with room to finish, and the remaining steps read at full speed (the losses do not
    # depend on it).
    wait_for(lambda: node_state(slurm_conf) == "idle", 60, "the node to end the first run", proc=launcher)
    time.sleep(2)
    frozen = run_dir / "launch" / "config.yaml"
    tree = yaml.safe_load(frozen.read_text())
    tree["data"]["read_delay_s"] = 0.0
    frozen.write_text(yaml.safe_dump(tree, sort_keys=False))
    subprocess.run(
        ["scontrol", "update", f"JobId={job_id}", "StartTime=now", "TimeLimit=5"],
        env=slurm_env(slurm_conf),
        check=True,
    )
    _, err = launcher.communicate(timeout=240)
    log = (run_dir / "launch" / f"slurm-{job_id}.out").read_text()
    assert launcher.returncode == 0, err[-2000:] + log[-4000:]

    assert "stop requested" in log and f"requeueing job {job_id} (restart 1" in log
    assert f"job {job_id} attempt 2" in log and log.count("training exited with code 75") == 1
    resumed = int(log.split("resumed from step ")[1].split()[0])
    assert 0 < resumed < steps

    for p in reference:
        out = p.communicate(timeout=240)[0]
        assert p.returncode == 0, out[-3000:]

    def losses(path: Path) -> list[tuple[int, float]]:
        return [(r["step"], r["loss"]) for r in metrics.read(path / "metrics.jsonl") if "loss" in r]

    got, want = losses(run_dir), losses(ref_dir)
    assert [s for s, _ in got] == list(range(1, steps + 1))  # every step once, across both attempts
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-5)
