"""What a callback is: one concern of the training loop (``smilejax.loop``), called at fixed points.

In the style of Levanter's trainer hooks: the loop only steps the program; logging, evaluation,
checkpoints, the profiler, stop signals and pruning are objects it calls, in the order it was given them:

- ``start`` once, after the first batch's program is compiled and before the first step;
- ``wrap`` before each step, to swap the step's compiled program (the profiler's traceable one);
- ``step`` after each step (``loop.state`` is the new state, ``loop.out`` its device values);
- ``metrics`` for each record of values the loop emits (training means, evaluations), once per trial
  still training: ``trial`` indexes the trial axis of a vectorised program (0 for a plain run);
- ``finish`` after the last step of a run that ran out its steps or was stopped by a signal (not after a
  failure, nor after a callback halted it);
- ``close`` always, in reverse order, as the loop ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from smilejax.loop import Loop


class Callback:
    """A no-op at every point; subclasses override the points they need."""

    def start(self, loop: Loop) -> None:
        pass

    def wrap(self, loop: Loop, step: int, shapes: tuple, fn: Callable) -> Callable:
        return fn

    def step(self, loop: Loop, step: int) -> None:
        pass

    def metrics(self, loop: Loop, trial: int, step: int, values: dict[str, float]) -> None:
        pass

    def finish(self, loop: Loop) -> None:
        pass

    def close(self, loop: Loop) -> None:
        pass


def due(every: int, step: int) -> bool:
    """Whether a callback that acts every ``every`` steps acts after ``step`` (``every <= 0``: never)."""
    return every > 0 and step % every == 0
