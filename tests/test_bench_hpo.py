"""`smilejax bench hpo`'s vectorised study: what its sequential baseline measures, what it extrapolates,
and that both sides checkpoint alike."""

from __future__ import annotations

import json
import statistics

import pytest
import yaml

from smilejax import cli


@pytest.fixture(scope="module")
def vectorised(tmp_path_factory):
    """The throughput study on the toy model: K = 1 and 2, three timed separate runs."""
    from tests import toy

    root = tmp_path_factory.mktemp("bench_hpo")
    cfg = root / "toy.yaml"
    cfg.write_text(yaml.safe_dump(toy.config()))
    out = root / "out"
    flags = ["--skip-search", "--vectorise", "1,2", "--vectorise-steps", "4", "--eval-every", "2"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SMILEJAX_NO_DISTRIBUTED", "1")  # set by the bench's worker start; restored after
        assert cli.main(["bench", "hpo", str(cfg), *flags, "--sequential-runs", "3", "--out", str(out)]) == 0
    return out, json.loads((out / "hpo_vectorised.json").read_text())


def test_sequential_time_is_labelled_an_extrapolation_of_the_runs_timed(vectorised):
    out, result = vectorised
    timed = result["sequential_runs_s"]
    assert len(timed) == 3 and all(s > 0 for s in timed)
    per_run = statistics.fmean(timed)
    assert [r["k"] for r in result["rows"]] == [1, 2]
    for row in result["rows"]:
        assert "sequential_s" not in row
        assert row["sequential_s_extrapolated"] == pytest.approx(row["k"] * per_run)
        assert row["sequential_trials_per_s"] == pytest.approx(1 / per_run)
        assert row["speedup"] == pytest.approx(row["trials_per_s"] / row["sequential_trials_per_s"])
        assert row["program_s"] == pytest.approx(row["k"] / row["trials_per_s"])
    # The assumption travels with the numbers: in the JSON and under the markdown table.
    (note,) = result["notes"]
    assert "3 separate runs timed" in note and "not measured for K runs" in note
    table = (out / "hpo_vectorised.md").read_text()
    assert "| sequential_s_extrapolated |" in table and note in table


def test_both_sides_keep_only_a_final_checkpoint(vectorised):
    out, _ = vectorised
    runs = out / "vectorised"
    separate = sorted((runs / "sequential").iterdir())
    together = sorted((runs / "k2").iterdir())
    assert len(separate) == 3 and len(together) == 2
    for run_dir in [*separate, *together]:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert saved["run"]["checkpoint_every"] == 0, run_dir  # no periodic checkpoints
        steps = [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()]
        assert steps == ["4"], run_dir  # the final one, on both sides


def test_sequential_runs_must_be_positive(tmp_path, capsys):
    with pytest.raises(SystemExit, match="--sequential-runs"):
        cli.main(["bench", "hpo", "--skip-search", "--sequential-runs", "0", "--out", str(tmp_path)])
