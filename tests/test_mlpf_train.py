"""MLPF trains from its TFDS dataset with element-budget batches on 8 devices, and resumes exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from smilejax import config, trainer

BUDGET_MLPF = [
    "model.num_convs=1",
    "model.num_heads=2",
    "model.head_dim=8",
    "data.configs=[1]",
    "data.bucket_widths=[64, 128, 256, 512]",
    "data.element_budget=4096",  # 64 events of <= 64 elements ... 8 of <= 512
    "data.batch_multiple=8",
    "data.read_threads=1",
    "train.precision=fp32",
    "optimizer.schedule=constant",  # the same learning rates whatever run.steps (resume test)
    "optimizer.warmup=0",
    "run.log_every=1",
    "run.eval_every=0",
    "logging.tensorboard=false",
    "logging.progress=false",
]


def _losses(run_dir) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("mlpf") / "straight"
    result = trainer.train(config.load("mlpf", [*BUDGET_MLPF, "run.steps=8", f"run.dir={run_dir}"]))
    return run_dir, result


def test_mlpf_trains_on_budget_batches(straight):
    run_dir, result = straight
    losses = _losses(run_dir)
    assert sorted(losses) == list(range(1, 9)) and result.step == 8
    assert all(np.isfinite(v) for v in losses.values())
    assert np.mean([losses[7], losses[8]]) < np.mean([losses[1], losses[2]])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    events = {r["samples_per_s"] * r["step_time_s"] for r in rows if "samples_per_s" in r}
    # samples/s counts the events of each batch, which vary with the bucket (8 to 64 events)
    assert {round(e) for e in events} <= {8, 16, 32, 64} and len(events) > 1


def test_mlpf_resumes_exactly_with_budget_batches(straight, tmp_path):
    run_dir = tmp_path / "resumed"
    trainer.train(
        config.load("mlpf", [*BUDGET_MLPF, "run.steps=4", "run.checkpoint_every=4", f"run.dir={run_dir}"])
    )
    trainer.train(config.load("mlpf", [*BUDGET_MLPF, "run.steps=8", f"run.dir={run_dir}"]))
    want, got = _losses(straight[0]), _losses(run_dir)
    for step in range(5, 9):
        assert got[step] == pytest.approx(want[step], rel=1e-5), step


def test_resume_with_other_batches_is_refused(tmp_path):
    from smilejax.config import ConfigError

    run_dir = tmp_path / "changed"
    trainer.train(config.load("mlpf", [*BUDGET_MLPF, "run.steps=2", f"run.dir={run_dir}"]))
    with pytest.raises(ConfigError, match=r"data.element_budget: 4096 -> 8192.*start a new run.dir"):
        trainer.train(
            config.load(
                "mlpf", [*BUDGET_MLPF, "run.steps=4", "data.element_budget=8192", f"run.dir={run_dir}"]
            )
        )
    # speed settings may change
    trainer.train(
        config.load("mlpf", [*BUDGET_MLPF, "run.steps=3", "data.read_threads=2", f"run.dir={run_dir}"])
    )
