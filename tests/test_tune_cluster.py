"""Studies across processes: two Slurm workers share one study; a killed study resumes where it stopped."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
import yaml

from smilejax import metrics
from tests.conftest import ROOT, cli_env, run_cli, slurm_env, smilejax_cmd, stop, wait_for

SPACE = {
    "objective": {"metric": "eval/loss", "mode": "min"},
    "parameters": {
        "optimizer.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "scale": "log"},
        "optimizer.weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
    },
}


@pytest.fixture
def files(tmp_path, toy_yaml):
    cfg = toy_yaml(run={"steps": 8, "eval_every": 4, "eval_steps": 1, "checkpoint_every": 4})
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    return cfg, space, tmp_path / "study"


def finished(study) -> dict:
    saved = json.loads((study / "study.json").read_text())
    assert all(t["state"] == "complete" for t in saved["trials"]), saved["trials"]
    return saved


@pytest.mark.slurm
@pytest.mark.parametrize("backend", ["optuna", "keras-tuner"])
def test_two_slurm_workers_share_one_study(slurm_conf, files, backend):
    cfg, space, study = files
    cmd = [
        "srun",
        "--ntasks=2",
        "--nodes=1",
        "--kill-on-bad-exit=1",
        "--time=5",
        sys.executable,
        "-m",
        "smilejax",
        "tune",
        str(cfg),
        "--space",
        str(space),
        "--backend",
        backend,
        "--trials",
        "3",
        "--dir",
        str(study),
    ]
    proc = subprocess.run(
        cmd, env=slurm_env(slurm_conf, devices=1), cwd=ROOT, capture_output=True, text=True, timeout=400
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    saved = finished(study)
    assert sorted(t["number"] for t in saved["trials"]) == [0, 1, 2]  # one study, no trial run twice
    assert len({t["worker"] for t in saved["trials"]}) == 2  # both workers trained trials of it
    for t in saved["trials"]:
        run = yaml.safe_load((study / f"trial-{t['number']:04d}" / "config.yaml").read_text())
        assert run["optimizer"]["lr"] == pytest.approx(t["params"]["optimizer.lr"])
    assert proc.stdout.count("best: trial") == 1  # only the lead worker reports


@pytest.mark.parametrize("backend", ["optuna", "keras-tuner"])
def test_killed_study_resumes_where_it_stopped(files, backend):
    cfg, space, study = files
    args = ["--space", str(space), "--backend", backend, "--trials", "2", "--dir", str(study)]
    slow = ["tune", str(cfg), "data.read_delay_s=0.2", *args]  # slow reads: time to kill it mid-trial
    proc = subprocess.Popen(
        smilejax_cmd(*slow),
        env=cli_env(1),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    second = study / "trial-0001"
    wait_for(lambda: (second / "checkpoints" / "4").is_dir(), 240, "trial 1's checkpoint at step 4", proc)
    stop(proc, signal.SIGKILL)
    first = [r["step"] for r in metrics.read(study / "trial-0000" / "metrics.jsonl") if "loss" in r]

    again = run_cli("tune", str(cfg), *args, devices=1, timeout=300)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "resumed from step 4" in again.stderr  # the interrupted trial went on from its checkpoint
    saved = finished(study)
    assert sorted(t["number"] for t in saved["trials"]) in ([0, 1], [0, 2])  # a retry may get a new number
    assert len(saved["trials"]) == 2
    steps = [r["step"] for r in metrics.read(second / "metrics.jsonl") if "loss" in r]
    assert steps == list(range(1, 9))  # every step once: resumed, not restarted
    assert [r["step"] for r in metrics.read(study / "trial-0000" / "metrics.jsonl") if "loss" in r] == first
