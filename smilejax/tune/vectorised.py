"""K trials in one ``jit(vmap(...))`` program: trials that differ only in values that keep array shapes.

What may differ between the trials of one program:

- ``optimizer.lr``, ``initial_lr``, ``final_lr``, ``warmup``, ``schedule``: each trial's learning rate
  per step comes from a table made with ``optim.schedule`` (so schedules stay those of ``optim.make``);
- ``optimizer.weight_decay``, ``b1``, ``b2``, ``eps``: traced scalars in the optimizer that
  ``optim.make`` builds inside the program (one source of truth for the optimizer);
- ``run.seed``: initial parameters, dropout streams and data order (one input pipeline per seed);
- ``model.<field>`` for float fields that a model keeps as plain numbers on its modules (dropout rates,
  loss weights): they are found by building the model with two values and comparing, then set as
  traced scalars on the merged module while the loss runs (``nnx.Dropout`` gets a traced-rate call).

Everything else (shapes, batch size, steps, model structure) must be equal; a space or a set of
configs that breaks this fails before training with the field named. Each trial gets a normal run
directory (``config.yaml``, ``run.json``, ``metrics.jsonl``, a final checkpoint that ``trained.load``
reads) and, after the program ends, its metrics replayed into TensorBoard/W&B; its results equal
training it alone within float tolerance. The trial axis is sharded over ``gcd(K, local devices)``
devices, so K per device. Not resumable mid-program: a killed program's trials are retried whole.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from smilejax import callbacks, checkpoint, config, metrics, optim, registry, steps, trainer
from smilejax.config import Config, ConfigError
from smilejax.inputs import packing
from smilejax.loop import Loop, Trial
from smilejax.models import kernel_mode
from smilejax.models.spec import ModelSpec
from smilejax.tune.objective import Outcome, Pruning, Report, missing_metric, report_every
from smilejax.tune.space import Space

log = logging.getLogger(__name__)

SCHEDULE_FIELDS = ("lr", "initial_lr", "final_lr", "warmup", "schedule")
TRACED_OPTIMIZER_FIELDS = ("weight_decay", "b1", "b2", "eps")
PER_TRIAL = ("run.dir", "logging.name")  # differ by construction
ALLOWED = {
    *(f"optimizer.{f}" for f in (*SCHEDULE_FIELDS, *TRACED_OPTIMIZER_FIELDS)),
    "run.seed",
}


class VectoriseError(ConfigError):
    """Trials that cannot share one vmapped program; the message names the field."""


# ---------------------------------------------------------------- what may differ


def check_space(space: Space) -> None:
    """Fails before any trial when a parameter can change what one program computes."""
    for p in space.params:
        if p.key in ALLOWED or p.key.startswith("model."):
            continue
        raise VectoriseError(
            f"{space.source}: parameters.{p.key} cannot differ inside one vectorised program (it changes "
            f"array shapes or the program); vectorisable: {', '.join(sorted(ALLOWED))} and float model "
            "fields kept as plain numbers (dropout, loss weights); run without --vectorise"
        )


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def differing(cfgs: list[Config]) -> dict[str, list]:
    """Dotted fields whose values differ between the configs, with each config's value."""
    flats = [_flat(config.to_dict(c)) for c in cfgs]
    keys = [k for k in flats[0] if k not in PER_TRIAL]
    return {k: [f.get(k) for f in flats] for k in keys if any(f.get(k) != flats[0][k] for f in flats)}


# ---------------------------------------------------------------- model fields as traced attributes


@dataclasses.dataclass(frozen=True)
class Slot:
    """Where a model-config field's value sits on the built module: ``path.attr[index]``."""

    path: tuple
    attr: str
    index: int | None = None


def _plain(value: Any) -> bool:
    if isinstance(value, tuple):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, bool | int | float | str)


def _modules(model: nnx.Module) -> dict[tuple, nnx.Module]:
    return {tuple(path): node for path, node in nnx.iter_graph(model) if isinstance(node, nnx.Module)}


def _attrs(module: nnx.Module) -> dict[str, Any]:
    return {k: v for k, v in vars(module).items() if not k.startswith("_pytree__") and _plain(v)}


