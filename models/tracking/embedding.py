"""Metric-learning graph construction (acorn's ``MetricLearning`` stage) in Flax NNX.

An MLP maps each hit to a point in a low-dimensional space (acorn's TrackML metric-learning config:
``emb_hidden: 1024``, ``nb_layer: 4``, ``emb_dim: 12``, ``r_train: 0.1``, ``knn: 50``, ``margin: 0.1``,
``randomisation: 2``); trained with a hinge loss on squared distances so that hits of one particle lie
within the radius and other pairs beyond the margin. Pairs per event: the true consecutive pairs
(``true_edges``, add it to ``data.fields``), ``random_pairs`` random pairs, and hard negatives: the
``knn`` nearest hits (in the current embedding, no gradient) of ``queries`` random hits.

Graph construction: ``radius_graph`` finds, on the device, the ``k`` nearest hits of every hit within
radius ``r`` in the embedding (fixed-size neighbour lists, queries in chunks so memory is
``chunk x N``), and ``edges_from_neighbours`` turns them into a padded inner -> outer edge list for the
edge classifier. acorn's optional edge filter, a trained stage after either graph, is ``filter``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from ..layers import F32
from .gnn import AcornMLP


@dataclasses.dataclass
class EmbeddingConfig:
    name: str = "tracking_embedding"
    n_features: int = 7
    emb_hidden: int = 1024
    nb_layer: int = 4
    emb_dim: int = 12
    activation: str = "tanh"
    layernorm: bool = True
    r_train: float = 0.1
    margin: float = 0.1
    knn: int = 50
    queries: int = 64
    random_pairs: int = 2048
    pos_weight: float = 2.0
    chunk: int = 1024
    max_nodes: int = 1024


class Embedding(nnx.Module):
    def __init__(self, cfg: EmbeddingConfig, *, rngs: nnx.Rngs, dtype=F32):
        self.cfg = cfg
        self.dtype = dtype
        widths = [cfg.n_features] + [cfg.emb_hidden] * cfg.nb_layer + [cfg.emb_dim]
        self.mlp = AcornMLP(
            widths, layernorm=cfg.layernorm, activation=cfg.activation, final=False, rngs=rngs, dtype=dtype
        )
        self.pairs = nnx.Rngs(pairs=rngs.params())

    def __call__(self, hits: jax.Array, hit_mask: jax.Array) -> dict[str, jax.Array]:
        emb = self.mlp(jnp.where(hit_mask[..., None], hits, 0.0).astype(self.dtype)).astype(F32)
        return {"embedding": jnp.where(hit_mask[..., None], emb, 0.0)}


def radius_graph(
    emb: jax.Array, mask: jax.Array, r: float, k: int, chunk: int = 1024
) -> tuple[jax.Array, jax.Array]:
    """Neighbour lists of one event: idx [N, k] (the k nearest other real hits of each hit) and valid
    [N, k] (within ``r`` and real). Queries run ``chunk`` at a time (memory ``chunk x N``)."""
    n = emb.shape[0]
    k = min(k, n - 1) if n > 1 else 1
    chunk = min(chunk, n)
    pad = -n % chunk
    q_all = jnp.pad(emb, ((0, pad), (0, 0))).reshape(-1, chunk, emb.shape[1])
    rows = jnp.arange(n + pad).reshape(-1, chunk)
    sq = jnp.sum(emb * emb, -1)

    def one(args):
        q, row = args
        d2 = jnp.sum(q * q, -1)[:, None] + sq[None, :] - 2 * q @ emb.T
        d2 = jnp.where(mask[None, :] & (row[:, None] != jnp.arange(n)[None, :]), d2, jnp.inf)
        neg, idx = jax.lax.top_k(-d2, k)
        return idx.astype(jnp.int32), -neg

    idx, d2 = jax.lax.map(one, (q_all, rows))
    idx, d2 = idx.reshape(-1, k)[:n], d2.reshape(-1, k)[:n]
    valid = (d2 <= r * r) & mask[:, None]
    return idx, valid


def edges_from_neighbours(idx: jax.Array, valid: jax.Array, radius: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[N * k, 2] edges (inner -> outer by the hits' ``radius``) and their mask; a pair found from both
    ends is kept once (from its inner hit)."""
    n, k = idx.shape
    src = jnp.repeat(jnp.arange(n, dtype=jnp.int32), k)
    dst = idx.reshape(-1)
    inner = (radius[src] < radius[dst]) | ((radius[src] == radius[dst]) & (src < dst))
    keep = valid.reshape(-1) & inner
    # a pair seen only from its outer hit is kept too, flipped
    flipped = valid.reshape(-1) & ~inner & ~_seen_from(idx, valid, dst, src)
    edges = jnp.stack([jnp.where(inner, src, dst), jnp.where(inner, dst, src)], -1)
    return jnp.where((keep | flipped)[:, None], edges, 0), keep | flipped


