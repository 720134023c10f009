"""A flow of the LFI family with its parameters moved off the identity start (test_lfi_flows.py,
test_lfi_coupling.py)."""

from __future__ import annotations

import jax
from flax import nnx
from smilejax.models.lfi import flows


def make_flow(
    kind: str,
    dim: int,
    context: int,
    *,
    jitter: float = 0.3,
    seed: int = 0,
    linear: bool = False,
    conditioner: str = "made",
) -> flows.Flow:
    """A flow whose parameters are moved off their identity start, so every piece is exercised."""
    cfg = flows.FlowConfig(
        kind=kind, layers=3, hidden=[16, 16], bins=6, bound=4.0, linear=linear, conditioner=conditioner
    )
    with nnx.use_eager_sharding(False):
        flow = flows.Flow(dim, context, cfg, rngs=nnx.Rngs(seed))
    graphdef, state = nnx.split(flow)
    leaves, tree = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    leaves = [v + jitter * jax.random.normal(k, v.shape) for v, k in zip(leaves, keys, strict=True)]
    return nnx.merge(graphdef, jax.tree.unflatten(tree, leaves))
