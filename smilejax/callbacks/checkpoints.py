"""The callbacks that keep a run resumable: checkpoints, and stop signals that end a run after one."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import jax

from smilejax import checkpoint, preemption
from smilejax.callbacks.base import Callback, due

if TYPE_CHECKING:
    from smilejax.loop import Loop

log = logging.getLogger("smilejax.trainer")


class Checkpoint(Callback):
    """Saves the train state with its input position every ``every`` steps (``<= 0``: only at the end) and
    after the last step, for each trial still training: into ``opened[trial]``, else the ``Checkpointer``
    that ``opener(trial)`` opens at the trial's first save. All are closed with the loop."""

    def __init__(
        self,
        every: int,
        *,
        opened: dict[int, checkpoint.Checkpointer] | None = None,
        opener: Callable[[int], checkpoint.Checkpointer] | None = None,
    ):
        self.every, self.opener = every, opener
        self.opened = dict(opened or {})

    def save(self, loop: Loop, trial: int, *, wait: bool = False) -> None:
        if trial not in self.opened:
            self.opened[trial] = self.opener(trial)
        state = loop.state if not loop.trial_axis else jax.tree.map(lambda x: x[trial], loop.state)
        self.opened[trial].save(state, loop.inputs.position(trial), wait=wait)

    def step(self, loop: Loop, step: int) -> None:
        if due(self.every, step):
            for trial in loop.running():
                self.save(loop, trial)

    def finish(self, loop: Loop) -> None:
        for trial in loop.running():
            self.save(loop, trial, wait=True)

    def close(self, loop: Loop) -> None:
        for ckpt in self.opened.values():
            ckpt.wait()
            ckpt.close()


class Preemption(Callback):
    """Stop requests (the scheduler's signal, Ctrl-C): after a step at which every process agrees that one
    came, the loop stops with its exit status (``preemption``), and the final log and checkpoint run."""

    def __init__(self, check_every: int, last_step: int, *, lead: bool):
        self.check_every, self.last_step, self.lead = check_every, last_step, lead
        self.watch: preemption.StopWatch | None = None

    def start(self, loop: Loop) -> None:
        self.watch = preemption.StopWatch(self.check_every, announce=self.lead)

    def step(self, loop: Loop, step: int) -> None:
        if step < self.last_step and self.watch.should_stop(step):
            if self.lead:
                log.warning("stop requested (%s): checkpointing step %d", self.watch.requested, step)
            loop.stop(self.watch.exit_code)

    def close(self, loop: Loop) -> None:
        if self.watch is not None:
            self.watch.restore()
