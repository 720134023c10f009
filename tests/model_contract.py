"""The parameter contract every ported model keeps (models/spec.py): float32 parameters, each dimension
named with a logical axis the mesh rules know, or left unnamed only when it is too small to shard."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

LOGICAL_AXES = {"embed", "mlp", "heads", "kv", "in"}


def checked_parameters(model: nnx.Module, *, largest_unnamed: int) -> int:
    """Asserts the contract on ``model`` (abstract is fine) and returns its parameter count."""
    params = jax.tree.leaves(nnx.state(model, nnx.Param), is_leaf=lambda x: isinstance(x, nnx.Variable))
    for p in params:
        assert p.dtype == jnp.float32
        names = p.get_metadata()["out_sharding"]
        assert len(names) == len(p.shape)
        named = [n for n in names if n is not None]
        assert set(named) <= LOGICAL_AXES and len(named) == len(set(named)), names
        assert all(n is not None or d <= largest_unnamed for n, d in zip(names, p.shape, strict=True)), (
            names,
            p.shape,
        )
    # nothing but parameters in the model state (no RNG state when dropout is 0)
    assert len(jax.tree.leaves(nnx.state(model))) == len(params)
    return sum(int(np.prod(p.shape)) for p in params)
