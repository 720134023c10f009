"""The train state's sharding and the jitted train/eval steps of the core in ``step_core``.

The model is split once (``nnx.split``) into a static graph and pure-dict states; the steps are plain
``jax.jit`` functions over those states (DESIGN.md: ``nnx.jit`` costs small HEP models too much
Python time). Two data-parallel forms share one loss-and-gradient core:

- ``jit``: global arrays with ``NamedSharding``; the compiler inserts the gradient reduction and
  handles FSDP and tensor parallelism from the same rules;
- ``shard_map``: each device computes gradients on its batch shard and reduces them explicitly with
  ``lax.pmean``; parameters are replicated, so it is pure data parallelism.

The same core, vmapped over a leading trial axis (``TrialAxis``), trains K trials that differ in traced
hyperparameters as one program (``tune.vectorised``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from smilejax import mesh as meshlib
from smilejax import optim, xla
from smilejax.config import Config, ConfigError
from smilejax.models import kernel_mode
from smilejax.models.spec import ModelSpec
from smilejax.step_core import (  # noqa: F401 (re-exported: their home was here)
    Core,
    Hypers,
    Knobs,
    Metrics,
    PyTree,
    TrainState,
    TrialAxis,
    build_model,
    compute_dtype,
    make_core,
    model_config,
)


@dataclasses.dataclass(frozen=True)
class Program:
    """Everything static about one run's model: graph, optimizer, shardings and the steps. A program of
    vectorised trials (``TrialAxis``) has the same functions over states with a leading trial axis."""

    graphdef: nnx.GraphDef
    # None in a program of trials: each trial's optimizer and learning rate come from its row of the
    # hyperparameter tables (``Knobs.optimizer``), not from one config.
    tx: optax.GradientTransformation | None
    lr: optax.Schedule | None
    mesh: Mesh
    state_sharding: TrainState
    batch_sharding: NamedSharding
    abstract_state: TrainState
    init: Callable[[], TrainState]
    train_step: Callable[[TrainState, dict], tuple[TrainState, Metrics]]
    eval_step: Callable[[TrainState, dict], Metrics]
    reference_step: Callable[[TrainState, dict], tuple[TrainState, Metrics]] | None  # for step_flops
    manual: bool = False  # the train step is one shard_map (its lowered form is one device's program)
    grad_accum: int = 1  # microbatches per step, a loop whose body XLA's cost analysis counts once
    trials: int = 0  # the length of the trial axis (0: a plain run's program, without one)
    eval_sharding: NamedSharding | None = None  # the eval batches' sharding, when not ``batch_sharding``

    @property
    def param_count(self) -> int:
        """Parameters of one model (one trial's, in a program of trials)."""
        return sum(x.size for x in jax.tree.leaves(self.abstract_state.params)) // max(self.trials, 1)

    @property
    def eval_batch_sharding(self) -> NamedSharding:
        return self.eval_sharding or self.batch_sharding

    def step_flops(self, batch: dict) -> float | None:
        """FLOPs per device of one training step on ``batch``'s shapes (arrays or ShapeDtypeStructs), for
        MFU: counted on the step as the model's plain jnp implementations compute it
        (``kernel_mode.reference``), so that fused kernels (cuDNN, Pallas), whose FLOPs XLA cannot see, and
        chunked attention's loop count in full, and every implementation gets the same count. A
        rematerialised model (``model.remat``) counts its recomputed forward too. None for a program
        without a reference step (vectorised trials)."""
        if self.reference_step is None:
            return None
        sharding = self.batch_sharding
        shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding) for k, v in batch.items()}
        lowered = self.reference_step.lower(self.abstract_state, shapes)
        devices = 1 if self.manual else self.mesh.size
        return xla.step_flops(lowered, devices=devices, repeats=self.grad_accum)


def _param_shardings(abstract_params: nnx.State, mesh: Mesh, rules: dict[str, list[str]]) -> PyTree:
    """NamedShardings (as a pure dict) from the logical names the model put on each parameter."""
    specs = {}
    for path, var in nnx.to_flat_state(abstract_params):
        names = var.get_metadata().get("out_sharding")
        specs[path] = NamedSharding(mesh, meshlib.logical_spec(names, var.get_value().shape, mesh, rules))
    return nnx.to_pure_dict(nnx.from_flat_state(specs))


