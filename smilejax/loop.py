"""The training loop: steps a program over its batches and calls its callbacks (``smilejax.callbacks``).

``trainer.train`` runs it for one run, ``tune.vectorised.train`` for K trials in one program; everything
but the stepping (logging, evaluation, checkpoints, the profiler, stop signals, the NaN stop, pruning) is
a callback, called at the points ``callbacks.base`` names, as Levanter's trainer hooks are.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from typing import Any, Protocol

import jax
import numpy as np

from smilejax import steps
from smilejax.callbacks.base import Callback
from smilejax.config import Config
from smilejax.inputs import packing


def to_global(sharding: jax.sharding.Sharding, local: dict) -> dict:
    """This process's rows → one global jax.Array per key (each process feeds an equal shard)."""

    def put(x: np.ndarray) -> jax.Array:
        shape = (x.shape[0] * jax.process_count(), *x.shape[1:])
        return jax.make_array_from_process_local_data(sharding, x, shape)

    return {k: put(v) for k, v in local.items()}


class Inputs(Protocol):
    """The loop's training batches: ``next`` puts the next one on the devices; ``rows`` counts a batch's
    examples (one trial's); ``position(trial)`` is the iterator whose state a checkpoint saves."""

    def next(self) -> dict: ...

    def rows(self, batch: dict) -> int: ...

    def position(self, trial: int) -> Any: ...


class Batches:
    """A run's batches: this process's rows of each, one global array per key (``to_global``)."""

    def __init__(self, iterator: Any, sharding: jax.sharding.Sharding):
        self.iterator, self.sharding = iterator, sharding
        self.examples: dict[int, int] = {}  # the last batch's examples, by id of the global batch

    def next(self) -> dict:
        local = next(self.iterator)
        batch = to_global(self.sharding, local)
        # a packed row holds several examples; every process holds an equal share of them
        self.examples = {id(batch): packing.examples(local) * jax.process_count()}
        return batch

    def rows(self, batch: dict) -> int:
        if id(batch) in self.examples:
            return self.examples[id(batch)]
        return next(iter(batch.values())).shape[0]

    def position(self, trial: int) -> Any:
        return self.iterator


@dataclasses.dataclass
class Trial:
    """Where one trial of the loop stands (a plain run is one trial): an ``Outcome``'s states."""

    state: str = "complete"  # training, or done; "pruned" or "failed" once a callback ended it
    stopped_at: int | None = None


class Loop:
    """Steps ``program`` from ``state`` over ``inputs``, each batch shape's step compiled ahead of time
    (with its FLOPs when ``count_flops``), and calls ``callbacks`` at the points ``callbacks.base``
    names. With ``trial_axis`` (K), the state holds K vectorised trials and each emitted record goes to
    every trial still training. A callback ends the loop early with ``stop`` (after this step, the final
    log and checkpoint still run), ``halt`` (at once), or ``end_trial`` (of the last trial training)."""

    def __init__(
        self,
        cfg: Config,
        program: steps.Program,
        inputs: Inputs,
        state: steps.TrainState,
        callbacks: list[Callback],
        *,
        trial_axis: int = 0,
        count_flops: bool = False,
    ):
        self.cfg, self.program, self.inputs, self.state = cfg, program, inputs, state
        self.callbacks = list(callbacks)
        self.trial_axis = trial_axis
        self.trials = [Trial() for _ in range(max(trial_axis, 1))]
        self.step = int(np.max(jax.device_get(state.step)))
        self.out: dict | None = None  # the last step's values, on the devices
        self.rows, self.data_s, self.flops = 0, 0.0, None  # the last step's examples, data wait, FLOPs
        self.exit_code, self.halted, self.finished = 0, False, False
        self.stopping = False  # a callback asked to stop after this step (exit_code 0: a clean end)
        self.count_flops = count_flops
        self.compiled: dict[tuple, tuple[Callable, float | None]] = {}
        self.lowered: dict[tuple, jax.stages.Lowered] = {}  # kept for the profiler's traceable compile

    def running(self) -> list[int]:
        return [i for i, t in enumerate(self.trials) if t.state == "complete"]

    def end_trial(self, trial: int, state: str, step: int) -> None:
        self.trials[trial] = Trial(state, step)

    def stop(self, exit_code: int) -> None:
        self.exit_code, self.stopping = exit_code, True

    def halt(self) -> None:
        self.halted = True

    def emit(self, step: int, values: dict) -> None:
        """``values`` (one per trial, or one for all) to each callback, per trial still training."""
        for trial in self.running():
            one = {k: float(v[trial] if np.ndim(v) else v) for k, v in values.items()}
            for callback in self.callbacks:
                callback.metrics(self, trial, step, one)
                if self.trials[trial].state != "complete":
                    break

    def compile_for(self, batch: dict) -> tuple[tuple, Callable, float | None]:
        """(the batch's shapes, the step compiled for them, its FLOPs)."""
        shapes = tuple((k, v.shape) for k, v in sorted(batch.items()))
        if shapes not in self.compiled:
            lowered = self.program.train_step.lower(self.state, batch)
            if self.cfg.run.profile_at >= 0:
                self.lowered[shapes] = lowered
            flops = self.program.step_flops(batch) if self.count_flops else None
            self.compiled[shapes] = lowered.compile(), flops
        return shapes, *self.compiled[shapes]

    def run(self, last_step: int) -> None:
        """Trains to ``last_step``; every callback is closed however the loop ends."""
        with contextlib.ExitStack() as closing:
            for callback in self.callbacks:
                closing.callback(callback.close, self)
            pending: dict | None = self.inputs.next()
            self.compile_for(pending)
            for callback in self.callbacks:
                callback.start(self)
            for step in range(self.step + 1, last_step + 1):
                if self.stopping:  # asked after the last step (or by a callback's start: nothing to train)
                    break
                t_data = time.perf_counter()
                batch = pending if pending is not None else self.inputs.next()
                pending = None
                self.data_s = time.perf_counter() - t_data
                shapes, fn, self.flops = self.compile_for(batch)
                for callback in self.callbacks:
                    fn = callback.wrap(self, step, shapes, fn)
                self.state, self.out = fn(self.state, batch)
                self.step, self.rows = step, self.inputs.rows(batch)
                for callback in self.callbacks:
                    callback.step(self, step)
                if self.halted or not self.running():
                    return
            for callback in self.callbacks:
                callback.finish(self)
            self.finished = True
