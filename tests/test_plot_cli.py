"""``smilejax plot``: training curves of runs drawn from hand-written metrics.jsonl files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from smilejax import cli, training_curves
from tests.conftest import run_cli

pytestmark = pytest.mark.unit  # make test-fast runs it: one device, seconds


def _run(tmp_path, name: str, records: list[dict]):
    run_dir = tmp_path / name
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run_dir


def _train(step: int, loss: float, step_time: float) -> dict:
    return {
        "step": step,
        "loss": loss,
        "lr": 1e-3,
        "samples_per_s": 100 / step_time,
        "step_time_s": step_time,
    }


@pytest.fixture
def two_runs(tmp_path):
    fast = _run(
        tmp_path,
        "fast",
        [
            {**_train(10, 2.0, 0.5), "mfu": 0.06},
            {**_train(20, 1.5, 0.5), "mfu": 0.07},
            {"step": 20, "eval/loss": 1.7, "eval/jet_loss": 0.9},
            {**_train(30, 1.2, 0.5), "mfu": 0.08},
            {"step": 30, "eval/loss": 1.4, "eval/jet_loss": 0.8},
        ],
    )
    slow = _run(
        tmp_path,
        "slow",
        [_train(10, 2.1, 2.0), _train(20, 1.9, 2.0), {"step": 20, "eval/loss": 2.0}],
    )
    return fast, slow


def test_plot_command_writes_the_png(two_runs, tmp_path):
    out = tmp_path / "figs" / "curves.png"
    proc = run_cli("plot", *map(str, two_runs), "--out", str(out), "--x", "time")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"wrote {out}" in proc.stdout


def test_one_panel_per_quantity_and_one_line_per_run(two_runs):
    fig = training_curves.draw(list(two_runs), x="step")
    loss, jet_loss, throughput, mfu = fig.axes
    assert [ax.get_ylabel() for ax in fig.axes[1:]] == ["jet_loss", "throughput [samples/s]", "MFU [%]"]
    assert [t.get_text() for t in loss.get_legend().get_texts()] == ["fast", "slow"]
    styles = [(line.get_color(), line.get_linestyle()) for line in loss.lines]
    assert styles == [("C0", "-"), ("C0", "--"), ("C1", "-"), ("C1", "--")]  # training and eval per run
    np.testing.assert_array_equal(loss.lines[0].get_xdata(), [10, 20, 30])
    np.testing.assert_array_equal(loss.lines[1].get_ydata(), [1.7, 1.4])
    assert [line.get_linestyle() for line in jet_loss.lines] == ["--"]  # evaluated, not logged in training
    assert len(throughput.lines) == 2 and len(mfu.lines) == 1  # "slow" has no MFU
    np.testing.assert_allclose(mfu.lines[0].get_ydata(), [6, 7, 8])
    np.testing.assert_allclose(throughput.lines[1].get_ydata(), [50, 50])
    assert loss.get_xlabel() == "step"


def test_time_axis_sums_the_step_times(two_runs, tmp_path):
    fig = training_curves.draw(list(two_runs), x="time")
    loss = fig.axes[0]
    assert loss.get_xlabel() == "training loop wall time [s]"
    np.testing.assert_allclose(loss.lines[0].get_xdata(), [5, 10, 15])  # 10 steps of 0.5 s each record
    np.testing.assert_allclose(loss.lines[1].get_xdata(), [10, 15])  # evaluations at steps 20, 30
    np.testing.assert_allclose(loss.lines[2].get_xdata(), [20, 40])
    # minutes once the longest run spans two of them: 100 steps of 3 s
    long = _run(tmp_path, "long", [_train(50, 1.0, 3.0), _train(100, 0.9, 3.0)])
    loss = training_curves.draw([long], x="time").axes[0]
    assert loss.get_xlabel() == "training loop wall time [min]"
    np.testing.assert_allclose(loss.lines[0].get_xdata(), [2.5, 5.0])


def test_errors_name_the_run_and_the_problem(two_runs, tmp_path, capsys):
    fast, _ = two_runs
    assert cli.main(["plot", str(fast), str(tmp_path / "nope")]) == 2
    assert "nope: no such run directory" in capsys.readouterr().err
    (tmp_path / "bare").mkdir()
    assert cli.main(["plot", str(tmp_path / "bare")]) == 2
    assert "bare has no metrics.jsonl" in capsys.readouterr().err
    empty = _run(tmp_path, "empty", [])
    assert cli.main(["plot", str(empty)]) == 2
    assert "metrics.jsonl is empty" in capsys.readouterr().err
    (empty / "metrics.jsonl").write_text('{"step": 1, "loss": 2}\n{"step": 2, "lo\n')
    assert cli.main(["plot", str(empty)]) == 2
    assert "metrics.jsonl line 2 is not JSON" in capsys.readouterr().err
    evals_only = _run(tmp_path, "evals", [{"step": 5, "loss": 1.0}])
    assert cli.main(["plot", str(evals_only), "--x", "time"]) == 2
    assert "run evals: no record with step_time_s" in capsys.readouterr().err
    assert (
        not (tmp_path / "training_curves.png").exists() and not (evals_only / "training_curves.png").exists()
    )