def _state_shardings(abstract: TrainState, params: PyTree, tx, mesh: Mesh) -> TrainState:
    replicated = NamedSharding(mesh, PartitionSpec())
    opt = optax.tree_map_params(
        tx, lambda _, s: s, abstract.opt_state, params, transform_non_params=lambda _: replicated
    )
    return TrainState(
        step=replicated,
        params=params,
        rest=jax.tree.map(lambda _: replicated, abstract.rest),
        opt_state=opt,
    )


def build(spec: ModelSpec, cfg: Config, mesh: Mesh, trials: TrialAxis | None = None) -> Program:
    """The model's program on ``mesh``: sharded init, train step and eval step; with ``trials``, the
    program of K vectorised trials on a mesh of one axis, ``"trials"``."""
    tx, lr = optim.make(cfg.optimizer, cfg.run.steps)
    abstract_model = nnx.eval_shape(lambda: build_model(spec, cfg, cfg.run.seed))
    graphdef, abs_params, _ = nnx.split(abstract_model, nnx.Param, ...)
    if trials is not None:
        return _trial_program(make_core(spec, cfg, graphdef, trials.knobs), trials, graphdef, mesh)
    knobs = Knobs(optimizer=lambda h, step: (tx, lr(step)), seed=lambda h: cfg.run.seed)
    return _run_program(make_core(spec, cfg, graphdef, knobs), cfg, graphdef, abs_params, tx, lr, mesh)


def _run_program(
    core: Core,
    cfg: Config,
    graphdef: nnx.GraphDef,
    abs_params: nnx.State,
    tx: optax.GradientTransformation,
    lr: optax.Schedule,
    mesh: Mesh,
) -> Program:
    """One run's program: its state sharded by the parameters' logical names, the step ``jit`` or one
    ``shard_map`` (``train.parallel``)."""
    rules = cfg.mesh.rules
    param_sharding = _param_shardings(abs_params, mesh, rules)

    def init() -> TrainState:
        return core.init({})

    abstract_state = jax.eval_shape(init)
    state_sharding = _state_shardings(abstract_state, param_sharding, tx, mesh)
    # Shardings on the abstract state let a checkpoint restore onto another device count or mesh.
    abstract_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state, state_sharding
    )
    batch_sharding = meshlib.batch_sharding(mesh, rules)

    step_fn, manual = _step_fn(core, cfg, mesh)

    def eval_fn(state: TrainState, batch: dict) -> Metrics:
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):  # see jit_step
            return core.eval({}, state, batch)

    train_step = jax.jit(
        step_fn,
        in_shardings=(state_sharding, batch_sharding),
        out_shardings=(state_sharding, None),
        donate_argnums=(0,) if cfg.train.donate else (),
    )

    def reference_fn(state: TrainState, batch: dict) -> tuple[TrainState, Metrics]:
        # Its own function, so jit's trace cache never hands one program's trace to the other.
        with kernel_mode.reference():
            return step_fn(state, batch)

    return Program(
        graphdef=graphdef,
        tx=tx,
        lr=lr,
        mesh=mesh,
        state_sharding=state_sharding,
        batch_sharding=batch_sharding,
        abstract_state=abstract_state,
        init=jax.jit(init, out_shardings=state_sharding),
        train_step=train_step,
        reference_step=jax.jit(
            reference_fn, in_shardings=(state_sharding, batch_sharding), out_shardings=(state_sharding, None)
        ),
        eval_step=jax.jit(eval_fn, in_shardings=(state_sharding, batch_sharding)),
        manual=manual,
        grad_accum=cfg.train.grad_accum,
    )


