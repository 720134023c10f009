"""Graph-partitioned Interaction GNN: one event's edges split over the devices of a mesh axis.

An event of ~10^5 hits and ~10^6 edges (or several events merged into one graph) can outgrow one device:
the edge features ``[E, H]`` of eight iterations dominate the memory. Here the edges of every graph are
sharded along a mesh axis (``model.partition``, e.g. ``tensor`` or ``graph``) inside one ``shard_map``;
each device holds ``E / k`` edges, computes their messages and segment-sums them into a node buffer, and
collectives complete the aggregation:

``replicated`` nodes (default): every device holds all ``N`` node features; ``lax.psum`` of the
    ``[N, 2H]`` node sums over the axis, then every device applies the node network to all nodes (the
    same values everywhere) and updates its own edges. One all-reduce per iteration; node work repeated.
``sharded`` nodes: device ``i`` owns nodes ``[i N/k, (i+1) N/k)``; ``lax.psum_scatter`` hands each its
    slice of the sums, the node network runs on ``N / k`` nodes, and ``lax.all_gather`` gives every
    device the updated nodes its edges read. Same bytes on the wire as the all-reduce (a reduce-scatter
    plus an all-gather), node work and node-network activations divided by ``k``.

The replicated form is ``gnn.interaction_step`` with its ``reduce`` hook, so both forms compute what
``IGN.graph`` computes on one device, up to the order of floating-point sums (tests compare scores and
gradients on 8 CPU devices against 1). Parameters stay replicated; their gradients come back summed
over the axis by ``shard_map``'s transpose. The batch axis stays under ``jit``'s automatic sharding
(the shard_map is manual over the partition axis only), so data parallelism composes with it.

Where the mesh comes from: ``mesh=`` given, else the mesh in context (``jax.set_mesh(mesh)``).
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax
from jax.sharding import PartitionSpec as P

from ..layers import F32
from .gnn import IGN

Nodes = Literal["replicated", "sharded"]
NODES = ("replicated", "sharded")


def mesh_for(axis: str, mesh=None):
    """``mesh`` or the one in context; raises naming ``axis`` when neither has it."""
    mesh = mesh if mesh is not None else jax.sharding.get_abstract_mesh()
    if axis not in getattr(mesh, "axis_names", ()):
        have = tuple(getattr(mesh, "axis_names", ())) or "no mesh"
        raise ValueError(
            f"graph-partitioned IGN (model.partition={axis!r}) needs a device mesh with the axis {axis!r} "
            f"in context (jax.set_mesh(mesh)); found {have}"
        )
    return mesh


def _pad(x: jax.Array, axis: int, multiple: int) -> jax.Array:
    extra = -x.shape[axis] % multiple
    if not extra:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths)


def _sharded_graph(model: IGN, hits: jax.Array, edges: jax.Array, mask: jax.Array, axis: str) -> jax.Array:
    """Edge logits of this device's edges; ``hits``: this device's node slice [N/k, F]."""
    cfg = model.cfg
    gather = lambda a: lax.all_gather(a, axis, axis=0, tiled=True)  # noqa: E731
    s, r = edges[:, 0], edges[:, 1]
    x_own = model.node_encoder(hits.astype(model.dtype))
    x = gather(x_own)
    e = model.edge_encoder(jnp.concatenate([x[s], x[r]], -1))
    graphdef = nnx.split(model.blocks[0])[0]
    states = [nnx.split(b)[1] for b in model.blocks]

    def step(state, x_own, x, e):
        block = nnx.merge(graphdef, state)
        m = jnp.where(mask[:, None], e, 0)
        agg = jnp.concatenate(
            [
                jax.ops.segment_sum(m, r, num_segments=x.shape[0]),
                jax.ops.segment_sum(m, s, num_segments=x.shape[0]),
            ],
            -1,
        )
        agg = lax.psum_scatter(agg, axis, scatter_dimension=0, tiled=True)
        x_own = x_own + block.node_net(jnp.concatenate([x_own, agg.astype(x_own.dtype)], -1))
        x = gather(x_own)
        e = e + block.edge_net(jnp.concatenate([x[s], x[r], e], -1))
        return x_own, x, e

    if cfg.remat:
        step = jax.checkpoint(step)
    for i in range(cfg.n_graph_iters):
        x_own, x, e = step(states[i % len(states)], x_own, x, e)
    logit = model.classifier(jnp.concatenate([x[s], x[r], e], -1))[:, 0]
    return jnp.where(mask, logit.astype(F32), 0.0)


def forward(
    model: IGN,
    hits: jax.Array,
    hit_mask: jax.Array,
    edges: jax.Array,
    edge_mask: jax.Array,
    *,
    axis: str,
    nodes: Nodes = "replicated",
    mesh=None,
) -> dict[str, jax.Array]:
    """``IGN.__call__`` with every graph's edges sharded over the mesh axis ``axis`` (see the module).

    hits [B, N, F], hit_mask [B, N], edges [B, E, 2], edge_mask [B, E]; any N and E (padded here to
    multiples of the axis size, the padding masked out). Returns {edge_logits, edge_scores} [B, E].
    """
    if nodes not in NODES:
        raise ValueError(f"model.partition_nodes must be one of {NODES}, got {nodes!r}")
    mesh = mesh_for(axis, mesh)
    k = mesh.shape[axis]
    n_edges = edge_mask.shape[1]
    hits = jnp.where(hit_mask[..., None], hits, 0.0)
    edges, edge_mask = _pad(edges, 1, k), _pad(edge_mask, 1, k)
    if nodes == "sharded":
        hits = _pad(hits, 1, k)
    graphdef, state = nnx.split(model)
    reduce = lambda a: lax.psum(a, axis)  # noqa: E731

    def local(state, hits, edges, mask):
        m = nnx.merge(graphdef, state)
        if nodes == "sharded":
            one = lambda h, e, k_: _sharded_graph(m, h, e, k_, axis)  # noqa: E731
        else:
            one = lambda h, e, k_: m.graph(h, e, k_, reduce)  # noqa: E731
        return jax.vmap(one)(hits, edges, mask)

    sharded = P(None, axis)
    logits = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(P(), sharded if nodes == "sharded" else P(), sharded, sharded),
        out_specs=sharded,
        axis_names={axis},
    )(state, hits, edges, edge_mask)[:, :n_edges]
    return {"edge_logits": logits, "edge_scores": jax.nn.sigmoid(logits)}


def call(model: IGN, hits, hit_mask, edges, edge_mask) -> dict[str, jax.Array]:
    """``forward`` as the model's config asks: ``model.partition`` (the mesh axis) and
    ``model.partition_nodes`` (``replicated`` or ``sharded``)."""
    cfg = model.cfg
    return forward(
        model,
        hits,
        hit_mask,
        edges,
        edge_mask,
        axis=cfg.partition,
        nodes=getattr(cfg, "partition_nodes", "replicated"),
    )
