"""What may differ between the trials of one vectorised program, and how each trial's values reach it
(``trial_axis``: learning-rate tables, seeds, traced optimizer fields, model fields set as traced
attributes while the loss runs). ``smilejax.tune.vectorised`` trains the program (its docstring: the
rules) and re-exports these names."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from smilejax import config, optim, steps
from smilejax.config import Config, ConfigError
from smilejax.models import kernel_mode
from smilejax.models.spec import ModelSpec
from smilejax.tune.space import Space

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
def traced_errors() -> Iterator[None]:
    try:
        yield
    except _TRACED_ERRORS as err:
        raise VectoriseError(
            f"a field that differs between the trials is used in Python control flow: {err}"
        ) from err