def _step_fn(core: Core, cfg: Config, mesh: Mesh) -> tuple[Callable, bool]:
    """The train step before ``jit``, and whether it is manual: the gradient step as XLA partitions it
    (``train.parallel=jit``), or one ``shard_map`` that averages per-device gradients (``shard_map``)."""
    rules = cfg.mesh.rules

    def jit_step(state: TrainState, batch: dict) -> tuple[TrainState, Metrics]:
        # The mesh in context: a model may split work over a mesh axis itself (a shard_map over the
        # axis that model.partition names, e.g. a graph's edges), inside the step XLA partitions.
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return core.apply({}, state, *core.grads({}, state.params, state.rest, batch))

    batch_axes = tuple(a for a in rules.get("batch", []) if a in mesh.shape)

    def shard_map_step(state: TrainState, batch: dict) -> tuple[TrainState, Metrics]:
        def local(state, batch):
            loss, metrics, rest, grads = core.grads({}, state.params, state.rest, batch)
            loss, metrics, grads = jax.lax.pmean((loss, metrics, grads), batch_axes)
            return core.apply({}, state, loss, metrics, rest, grads)

        return jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(PartitionSpec(), PartitionSpec(batch_axes)),
            out_specs=PartitionSpec(),
            check_vma=False,
        )(state, batch)

    if cfg.train.parallel == "shard_map":
        sharded = [a for a in ("fsdp", "tensor") if mesh.shape[a] > 1]
        if sharded:
            raise ConfigError(
                "train.parallel=shard_map is pure data parallelism; set "
                f"{', '.join(f'mesh.{a}=1' for a in sharded)} or use train.parallel=jit"
            )
        step_fn = shard_map_step
    else:
        step_fn = jit_step
    return step_fn, step_fn is shard_map_step


class _WithTables:
    """``fn(tables, *args)`` called as ``fn(*args)``. A program of trials passes its hyperparameter tables
    (a [K, steps + 1] learning-rate table, seeds, traced fields) to its jitted functions as arguments:
    closed over, they would be compiled into the program as constants, and every set of trials would
    lower to another program. ``lower`` and the ``compile`` of its result keep the binding, for the loop,
    which compiles each batch shape itself; other attributes are the wrapped stage's (``as_text``, ...)."""

    def __init__(self, fn: Any, tables: Hypers):
        self.fn, self.tables = fn, tables

    def __call__(self, *args: Any) -> Any:
        return self.fn(self.tables, *args)

    def lower(self, *args: Any) -> _WithTables:
        return _WithTables(self.fn.lower(self.tables, *args), self.tables)

    def compile(self, *args: Any, **kwargs: Any) -> _WithTables:
        return _WithTables(self.fn.compile(*args, **kwargs), self.tables)

    def __getattr__(self, name: str) -> Any:  # only for names the instance lacks
        if "fn" not in self.__dict__:  # half-built (a copy): no recursion through self.fn
            raise AttributeError(name)
        return getattr(self.fn, name)


def _trial_program(core: Core, trials: TrialAxis, graphdef: nnx.GraphDef, mesh: Mesh) -> Program:
    """``core`` vmapped over the trial axis: the state's leading axis, sharded over ``mesh``'s devices."""
    per_trial = NamedSharding(mesh, PartitionSpec("trials"))
    replicated = NamedSharding(mesh, PartitionSpec())
    hypers = jax.device_put(trials.hypers, per_trial)
    batch_axis = 0 if trials.stacked_batches else None

    def init(h: Hypers) -> TrainState:
        return jax.vmap(core.init)(h)

    def one_step(h: Hypers, state: TrainState, batch: dict) -> tuple[TrainState, Metrics]:
        return core.apply(h, state, *core.grads(h, state.params, state.rest, batch))

    def train_step(h: Hypers, state: TrainState, batch: dict) -> tuple[TrainState, Metrics]:
        return jax.vmap(one_step, in_axes=(0, 0, batch_axis))(h, state, batch)

    def eval_step(h: Hypers, state: TrainState, batch: dict) -> Metrics:  # every trial, the same batches
        return jax.vmap(core.eval, in_axes=(0, 0, None))(h, state, batch)

    shapes = jax.eval_shape(init, hypers)
    abstract_state = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=per_trial), shapes
    )
    return Program(
        graphdef=graphdef,
        tx=None,
        lr=None,
        mesh=mesh,
        state_sharding=jax.tree.map(lambda _: per_trial, shapes),
        batch_sharding=per_trial if trials.stacked_batches else replicated,
        abstract_state=abstract_state,
        init=_WithTables(jax.jit(init, out_shardings=per_trial), hypers),
        train_step=_WithTables(jax.jit(train_step, donate_argnums=(1,)), hypers),
        eval_step=_WithTables(jax.jit(eval_step), hypers),
        reference_step=None,
        trials=shapes.step.shape[0],
        eval_sharding=replicated,
    )