def model_slots(spec: ModelSpec, cfg: Config, field: str, other: float) -> list[Slot]:
    """The attributes that model field ``field`` sets, found by building with its value and ``other``."""
    a_value = float(getattr(cfg.model, field))
    cfg_b = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **{field: other}))
    a, b = steps.build_model(spec, cfg, 0), steps.build_model(spec, cfg_b, 0)
    name = f"model.{field}"
    state_a, state_b = nnx.state(a), nnx.state(b)
    if jax.tree.structure(state_a) != jax.tree.structure(state_b) or any(
        x.shape != y.shape or not np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(
            jax.tree.leaves(nnx.state(a, nnx.Param)), jax.tree.leaves(nnx.state(b, nnx.Param)), strict=True
        )
    ):
        raise VectoriseError(
            f"{name}={a_value} vs {other} changes the model's structure or initial parameters "
            "(e.g. dropout 0 builds no dropout layer); vectorise only trials that share them"
        )
    found: list[Slot] = []
    mods_b = _modules(b)
    for path, mod_a in _modules(a).items():
        attrs_a, attrs_b = _attrs(mod_a), _attrs(mods_b[path])
        for attr, va in attrs_a.items():
            vb = attrs_b.get(attr)
            if va == vb:
                continue
            if isinstance(va, tuple) and isinstance(vb, tuple) and len(va) == len(vb):
                for i, (x, y) in enumerate(zip(va, vb, strict=True)):
                    if x != y:
                        _check_pair(name, path, f"{attr}[{i}]", x, y, a_value, other)
                        found.append(Slot(path, attr, i))
            else:
                _check_pair(name, path, attr, va, vb, a_value, other)
                found.append(Slot(path, attr))
    return found


def _check_pair(name: str, path: tuple, attr: str, x: Any, y: Any, a: float, b: float) -> None:
    if not (isinstance(x, float) and isinstance(y, float) and math.isclose(x, a) and math.isclose(y, b)):
        where = ".".join(map(str, (*path, attr)))
        raise VectoriseError(
            f"{name} does not sit on the model as a plain number ({where} = {x!r} vs {y!r}); "
            "it cannot differ inside one vectorised program"
        )


class _TracedDropout(nnx.Dropout):
    """``nnx.Dropout`` whose rate may be a traced value (the same mask and scaling for the same key)."""

    def __call__(self, inputs, *, deterministic=None, rngs=None):
        if self.deterministic if deterministic is None else deterministic:
            return inputs
        rngs = self.rngs if rngs is None else rngs
        if isinstance(rngs, nnx.Rngs):
            key = rngs[self.rng_collection]()
        elif isinstance(rngs, nnx.RngStream):
            key = rngs()
        else:
            key = rngs
        keep = 1.0 - self.rate
        shape = list(inputs.shape)
        for dim in self.broadcast_dims:
            shape[dim] = 1
        mask = jnp.broadcast_to(jax.random.bernoulli(key, p=keep, shape=shape), inputs.shape)
        return jax.lax.select(mask, inputs / keep, jnp.zeros_like(inputs))


@contextlib.contextmanager
def _traced(model: nnx.Module, slots: dict[str, list[Slot]], values: dict[str, jax.Array]) -> Iterator[None]:
    """Sets each slot to its field's traced value while the loss runs; restores plain values after, so
    the module splits as usual."""
    mods = _modules(model)
    saved: dict[tuple, Any] = {}
    swapped = []
    for field, field_slots in slots.items():
        for s in field_slots:
            mod = mods[s.path]
            current = getattr(mod, s.attr)
            saved.setdefault((s.path, s.attr), current)
            new = (
                values[field]
                if s.index is None
                else (*current[: s.index], values[field], *current[s.index + 1 :])
            )
            setattr(mod, s.attr, new)
            if isinstance(mod, nnx.Dropout) and type(mod) is nnx.Dropout and s.attr == "rate":
                object.__setattr__(mod, "__class__", _TracedDropout)
                swapped.append(mod)
    try:
        yield
    finally:
        for mod in swapped:
            object.__setattr__(mod, "__class__", nnx.Dropout)
        for (path, attr), value in saved.items():
            setattr(mods[path], attr, value)


# ---------------------------------------------------------------- the trial axis


def _varying_slots(spec: ModelSpec, cfg0: Config, varying: dict[str, list]) -> dict[str, list[Slot]]:
    """For each model field that differs between the trials, where it sits on the built module."""
    slots: dict[str, list[Slot]] = {}
    for key, values in varying.items():
        if key.startswith("model."):
            other = next(v for v in values if v != values[0])
            if not isinstance(values[0], float):
                raise VectoriseError(
                    f"{key} is not a float field; it cannot differ inside one vectorised program"
                )
            slots[key] = model_slots(spec, cfg0, key.removeprefix("model."), float(other))
    return slots


