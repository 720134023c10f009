"""`smilejax train` end to end through the real CLI: run files, resume, preemption, broken checkpoints."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess

import pytest
import yaml

from smilejax import metrics
from smilejax.preemption import EXIT_PREEMPTED
from tests.conftest import ROOT, cli_env, run_cli, smilejax_cmd, stop, wait_for

STEPS = 24


def losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in metrics.read(run_dir / "metrics.jsonl") if "loss" in r}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run that the interrupted ones must reproduce exactly."""
    tmp = tmp_path_factory.mktemp("reference")
    cfg = tmp / "toy.yaml"
    from tests import toy

    cfg.write_text(
        yaml.safe_dump(
            toy.config(
                run={"steps": STEPS, "checkpoint_every": 4, "eval_every": 8, "eval_steps": 2},
                logging={"wandb": "offline", "tensorboard": True},
            )
        )
    )
    run_dir = tmp / "run"
    proc = run_cli("train", str(cfg), f"run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cfg, run_dir


def test_run_directory_holds_config_info_metrics_and_loggers(reference):
    _cfg, run_dir = reference
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["run"]["steps"] == STEPS and saved["run"]["dir"] == str(run_dir)
    assert saved["model"]["hidden"] == 32  # defaults are filled in
    info = json.loads((run_dir / "run.json").read_text())
    assert info["param_count"] == 8 * 32 + 32 + 32 * 32 + 32 + 32 + 1
    assert info["device_count"] == 8 and info["process_count"] == 1 and info["device_kind"] == "cpu"
    assert info["mesh"] == {"data": 8, "fsdp": 1, "tensor": 1}
    assert {"jax", "flax", "optax", "orbax-checkpoint", "grain", "python"} <= set(info["versions"])
    records = metrics.read(run_dir / "metrics.jsonl")
    train_records = [r for r in records if "loss" in r]
    assert [r["step"] for r in train_records] == list(range(1, STEPS + 1))
    for r in train_records:
        assert {"step", "loss", "lr", "samples_per_s", "step_time_s", "data_wait_frac"} <= set(r)
        assert r["samples_per_s"] > 0 and 0 <= r["data_wait_frac"] <= 1
    assert "mfu" not in train_records[0]  # no known peak for a CPU
    evals = [r for r in records if "eval/loss" in r]
    assert [r["step"] for r in evals] == [8, 16, 24]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()) == [
        "16",
        "20",
        "24",
    ]
    assert list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_help_explains_commands():
    top = run_cli("--help")
    assert top.returncode == 0 and "train" in top.stdout and "srun" in top.stdout
    sub = run_cli("train", "--help")
    assert sub.returncode == 0
    for word in ("CONFIG", "KEY=VALUE", "optimizer.lr=3e-4", "resume", "75"):
        assert word in sub.stdout


def test_unknown_key_fails_before_any_work(toy_yaml, tmp_path):
    proc = run_cli("train", str(toy_yaml()), "optimizer.lrr=1", f"run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    assert "optimizer.'lrr'" in proc.stderr and "'lr'" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_wrong_type_fails_naming_the_key(toy_yaml, tmp_path):
    proc = run_cli("train", str(toy_yaml()), "run.steps=many", f"run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2 and "run.steps must be int" in proc.stderr


def test_missing_data_path_is_a_clear_error(toy_yaml, tmp_path):
    missing = tmp_path / "nowhere.npz"
    proc = run_cli("train", str(toy_yaml()), f"data.path={missing}", f"run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2 and str(missing) in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists() or not any(
        (tmp_path / "run" / "checkpoints").iterdir()
    )


def _start(cfg, run_dir, *overrides) -> subprocess.Popen:
    return subprocess.Popen(
        smilejax_cmd("train", str(cfg), f"run.dir={run_dir}", "data.read_delay_s=0.05", *overrides),
        env=cli_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _checkpoint(run_dir, step: int):
    return lambda: (run_dir / "checkpoints" / str(step)).is_dir()


def test_killed_run_resumes_with_identical_losses(reference, tmp_path):
    cfg, ref_dir = reference
    run_dir = tmp_path / "run"
    proc = _start(cfg, run_dir)
    wait_for(_checkpoint(run_dir, 8), 120, "checkpoint 8", proc)
    stop(proc, signal.SIGKILL)
    killed_at = max(losses(run_dir))
    assert killed_at < STEPS
    proc = run_cli("train", str(cfg), f"run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from step" in proc.stderr
    assert losses(run_dir) == losses(ref_dir)  # exactly, every step


def test_sigterm_checkpoints_at_step_boundary_and_exits_75(reference, tmp_path):
    cfg, ref_dir = reference
    run_dir = tmp_path / "run"
    proc = _start(cfg, run_dir)
    wait_for(_checkpoint(run_dir, 4), 120, "checkpoint 4", proc)
    stop(proc, signal.SIGTERM)
    assert proc.returncode == EXIT_PREEMPTED, proc.stdout.read()[-3000:]
    stopped = max(losses(run_dir))
    assert 4 <= stopped < STEPS
    assert (run_dir / "checkpoints" / str(stopped)).is_dir()
    proc = run_cli("train", str(cfg), f"run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed from step {stopped}" in proc.stderr
    assert losses(run_dir) == losses(ref_dir)


def test_corrupted_latest_checkpoint_falls_back_to_previous(reference, tmp_path):
    cfg, ref_dir = reference
    run_dir = tmp_path / "run"
    shutil.copytree(ref_dir, run_dir)
    (run_dir / "config.yaml").unlink()
    # Truncate every array file of the newest checkpoint, as a crash on a flaky filesystem might.
    broken = run_dir / "checkpoints" / "24"
    for f in (broken / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "metadata" not in f.name:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    proc = run_cli("train", str(cfg), f"run.dir={run_dir}", "run.steps=24")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checkpoint step 24" in proc.stderr and "unreadable" in proc.stderr
    assert "resumed from step 20" in proc.stderr
    assert losses(run_dir) == losses(ref_dir)


def test_every_command_has_help():
    from smilejax.commands import names

    for name in names():
        proc = run_cli(name, "--help")
        assert proc.returncode == 0 and "usage: smilejax" in proc.stdout, (name, proc.stderr[-2000:])
