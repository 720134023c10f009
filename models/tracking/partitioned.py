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

Both forms are ``IGN.graph`` and ``gnn.interaction_step`` (scanned over the iterations) with these
collectives as their ``reduce`` and ``gather`` hooks, so they compute what ``IGN.graph`` computes on one
device, up to the order of floating-point sums (tests compare scores and gradients on 8 CPU devices
against 1). Parameters stay replicated; their gradients come back summed
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

from .gnn import IGN

Nodes = Literal["replicated", "sharded"]  # checked by IGNConfig (model.partition_nodes)


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
    mesh = mesh_for(axis, mesh)
    k = mesh.shape[axis]
    if k == 1:  # nothing to split; XLA also rejects a psum over a size-1 manual axis here (RET_CHECK)
        return model.unpartitioned(hits, hit_mask, edges, edge_mask)
    n_edges = edge_mask.shape[1]
    hits = jnp.where(hit_mask[..., None], hits, 0.0)
    edges, edge_mask = _pad(edges, 1, k), _pad(edge_mask, 1, k)
    if nodes == "sharded":
        hits = _pad(hits, 1, k)
    graphdef, state = nnx.split(model)
    # interaction_step's hooks: the node sums of this device's edges completed over the axis, and (with
    # sharded nodes) every node the edges read gathered from the slices
    if nodes == "sharded":
        reduce = lambda a: lax.psum_scatter(a, axis, scatter_dimension=0, tiled=True)  # noqa: E731
        gather = lambda a: lax.all_gather(a, axis, axis=0, tiled=True)  # noqa: E731
    else:
        reduce, gather = (lambda a: lax.psum(a, axis)), None

    def local(state, hits, edges, mask):
        m = nnx.merge(graphdef, state)
        return jax.vmap(lambda h, e, k_: m.graph(h, e, k_, reduce, gather))(hits, edges, mask)

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
        nodes=cfg.partition_nodes,
    )
