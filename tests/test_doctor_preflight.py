"""The preflight line of `smilejax launch`'s job scripts (``smilejax doctor --expect gpu``), rendered per
system and run as the job would run it, under a stand-in launcher."""

from __future__ import annotations

import subprocess

import jax
import pytest

from smilejax import cli
from tests.conftest import ROOT, cli_env

pytestmark = pytest.mark.unit  # make test-fast runs it: one device, seconds


def _dry_run(capsys, system: str, *options: str) -> str:
    code = cli.main(["launch", "--system", system, "--account", "a1", *options, "--dry-run", "gn2"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def test_gpu_job_scripts_check_the_gpus_before_training(capsys):
    script = _dry_run(capsys, "perlmutter", "--nodes", "2")
    lines = script.splitlines()
    check = next(i for i, line in enumerate(lines) if "-m smilejax doctor" in line)
    train = next(i for i, line in enumerate(lines) if "-m smilejax train" in line)
    assert check < train
    assert lines[check].startswith("srun --nodes=1 --ntasks=1 --ntasks-per-node=1 ")
    assert lines[check].endswith(" -m smilejax doctor --expect gpu --expect-devices 4 ||")
    assert "exit 1; }" in lines[check + 1]
    assert (
        "JAX on the first node does not see the node's 4 GPU(s), which every process of this perlmutter job "
        "sees (the report above says why); not training"
    ) in lines[check + 1]
    two = _dry_run(capsys, "perlmutter", "--gpus-per-node", "2")
    assert "-m smilejax doctor --expect gpu --expect-devices 2 ||" in two
    # Frontier binds each process its GCD: the check asks for what one process gets
    frontier = _dry_run(capsys, "frontier")
    assert "-m smilejax doctor --expect gpu --expect-devices 1 ||" in frontier
    assert (
        "JAX on the first node does not see the 1 GPU(s) a process of this frontier job gets (the report "
        "above says why); not training"
    ) in frontier


@pytest.mark.parametrize("system", ["local", "slurm-gpu"])
def test_cpu_job_scripts_demand_no_gpus(capsys, system):
    options = ["--gpus-per-node", "0", "--tasks-per-node", "2"] if system == "slurm-gpu" else []
    script = _dry_run(capsys, system, *options)
    assert "smilejax doctor" not in script and "--expect gpu" not in script
    assert "# (none: a CPU job)" in script


@pytest.mark.parametrize(("system", "launcher"), [("perlmutter", "srun"), ("polaris", "mpiexec")])
def test_preflight_line_fails_the_job_on_a_cpu_only_jax(capsys, tmp_path, system, launcher):
    """The rendered lines, run by bash with the launcher standing in as 'drop options, run the rest'."""
    lines = _dry_run(capsys, system).splitlines()
    i = next(i for i, line in enumerate(lines) if "-m smilejax doctor" in line)
    snippet = "\n".join([*lines[i : i + 2], "echo trained"])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_in = bin_dir / launcher
    # Options and their values (mpiexec's "-n 1", "--cpu-bind depth") go; the command starts at a path.
    stand_in.write_text('#!/bin/bash\nwhile [[ $# -gt 0 && $1 != /* ]]; do shift; done\nexec "$@"\n')
    stand_in.chmod(0o755)
    env = cli_env(PATH=f"{bin_dir}:/usr/bin:/bin")
    proc = subprocess.run(
        ["bash", "-c", snippet], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 1, proc.stderr
    assert "trained" not in proc.stdout and "\nfeatures\n" in proc.stdout
    err = proc.stderr.strip().splitlines()
    assert err[-2].startswith(f"smilejax doctor: expected 4 GPUs but JAX {jax.__version__} sees only 8 cpu")
    assert err[-1].startswith(
        "smilejax-launch: preflight failed: JAX on the first node does not see the node's 4 GPU(s)"
    )
