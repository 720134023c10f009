"""Training curves of one or several runs, from their ``metrics.jsonl``: loss (training and evaluation),
the other evaluation metrics, throughput and MFU, against the step or the training time.

One panel per quantity, one colour per run (named in the legend by its directory). A metric's panel
draws its training value (solid) where the training records hold it and its evaluation (dashed). The
time axis is the training loop's wall time, summed from the records (``step_time_s`` times the steps
each covers): a record's window holds the evaluations, checkpoint saves and compilations since the one
before, but not the start-up before the first step (restore, first compilation).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from smilejax import host, metrics, plotting

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

X_AXES = ("step", "time")
ToX = Callable[[list[dict]], np.ndarray]  # a run's records -> their x values
TRAIN_PANELS = {  # training-record fields drawn after the evaluation metrics: (y label, scale)
    "samples_per_s": ("throughput [samples/s]", 1.0),
    "mfu": ("MFU [%]", 100.0),
}


def read_run(run_dir: str | Path) -> list[dict]:
    """The records of ``run_dir/metrics.jsonl`` in file order; errors name the run and the problem."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no metrics.jsonl (not a smilejax run directory?)")
    records = metrics.read(path)
    if not records:
        raise ValueError(f"{path} is empty: the run has not logged a step yet (it logs every run.log_every)")
    return records


def training_time(records: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(steps, cumulative seconds) of the training records: each adds its ``step_time_s`` times the
    steps since the record before it."""
    train = sorted((r["step"], r["step_time_s"]) for r in records if "step_time_s" in r)
    if not train:
        raise ValueError("no record with step_time_s to measure the training time with")
    steps = np.array([s for s, _ in train], np.float64)
    covered = np.diff(steps, prepend=0.0)
    return steps, np.cumsum(covered * np.array([t for _, t in train]))


def draw(run_dirs: list[str | Path], x: str = "step") -> Figure:
    """The curves of ``run_dirs`` against ``x`` ("step" or "time"), one panel per quantity."""
    if x not in X_AXES:
        raise ValueError(f"x must be one of {X_AXES}, got {x!r}")
    runs = {_name(Path(d), run_dirs): read_run(d) for d in run_dirs}
    to_x, x_label = _x_axis(runs, x)
    evaluated = {
        k.removeprefix("eval/") for rs in runs.values() for r in rs for k in r if k.startswith("eval/")
    }
    panels = [
        "loss",
        *sorted(evaluated - {"loss"}),
        *(k for k in TRAIN_PANELS if any(k in r for rs in runs.values() for r in rs)),
    ]

    plt = _pyplot()
    cols = min(2, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.remove()
    for ax, panel in zip(axes.flat, panels, strict=False):
        for colour, (name, records) in zip(_colours(len(runs)), runs.items(), strict=True):
            scale = TRAIN_PANELS.get(panel, ("", 1.0))[1]
            _line(ax, records, panel, to_x[name], colour, "-", name, scale)
            if panel not in TRAIN_PANELS:
                _line(ax, records, f"eval/{panel}", to_x[name], colour, "--", None)
        ax.set_xlabel(x_label)
        ax.set_ylabel(TRAIN_PANELS.get(panel, (panel,))[0])
        ax.grid(alpha=0.3)
    loss = axes.flat[0]
    for ax in axes.flat[1 : len(panels)]:  # the loss panel holds every run: its span is the runs'
        ax.set_xlim(loss.get_xlim())
    loss.set_ylabel("loss (solid: training, dashed: evaluation)")
    loss.legend(fontsize="small")
    fig.tight_layout()
    return fig


def write(run_dirs: list[str | Path], out: str | Path, x: str = "step") -> Figure:
    """``draw`` saved as ``out`` (folders created); returns the (closed) figure."""
    fig = draw(run_dirs, x)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    _pyplot().close(fig)
    return fig


def _pyplot():
    plt = plotting.pyplot("of the training curves")
    if plt is None:
        raise RuntimeError(f"drawing training curves needs matplotlib ({host.pip_install('matplotlib')})")
    return plt


def _x_axis(runs: dict[str, list[dict]], x: str) -> tuple[dict[str, ToX], str]:
    """Per run a function records -> x values, and the axis label (time in s, min or h by its span)."""
    if x == "step":
        return {name: (lambda rs: np.array([r["step"] for r in rs], np.float64)) for name in runs}, "step"
    clocks = {}
    for name, records in runs.items():
        try:
            clocks[name] = training_time(records)
        except ValueError as err:
            raise ValueError(f"run {name}: {err}; draw it against --x step") from None
    longest = max(t[-1] for _, t in clocks.values())
    unit, seconds = next(
        (u, s) for u, s in (("h", 3600.0), ("min", 60.0), ("s", 1.0)) if longest >= 2 * s or s == 1
    )

    def clock(steps: np.ndarray, times: np.ndarray) -> ToX:
        return lambda rs: np.interp([r["step"] for r in rs], steps, times) / seconds

    return {name: clock(*clocks[name]) for name in runs}, f"training loop wall time [{unit}]"


def _line(
    ax: Axes,
    records: list[dict],
    key: str,
    to_x: ToX,
    colour: str,
    style: str,
    label: str | None,
    scale: float = 1.0,
) -> None:
    """The values of ``key`` (records without it skipped) against their x; nothing when no record has it."""
    have = [r for r in records if isinstance(r.get(key), int | float)]
    if have:
        values = np.array([r[key] for r in have], np.float64) * scale
        ax.plot(to_x(have), values, style, color=colour, label=label)


def _name(run_dir: Path, run_dirs: list) -> str:
    """The run's directory name, or its path when another run of the list has the same name."""
    same = [d for d in run_dirs if Path(d).name == run_dir.name]
    return run_dir.name if len(same) == 1 else str(run_dir)


def _colours(n: int) -> list[str]:
    return [f"C{i % 10}" for i in range(n)]
