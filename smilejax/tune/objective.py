"""One trial = one normal smilejax run (``trainer.train``) in its own run directory.

The trial's config is the study's base config with the trial's values as dotted overrides, its run
directory ``STUDY_DIR/trial-XXXX`` and its W&B run in the study's group. A callback of the run's loop
(``Pruning``, shared with vectorised trials) passes each value of the objective metric to the backend
(``report``), which may stop the trial early (pruning) by answering True. Running a trial again on the
same directory resumes it from its newest checkpoint, as ``smilejax train`` does.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from smilejax import config, metrics, preemption, trainer
from smilejax.callbacks import Callback, due
from smilejax.config import Config, ConfigError
from smilejax.tune.space import Space

if TYPE_CHECKING:
    from smilejax.loop import Loop

log = logging.getLogger(__name__)

# report(step, value) -> True when the backend wants the trial stopped (pruned).
Report = Callable[[int, float], bool]


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


class Pruning(Callback):
    """Every ``every`` steps, each trial's value of ``metric`` logged at that step goes to its ``report``
    (kept in ``history``); an answer of True prunes the trial (its index joins ``pruned``; the loop keeps
    the step). At a step budget ``stop_at`` the loop halts, its trials complete."""

    def __init__(self, metric: str, every: int, reports: list[Report | None], stop_at: int | None = None):
        self.metric, self.every, self.reports, self.stop_at = metric, every, reports, stop_at
        self.latest: dict[int, tuple[int, float]] = {}  # trial -> (step, value): the last one logged
        self.history: list[list[tuple[int, float]]] = [[] for _ in reports]
        self.pruned: set[int] = set()

    def metrics(self, loop: Loop, trial: int, step: int, values: dict[str, float]) -> None:
        if self.metric in values:
            self.latest[trial] = (step, float(values[self.metric]))

    def step(self, loop: Loop, step: int) -> None:
        if not due(self.every, step):
            return
        for trial in loop.running():
            logged_at, value = self.latest.get(trial, (None, math.nan))
            if logged_at != step or not math.isfinite(value):
                continue
            self.history[trial].append((step, value))
            report = self.reports[trial]
            if report is not None and report(step, value):
                self.pruned.add(trial)
                loop.end_trial(trial, "pruned", step)
        if self.stop_at is not None and step >= self.stop_at:
            loop.halt()


def run(cfg: Config, metric: str, *, report: Report | None = None, stop_at: int | None = None) -> Outcome:
    """Trains ``cfg`` as one trial. ``stop_at`` ends it after that many steps (a budget) with the full
    run's learning-rate schedule; ``report`` answering True prunes it.

    A bad config or input raises (the study must stop: every trial would fail the same way); a
    numerical failure (NaN loss) or any other error of this trial alone gives a ``failed`` outcome.
    """
    run_dir = Path(cfg.run.dir)
    every = report_every(cfg, metric)
    pruning = Pruning(metric, every, [report], stop_at)
    t0 = time.perf_counter()
    state, step, error = "complete", cfg.run.steps, None
    try:
        result = trainer.train(cfg, callbacks=(pruning,) if every > 0 else ())
        step = result.step
        if result.exit_code == preemption.EXIT_INTERRUPTED:  # Ctrl-C: the trial checkpointed, the study stops
            raise KeyboardInterrupt
        if pruning.pruned:
            state = "pruned"
    except (ConfigError, FileNotFoundError, KeyboardInterrupt):
        raise
    except Exception as err:  # this trial's failure (NaN, out of memory, ...) ends only this trial
        log.warning("trial %s failed: %s: %s", run_dir.name, type(err).__name__, err)
        state, error = "failed", f"{type(err).__name__}: {err}"
    seconds = time.perf_counter() - t0
    value = None if state == "failed" else last_value(run_dir, metric)
    if state == "complete" and value is None:
        raise missing_metric(run_dir, metric)
    history = pruning.history[0]
    if state == "pruned" and history:
        value = history[-1][1]
    return Outcome(state, value, step, seconds, run_dir, history, error)
