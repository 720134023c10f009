"""`smilejax train` end to end through the real CLI: run files, resume, preemption and Ctrl-C, broken
checkpoints, a changed model, the summary at the end."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import threading

import pytest
import yaml

from smilejax import metrics
from smilejax.preemption import EXIT_INTERRUPTED, EXIT_PREEMPTED
from tests.conftest import ROOT, cli_env, run_cli, smilejax_cmd, stop, wait_for

STEPS = 24


def losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in metrics.read(run_dir / "metrics.jsonl") if "loss" in r}


def evals(run_dir) -> dict[int, dict[str, float]]:
    records = metrics.read(run_dir / "metrics.jsonl")
    return {
        r["step"]: {k: v for k, v in r.items() if k.startswith("eval/")} for r in records if "eval/loss" in r
    }


def run_files(run_dir) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


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
    for word in ("CONFIG", "KEY=VALUE", "optimizer.lr=3e-4", "resume", "75", "130 stopped by Ctrl-C"):
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
    assert not (tmp_path / "run").exists()  # no empty run directory left behind


def test_class_dict_with_model_class_weights_fails_before_the_run_directory(tmp_path):
    """Two sections that give class weights are a config error found before anything is written; a
    config that skipped the check (built in code) still leaves no run directory when the model refuses it."""
    class_dict = tmp_path / "class_dict.yaml"
    class_dict.write_text(yaml.safe_dump({"jets": {"flavour_label": [1.0, 2.0, 3.0, 4.0]}}))
    run_dir = tmp_path / "run"
    weights = "model.class_weights={jet: [1, 1, 1, 1]}"
    proc = run_cli("train", "gn2", f"data.class_dict={class_dict}", weights, f"run.dir={run_dir}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.startswith("smilejax: config error: data.class_dict (")
    assert "Traceback" not in proc.stderr
    assert "and model.class_weights both give class weights; keep one" in proc.stderr
    assert not run_dir.exists()

    from smilejax import config, trainer
    from tests.conftest import TINY_GN2

    cfg = config.load("gn2", [*TINY_GN2, f"data.class_dict={class_dict}", f"run.dir={run_dir}"])
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, class_weights={"jet": [1.0] * 4}))
    with pytest.raises(ValueError, match=r"model\.class_weights both give class weights"):
        trainer.train(cfg)
    assert not run_dir.exists()


def _start(cfg, run_dir, *overrides) -> subprocess.Popen:
    return subprocess.Popen(
        smilejax_cmd("train", str(cfg), f"run.dir={run_dir}", "data.read_delay_s=0.05", *overrides),
        env=cli_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, which a terminal's Ctrl-C signals as a whole
    )


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """``sig`` to the run and every process it started (Grain's workers), as a terminal sends Ctrl-C."""
    os.killpg(proc.pid, sig)


def _output(proc: subprocess.Popen, timeout: float = 120) -> str:
    """The run's output once it has ended; a run that hangs is killed with its workers."""
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(
            f"the run did not end within {timeout} s:\n{proc.communicate()[0][-3000:]}"
        ) from None


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
    assert evals(run_dir) == evals(ref_dir)  # the same held-out examples at every evaluation
    # one summary at the end: final values, the run directory, what to run next
    final = evals(run_dir)[STEPS]["eval/loss"]
    assert f"run finished at step {STEPS}: loss {losses(run_dir)[STEPS]:.4g}" in proc.stderr
    assert f"eval/loss {final:.4g}" in proc.stderr and f"run directory: {run_dir}" in proc.stderr
    assert f"smilejax eval {run_dir}" in proc.stderr and f"smilejax export {run_dir} --out " in proc.stderr


@pytest.mark.parametrize(
    ("sig", "code", "notice"),
    [
        (signal.SIGTERM, EXIT_PREEMPTED, "stop requested (SIGTERM)"),
        (signal.SIGINT, EXIT_INTERRUPTED, "Ctrl-C: checkpointing at the next step boundary"),
    ],
)
def test_stop_signal_checkpoints_at_step_boundary_and_resumes(reference, tmp_path, sig, code, notice):
    cfg, ref_dir = reference
    run_dir = tmp_path / "run"
    proc = _start(cfg, run_dir)
    wait_for(_checkpoint(run_dir, 4), 120, "checkpoint 4", proc)
    _signal_group(proc, sig)
    out = _output(proc)
    assert proc.returncode == code, out[-3000:]
    assert notice in out and "Traceback" not in out
    stopped = max(losses(run_dir))
    assert 4 <= stopped < STEPS
    assert (run_dir / "checkpoints" / str(stopped)).is_dir()
    assert f"run stopped early at step {stopped}" in out
    proc = run_cli("train", str(cfg), f"run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed from step {stopped}" in proc.stderr
    assert losses(run_dir) == losses(ref_dir)
    assert evals(run_dir) == evals(ref_dir)


def test_ctrl_c_reaching_grain_worker_processes_checkpoints_and_resumes(reference, tmp_path):
    """A terminal's Ctrl-C signals the whole process group: the data workers must leave it to the run."""
    cfg, ref_dir = reference
    run_dir = tmp_path / "run"
    proc = _start(cfg, run_dir, "data.workers=2", "data.read_delay_s=0.2")
    # after the evaluation at step 8: the eval pipeline's workers are running too (a worker that is still
    # starting Python when the signal comes dies of it before it can ignore it)
    wait_for(_checkpoint(run_dir, 12), 180, "checkpoint 12", proc)
    _signal_group(proc, signal.SIGINT)
    out = _output(proc)
    assert proc.returncode == EXIT_INTERRUPTED, out[-3000:]
    assert "KeyboardInterrupt" not in out and "Traceback" not in out
    stopped = max(losses(run_dir))
    assert 12 <= stopped < STEPS and f"run stopped early at step {stopped}" in out
    assert (run_dir / "checkpoints" / str(stopped)).is_dir()
    proc = run_cli("train", str(cfg), f"run.dir={run_dir}", "data.workers=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed from step {stopped}" in proc.stderr
    assert losses(run_dir) == losses(ref_dir)
    assert evals(run_dir) == evals(ref_dir)


class _Output:
    """A process's output, read line by line in a thread while the test signals it."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self.thread = threading.Thread(target=lambda: self.lines.extend(proc.stdout), daemon=True)
        self.thread.start()

    @property
    def text(self) -> str:
        return "".join(self.lines)


def test_second_ctrl_c_aborts_at_once_without_a_traceback(reference, tmp_path):
    cfg, _ = reference
    run_dir = tmp_path / "run"
    proc = _start(cfg, run_dir, "data.read_delay_s=3")  # the first batch takes 3 s: no step before
    out = _Output(proc)
    wait_for(lambda: "topology" in out.text, 120, "the run's start")
    _signal_group(proc, signal.SIGINT)
    wait_for(lambda: "Ctrl-C: checkpointing" in out.text, 30, "the first Ctrl-C's notice")
    _signal_group(proc, signal.SIGINT)
    proc.wait(timeout=60)
    out.thread.join(timeout=10)
    assert proc.returncode == EXIT_INTERRUPTED, out.text[-3000:]
    assert "aborted by a second Ctrl-C" in out.text and "Traceback" not in out.text
    assert not list(run_dir.glob("checkpoints/[0-9]*"))  # aborted before the first step's checkpoint


def test_changed_model_on_resume_is_a_config_error_naming_the_field(reference, tmp_path):
    cfg, ref_dir = reference
    run_dir = tmp_path / "run"
    shutil.copytree(ref_dir, run_dir)
    before = run_files(run_dir)
    proc = run_cli("train", str(cfg), f"run.dir={run_dir}", "run.steps=28", "model.hidden=64")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "config error" in proc.stderr and "model.hidden: 32 -> 64" in proc.stderr
    assert f"checkpoint step {STEPS} does not fit the model" in proc.stderr
    assert "params/mid/kernel [32,32] where the model wants [64,64]" in proc.stderr
    assert "use another run.dir" in proc.stderr and "unreadable" not in proc.stderr
    assert run_files(run_dir) == before  # nothing deleted, truncated or rewritten


@pytest.mark.parametrize("damage", ["truncated arrays", "missing metadata"])
def test_damaged_latest_checkpoint_falls_back_to_previous(reference, tmp_path, damage):
    cfg, ref_dir = reference
    run_dir = tmp_path / "run"
    shutil.copytree(ref_dir, run_dir)
    broken = run_dir / "checkpoints" / "24" / "state"
    if damage == "truncated arrays":  # every array file cut short, as a crash on a flaky filesystem might
        for f in broken.rglob("*"):
            if f.is_file() and f.stat().st_size > 0 and "metadata" not in f.name:
                f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    else:
        (broken / "_METADATA").unlink()
    proc = run_cli("train", str(cfg), f"run.dir={run_dir}", "run.steps=24")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checkpoint step 24" in proc.stderr and "is unreadable (" in proc.stderr
    assert "resumed from step 20; skipped unreadable step(s) [24]" in proc.stderr
    assert losses(run_dir) == losses(ref_dir)
    assert evals(run_dir) == evals(ref_dir)


def test_every_checkpoint_damaged_is_one_line_and_exit_2(reference, tmp_path):
    cfg, ref_dir = reference
    run_dir = tmp_path / "run"
    shutil.copytree(ref_dir, run_dir)
    for step in ("16", "20", "24"):
        (run_dir / "checkpoints" / step / "state" / "_METADATA").unlink()
    before = run_files(run_dir)
    proc = run_cli("train", str(cfg), f"run.dir={run_dir}", "run.steps=28")
    assert proc.returncode == 2, proc.stderr[-3000:]
    said = [line for line in proc.stderr.splitlines() if line.startswith("smilejax:")]
    assert said == [
        f"smilejax: error: no readable checkpoint in {run_dir / 'checkpoints'}: steps [24, 20, 16] all "
        "failed to restore (damaged files, see the warnings above); move the folder away to start afresh"
    ]
    assert "Traceback" not in proc.stderr
    assert run_files(run_dir) == before


def test_changed_data_settings_on_resume_are_refused_where_a_data_position_was_saved(reference, tmp_path):
    """The control of the weights-only import (tests/test_import_salt.py), whose data settings are free."""
    cfg, ref_dir = reference
    run_dir = tmp_path / "run"
    shutil.copytree(ref_dir, run_dir)
    proc = run_cli("train", str(cfg), f"run.dir={run_dir}", "run.steps=28", "data.batch_size=32")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "other data settings" in proc.stderr and "data.batch_size: 16 -> 32" in proc.stderr


def test_checkpoint_without_data_position_restarts_the_data(reference, tmp_path):
    """A checkpoint that holds the state alone (what an import without its data writes) resumes, its input
    pipeline from the beginning; past step 0 that is not the uninterrupted run's sequence, and it says so."""
    cfg, ref_dir = reference
    run_dir = tmp_path / "run"
    shutil.copytree(ref_dir, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "24" / "data")
    proc = run_cli("train", str(cfg), f"run.dir={run_dir}", "run.steps=25")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checkpoint step 24 holds no data position: the input pipeline starts from its beginning" in (
        proc.stderr
    )
    assert "unreadable" not in proc.stderr and "resumed from step 24" in proc.stderr
    assert max(losses(run_dir)) == 25


def test_every_command_has_help():
    import argparse

    from smilejax import cli

    # the parser's command names: a module may register another name (import_model.py: "import")
    sub = next(a for a in cli._parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert {"train", "eval", "export"} <= set(sub.choices)
    for name in sub.choices:
        proc = run_cli(name, "--help")
        assert proc.returncode == 0 and "usage: smilejax" in proc.stdout, (name, proc.stderr[-2000:])
