"""``smilejax eval RUN`` for a metric-learning run: the graphs its embedding builds on the device (radius
``--radius``, default the run's ``r_train``; at most ``--knn`` neighbours, default the run's ``knn``)
against the true consecutive pairs: edge efficiency, purity and edges per event, and the efficiency for
particles above ``--pt-cut`` GeV. Writes ``graph_efficiency.png`` (efficiency vs pT)."""

from __future__ import annotations

import dataclasses

import numpy as np

from smilejax.evaluation import EvalOptions, predict
from smilejax.plotting import pyplot
from smilejax.trained import TrainedModel

from . import construction, embedding

FIELDS = ("hits", "hit_mask", "particle", "pt", "true_edges", "true_edge_mask")
PT_BINS = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0])


def _keys(edges: np.ndarray, n: int) -> np.ndarray:
    return np.minimum(edges[:, 0], edges[:, 1]) * n + np.maximum(edges[:, 0], edges[:, 1])


def evaluate(trained: TrainedModel, opts: EvalOptions) -> dict:
    cfg = trained.cfg.model
    radius = opts.model.get("radius") or cfg.r_train
    knn = opts.model.get("knn") or cfg.knn
    pt_cut = opts.model.get("pt_cut", 1.0)
    data = trained.cfg.data.with_batch_size(min(trained.cfg.data.global_batch_sizes()))
    if hasattr(data, "fields"):
        data = dataclasses.replace(data, fields=list(dict.fromkeys([*data.fields, *FIELDS])))
    trained = dataclasses.replace(trained, cfg=dataclasses.replace(trained.cfg, data=data))

    def forward(model, batch):
        import jax

        emb = model(batch["hits"], batch["hit_mask"])["embedding"]

        def one(e, m, h):
            idx, valid = embedding.radius_graph(e, m, radius, knn, cfg.chunk)
            edges, mask = embedding.edges_from_neighbours(idx, valid, h[:, 0])
            return {"edges": edges, "mask": mask}

        return jax.vmap(one)(emb, batch["hit_mask"], batch["hits"])

    src = predict.source(trained, opts.split)
    n = predict.available(src, data.batch_size)
    n = n if opts.jets is None else min(opts.jets, n)
    if n == 0:
        raise ValueError(f"the {opts.split} split has no complete batch of {data.batch_size} events")
    rows, found_pt, all_pt = [], [], []
    for batch, out in predict.batches(
        trained, src, forward, n, desc="eval graphs", unit="event", inputs=("hits", "hit_mask")
    ):
        for r in range(len(batch["hits"])):
            n_hits = int(batch["hit_mask"][r].sum())
            edges = out["edges"][r][out["mask"][r]]
            true = batch["true_edges"][r, : int(batch["true_edge_mask"][r].sum())]
            rows.append(construction.edge_metrics(edges, true, n_hits))
            hit = np.isin(_keys(true, n_hits), _keys(edges, n_hits))
            pt = batch["pt"][r][true[:, 0]]
            found_pt.append(pt[hit])
            all_pt.append(pt)
    found_pt, all_pt = np.concatenate(found_pt), np.concatenate(all_pt)
    num, den = np.histogram(found_pt, PT_BINS)[0], np.histogram(all_pt, PT_BINS)[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        eff_pt = num / den
    metrics = {
        "n_events": len(rows),
        "radius": radius,
        "knn": knn,
        "efficiency": float(np.mean([r["efficiency"] for r in rows])),
        f"efficiency_pt>{pt_cut:g}": float((found_pt > pt_cut).sum() / max((all_pt > pt_cut).sum(), 1)),
        "purity": float(np.mean([r["purity"] for r in rows])),
        "edges_per_event": float(np.mean([r["edges"] for r in rows])),
        "efficiency_vs_pt": {"edges": PT_BINS.tolist(), "rate": eff_pt.tolist()},
    }
    plt = pyplot(opts.out / "graph_efficiency.png")
    if plt is not None:
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.step(0.5 * (PT_BINS[1:] + PT_BINS[:-1]), eff_pt, where="mid")
        ax.set_xlabel("pT [GeV]")
        ax.set_ylabel("true pairs in the graph")
        ax.set_ylim(0, 1.05)
        fig.tight_layout()
        fig.savefig(opts.out / "graph_efficiency.png")
        plt.close(fig)
        metrics["files"] = ["graph_efficiency.png"]
    return metrics


def summary(metrics: dict) -> str:
    return (
        f"graph (radius {metrics['radius']:g}, knn {metrics['knn']}): "
        f"efficiency {metrics['efficiency']:.3f}, "
        f"purity {metrics['purity']:.3f}, {metrics['edges_per_event']:.0f} edges per event"
    )
