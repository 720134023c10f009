"""The device mesh and the mapping of logical axis names to mesh axes.

Mesh axes are ``data``, ``fsdp`` and ``tensor``. Models name logical axes on their parameters
(``embed``, ``mlp``, ``heads``, ...); ``MeshConfig.rules`` maps each to mesh axes. A dimension that a
mesh axis does not divide stays replicated, so one rule set serves every model size.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from smilejax.config import ConfigError, MeshConfig

AXES = ("data", "fsdp", "tensor")
log = logging.getLogger(__name__)


def mesh_shape(cfg: MeshConfig, n_devices: int) -> dict[str, int]:
    """Axis sizes with the one ``-1`` axis filled so that they multiply to ``n_devices``."""
    sizes = {axis: getattr(cfg, axis) for axis in AXES}
    fill = [a for a, s in sizes.items() if s == -1]
    if len(fill) > 1:
        raise ConfigError(f"only one mesh axis may be -1, got {', '.join('mesh.' + a for a in fill)}")
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if fill:
        if n_devices % fixed:
            raise ConfigError(f"mesh {sizes} cannot fill {n_devices} devices: {fixed} does not divide it")
        sizes[fill[0]] = n_devices // fixed
    if math.prod(sizes.values()) != n_devices:
        raise ConfigError(
            f"mesh data={sizes['data']} × fsdp={sizes['fsdp']} × tensor={sizes['tensor']} needs "
            f"{math.prod(sizes.values())} devices, but {n_devices} are available"
        )
    return sizes


def _across_processes(shape: dict[str, int], n_granules: int) -> list[int]:
    """How many process granules each axis spans: data first, then fsdp; tensor stays inside one."""
    dcn, left = [1, 1, 1], n_granules
    for i, axis in enumerate(AXES[:2]):
        g = math.gcd(shape[axis], left)
        dcn[i], left = g, left // g
    if left != 1:
        raise ConfigError(
            f"mesh {shape} cannot be laid over {n_granules} processes: the data and fsdp axes "
            "must be divisible by the process count"
        )
    return dcn


def build_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    devices = list(devices if devices is not None else jax.devices())
    shape = mesh_shape(cfg, len(devices))
    processes = len({d.process_index for d in devices})
    if processes > 1:
        # Hybrid layout: the slow inter-process links carry only the data/fsdp reductions.
        dcn = _across_processes(shape, processes)
        ici = [shape[a] // d for a, d in zip(AXES, dcn, strict=True)]
        grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, process_is_granule=True)
    else:
        grid = np.asarray(devices).reshape([shape[a] for a in AXES])
    return Mesh(grid, AXES, axis_types=(AxisType.Auto,) * len(AXES))


def describe(mesh: Mesh) -> str:
    return " × ".join(f"{name}={size}" for name, size in mesh.shape.items())


def logical_spec(
    names: Sequence[str | None] | None,
    shape: Sequence[int],
    mesh: Mesh,
    rules: dict[str, list[str]],
) -> PartitionSpec:
    """The PartitionSpec for an array whose dimensions carry logical ``names``."""
    if not names:
        return PartitionSpec()
    used: set[str] = set()
    out: list[tuple[str, ...] | None] = []
    for name, dim in zip(names, shape, strict=True):
        axes = [a for a in rules.get(name, []) if a not in used and mesh.shape.get(a, 1) > 1] if name else []
        # Keep the longest prefix of mesh axes whose product divides the dimension.
        while axes and dim % math.prod(mesh.shape[a] for a in axes):
            axes.pop()
        used.update(axes)
        out.append(tuple(axes) if axes else None)
    return PartitionSpec(*out)


def batch_sharding(mesh: Mesh, rules: dict[str, list[str]]) -> NamedSharding:
    """Leading (batch) dimension over the rule's ``batch`` axes, the rest replicated."""
    axes = tuple(a for a in rules.get("batch", []) if a in mesh.shape)
    return NamedSharding(mesh, PartitionSpec(axes or None))


def batch_divisor(mesh: Mesh, rules: dict[str, list[str]]) -> int:
    return math.prod(mesh.shape[a] for a in rules.get("batch", []) if a in mesh.shape)
