"""LFI under several processes (as under srun): each JAX process simulates its own share of the global
batch from different seeds, and the training loss equals one process's on the same global batch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from smilejax import metrics
from tests.conftest import ROOT, cli_env, free_port

pytestmark = pytest.mark.multiprocess

OVERRIDES = [
    "run.steps=4",
    "run.log_every=1",
    "run.eval_every=0",
    "data.batch_size=64",
    "model.task=gaussian_linear",
    "model.standardize=256",
    "model.embedding={kind: none}",
    "model.flow={kind: maf, layers: 2, hidden: [16]}",
    "logging.progress=false",
]

# The first training batch of this process (its seeds), then the run: what `smilejax train` does.
SCRIPT = textwrap.dedent(
    """
    import json, sys
    from smilejax import config, runtime, trainer
    runtime.initialize()
    import jax
    cfg = config.load("npe-two-moons", sys.argv[2:] + ["run.dir=" + sys.argv[1]])
    batch = next(iter(trainer.make_inputs(cfg, "train")))
    print("SEEDS", jax.process_index(), json.dumps([int(s) for s in batch["seed"]]), flush=True)
    trainer.train(cfg)
    """
)


def _launch(script, run_dir, processes: int, devices: int) -> list[str]:
    port = free_port()
    procs = []
    for rank in range(processes):
        extra = (
            {
                "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                "JAX_NUM_PROCESSES": str(processes),
                "JAX_PROCESS_ID": str(rank),
            }
            if processes > 1
            else {}
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), str(run_dir), *OVERRIDES],
                env=cli_env(devices, **extra),
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    return outputs


def _seeds(output: str) -> list[int]:
    line = next(line for line in output.splitlines() if line.startswith("SEEDS "))
    return json.loads(line.split(" ", 2)[2])


def _losses(run_dir) -> list[float]:
    return [r["loss"] for r in metrics.read(run_dir / "metrics.jsonl") if "loss" in r]


def test_two_processes_simulate_their_own_seeds_and_match_one(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    single, multi = tmp_path / "single", tmp_path / "multi"
    (one,) = _launch(script, single, processes=1, devices=4)
    first, second = _launch(script, multi, processes=2, devices=2)

    global_seeds = _seeds(one)
    a, b = _seeds(first), _seeds(second)
    assert len(a) == len(b) == len(global_seeds) // 2 == 32  # each process reads half the global batch
    assert not set(a) & set(b)  # no simulation drawn twice
    assert a + b == global_seeds  # together: one process's global batch, in order

    info = json.loads((multi / "run.json").read_text())
    assert info["process_count"] == 2 and info["device_count"] == 4
    assert len(_losses(multi)) == 4
    assert _losses(multi) == pytest.approx(_losses(single), rel=1e-4)
