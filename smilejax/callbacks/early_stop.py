"""Early stopping: a run ends when its validation loss stops improving, and keeps its best parameters.

On a small fixed training set (a simulation budget, a small labelled sample) a fixed step count either
stops before the model has fit or trains on into over-fitting. ``train.early_stop_patience`` (0: off,
the default) hands the stop to the validation loss instead, as `sbi`'s NPE trainer does (its
``stop_after_epochs``): after each evaluation (``run.eval_every``; ``eval/loss`` over the same held-out
batches each time), a loss lower than the best so far by more than ``train.early_stop_min_delta`` is the
new best and the train state is copied; after ``patience`` evaluations in a row without one the loop stops
(the final log and checkpoint still run). When the run ends, by the stop or by running out its steps, its
state becomes the best one within that last step, before that step's checkpoint, so the checkpoint,
export and ``smilejax eval`` see the best parameters (sbi likewise loads its best validation weights at the
end), and a record of the best evaluation's ``eval/`` values with ``early_stop/best_step`` makes them the
run's last (what ``Result.last_eval``, the run summary and a tuner read). The step counter is not rewound.

``early_stop.json`` in the run directory marks a run that stopped early: run again, it trains no further.
A run ended by a stop signal (preemption) or a non-finite loss checkpoints its latest state, not the best,
and a resumed run counts its evaluations and best value afresh (the best state is not checkpointed).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from smilejax.callbacks.base import Callback
from smilejax.typed import ConfigError

if TYPE_CHECKING:
    from smilejax.config import Config
    from smilejax.loop import Loop

log = logging.getLogger("smilejax.trainer")

METRIC = "eval/loss"
MARKER = "early_stop.json"


def _copy(state: Any) -> Any:
    """A copy in new buffers: the next step donates the state's own (``train.donate``)."""
    return jax.tree.map(lambda x: jnp.array(x, copy=True), state)


class EarlyStop(Callback):
    """Stops the loop after ``patience`` evaluations without a ``metric`` lower than the best by more than
    ``min_delta``; at the end the loop's state holds the best evaluation's parameters. ``stopped_at``: the
    step it stopped at (None: the run ran out its steps); ``best_step``, ``best``: the best evaluation.
    ``run_dir``: where ``early_stop.json`` marks a stopped run (None: not marked)."""

    def __init__(
        self, patience: int, min_delta: float = 0.0, metric: str = METRIC, run_dir: Path | None = None
    ):
        if patience < 1 or min_delta < 0:
            raise ValueError(f"early stopping: patience {patience} must be >= 1, min_delta {min_delta} >= 0")
        self.patience, self.min_delta, self.metric = patience, min_delta, metric
        self.marker = None if run_dir is None else Path(run_dir) / MARKER
        self.best = math.inf
        self.best_step: int | None = None
        self.best_state: Any = None
        self.best_values: dict[str, float] = {}  # the best evaluation's eval/ values, re-emitted at the end
        self.waited = 0
        self.stopped_at: int | None = None
        self.kept = False

    def start(self, loop: Loop) -> None:
        if loop.trial_axis:
            raise ValueError("early stopping is per run; a program of vectorised trials cannot use it")
        if self.marker is not None and self.marker.exists():  # this run already stopped: train no further
            done = json.loads(self.marker.read_text())
            self.stopped_at, self.kept = done["stopped_at"], True
            log.info(
                "early stopping ended this run at step %d (%s); nothing to train", self.stopped_at, MARKER
            )
            loop.stop(0)

    def metrics(self, loop: Loop, trial: int, step: int, values: dict[str, float]) -> None:
        value = values.get(self.metric)
        if value is None or self.stopped_at is not None or self.kept:
            return
        if value < self.best - self.min_delta:
            self.best, self.best_step, self.waited = value, step, 0
            self.best_values = {k: v for k, v in values.items() if k.startswith("eval/")}
            self.best_state = _copy(loop.state)
            return
        self.waited += 1
        if self.waited >= self.patience and step < loop.cfg.run.steps:
            self.stopped_at = step
            if jax.process_index() == 0:
                log.info(
                    "early stop at step %d: %s has not improved on %.5g (step %d) in %d evaluations",
                    step,
                    self.metric,
                    self.best,
                    self.best_step,
                    self.waited,
                )
            loop.stop(0)

    def step(self, loop: Loop, step: int) -> None:
        # the run's last step: the best state goes in now, before this step's checkpoint saves the state
        # (a checkpoint of the step already saved is never rewritten)
        if step == self.stopped_at or step == loop.cfg.run.steps:
            self._keep_best(loop)

    def finish(self, loop: Loop) -> None:
        """Not when a stop signal ended the loop (the run resumes from its latest state)."""
        if loop.exit_code == 0 or self.stopped_at is not None:
            self._keep_best(loop)
        self.best_state = None

    def _keep_best(self, loop: Loop) -> None:
        if self.kept:
            return
        self.kept = True
        if self.best_state is not None and self.best_step != loop.step:
            loop.state = self.best_state.replace(step=loop.state.step)
            if jax.process_index() == 0:
                log.info("keeping step %d's parameters (%s %.5g)", self.best_step, self.metric, self.best)
        self.best_state = None
        if self.best_step is not None:
            best = {**self.best_values, self.metric: self.best, "early_stop/best_step": float(self.best_step)}
            loop.emit(loop.step, best)
        if self.stopped_at is not None and self.marker is not None and jax.process_index() == 0:
            self.marker.write_text(json.dumps({"stopped_at": self.stopped_at, "best_step": self.best_step}))


def from_config(cfg: Config, run_dir: Path | None = None) -> list[Callback]:
    """The run's early stop (a list of none or one) from ``train.early_stop_patience`` and
    ``train.early_stop_min_delta``; raises ConfigError where the run never evaluates."""
    patience, min_delta = cfg.train.early_stop_patience, cfg.train.early_stop_min_delta
    if patience <= 0:
        return []
    if cfg.run.eval_every <= 0:
        raise ConfigError(
            f"train.early_stop_patience={patience} needs evaluations: set run.eval_every (steps between "
            "evaluations of eval/loss) to a positive number"
        )
    if min_delta < 0:
        raise ConfigError(f"train.early_stop_min_delta must be >= 0, got {min_delta}")
    return [EarlyStop(patience, min_delta, run_dir=run_dir)]
