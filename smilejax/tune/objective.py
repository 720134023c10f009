"""One trial = one normal smilejax run (``trainer.train``) in its own run directory.

The trial's config is the study's base config with the trial's values as dotted overrides, its run
directory ``STUDY_DIR/trial-XXXX`` and its W&B run in the study's group. The run hands each logged
value of the objective metric to the trial (``trainer.train(on_metrics=...)``), and an extra hook passes
it to the backend (``report``), which may stop the trial early (pruning) by answering True. Running a
trial again on the same directory resumes it from its newest checkpoint, as ``smilejax train`` does.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from smilejax import config, metrics, preemption, trainer
from smilejax.config import Config, ConfigError
from smilejax.tune.space import Space

log = logging.getLogger(__name__)

# report(step, value) -> True when the backend wants the trial stopped (pruned).
Report = Callable[[int, float], bool]


class _Stop(Exception):
    """Raised from the report hook to leave ``train()`` early; its ``finally`` closes the run cleanly."""

    def __init__(self, step: int, pruned: bool):
        super().__init__(step)
        self.step, self.pruned = step, pruned


@dataclass
class Outcome:
    """What one trial produced."""

    state: Literal["complete", "pruned", "failed"]
    value: float | None  # the objective: its last logged value
    step: int  # steps trained (the compute a trial cost)
    seconds: float
    run_dir: Path
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, value) as reported
    error: str | None = None


def trial_config(
    base: dict, space: Space, values: dict[str, Any], run_dir: Path, *, study: str, overrides: list[str] = ()
) -> Config:
    """The study's base config with the trial's values, run directory and W&B grouping."""
    return config.load(
        base,
        [
            *space.overrides(values),
            *overrides,
            f"run.dir={run_dir}",
            f"logging.group={study}",
            f"logging.name={study}-{run_dir.name}",
            "logging.progress=false",  # the study shows one bar over trials
        ],
    )


def report_every(cfg: Config, metric: str) -> int:
    """Steps between two values of ``metric``: evaluation metrics come every ``run.eval_every``."""
    return cfg.run.eval_every if metric.startswith("eval/") else cfg.run.log_every


def last_value(run_dir: Path, metric: str) -> float | None:
    records = metrics.read(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    found = [r for r in records if metric in r]
    return float(found[-1][metric]) if found else None


def missing_metric(run_dir: Path, metric: str) -> ConfigError:
    path = run_dir / "metrics.jsonl"
    logged = sorted({k for r in metrics.read(path) for k in r if k != "step"}) if path.exists() else []
    listing = ", ".join(logged) or "none"
    return ConfigError(f"objective metric {metric!r} was never logged in {path}; logged metrics: {listing}")


def run(cfg: Config, metric: str, *, report: Report | None = None, stop_at: int | None = None) -> Outcome:
    """Trains ``cfg`` as one trial. ``stop_at`` ends it after that many steps (a budget) with the full
    run's learning-rate schedule; ``report`` answering True prunes it.

    A bad config or input raises (the study must stop: every trial would fail the same way); a
    numerical failure (NaN loss) or any other error of this trial alone gives a ``failed`` outcome.
    """
    run_dir = Path(cfg.run.dir)
    history: list[tuple[int, float]] = []
    every = report_every(cfg, metric)
    t0 = time.perf_counter()

    logged: dict[int, float] = {}

    def on_metrics(step: int, values: dict) -> None:
        if metric in values:
            logged[step] = float(values[metric])

    def hook(step: int) -> None:
        value = logged.get(step)
        if value is not None and math.isfinite(value):
            history.append((step, value))
            if report is not None and report(step, value):
                raise _Stop(step, pruned=True)
        if stop_at is not None and step >= stop_at:
            raise _Stop(step, pruned=False)

    hooks = (trainer.Hook(every, hook),) if every > 0 else ()
    state, step, error = "complete", cfg.run.steps, None
    try:
        result = trainer.train(cfg, extra_hooks=hooks, on_metrics=on_metrics)
        step = result.step
        if result.exit_code == preemption.EXIT_INTERRUPTED:  # Ctrl-C: the trial checkpointed, the study stops
            raise KeyboardInterrupt
    except _Stop as stop:
        state, step = ("pruned" if stop.pruned else "complete"), stop.step
    except (ConfigError, FileNotFoundError, KeyboardInterrupt):
        raise
    except Exception as err:  # this trial's failure (NaN, out of memory, ...) ends only this trial
        log.warning("trial %s failed: %s: %s", run_dir.name, type(err).__name__, err)
        state, error = "failed", f"{type(err).__name__}: {err}"
    seconds = time.perf_counter() - t0
    value = None if state == "failed" else last_value(run_dir, metric)
    if state == "complete" and value is None:
        raise missing_metric(run_dir, metric)
    if state == "pruned" and history:
        value = history[-1][1]
    return Outcome(state, value, step, seconds, run_dir, history, error)
