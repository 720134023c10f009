"""`bench parallel --train-samples`: the hours one training takes at each predicted rate, the arithmetic of
docs/PERFORMANCE.md's "GN2: weeks to hours" projection, from the saved 8-device collectives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smilejax import cli

SAVED = str(Path(__file__).resolve().parents[1] / "docs" / "results" / "cpu8-gn2-parallel.json")
RECIPE = 40 * 302.75e6  # salt's GN2 recipe: 40 epochs of the training file's jets
STEP = ["--step-ms", "19.09", "--step-batch", "4000", "--model-batch", "4000", "--nodes", "1,4"]


def test_train_hours_are_the_samples_over_the_predicted_rate(tmp_path):
    flags = ["--from-results", SAVED, *STEP, "--train-samples", str(RECIPE), "--out", str(tmp_path)]
    assert cli.main(["bench", "parallel", *flags]) == 0
    model = json.loads((tmp_path / "parallel_scaling_model.json").read_text())
    assert model["assumptions"]["train_samples"] == RECIPE
    for row in model["rows"]:
        assert row["train_hours"] == pytest.approx(RECIPE / row["samples_per_s"] / 3600)
    dp = {r["nodes"]: r for r in model["rows"] if r["strategy"] == "dp-jit"}
    # the doc's first row: 16 H100s at the one-H100 loop's 19.09 ms per 4000 jets, about an hour
    assert dp[4]["gpus"] == 16 and dp[4]["train_hours"] == pytest.approx(1.03, abs=0.01)
    assert dp[1]["train_hours"] > 3.9 * dp[4]["train_hours"]  # 4x the GPUs, a little communication more
    text = (tmp_path / "parallel_scaling_model.md").read_text()
    assert "| train_hours |" in text and "step time only" in text


def test_without_train_samples_there_is_no_hours_column(tmp_path):
    assert cli.main(["bench", "parallel", "--from-results", SAVED, *STEP, "--out", str(tmp_path)]) == 0
    model = json.loads((tmp_path / "parallel_scaling_model.json").read_text())
    assert "train_samples" not in model["assumptions"]
    assert all("train_hours" not in r for r in model["rows"])
    assert "train_hours" not in (tmp_path / "parallel_scaling_model.md").read_text()
