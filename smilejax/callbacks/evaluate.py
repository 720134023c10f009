"""The evaluation callback: every ``run.eval_every`` steps, the eval values of the current state."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from smilejax.callbacks.base import Callback, due

if TYPE_CHECKING:
    from smilejax.loop import Loop


class Evaluate(Callback):
    """Every ``every`` steps, ``evaluation(program, state)`` (``trainer.Evaluation``: the same held-out
    batches each time) as a record of ``eval/`` values; ``last`` holds the latest."""

    def __init__(self, evaluation: Callable[[Any, Any], dict], every: int):
        self.evaluation, self.every = evaluation, every
        self.last: dict = {}

    def step(self, loop: Loop, step: int) -> None:
        if due(self.every, step):
            self.last = self.evaluation(loop.program, loop.state)
            loop.emit(step, self.last)

    def metrics(self, loop: Loop, trial: int, step: int, values: dict[str, float]) -> None:
        # a later record of these values replaces them (early stopping's kept state: its best eval/loss)
        if not loop.trial_axis:
            self.last.update({k: v for k, v in values.items() if k in self.last})