def trial_axis(spec: ModelSpec, cfgs: list[Config]) -> tuple[steps.TrialAxis, Mesh]:
    """What ``steps.build`` needs to train ``cfgs`` as one program: each trial's values (its learning
    rate per step, its seed, the traced optimizer and model fields) and the mesh of the trial axis."""
    cfg0, k = cfgs[0], len(cfgs)
    if cfg0.train.grad_accum != 1:
        raise VectoriseError("vectorised trials need train.grad_accum=1")
    varying = differing(cfgs)
    bad = [key for key in varying if key not in ALLOWED and not key.startswith("model.")]
    if bad:
        raise VectoriseError(
            f"trials differ in {', '.join(bad)}, which cannot differ inside one vectorised program"
        )
    slots = _varying_slots(spec, cfg0, varying)
    total = cfg0.run.steps
    # Per-trial values: the learning-rate table and the traced scalars.
    schedules = [optim.schedule(c.optimizer, total) for c in cfgs]
    table = jax.jit(lambda s: jnp.stack([jax.vmap(f)(s) for f in schedules]))(jnp.arange(total + 1))
    table = np.asarray(table, np.float32)  # one compilation for all K schedules
    hypers: dict[str, Any] = {"lr": table, "seed": np.array([c.run.seed for c in cfgs], np.int32)}
    for f in TRACED_OPTIMIZER_FIELDS:
        if f"optimizer.{f}" in varying:
            hypers[f"optimizer.{f}"] = np.array([getattr(c.optimizer, f) for c in cfgs], np.float32)
    for key in slots:
        hypers[key] = np.array([getattr(c.model, key.removeprefix("model.")) for c in cfgs], np.float32)

    def optimizer(h: dict, step: jax.Array) -> tuple[optax.GradientTransformation, jax.Array]:
        lr_t = h["lr"][step]
        traced = {f: h[f"optimizer.{f}"] for f in TRACED_OPTIMIZER_FIELDS if f"optimizer.{f}" in h}
        opt = dataclasses.replace(cfg0.optimizer, schedule="constant", warmup=0.0, lr=lr_t, **traced)
        return optim.make(opt, total)[0], lr_t

    @contextlib.contextmanager
    def around_loss(model: nnx.Module, h: dict) -> Iterator[None]:
        values = {key: h[key] for key in slots}
        with _traced(model, slots, values), kernel_mode.portable():  # vmapped: no fused kernels
            yield

    knobs = steps.Knobs(
        optimizer=optimizer, seed=lambda h: jax.random.key(h["seed"]), around_loss=around_loss
    )
    n_dev = math.gcd(k, jax.local_device_count())
    mesh = Mesh(np.asarray(jax.local_devices()[:n_dev]), ("trials",))
    stacked = len({c.run.seed for c in cfgs}) > 1  # one data stream per seed
    return steps.TrialAxis(knobs, hypers, stacked_batches=stacked), mesh


_TRACED_ERRORS = (jax.errors.ConcretizationTypeError, jax.errors.TracerBoolConversionError)


@contextlib.contextmanager
def _traced_errors() -> Iterator[None]:
    try:
        yield
    except _TRACED_ERRORS as err:
        raise VectoriseError(
            f"a field that differs between the trials is used in Python control flow: {err}"
        ) from err


# ---------------------------------------------------------------- the loop


class _Inputs:
    """One input pipeline per distinct seed; batches stacked along the trial axis when seeds differ."""

    def __init__(self, cfgs: list[Config], program: steps.Program):
        self.sharding = program.batch_sharding
        seeds = [c.run.seed for c in cfgs]
        self.groups = sorted(set(seeds))
        self.of_trial = [self.groups.index(s) for s in seeds]
        self.examples = 0  # the last batch's, one trial's
        self.iters = [iter(trainer.make_inputs(cfgs[seeds.index(s)], "train")) for s in self.groups]

    def next(self) -> dict:
        batches = [next(it) for it in self.iters]
        self.examples = packing.examples(batches[0]) * jax.process_count()  # one trial's (a group's)
        if len(batches) == 1:
            return jax.device_put(batches[0], self.sharding)
        shapes = {tuple(np.shape(b[key]) for key in sorted(b)) for b in batches}
        if len(shapes) > 1:  # e.g. packed sets: each seed's batch packs into its own number of rows
            raise ValueError(
                "vectorised trials with different run.seed values need batches of one shape from every "
                f"seed's input, got {len(shapes)} shapes (bucketed or packed batches vary their shape "
                "per step); give the trials one seed or turn bucketing and packing off"
            )
        stacked = {key: np.stack([batches[g][key] for g in self.of_trial]) for key in batches[0]}
        return jax.device_put(stacked, self.sharding)

    def rows(self, batch: dict) -> int:
        return self.examples

    def position(self, trial: int):
        return self.iters[self.of_trial[trial]]


