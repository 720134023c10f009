"""The profiler window: ``run.profile_steps`` training steps traced and broken down (``xla.profile``)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import jax

from smilejax.callbacks.base import Callback
from smilejax.xla import profile

if TYPE_CHECKING:
    from smilejax.loop import Loop

log = logging.getLogger("smilejax.trainer")


def _shape_label(shapes: tuple) -> str:
    """A compiled program's batch shapes as a profile names them: the largest-rank array, "4000x24x21"."""
    return "x".join(map(str, max((shape for _, shape in shapes), key=len)))


class Profile(Callback):
    """Traces the ``steps`` steps after step ``at`` into ``RUN_DIR/profile`` and writes their breakdown
    (``profile.json``, ``.md``) from process 0. Inside the window each step runs its traceable compile
    (on a GPU, without CUDA graphs, so that the trace times each kernel; the run's speed stays the
    default's); a run that ends inside the window closes it early."""

    def __init__(self, at: int, steps: int, run_dir: Path, *, lead: bool):
        self.at, self.steps, self.out, self.lead = at, steps, run_dir / "profile", lead
        self.on, self.first, self.last = False, 0, 0
        self.shapes: set[tuple] = set()  # the batch shapes (programs) the window ran
        self.traceable: dict[tuple, Callable] = {}

    def _traceable(self, loop: Loop, shapes: tuple) -> Callable:
        if shapes not in self.traceable:
            self.traceable[shapes] = profile.compile_traceable(loop.lowered[shapes], loop.compiled[shapes][0])
        return self.traceable[shapes]

    def _begin(self, loop: Loop, first: int) -> None:
        for shapes in loop.compiled:  # the shapes seen so far compile outside the trace
            self._traceable(loop, shapes)
        jax.block_until_ready(loop.state)  # the window holds its own steps only
        jax.profiler.start_trace(str(self.out))
        self.on, self.first, self.last, self.shapes = True, first, first - 1, set()

    def _end(self, loop: Loop) -> None:
        try:
            jax.block_until_ready(loop.state)
        finally:
            jax.profiler.stop_trace()
            self.on = False
        if self.lead and self.shapes:  # bucketed batches: one compiled program per width
            programs = {_shape_label(shapes): self.traceable[shapes] for shapes in self.shapes}
            title = f"training steps {self.first}-{self.last}"
            profile.write_summary(self.out, programs, self.last - self.first + 1, title)

    def start(self, loop: Loop) -> None:
        if self.at == loop.step:  # profile_at=0: from the first step
            self._begin(loop, loop.step + 1)

    def wrap(self, loop: Loop, step: int, shapes: tuple, fn: Callable) -> Callable:
        if not self.on:
            return fn
        self.shapes.add(shapes)
        self.last = step
        return self._traceable(loop, shapes)

    def step(self, loop: Loop, step: int) -> None:
        if step == self.at:
            self._begin(loop, step + 1)
        elif step == self.at + self.steps and self.on:
            self._end(loop)

    def close(self, loop: Loop) -> None:
        if self.on:  # the run ended (finished, preempted, failed) inside the window
            log.warning("the profiler window ended early, after step %s", self.last)
            with contextlib.suppress(Exception):  # a failed run's own error matters more
                self._end(loop)
