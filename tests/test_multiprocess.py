"""Two local JAX processes (gloo CPU collectives) train exactly like one process with as many devices."""

from __future__ import annotations

import subprocess

import pytest

from smilejax import metrics
from tests.conftest import ROOT, cli_env, free_port, run_cli, smilejax_cmd

pytestmark = pytest.mark.multiprocess


def test_two_processes_match_one(toy_yaml, tmp_path):
    cfg = toy_yaml(run={"steps": 6, "checkpoint_every": 3}, mesh={"data": 2, "fsdp": 4})
    single = tmp_path / "single"
    proc = run_cli("train", str(cfg), f"run.dir={single}")
    assert proc.returncode == 0, proc.stderr[-3000:]

    multi = tmp_path / "multi"
    port = free_port()
    procs = [
        subprocess.Popen(
            smilejax_cmd("train", str(cfg), f"run.dir={multi}"),
            env=cli_env(
                4,
                JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                JAX_NUM_PROCESSES="2",
                JAX_PROCESS_ID=str(rank),
            ),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]

    def losses(run_dir):
        return [r["loss"] for r in metrics.read(run_dir / "metrics.jsonl") if "loss" in r]

    assert len(losses(multi)) == 6
    assert losses(multi) == pytest.approx(losses(single), rel=1e-5)
    import json

    info = json.loads((multi / "run.json").read_text())
    assert info["process_count"] == 2 and info["device_count"] == 8 and info["local_device_count"] == 4
    assert info["launcher"] == "explicit"
    assert (multi / "checkpoints" / "6").is_dir()
    # only process 0 logs: the second process printed no progress or info lines
    assert "mesh data=2" in outputs[0] and "mesh data=2" not in outputs[1]
