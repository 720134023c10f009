"""The callback of ``bench convergence``: at step 0 and every ``every`` steps, validation loss and the
family's quality metric on the same held-out batches, with the jets seen and the training seconds so far.

Training seconds are wall time of the steps only: the loop is blocked on its state before each
evaluation (so on a GPU they are the device's time, dispatch included), and the evaluations and every
compilation (new batch shapes, FLOP counts) are left out; compilation seconds are kept apart.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from flax import nnx

from smilejax.callbacks.base import Callback, due
from smilejax.inputs import packing
from smilejax.loop import to_global

if TYPE_CHECKING:
    from smilejax.config import Config
    from smilejax.loop import Loop
    from smilejax.models.spec import Convergence

_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_compile_s = [0.0]  # seconds JAX spent compiling in this process, as its monitoring events report them


def _on_event(event: str, seconds: float, **_: Any) -> None:
    if event in _COMPILE_EVENTS:
        _compile_s[0] += seconds


jax.monitoring.register_event_duration_secs_listener(_on_event)


class Probe(Callback):
    """Records ``points``: one dict per evaluation (step, jets, train_s, compile_s, val_loss, eval values,
    quality values)."""

    def __init__(self, cfg: Config, hook: Convergence, every: int):
        from smilejax import trainer

        self.cfg, self.hook, self.every = cfg, hook, every
        self.evaluation = trainer.Evaluation(cfg)  # the same held-out batches at every evaluation
        self.points: list[dict] = []
        self.jets, self.train_s, self.compile_s = 0, 0.0, 0.0
        self._predict = None

    def start(self, loop: Loop) -> None:
        # after the first batch shape's compilation: the initial weights' point (step 0 unless resumed),
        # then the clock starts
        self._record(loop, loop.step)

    def _mark(self) -> None:
        self._t0, self._c0 = time.perf_counter(), _compile_s[0]

    def step(self, loop: Loop, step: int) -> None:
        self.jets += loop.rows  # examples (a packed batch's jets, not its rows)
        if due(self.every, step) or step == self.cfg.run.steps:
            if self.points and self.points[-1]["step"] == step:
                return
            jax.block_until_ready(loop.state)
            compiled = _compile_s[0] - self._c0
            self.compile_s += compiled
            self.train_s += time.perf_counter() - self._t0 - compiled
            self._record(loop, step)

    def _record(self, loop: Loop, step: int) -> None:
        """The point of ``step``: evaluations, then the clock restarts."""
        point = {"step": step, "jets": self.jets, "train_s": self.train_s, "compile_s": self.compile_s}
        t_eval = time.perf_counter()
        values, quality = self.evaluate(loop)
        point["val_loss"] = values.pop("eval/loss")
        point.update({"val_" + k.removeprefix("eval/"): v for k, v in values.items()})
        point.update(quality)
        point["eval_s"] = time.perf_counter() - t_eval
        self.points.append(point)
        record = {"eval/loss": point["val_loss"], **{f"eval/{k}": v for k, v in quality.items()}}
        loop.emit(step, {**record, "jets_seen": float(self.jets)})  # into metrics.jsonl too
        self._mark()

    def _predictor(self, program) -> Any:
        """The family's ``predict`` with the model in eval mode, jitted once."""
        if self._predict is None:
            graphdef, predict = program.graphdef, self.hook.predict

            def forward(params, rest, batch):
                model = nnx.merge(graphdef, params, rest)
                model.eval()
                return predict(model, batch)

            self._predict = jax.jit(forward)
        return self._predict

    def evaluate(self, loop: Loop) -> tuple[dict[str, float], dict[str, float]]:
        """The eval values (means over the held-out batches, summed as ``trainer.evaluate`` sums them)
        and the family's quality metric, from one read of each held-out batch: both run on the same
        batch on the devices."""
        program, state = loop.program, loop.state
        predict = self._predictor(program)
        batches = self.evaluation.restart()
        scores, outs = [], []
        for _ in range(self.cfg.run.eval_steps):
            batch = next(batches)
            if packing.is_packed(batch):
                raise ValueError("bench convergence: held-out batches are packed; they must stay unpacked")
            batch = to_global(program.eval_batch_sharding, batch)
            scores.append(program.eval_step(state, batch))
            outs.append(predict(state.params, state.rest, batch))
        scores, outs = jax.device_get((scores, outs))  # one fetch, after every batch ran
        from smilejax import trainer

        values = trainer.eval_means(scores)  # summed as trainer.evaluate sums them
        joined = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
        return values, {k: float(v) for k, v in self.hook.quality(joined).items()}