def _start_runs(cfgs: list[Config], info: dict) -> list[metrics.MetricsLog]:
    """Each trial's run directory: its config, run.json, and a fresh metrics.jsonl and checkpoints."""
    files = []
    for c in cfgs:
        d = Path(c.run.dir)
        d.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(d / "checkpoints", ignore_errors=True)  # a retried program starts afresh
        config.save(c, d / "config.yaml")
        (d / "run.json").write_text(json.dumps(info, indent=2) + "\n")
        files.append(metrics.MetricsLog(d / "metrics.jsonl", resume_step=0))
    return files


def train(
    cfgs: list[Config], metric: str, *, reports: list[Report | None] | None = None, save: bool = True
) -> list[Outcome]:
    """Trains the configs together; one ``Outcome`` per config, in order."""
    k, cfg0 = len(cfgs), cfgs[0]
    reports = reports or [None] * k
    t_start = time.perf_counter()
    spec = registry.model(cfg0.model.name)
    axis, mesh = trial_axis(spec, cfgs)
    program = steps.build(spec, cfg0, mesh, trials=axis)
    inputs = _Inputs(cfgs, program)
    # the same batches each time, and for every trial whatever its seed, as sequential runs score them
    evaluation = trainer.Evaluation(cfg0) if cfg0.run.eval_every > 0 else None
    run_dirs = [Path(c.run.dir) for c in cfgs]
    info = {
        "model": cfg0.model.name,
        "param_count": int(program.param_count),
        "device_kind": jax.local_devices()[0].device_kind,
        "platform": jax.local_devices()[0].platform,
        "vectorised": {"trials": k, "devices": mesh.size},
        "global_batch": cfg0.data.batch_size,
        "versions": trainer.versions(),
    }
    files = _start_runs(cfgs, info)
    pruning = Pruning(metric, report_every(cfg0, metric), reports)

    def opener(i: int) -> checkpoint.Checkpointer:
        return checkpoint.Checkpointer(
            run_dirs[i] / "checkpoints", keep=cfgs[i].run.keep_checkpoints, async_save=False
        )

    chain = [
        callbacks.NanStop([d.name for d in run_dirs]),
        callbacks.LogWindow(cfg0.run.log_every, peak=None),
        *([callbacks.Evaluate(evaluation, cfg0.run.eval_every)] if evaluation is not None else []),
        *([callbacks.Checkpoint(0, opener=opener)] if save else []),  # the final state only
        pruning,
        callbacks.Progress(cfg0.run.steps, 0, cfg0.logging.progress),
        callbacks.MetricsFile(files),
    ]
    with _traced_errors():
        loop = Loop(cfg0, program, inputs, program.init(), chain, trial_axis=k)
        loop.run(cfg0.run.steps)
    seconds = (time.perf_counter() - t_start) / k  # the program's time, shared by its trials
    for c, d in zip(cfgs, run_dirs, strict=True):
        _replay(c, d, info)
    return [
        _outcome(loop.trials[i], run_dirs[i], metric, pruning.history[i], seconds, cfg0.run.steps)
        for i in range(k)
    ]


def _outcome(trial: Trial, run_dir: Path, metric: str, history: list, seconds: float, steps_: int) -> Outcome:
    value = None
    if trial.state != "failed":
        found = [r[metric] for r in metrics.read(run_dir / "metrics.jsonl") if metric in r]
        value = float(found[-1]) if found else None
        if value is None and trial.state == "complete":
            raise missing_metric(run_dir, metric)
    error = "non-finite loss" if trial.state == "failed" else None
    step = steps_ if trial.stopped_at is None else trial.stopped_at
    return Outcome(trial.state, value, step, seconds, run_dir, history, error)


def _replay(cfg: Config, run_dir: Path, info: dict) -> None:
    """The trial's metrics.jsonl into its TensorBoard / W&B run (written after the program ends)."""
    if cfg.logging.wandb == "off" and not cfg.logging.tensorboard:
        return
    loggers = metrics.Loggers(cfg, run_dir, info, resume=False)
    try:
        for record in metrics.read(run_dir / "metrics.jsonl"):
            loggers.log(record["step"], {k: v for k, v in record.items() if k != "step"})
    finally:
        loggers.close()
