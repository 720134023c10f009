"""The callbacks that log: the window of step means, the NaN stop, the progress bar, metrics.jsonl and the
dashboards (TensorBoard, W&B)."""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from smilejax import metrics
from smilejax.callbacks.base import Callback, due

if TYPE_CHECKING:
    from smilejax.loop import Loop

log = logging.getLogger("smilejax.trainer")  # the loop's messages, whichever callback sends them

_accumulate = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b))


class LogWindow(Callback):
    """Every ``every`` steps (and after the last), the means of the step values over the steps since the
    last record, with the window's throughput, data wait and, where the device's ``peak`` FLOP/s and the
    step's FLOPs are known, its MFU. ``last`` holds the values of the latest record."""

    def __init__(self, every: int, peak: float | None):
        self.every, self.peak = every, peak
        self.last: dict = {}
        self._reset()

    def _reset(self) -> None:
        self.steps, self.samples, self.data_s, self.flops = 0, 0, 0.0, 0.0
        self.sums = None
        self.t0 = time.perf_counter()

    def start(self, loop: Loop) -> None:
        self._reset()  # the first window starts after the first compile

    def step(self, loop: Loop, step: int) -> None:
        unknown = loop.flops is None or self.flops is None
        self.flops = None if unknown else self.flops + loop.flops
        self.sums = loop.out if self.sums is None else _accumulate(self.sums, loop.out)
        self.steps += 1
        self.samples += loop.rows
        self.data_s += loop.data_s
        if due(self.every, step):
            self.flush(loop, step)

    def finish(self, loop: Loop) -> None:
        if self.steps:
            self.flush(loop, loop.step)

    def flush(self, loop: Loop, step: int) -> None:
        sums = jax.device_get(self.sums)
        elapsed = time.perf_counter() - self.t0
        n = self.steps
        values = {k: _scalar(np.asarray(v, np.float64) / n) for k, v in sums.items()}  # per trial
        values.update(
            samples_per_s=self.samples / elapsed,
            step_time_s=elapsed / n,
            data_wait_frac=min(self.data_s / elapsed, 1.0),
        )
        if self.flops and self.peak:
            values["mfu"] = self.flops / elapsed / self.peak
        loop.emit(step, values)
        self.last = values
        self._reset()


def _scalar(x: np.ndarray) -> float | np.ndarray:
    return float(x) if np.ndim(x) == 0 else x


class NanStop(Callback):
    """A non-finite training loss stops the run before its record is written: a plain run raises
    FloatingPointError (its last checkpoint is kept); a trial of a vectorised program (``names``: each
    trial's name) fails alone while the others train on."""

    def __init__(self, names: list[str] | None = None):
        self.names = names

    def metrics(self, loop: Loop, trial: int, step: int, values: dict[str, float]) -> None:
        loss = values.get("loss")
        if loss is None or math.isfinite(loss):
            return
        if self.names is None:
            raise FloatingPointError(f"loss is {loss} at step {step}; stopping (last checkpoint kept)")
        log.warning("trial %s: loss is %s at step %d", self.names[trial], loss, step)
        loop.end_trial(trial, "failed", step)


class Progress(Callback):
    """The console's progress bar, with the latest loss and throughput."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.total, self.initial, self.enabled = total, initial, enabled
        self.bar: tqdm | None = None

    def start(self, loop: Loop) -> None:
        self.bar = tqdm(
            total=self.total,
            initial=self.initial,
            disable=not self.enabled,
            desc="train",
            unit="step",
            dynamic_ncols=True,
        )

    def metrics(self, loop: Loop, trial: int, step: int, values: dict[str, float]) -> None:
        if self.bar is not None and trial == 0 and "loss" in values and "samples_per_s" in values:
            self.bar.set_postfix(loss=f"{values['loss']:.4g}", samples_s=f"{values['samples_per_s']:.4g}")

    def step(self, loop: Loop, step: int) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self, loop: Loop) -> None:
        if self.bar is not None:
            self.bar.close()


class MetricsFile(Callback):
    """Each record into its trial's ``metrics.jsonl`` (the file every study reads)."""

    def __init__(self, files: list[metrics.MetricsLog]):
        self.files = files

    def metrics(self, loop: Loop, trial: int, step: int, values: dict[str, float]) -> None:
        self.files[trial].write({"step": step, **values})

    def close(self, loop: Loop) -> None:
        for f in self.files:
            f.close()


class Dashboards(Callback):
    """Each record into the run's W&B and TensorBoard (``metrics.Loggers``)."""

    def __init__(self, loggers: metrics.Loggers):
        self.loggers = loggers

    def metrics(self, loop: Loop, trial: int, step: int, values: dict[str, float]) -> None:
        self.loggers.log(step, values)

    def close(self, loop: Loop) -> None:
        self.loggers.close()
