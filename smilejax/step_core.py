"""One model's training, before it is placed on devices: the train state, the knobs through which a run's
hyperparameters reach the traced program (``Knobs``, ``TrialAxis``), the model in its compute dtype,
and the pure functions that ``steps`` jits (``make_core``: init, loss and gradients with microbatch
accumulation, the optimizer step, evaluation). ``smilejax.steps`` re-exports the public names."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from smilejax import registry
from smilejax.config import Config
from smilejax.models.spec import ModelSpec

PyTree = Any
Metrics = dict[str, jax.Array]


class TrainState(struct.PyTreeNode):
    step: jax.Array
    params: PyTree  # float32 parameters (pure dict)
    rest: PyTree  # other model state: RNG streams, running statistics (pure dict)
    opt_state: PyTree


Hypers = dict[str, Any]  # a run's values that the program reads as traced arrays (empty for a plain run)


def _no_context(model: nnx.Module, h: Hypers) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


@dataclasses.dataclass(frozen=True)
class Knobs:
    """What a run's hyperparameters ``h`` decide inside the traced program. A plain run's come from its
    config (``h`` is empty); vectorised trials read their own row of ``h`` (``tune.vectorised``)."""

    # (h, step) -> the optimizer and the learning rate at that step
    optimizer: Callable[[Hypers, jax.Array], tuple[optax.GradientTransformation, jax.Array]]
    seed: Callable[[Hypers], int | jax.Array]  # the model's initial seed (an int or a PRNG key)
    around_loss: Callable[[nnx.Module, Hypers], contextlib.AbstractContextManager] = _no_context


@dataclasses.dataclass(frozen=True)
class TrialAxis:
    """K trials in one program: every function is vmapped over a leading trial axis of the train state,
    each trial reading its row of ``hypers`` (arrays of K rows) through ``knobs``; the axis is sharded
    over the devices of the mesh given to ``build`` (one axis, ``"trials"``)."""

    knobs: Knobs
    hypers: Hypers
    stacked_batches: bool = False  # each trial has its own batch (a leading trial axis); else all share one


def compute_dtype(cfg: Config) -> jnp.dtype:
    return jnp.bfloat16 if cfg.train.precision == "bf16" else jnp.float32


def model_config(cfg: Config) -> Any:
    """``cfg.model`` with what the data format decides for the model (``DatasetSpec.model_config``)."""
    data = registry.dataset(cfg.data.format)
    return data.model_config(cfg.data, cfg.model) if data.model_config else cfg.model


def build_model(spec: ModelSpec, cfg: Config, seed: int | jax.Array) -> nnx.Module:
    """The model of ``cfg`` in its compute dtype; ``seed`` is an int or a PRNG key."""
    with nnx.use_eager_sharding(False):
        return spec.build(model_config(cfg), rngs=nnx.Rngs(seed), dtype=compute_dtype(cfg))


def _split_microbatches(batch: dict, k: int) -> dict:
    # Microbatch j takes rows j, j+k, j+2k, ...: each device's contiguous shard feeds every
    # microbatch, so accumulation moves no data between devices.
    def split(x):
        x = x.reshape(x.shape[0] // k, k, *x.shape[1:])
        return jnp.moveaxis(x, 1, 0)

    return jax.tree.map(split, batch)


class Core(NamedTuple):
    """The pure functions of training one model, each taking the run's hyperparameters first."""

    init: Callable[[Hypers], TrainState]
    grads: Callable  # (h, params, rest, batch) -> loss, metrics, new rest, gradients (microbatches summed)
    apply: Callable  # (h, state, loss, metrics, rest, grads) -> the next state, the step's values
    eval: Callable[[Hypers, TrainState, dict], Metrics]


def make_core(spec: ModelSpec, cfg: Config, graphdef: nnx.GraphDef, knobs: Knobs) -> Core:
    def init(h: Hypers) -> TrainState:
        model = build_model(spec, cfg, knobs.seed(h))
        _, params, rest = nnx.split(model, nnx.Param, ...)
        params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
        tx = knobs.optimizer(h, jnp.zeros((), jnp.int32))[0]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest, opt_state=tx.init(params))

    def loss_and_grads(h: Hypers, params, rest, batch):
        def loss_of(p):
            model = nnx.merge(graphdef, p, rest)
            with knobs.around_loss(model, h):
                loss, metrics = spec.loss(model, batch)
            _, _, new_rest = nnx.split(model, nnx.Param, ...)
            return loss, (metrics, nnx.to_pure_dict(new_rest))

        (loss, (metrics, new_rest)), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
        return loss, metrics, new_rest, grads

    def accumulate(h: Hypers, params, rest, batch):
        k = cfg.train.grad_accum
        if k == 1:
            return loss_and_grads(h, params, rest, batch)

        def body(carry, micro):
            rest, sums = carry
            loss, metrics, rest, grads = loss_and_grads(h, params, rest, micro)
            sums = jax.tree.map(jnp.add, sums, (loss, metrics, grads))
            return (rest, sums), None

        micro = _split_microbatches(batch, k)
        loss, metrics, _, grads = jax.eval_shape(
            loss_and_grads, h, params, rest, jax.tree.map(lambda x: x[0], micro)
        )
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (loss, metrics, grads))
        (rest, sums), _ = jax.lax.scan(body, (rest, zeros), micro)
        loss, metrics, grads = jax.tree.map(lambda s: s / k, sums)
        return loss, metrics, rest, grads

    @jax.named_scope("optimizer")
    def apply(h: Hypers, state: TrainState, loss, metrics, rest, grads) -> tuple[TrainState, Metrics]:
        tx, lr = knobs.optimizer(h, state.step)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        out = {**metrics, "loss": loss, "lr": lr, "grad_norm": optax.tree.norm(grads)}
        return TrainState(state.step + 1, params, rest, opt_state), out

    def evaluate(h: Hypers, state: TrainState, batch: dict) -> Metrics:
        model = nnx.merge(graphdef, state.params, state.rest)
        model.eval()
        with knobs.around_loss(model, h):
            loss, metrics = spec.loss(model, batch)
        return {**metrics, "loss": loss}

    return Core(init, accumulate, apply, evaluate)
