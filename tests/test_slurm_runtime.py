"""Two JAX processes launched by a real ``srun`` find each other and compute one global sum.

Runs against the one-node cluster of ``launch/local_slurm.sh`` in ``$SMILEJAX_SLURM_DIR`` (default
/tmp/smilejax-slurm), started once per session and stopped after unless it was already running.
Needs root and the Debian slurmd/slurmctld/slurm-client/munge packages: without them the test
fails, on purpose, rather than skipping.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slurm

# Each process owns 2 CPU devices and contributes 4 numbers; the global array is arange(8), sum 28.
PROGRAM = """
import jax, numpy as np
jax.config.update("jax_num_cpu_devices", 2)
from smilejax import runtime
env = runtime.initialize()
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
mesh = Mesh(np.array(jax.devices()), ("data",))
pid = jax.process_index()
local = np.arange(4 * pid, 4 * pid + 4, dtype=np.int32)
x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), local, (8,))
total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))(x)
print(f"RESULT id={pid} count={jax.process_count()} devices={jax.device_count()} sum={int(total)} "
      f"launcher={env.launcher} local={env.local_rank}/{env.local_size}", flush=True)
"""


def test_srun_two_processes_global_sum(slurm_conf):
    # Drop launcher variables of any enclosing job so only this srun's step is seen.
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "PMI_", "JAX_", "XLA_"))
    }
    env.update(SLURM_CONF=str(slurm_conf), PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    cmd = [
        "srun",
        "--ntasks=2",
        "--nodes=1",
        "--kill-on-bad-exit=1",
        "--time=2",
        sys.executable,
        "-c",
        PROGRAM,
    ]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    results = sorted(line.split()[1:] for line in proc.stdout.splitlines() if line.startswith("RESULT"))
    assert len(results) == 2, out[-4000:]
    fields = [dict(item.split("=") for item in r) for r in results]
    assert [f["id"] for f in fields] == ["0", "1"]
    for f in fields:
        assert f["count"] == "2" and f["devices"] == "4" and f["sum"] == "28", out[-4000:]
        assert f["launcher"] == "slurm" and f["local"].endswith("/2")
    assert {f["local"] for f in fields} == {"0/2", "1/2"}
