"""Every test sees 8 simulated CPU devices (``SMILEJAX_TEST_DEVICES`` sets another count: ``make test-fast``
runs the ``unit`` tests on one); subprocess helpers run the real ``smilejax`` CLI."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + f" --xla_force_host_platform_device_count={os.environ.get('SMILEJAX_TEST_DEVICES', '8')}"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("WANDB_SILENT", "true")

import pytest

ROOT = Path(__file__).resolve().parents[1]
SLURM_SCRIPT = ROOT / "launch" / "local_slurm.sh"


def cli_env(devices: int = 8, **extra: str) -> dict[str, str]:
    """Environment for a CLI subprocess: ``devices`` CPU devices, tests/ importable, no W&B network."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "PMI_", "JAX_"))}
    env.update(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(ROOT),
        WANDB_SILENT="true",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def smilejax_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "smilejax", *args]


def run_cli(*args: str, devices: int = 8, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        smilejax_cmd(*args),
        env=cli_env(devices, **env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_reference(env: Path, install: str, what: str, *args: str) -> subprocess.CompletedProcess:
    """Runs ``args`` (a script and its arguments) with the python of the PyTorch reference environment
    ``env``; fails the test naming ``install`` when the environment is missing or the script fails.
    ``what`` says what the environment holds, for the message."""
    python = env / "bin" / "python"
    if not python.exists():
        pytest.fail(f"the reference environment {env} is missing: create it with `{install}` ({what})")
    proc = subprocess.run(
        [str(python), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "2"},
    )
    if proc.returncode:
        pytest.fail(
            f"the reference in {env} failed (rc={proc.returncode}); is it complete? `{install}`\n"
            f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def synthetic_ftag(folder: Path, jets: int, seed: int) -> tuple[Path, Path]:
    """A synthetic ftag_h5 file of ``jets`` jets under ``folder`` and its norm dict: (file, norm dict)."""
    from smilejax.inputs import ftag_h5 as fh
    from smilejax.models.gn2 import make_synthetic as fs

    path = fs.make(folder / "s.h5", jets, seed=seed)
    return path, fh.write_norm_dict(fh.compute_norm_dict(str(path)), folder / "norm.yaml")


def stand_in_triton(folder: Path, script: str) -> tuple[Path, Path]:
    """A model repository of one model and a stand-in ``tritonserver`` under ``folder`` running ``script``
    (its whole text, ``#!`` line included): (repository, binary)."""
    (folder / "repo" / "toy").mkdir(parents=True)
    (folder / "repo" / "toy" / "config.pbtxt").write_text('name: "toy"\n')
    binary = folder / "triton" / "bin" / "tritonserver"
    binary.parent.mkdir(parents=True)
    binary.write_text(script)
    binary.chmod(0o755)
    return folder / "repo", binary


@pytest.fixture
def toy_cfg(tmp_path) -> Path:
    """A toy config file whose global batch (64) fits 32 GPUs."""
    import yaml

    from tests import toy

    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(toy.config(data={"batch_size": 64})))
    return path


@pytest.fixture
def stubs(tmp_path, monkeypatch) -> Path:
    """A bin folder first on PATH, where tests put stand-ins of scheduler commands; each call is logged."""
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return folder


def stub(folder: Path, name: str, body: str) -> Path:
    """``name`` appends its arguments to ``folder/name.calls`` then runs ``body``."""
    path = folder / name
    path.write_text(f'#!/bin/bash\necho "$*" >> {folder}/{name}.calls\n{textwrap.dedent(body)}\n')
    path.chmod(0o755)
    return path


def calls(folder: Path, name: str) -> list[str]:
    log = folder / f"{name}.calls"
    return log.read_text().splitlines() if log.exists() else []


LAUNCH = ROOT / "launch"


def launch(capsys, *args: str) -> tuple[int, str, str]:
    """``smilejax launch ARGS`` in this process: (exit code, stdout, stderr)."""
    from smilejax import cli  # here, not at the top: conftest loads for every test

    code = cli.main(["launch", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


FTAG_JETS = (3000, 2000)  # jets of ftag_files' s1.h5 and s2.h5


@pytest.fixture(scope="module")
def ftag_files(tmp_path_factory) -> Path:
    """A folder of two synthetic ftag_h5 files (GN2's maker): s1.h5 (FTAG_JETS[0] jets, seed 1) and s2.h5
    (FTAG_JETS[1] jets, seed 2)."""
    from smilejax.models.gn2 import make_synthetic as fs

    d = tmp_path_factory.mktemp("ftag")
    fs.make(d / "s1.h5", FTAG_JETS[0], seed=1)
    fs.make(d / "s2.h5", FTAG_JETS[1], seed=2)
    return d


@pytest.fixture(scope="module")
def ftag_mock(tmp_path_factory) -> str:
    """A 1500-jet file from atlas-ftag-tools' mock writer (ATLAS's own writer of the format)."""
    from ftag import mock

    path = tmp_path_factory.mktemp("mock") / "mock.h5"
    fname, f = mock.get_mock_file(num_jets=1500, fname=str(path))
    f.close()
    return fname


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"process ended (rc={proc.returncode}) before {what}:\n{out[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def sigint_ignored(cmd: list[str]) -> list[str]:
    """``cmd`` started with SIGINT ignored, as a background job of a non-interactive shell starts
    (``nohup make test &``, without ``timeout``, which resets it)."""
    return ["bash", "-c", "trap '' INT; exec \"$@\"", "serve", *cmd]


def stop(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    proc.wait(timeout=60)


@pytest.fixture
def toy_yaml(tmp_path):
    """Writes a toy config file with overrides and returns its path."""
    import yaml

    from tests import toy

    def write(**sections) -> Path:
        path = tmp_path / "toy.yaml"
        path.write_text(yaml.safe_dump(toy.config(**sections)))
        return path

    return write


@pytest.fixture(scope="session")
def slurm_conf():
    """SLURM_CONF of the local cluster; a cluster that was already running is reused and left running."""
    missing = [
        b for b in ("slurmctld", "slurmd", "munged", "srun") if not shutil.which(b, path="/usr/sbin:/usr/bin")
    ]
    if missing:
        pytest.fail(
            f"the local Slurm cluster needs {', '.join(missing)}: install slurmd slurmctld slurm-client munge"
        )
    state_dir = Path(os.environ.get("SMILEJAX_SLURM_DIR", "/tmp/smilejax-slurm"))
    was_running = (
        subprocess.run(["bash", str(SLURM_SCRIPT), "status", str(state_dir)], capture_output=True).returncode
        == 0
    )
    start = subprocess.run(
        ["bash", str(SLURM_SCRIPT), "start", str(state_dir)], capture_output=True, text=True, timeout=120
    )
    if start.returncode:
        pytest.fail(f"the local Slurm cluster did not start:\n{start.stdout}\n{start.stderr}")
    yield state_dir / "slurm.conf"
    if not was_running:
        subprocess.run(["bash", str(SLURM_SCRIPT), "stop", str(state_dir)], capture_output=True, timeout=60)


def slurm_env(slurm_conf: Path, devices: int = 2) -> dict[str, str]:
    """A CLI environment for jobs on the local cluster (no launcher variables of an enclosing job)."""
    return cli_env(devices, SLURM_CONF=str(slurm_conf))


# What every tiny test run shares: one read thread, float32, no checkpoints, evaluation or loggers.
_TINY_RUN = [
    "data.read_threads=1",
    "train.precision=fp32",
    "run.checkpoint_every=0",
    "run.eval_every=0",
    "logging.tensorboard=false",
    "logging.progress=false",
]

# A GN2 small enough to train in seconds on the default synthetic set (data.path null).
TINY_GN2 = [
    "model.embed=16",
    "model.layers=1",
    "model.heads=2",
    "model.ff=32",
    "model.out=16",
    "model.init_hidden=[16]",
    "model.head_hidden=[16]",
    "data.batch_size=32",
    "run.steps=20",
    "run.log_every=10",
    *_TINY_RUN,
]


@pytest.fixture(scope="session")
def tiny_gn2_run(tmp_path_factory) -> Path:
    """One tiny GN2 run (checkpoint at step 20) shared by the evaluation, export and serving tests."""
    from smilejax import config, trainer

    run_dir = tmp_path_factory.mktemp("tiny_gn2") / "run"
    trainer.train(config.load("gn2", [*TINY_GN2, f"run.dir={run_dir}"]))
    return run_dir


# An MLPF small enough to train in seconds on the synthetic set (data.path null); one bucket width, so
# one compiled shape for training and one for evaluation.
TINY_MLPF = [
    "model.num_convs=1",
    "model.num_heads=2",
    "model.head_dim=8",
    "data.configs=[1]",
    "data.bucket_widths=[512]",
    "data.element_budget=0",
    "data.batch_size=16",
    "run.steps=2",
    "run.log_every=1",
    *_TINY_RUN,
]


@pytest.fixture(scope="session")
def tiny_mlpf_run(tmp_path_factory) -> Path:
    """One tiny MLPF run (checkpoint at step 2) shared by the evaluation and serving tests."""
    from smilejax import config, trainer

    run_dir = tmp_path_factory.mktemp("tiny_mlpf") / "run"
    trainer.train(config.load("mlpf", [*TINY_MLPF, f"run.dir={run_dir}"]))
    return run_dir