def _seen_from(idx, valid, a, b):
    """Whether b is among a's valid neighbours, per pair."""
    return jnp.any((idx[a] == b[:, None]) & valid[a], axis=-1)


def _pair_loss(emb, particle, a, b, w, margin2):
    d2 = jnp.sum(jnp.square(emb[a] - emb[b]), -1)
    same = (particle[a] == particle[b]) & (particle[a] > 0) & (a != b)
    pos = jnp.sum(jnp.where(same, d2, 0) * w) / jnp.maximum(jnp.sum(same * w), 1)
    neg = jnp.sum(jnp.where(~same, jax.nn.relu(margin2 - d2), 0) * w) / jnp.maximum(jnp.sum(~same * w), 1)
    return pos, neg, d2, same


def _event_loss(cfg: EmbeddingConfig, key, emb, mask, particle, true_edges, true_mask):
    n = emb.shape[0]
    n_real = jnp.maximum(mask.sum(), 1)
    k1, k2 = jax.random.split(key)
    rand = (jax.random.uniform(k1, (cfg.random_pairs, 2)) * n_real).astype(jnp.int32)
    q = (jax.random.uniform(k2, (cfg.queries,)) * n_real).astype(jnp.int32)
    sg = jax.lax.stop_gradient(emb)
    d2q = jnp.sum(jnp.square(sg[q][:, None] - sg[None]), -1)
    d2q = jnp.where(mask[None] & (q[:, None] != jnp.arange(n)[None]), d2q, jnp.inf)
    _, near = jax.lax.top_k(-d2q, min(cfg.knn, n - 1))
    a = jnp.concatenate([true_edges[:, 0], rand[:, 0], jnp.repeat(q, near.shape[1])])
    b = jnp.concatenate([true_edges[:, 1], rand[:, 1], near.reshape(-1)])
    w = jnp.concatenate([true_mask * cfg.pos_weight, jnp.ones(cfg.random_pairs), jnp.ones(near.size)]).astype(
        F32
    )
    w = w * mask[a] * mask[b]
    pos, neg, d2, same = _pair_loss(emb, particle, a, b, w, cfg.margin**2)
    r2 = cfg.r_train**2
    t = true_mask.astype(F32)
    found = jnp.sum((d2[: t.size] <= r2) * t) / jnp.maximum(t.sum(), 1)
    wrong = ~same & (w > 0)
    fake = jnp.sum((d2 <= r2) & wrong) / jnp.maximum(jnp.sum(wrong), 1)
    return pos + neg, found, fake


def loss(model: Embedding, batch: dict) -> tuple[jax.Array, dict[str, jax.Array]]:
    if "true_edges" not in batch:
        raise ValueError(
            "tracking_embedding trains on true pairs: add true_edges, true_edge_mask to data.fields"
        )
    emb = model(batch["hits"], batch["hit_mask"])["embedding"]
    keys = jax.random.split(model.pairs.pairs(), emb.shape[0])
    cfg = model.cfg
    value, found, fake = jax.vmap(lambda *a: _event_loss(cfg, *a))(
        keys, emb, batch["hit_mask"], batch["particle"], batch["true_edges"], batch["true_edge_mask"]
    )
    return value.mean(), {"true_pairs_in_radius": found.mean(), "other_pairs_in_radius": fake.mean()}


def build(cfg: EmbeddingConfig, *, rngs: nnx.Rngs, dtype=F32) -> Embedding:
    return Embedding(cfg, rngs=rngs, dtype=dtype)


def input_spec(cfg: EmbeddingConfig, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    n = cfg.max_nodes
    return {
        "hits": jax.ShapeDtypeStruct((batch_size, n, cfg.n_features), jnp.float32),
        "hit_mask": jax.ShapeDtypeStruct((batch_size, n), jnp.bool_),
    }
