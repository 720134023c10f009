"""The Interaction GNN edge classifier of the Exa.TrkX / acorn pipeline, in Flax NNX.

Architecture (acorn's ``InteractionGNN``; sizes of acorn's TrackML / ITk edge-classifier configs:
``hidden: 128``, ``n_graph_iters: 8``, ``nb_node_layer: 2``, ``nb_edge_layer: 2``, ``layernorm: True``,
``batchnorm: False``, ``aggregation: sum``, ``hidden_activation: SiLU``, ``edge_cut: 0.5``; truth
weighting ``weight: 2`` for true edges of particles with pT >= 1 GeV)::

    hits [N, F] -> node encoder MLP -> x [N, H]
    (x[sender], x[receiver]) -> edge encoder MLP -> e [E, H]
    8 x interaction_step (residual):
        x <- x + node_net(x, sum of e into the node, sum of e out of the node)
        e <- e + edge_net(x[sender], x[receiver], e)
    (x[sender], x[receiver], e) -> edge classifier MLP -> one logit per edge

Each MLP is acorn's ``make_mlp``: Linear, LayerNorm, SiLU per layer (267,009 parameters at these
sizes with 7 hit features, recurrent). ``recurrent: true`` (acorn's
``InteractionGNN``) shares the node and edge networks across iterations; ``false`` (``InteractionGNN2``
style) gives each iteration its own.

Graphs are padded (``edge_mask``, ``hit_mask``): padded edges contribute nothing to the sums, so the
scores of real edges do not depend on the padding. Message passing is ``jax.ops.segment_sum`` over the
edge list of one graph; ``interaction_step`` is a pure per-graph function with ``reduce`` and ``gather``
hooks for the node exchange of graph-partitioned training (``partitioned`` passes its ``shard_map``
collectives and reuses the same step), and the batch of events is ``jax.vmap``-ed over it.
``remat: true`` rematerialises each iteration in the backward pass (activation memory of one
iteration instead of eight).
``partition: AXIS`` splits each graph's edges over that mesh axis (``partitioned``, the mesh in
context), with ``partition_nodes`` replicated or sharded.

Loss: binary cross-entropy on edge truth over real edges, weighted (``true_weight`` for true edges
whose particle has pT >= ``pt_cut``, 1 otherwise). Edge truth: consecutive hits of one particle when
the batch has ``true_edges`` (acorn's ``y``), else the format's ``edge_y`` (same particle).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from ..layers import F32, Dense, LayerNorm, activation_fn

Reduce = Callable[[jax.Array], jax.Array]  # node sums of edge shards -> combined
Gather = Callable[[jax.Array], jax.Array]  # this device's nodes -> all nodes


@dataclasses.dataclass
class IGNConfig:
    """Interaction GNN hyperparameters (acorn's names where it has them)."""

    name: str = "ign"
    n_features: int = 7  # the trackml format's hit features (3 with data.cell_features: false)
    hidden: int = 128
    n_graph_iters: int = 8
    nb_node_layer: int = 2
    nb_edge_layer: int = 2
    classifier_layers: int = 3
    layernorm: bool = True
    hidden_activation: str = "silu"
    recurrent: bool = True
    remat: bool = False
    # iterations per step of the scan over the n_graph_iters iterations (n_graph_iters: fully unrolled,
    # the longer compile of the loop as it was, which ran up to ~20 % faster per step on a CPU)
    scan_unroll: int = 1
    edge_cut: float = 0.5
    pt_cut: float = 1.0  # GeV: target particles of the weighting and of the metrics
    true_weight: float = 2.0
    max_nodes: int = 1024  # export example shapes
    max_edges: int = 4096
    # graph-partitioned training (``partitioned``): the mesh axis the edges of each graph are split over
    # ("": none, one device per graph) and whether the nodes are replicated or sharded over it
    partition: str = ""
    partition_nodes: str = "replicated"

    def __post_init__(self):
        if self.n_graph_iters < 1 or self.hidden < 1 or self.scan_unroll < 1:
            raise ValueError("model.n_graph_iters, model.hidden and model.scan_unroll must be positive")
        activation_fn(self.hidden_activation)
        if self.partition_nodes not in ("replicated", "sharded"):
            raise ValueError(
                f"model.partition_nodes must be replicated or sharded, not {self.partition_nodes!r}"
            )


class AcornMLP(nnx.Module):
    """acorn's ``make_mlp``: ``layers`` x (Linear, LayerNorm, activation); ``final=False`` leaves the
    last Linear bare (the classifier's logit)."""

    def __init__(self, widths, *, layernorm: bool, activation: str, final: bool, rngs, dtype):
        n = len(widths) - 1
        # parameters stay unnamed (replicated): the model is small (267k at acorn's size), and graph-
        # partitioned training uses the mesh's model axes for the edges, not for the weights
        axes = [None] * (n + 1)
        self.dense = nnx.List(
            [
                Dense(widths[i], widths[i + 1], in_axis=axes[i], out_axis=axes[i + 1], rngs=rngs, dtype=dtype)
                for i in range(n)
            ]
        )
        keep = n if final else n - 1
        self.norms = nnx.List([LayerNorm(widths[i + 1], affine=True, axis=axes[i + 1]) for i in range(keep)])
        self.norm = layernorm
        self.act = activation_fn(activation)
        self.final = final

    def __call__(self, x: jax.Array) -> jax.Array:
        for i, layer in enumerate(self.dense):
            x = layer(x)
            if i < len(self.norms):
                x = self.act(self.norms[i](x) if self.norm else x)
        return x


class Interaction(nnx.Module):
    """One message-passing iteration's networks."""

    def __init__(self, cfg: IGNConfig, *, rngs, dtype):
        h = cfg.hidden
        kw = dict(
            layernorm=cfg.layernorm, activation=cfg.hidden_activation, final=True, rngs=rngs, dtype=dtype
        )
        self.node_net = AcornMLP([3 * h] + [h] * cfg.nb_node_layer, **kw)
        self.edge_net = AcornMLP([3 * h] + [h] * cfg.nb_edge_layer, **kw)


def aggregate(
    e: jax.Array, senders: jax.Array, receivers: jax.Array, mask: jax.Array, n_nodes: int
) -> jax.Array:
    """[N, 2H]: per node, the sum of its incoming and of its outgoing edge features (padded edges out)."""
    e = jnp.where(mask[:, None], e, 0)
    inc = jax.ops.segment_sum(e, receivers, num_segments=n_nodes)
    out = jax.ops.segment_sum(e, senders, num_segments=n_nodes)
    return jnp.concatenate([inc, out], axis=-1)


def interaction_step(
    block: Interaction,
    nodes: jax.Array,
    edges: jax.Array,
    senders: jax.Array,
    receivers: jax.Array,
    mask: jax.Array,
    reduce: Reduce | None = None,
    gather: Gather | None = None,
    n_nodes: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """One residual iteration on one graph: nodes [N, H], edges [E, H], senders/receivers [E], mask [E].

    Hooks for a graph whose edges are split over devices (``partitioned``): ``reduce`` combines the
    node sums of the edge shards (``lax.psum`` when every device holds all nodes, ``lax.psum_scatter``
    when each holds a slice); ``gather`` gives all ``n_nodes`` nodes the edges index from this device's
    ``nodes`` (``lax.all_gather`` of the slices). None: one device, this graph's edges and nodes.
    Returns this device's nodes and its edges.
    """
    agg = aggregate(edges, senders, receivers, mask, n_nodes or nodes.shape[0])
    if reduce is not None:
        agg = reduce(agg)
    new_nodes = nodes + block.node_net(jnp.concatenate([nodes, agg.astype(nodes.dtype)], -1))
    every = gather(new_nodes) if gather is not None else new_nodes
    pair = jnp.concatenate([every[senders], every[receivers], edges], -1)
    return new_nodes, edges + block.edge_net(pair)


def pure_step(block: Interaction, remat: bool = False):
    """``interaction_step`` as ``fn(state, nodes, edges, senders, receivers, mask, reduce=None,
    gather=None, n_nodes=None)`` over the block's ``nnx.State`` (for ``jax.jit`` / ``shard_map``);
    ``remat`` checkpoints it."""
    graphdef, _ = nnx.split(block)

    def fn(state, nodes, edges, senders, receivers, mask, reduce=None, gather=None, n_nodes=None):
        block = nnx.merge(graphdef, state)
        return interaction_step(block, nodes, edges, senders, receivers, mask, reduce, gather, n_nodes)

    return jax.checkpoint(fn, static_argnums=(6, 7, 8)) if remat else fn


class IGN(nnx.Module):
    def __init__(self, cfg: IGNConfig, *, rngs: nnx.Rngs, dtype=F32):
        h = cfg.hidden
        self.cfg = cfg
        self.dtype = dtype
        kw = dict(layernorm=cfg.layernorm, activation=cfg.hidden_activation, rngs=rngs, dtype=dtype)
        self.node_encoder = AcornMLP([cfg.n_features] + [h] * cfg.nb_node_layer, final=True, **kw)
        self.edge_encoder = AcornMLP([2 * h] + [h] * cfg.nb_edge_layer, final=True, **kw)
        n_blocks = 1 if cfg.recurrent else cfg.n_graph_iters
        self.blocks = nnx.List([Interaction(cfg, rngs=rngs, dtype=dtype) for _ in range(n_blocks)])
        self.classifier = AcornMLP([3 * h] + [h] * (cfg.classifier_layers - 1) + [1], final=False, **kw)

    def graph(
        self,
        hits: jax.Array,
        edges: jax.Array,
        edge_mask: jax.Array,
        reduce: Reduce | None = None,
        gather: Gather | None = None,
    ) -> jax.Array:
        """Edge logits [E] of one graph (hits [N, F], edges [E, 2], edge_mask [E]); ``reduce`` and
        ``gather``: ``interaction_step``'s hooks (with ``gather``, ``hits`` are this device's nodes)."""
        s, r = edges[:, 0], edges[:, 1]
        every = gather if gather is not None else (lambda a: a)
        x = self.node_encoder(hits.astype(self.dtype))
        x_all = every(x)
        e = self.edge_encoder(jnp.concatenate([x_all[s], x_all[r]], -1))
        x, e = self.iterate(x, e, s, r, edge_mask, reduce, gather, x_all.shape[0])
        x_all = every(x)
        logit = self.classifier(jnp.concatenate([x_all[s], x_all[r], e], -1))[:, 0]
        return jnp.where(edge_mask, logit.astype(F32), 0.0)

    def iterate(self, x, e, senders, receivers, mask, reduce=None, gather=None, n_nodes=None):
        """The ``n_graph_iters`` iterations as one ``lax.scan`` (traced and compiled once, not unrolled):
        over the shared block's state (recurrent) or over the blocks' states stacked on a leading axis."""
        step = pure_step(self.blocks[0], self.cfg.remat)
        states = [nnx.split(b)[1] for b in self.blocks]

        def body(carry, state):
            return step(state, *carry, senders, receivers, mask, reduce, gather, n_nodes), None

        n, unroll = self.cfg.n_graph_iters, min(self.cfg.scan_unroll, self.cfg.n_graph_iters)
        if len(states) == 1:  # recurrent: every iteration reads the same weights
            (x, e), _ = jax.lax.scan(lambda c, _: body(c, states[0]), (x, e), length=n, unroll=unroll)
        else:  # stacked per call (a copy of the block weights): the parameter tree keeps one block each
            stacked = jax.tree.map(lambda *a: jnp.stack(a), *states)
            (x, e), _ = jax.lax.scan(body, (x, e), stacked, unroll=unroll)
        return x, e

    def __call__(self, hits, hit_mask, edges, edge_mask) -> dict[str, jax.Array]:
        if self.cfg.partition:  # edges split over a mesh axis (the mesh in context)
            from . import partitioned

            return partitioned.call(self, hits, hit_mask, edges, edge_mask)
        return self.unpartitioned(hits, hit_mask, edges, edge_mask)

    def unpartitioned(self, hits, hit_mask, edges, edge_mask) -> dict[str, jax.Array]:
        """Every graph's edges on one device (under ``jit``'s sharding of the batch axis)."""
        hits = jnp.where(hit_mask[..., None], hits, 0.0)
        logits = jax.vmap(lambda h, e, m: self.graph(h, e, m))(hits, edges, edge_mask)
        return {"edge_logits": logits, "edge_scores": jax.nn.sigmoid(logits)}


def build(cfg: IGNConfig, *, rngs: nnx.Rngs, dtype=F32) -> IGN:
    return IGN(cfg, rngs=rngs, dtype=dtype)


def input_spec(cfg: IGNConfig, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    n, e = cfg.max_nodes, cfg.max_edges
    return {
        "hits": jax.ShapeDtypeStruct((batch_size, n, cfg.n_features), jnp.float32),
        "hit_mask": jax.ShapeDtypeStruct((batch_size, n), jnp.bool_),
        "edges": jax.ShapeDtypeStruct((batch_size, e, 2), jnp.int32),
        "edge_mask": jax.ShapeDtypeStruct((batch_size, e), jnp.bool_),
    }


def consecutive(edges: jax.Array, true_edges: jax.Array, true_mask: jax.Array, n_nodes: int) -> jax.Array:
    """[E] bool: the edge joins consecutive hits of one particle (either direction), from the per-graph
    list of true pairs (each hit has at most one successor along its particle)."""
    nxt = jnp.full((n_nodes,), -1, jnp.int32)
    nxt = nxt.at[jnp.where(true_mask, true_edges[:, 0], n_nodes)].set(true_edges[:, 1], mode="drop")
    s, r = edges[:, 0], edges[:, 1]
    return (nxt[s] == r) | (nxt[r] == s)


def edge_truth(batch: dict) -> jax.Array:
    """[B, E] bool edge truth: consecutive hits of a particle with ``true_edges``, else ``edge_y``."""
    if "true_edges" in batch:
        n = batch["hit_mask"].shape[1]
        y = jax.vmap(lambda e, t, m: consecutive(e, t, m, n))(
            batch["edges"], batch["true_edges"], batch["true_edge_mask"]
        )
        return y & batch["edge_mask"]
    return batch["edge_y"].astype(bool) & batch["edge_mask"]


def edge_pt(batch: dict) -> jax.Array:
    return jnp.take_along_axis(batch["pt"], batch["edges"][..., 0], axis=1)


def loss(model: IGN, batch: dict) -> tuple[jax.Array, dict[str, jax.Array]]:
    cfg = model.cfg
    out = model(batch["hits"], batch["hit_mask"], batch["edges"], batch["edge_mask"])
    logits, mask = out["edge_logits"], batch["edge_mask"]
    y = edge_truth(batch)
    target = y & (edge_pt(batch) >= cfg.pt_cut)
    w = jnp.where(target, cfg.true_weight, 1.0) * mask
    bce = jnp.maximum(logits, 0) - logits * y + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    n = jnp.maximum(mask.sum(), 1)
    value = jnp.sum(w * bce) / n
    passed = (out["edge_scores"] > cfg.edge_cut) & mask
    f = lambda a: a.sum().astype(F32)  # noqa: E731
    return value, {
        "edge_efficiency": f(passed & target) / jnp.maximum(f(target), 1.0),
        "edge_purity": f(passed & y) / jnp.maximum(f(passed), 1.0),
        "edge_accuracy": f((passed == y) & mask) / n,
    }
