"""The edge filter of the Exa.TrkX / acorn pipeline (acorn's ``Filter`` stage) in Flax NNX.

An MLP scores each candidate edge of a graph stage (the module map, or a metric-learning graph) from
the features of its two hits (inner, outer) -> one logit; edges scoring above a cut are kept for the
Interaction GNN (``construction.filtered_graph``). Trained on the candidate edges with their truth
(consecutive hits of one particle when the batch has ``true_edges``, else same particle: the GNN's
``edge_truth``) by binary cross-entropy, true edges weighted ``pos_weight`` (a filter should keep the
true edges: the GNN cannot restore one it dropped).

Sizes: see ``configs/tracking-filter.yaml``. The inputs and outputs are the Interaction GNN's
(``hits, hit_mask, edges, edge_mask -> edge_logits, edge_scores``), so the GNN's evaluation helpers and
export shapes serve both.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ..layers import F32, activation_fn
from . import gnn
from .gnn import AcornMLP


@dataclasses.dataclass
class FilterConfig:
    name: str = "tracking_filter"
    n_features: int = 7  # the trackml format's hit features (3 with data.cell_features: false)
    hidden: int = 512
    nb_layer: int = 3
    activation: str = "tanh"
    layernorm: bool = True
    pos_weight: float = 4.0
    edge_cut: float = 0.5  # the kept edges' score (construction.filtered_graph's default)
    pt_cut: float = 1.0  # GeV: target_efficiency, the training metric of true edges of pT >= pt_cut
    max_nodes: int = 1024  # export example shapes
    max_edges: int = 4096

    def __post_init__(self):
        if self.hidden < 1 or self.nb_layer < 1:
            raise ValueError("model.hidden and model.nb_layer must be positive")
        if not self.pos_weight > 0:
            raise ValueError(f"model.pos_weight must be positive, not {self.pos_weight}")
        if not 0 <= self.edge_cut < 1:
            raise ValueError(f"model.edge_cut must be in [0, 1), not {self.edge_cut}")
        activation_fn(self.activation)


class FilterMLP(nnx.Module):
    """acorn's edge filter: an MLP on the features of an edge's two hits -> one logit per edge."""

    def __init__(self, cfg: FilterConfig, *, rngs: nnx.Rngs, dtype=F32):
        widths = [2 * cfg.n_features] + [cfg.hidden] * cfg.nb_layer + [1]
        self.mlp = AcornMLP(
            widths, layernorm=cfg.layernorm, activation=cfg.activation, final=False, rngs=rngs, dtype=dtype
        )
        self.dtype = dtype

    def __call__(self, hits: jax.Array, edges: jax.Array) -> jax.Array:
        """hits [N, F], edges [E, 2] -> logits [E]."""
        pair = jnp.concatenate([hits[edges[:, 0]], hits[edges[:, 1]]], -1).astype(self.dtype)
        return self.mlp(pair)[:, 0].astype(F32)


class Filter(nnx.Module):
    def __init__(self, cfg: FilterConfig, *, rngs: nnx.Rngs, dtype=F32):
        self.cfg = cfg
        self.mlp = FilterMLP(cfg, rngs=rngs, dtype=dtype)

    def __call__(self, hits, hit_mask, edges, edge_mask) -> dict[str, jax.Array]:
        hits = jnp.where(hit_mask[..., None], hits, 0.0)
        logits = jnp.where(edge_mask, jax.vmap(self.mlp)(hits, edges), 0.0)
        return {"edge_logits": logits, "edge_scores": jax.nn.sigmoid(logits)}


def loss(model: Filter, batch: dict) -> tuple[jax.Array, dict[str, jax.Array]]:
    cfg = model.cfg
    out = model(batch["hits"], batch["hit_mask"], batch["edges"], batch["edge_mask"])
    mask = batch["edge_mask"]
    y = gnn.edge_truth(batch)
    w = jnp.where(y, cfg.pos_weight, 1.0) * mask
    bce = optax.sigmoid_binary_cross_entropy(out["edge_logits"], y.astype(F32))
    n = jnp.maximum(mask.sum(), 1)
    kept = (out["edge_scores"] > cfg.edge_cut) & mask
    target = y & (gnn.edge_pt(batch) >= cfg.pt_cut)
    f = lambda a: a.sum().astype(F32)  # noqa: E731
    return jnp.sum(w * bce) / n, {
        "edge_efficiency": f(kept & y) / jnp.maximum(f(y), 1.0),
        "target_efficiency": f(kept & target) / jnp.maximum(f(target), 1.0),
        "edge_purity": f(kept & y) / jnp.maximum(f(kept), 1.0),
        "kept_fraction": f(kept) / n,
    }


def parse_cuts(text: str) -> tuple[float, ...]:
    """``smilejax eval``'s ``--cuts``: comma-separated scores in [0, 1)."""
    try:
        cuts = tuple(float(c) for c in text.split(",") if c.strip())
    except ValueError:
        raise ValueError(f"--cuts takes comma-separated scores, not {text!r}") from None
    if not cuts or not all(0 <= c < 1 for c in cuts):
        raise ValueError(f"--cuts must be scores in [0, 1), not {text!r}")
    return cuts


def build(cfg: FilterConfig, *, rngs: nnx.Rngs, dtype=F32) -> Filter:
    return Filter(cfg, rngs=rngs, dtype=dtype)


input_spec = gnn.input_spec  # the same inputs (hits, hit_mask, edges, edge_mask) and example sizes
