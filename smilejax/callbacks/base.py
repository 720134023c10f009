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

Two rules the built-in callbacks rely on:

- **The last record of a value is the run's value.** ``loop.emit`` hands a record to every callback in
  order; a later record of the same key supersedes an earlier one. ``Evaluate.last`` takes a later
  record of its ``eval/`` keys, and ``Result.last_eval``, the run summary and the tuners read ``last``.
  So a callback that leaves the run in another state than the one last evaluated must emit that state's
  values: early stopping emits its best evaluation's ``eval/`` values when it swaps the best state in.
- **A callback may replace ``loop.state`` in ``step``**, keeping its step counter; the callbacks after
  it see the new state at that step. So one that swaps the state sits before ``Checkpoint`` (the run's
  last checkpoint saves the swapped state; a step already saved is never rewritten), and a state kept
  for later is copied first (the next step donates the current state's buffers).
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
