"""One cell of the parallel study: build a strategy's program on n devices, compile it, read its memory and
collectives, time its steps and keep its losses. Imports JAX, so ``parallel.py`` loads it lazily."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from smilejax import mesh as meshlib
from smilejax import steps
from smilejax.bench import common
from smilejax.config import Config, ConfigError
from smilejax.models.spec import ModelSpec
from smilejax.xla import hlo_stats


def available() -> str:
    p = jax.process_count()
    return (
        f"{jax.device_count()} devices ({jax.local_device_count()} per process × {p} process{'es' * (p > 1)})"
    )


def check_devices(counts: Sequence[int]) -> None:
    """Every count must exist and, with several processes, split evenly over them."""
    total, p = jax.device_count(), jax.process_count()
    too_many = [n for n in counts if n > total]
    if too_many:
        hint = " (on CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N simulates N)"
        raise ConfigError(
            f"--devices asks for {max(too_many)} devices, but only {available()} exist"
            f"{hint if jax.devices()[0].platform == 'cpu' else ''}"
        )
    uneven = [n for n in counts if n % p]
    if uneven:
        raise ConfigError(
            f"--devices {','.join(map(str, uneven))}: with {p} processes every device count must be a "
            f"multiple of {p}, so each process feeds the same number of devices"
        )


def select_devices(n: int) -> list[jax.Device]:
    """``n`` devices, the first ``n / process_count`` of every process (so every process takes part)."""
    per = n // jax.process_count()
    by_process: dict[int, list[jax.Device]] = {}
    for d in sorted(jax.devices(), key=lambda d: (d.process_index, d.id)):
        by_process.setdefault(d.process_index, []).append(d)
    return [d for p in sorted(by_process) for d in by_process[p][:per]]


def _place(sharding: jax.sharding.Sharding, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    # Every process holds the whole (small) synthetic batch and hands each local device its slice.
    return {
        k: jax.make_array_from_callback(v.shape, sharding, lambda index, v=v: v[index])
        for k, v in batch.items()
    }


def _scalar(x: jax.Array) -> float:
    return float(np.asarray(x.addressable_data(0)))  # replicated: every process holds the value


def measure(
    spec: ModelSpec, cfg: Config, n: int, batches: Sequence[dict[str, np.ndarray]], *, warmup: int
) -> dict[str, Any]:
    """Compiles and runs ``len(batches)`` steps (the first ``warmup`` untimed) on ``n`` devices."""
    mesh = meshlib.build_mesh(cfg.mesh, select_devices(n))
    divisor = meshlib.batch_divisor(mesh, cfg.mesh.rules)
    if cfg.data.batch_size % divisor:
        raise ConfigError(
            f"global batch {cfg.data.batch_size} is not divisible by the {divisor} batch-sharded devices "
            f"of mesh {meshlib.describe(mesh)}"
        )
    program = steps.build(spec, cfg, mesh)
    state = program.init()
    placed = [_place(program.batch_sharding, b) for b in batches]

    t0 = time.perf_counter()
    lowered = program.train_step.lower(state, placed[0])
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    ops = hlo_stats.collectives(compiled.as_text(), dict(mesh.shape))

    losses: list[jax.Array] = []
    feed = iter(placed)

    def step():
        nonlocal state
        state, out = compiled(state, next(feed))
        losses.append(out["loss"])
        return out

    timing = common.time_call(step, warmup=warmup, repeats=len(batches) - warmup)
    values = [_scalar(x) for x in losses]
    return {
        "mesh": meshlib.describe(mesh),
        "mesh_shape": dict(mesh.shape),
        "param_count": int(program.param_count),
        "step_s": timing["median_s"],
        "step_min_s": timing["min_s"],
        "compile_s": compile_s,
        "flops": program.step_flops(batches[0]),
        **hlo_stats.memory(compiled),
        **hlo_stats.summarize(ops),
        "ops": aggregate(ops),
        "loss_first": values[0],
        "loss": values[-1],
    }


def aggregate(ops: Sequence[hlo_stats.Collective]) -> list[dict[str, Any]]:
    """Collectives grouped by (kind, group size, axes): count and operand bytes, enough for the scaling
    model."""
    groups: dict[tuple, dict[str, Any]] = {}
    for op in ops:
        g = groups.setdefault(
            (op.kind, op.group_size, op.axes),
            {"kind": op.kind, "group_size": op.group_size, "axes": list(op.axes), "count": 0, "bytes": 0},
        )
        g["count"] += 1
        g["bytes"] += op.operand_bytes
    return list(groups.values())


def expand(groups: Sequence[dict[str, Any]]) -> list[hlo_stats.Collective]:
    """The inverse of ``aggregate``: ``count`` ops sharing the group's bytes (same totals and count)."""
    return [
        hlo_stats.Collective(g["kind"], g["bytes"] // g["count"], g["group_size"], tuple(g.get("axes", ())))
        for g in groups
        for _ in range(g["count"])
    ]
