"""What the fused Pallas (Triton) kernels of ``models/`` share: tile sizes, the matrix product they
use, compiler settings, and the partitioning that lets a jit step sharded along the set axis run each
device's own sets (``pair_mlp``: the track-pair head; ``set_attention``: attention over short sets)."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
from jax.experimental.custom_partitioning import custom_partitioning
from jax.experimental.pallas import triton as plt
from jax.interpreters.mlir import ir
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

F32 = jnp.float32
MIN_BLOCK = 16  # Triton's smallest matrix-product dimension


def dot(a: jax.Array, b: jax.Array, dtype, *, transpose_a: bool = False, transpose_b: bool = False):
    """``a @ b`` with inputs in ``dtype`` (the compute dtype) and a float32 result."""
    dims = (((0,) if transpose_a else (1,), (1,) if transpose_b else (0,)), ((), ()))
    return jax.lax.dot_general(a.astype(dtype), b.astype(dtype), dims, preferred_element_type=F32)


def block_size(n: int) -> int:
    """The padded set length: a power of two (Triton's tiles), at least ``MIN_BLOCK``."""
    return max(MIN_BLOCK, 1 << (n - 1).bit_length())


def compiler_params(num_warps: int) -> plt.CompilerParams:
    return plt.CompilerParams(num_warps=num_warps, num_stages=1)


def split_by_set(fn, sets: int):
    """``fn(name, interpret, n, *arrays)``, its first ``sets`` arrays and every result led by the set axis,
    made partitionable: in a jit step sharded over devices along that axis, each device runs the kernel
    on its own sets (XLA cannot split a custom kernel itself: it would gather the whole batch onto every
    device). The weights are replicated; no other axis may be sharded."""
    split = custom_partitioning(fn, static_argnums=(0, 1, 2))

    def shardings(mesh, arg_shapes, result_shape):
        spec = arg_shapes[0].sharding.spec
        axis = spec[0] if len(spec) else None

        def led(x):
            return NamedSharding(mesh, P(axis, *([None] * (len(x.shape) - 1))))

        args = tuple(led(x) if i < sets else NamedSharding(mesh, P()) for i, x in enumerate(arg_shapes))
        return args, jax.tree.map(led, result_shape)

    def partition(name, interpret, n, mesh, arg_shapes, result_shape):
        args, results = shardings(mesh, arg_shapes, result_shape)
        return mesh, functools.partial(fn, name, interpret, n), results, args

    def infer(name, interpret, n, mesh, arg_shapes, result_shape):
        return shardings(mesh, arg_shapes, result_shape)[1]

    def rule(name, interpret, n, mesh, operand_types, result_types):
        # Shardy's rule: the set axis "s" may be sharded; every other dimension is a factor of its own
        # that must stay whole.
        whole = (f"f{i}" for i in itertools.count())

        def dims(types, led: int) -> list[list[str]]:
            ranks = [len(ir.RankedTensorType(t).shape) for t in types]
            return [
                ["s" if i < led and d == 0 else next(whole) for d in range(r)] for i, r in enumerate(ranks)
            ]

        args, outs = dims(operand_types, sets), dims(result_types, len(result_types))
        text = ", ".join(map(" ".join, args)) + " -> " + ", ".join(map(" ".join, outs))
        return text, {"need_replication_factors": tuple(f for d in args + outs for f in d if f != "s")}

    split.def_partition(partition, infer_sharding_from_operands=infer, sharding_rule=rule)
    return split
