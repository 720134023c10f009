"""The contract of ``callbacks.base`` that evaluation and early stopping share: the last record of a value
is the run's value, and a state swapped in at the last step keeps its step counter."""

from __future__ import annotations

from types import SimpleNamespace

import jax.numpy as jnp
from flax import struct

from smilejax.callbacks.base import Callback
from smilejax.callbacks.early_stop import EarlyStop
from smilejax.callbacks.evaluate import Evaluate
from smilejax.loop import Loop

LOSSES = {1: 1.0, 2: 0.5, 3: 0.8}  # the best at step 2, the last step 3 worse


@struct.dataclass
class _State:
    step: jnp.ndarray
    w: jnp.ndarray  # which step's parameters these are


def _run(callbacks: list, steps: int = 3) -> Loop:
    state = _State(step=jnp.asarray(0), w=jnp.asarray(0))
    loop = Loop(SimpleNamespace(run=SimpleNamespace(steps=steps)), None, None, state, callbacks)
    for step in range(1, steps + 1):
        loop.state, loop.step = _State(step=jnp.asarray(step), w=jnp.asarray(step)), step
        for callback in loop.callbacks:
            callback.step(loop, step)
    for callback in loop.callbacks:
        callback.finish(loop)
    return loop


def _evaluation(program, state) -> dict:
    w = int(state.w)
    return {"eval/loss": LOSSES[w], "eval/acc": 0.1 * w}


def test_a_later_record_replaces_the_last_eval_values_and_nothing_else():
    evaluate = Evaluate(_evaluation, every=1)
    loop = _run([evaluate])
    assert evaluate.last == {"eval/loss": 0.8, "eval/acc": 0.1 * 3}
    loop.emit(3, {"eval/loss": 0.25, "other/value": 7.0})
    assert evaluate.last == {"eval/loss": 0.25, "eval/acc": 0.1 * 3}  # its keys only


def test_early_stop_swaps_the_best_state_in_and_its_loss_becomes_the_last():
    evaluate = Evaluate(_evaluation, every=1)
    stop = EarlyStop(patience=5)
    records = []

    class Recorder(Callback):  # after the early stop in the chain: sees what it emits, in order
        def metrics(self, loop, trial, step, values):
            records.append((step, dict(values)))

    loop = _run([evaluate, stop, Recorder()])
    assert int(loop.state.w) == 2 and int(loop.state.step) == 3, "step 2's parameters, step counter kept"
    assert evaluate.last["eval/loss"] == 0.5 and stop.best_step == 2
    assert evaluate.last["eval/acc"] == 0.1 * 2  # every eval/ value of the best evaluation, not the last's
    assert records[-1] == (3, {"eval/loss": 0.5, "eval/acc": 0.1 * 2, "early_stop/best_step": 2.0})
    assert [r[1]["eval/loss"] for r in records] == [1.0, 0.5, 0.8, 0.5]
