"""``smilejax eval RUN`` for an edge-filter run: its scores on the candidate edges of the graph stage it
trained on, per score cut (``--cuts``, default ``CUTS`` and the run's ``edge_cut``): edge efficiency
(true edges kept, all and of particles above the run's ``pt_cut``), purity of the kept edges, the kept
fraction of the candidates and kept edges per event. Edge truth: consecutive hits of one particle (the
GNN evaluation's). ``graph_efficiency``: the kept true edges over all true consecutive pairs, so the graph
stage's own losses count too. Writes ``filter_cuts.png`` (efficiency, purity and kept fraction vs cut).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from smilejax.evaluation import EvalOptions, predict
from smilejax.plotting import pyplot
from smilejax.trained import TrainedModel

from .evaluation import INPUTS, consecutive_truth, eval_inputs, forward
from .filter import parse_cuts

CUTS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
TOTALS = ("candidates", "true", "target", "true_pairs", "target_pairs")
COUNTS = ("kept", "kept_true", "kept_target")


def tally(scores: np.ndarray, y: np.ndarray, target: np.ndarray, cuts: Sequence[float]) -> np.ndarray:
    """[len(cuts), 3] counts of one event's edges scoring above each cut: kept, kept true, kept target."""
    kept = scores[None, :] > np.asarray(cuts, np.float64)[:, None]
    return np.stack([kept.sum(1), (kept & y).sum(1), (kept & target).sum(1)], 1)


def rates(totals: dict[str, int], counts: np.ndarray, cuts: Sequence[float], n_events: int) -> list[dict]:
    """Per cut: efficiency (kept true / true candidates), target efficiency, purity (kept true / kept),
    kept fraction (kept / candidates), graph efficiency (kept true / all true pairs) and kept edges per
    event, from ``totals`` (``TOTALS``) and summed ``tally`` counts."""
    out = []
    for cut, (kept, kept_true, kept_target) in zip(cuts, counts.tolist(), strict=True):
        out.append(
            {
                "cut": float(cut),
                "efficiency": kept_true / max(totals["true"], 1),
                "efficiency_target": kept_target / max(totals["target"], 1),
                "purity": kept_true / max(kept, 1),
                "kept_fraction": kept / max(totals["candidates"], 1),
                "graph_efficiency": kept_true / max(totals["true_pairs"], 1),
                "graph_efficiency_target": kept_target / max(totals["target_pairs"], 1),
                "edges_per_event": kept / max(n_events, 1),
            }
        )
    return out


def evaluate(trained: TrainedModel, opts: EvalOptions) -> dict:
    trained = eval_inputs(trained)
    cfg = trained.cfg.model
    given = opts.model.get("cuts")
    cuts = sorted({*(parse_cuts(given) if given else CUTS), cfg.edge_cut})
    src = predict.source(trained, opts.split)
    batch_size = trained.cfg.data.batch_size
    n = predict.available(src, batch_size)
    n = n if opts.jets is None else min(opts.jets, n)
    if n == 0:
        raise ValueError(f"the {opts.split} split has no complete batch of {batch_size} events")
    totals = dict.fromkeys(TOTALS, 0)
    counts = np.zeros((len(cuts), len(COUNTS)), np.int64)
    n_events = 0
    stream = predict.batches(trained, src, forward, n, desc="eval filter", unit="event", inputs=INPUTS)
    for batch, out in stream:
        for row in range(len(batch["hits"])):
            m, n_hits = int(batch["edge_mask"][row].sum()), int(batch["hit_mask"][row].sum())
            edges = batch["edges"][row, :m]
            pairs = batch["true_edges"][row, : int(batch["true_edge_mask"][row].sum())]
            pt = batch["pt"][row]
            y = consecutive_truth(edges, pairs, n_hits)
            target = y & (pt[edges[:, 0]] > cfg.pt_cut)
            pair_target = pt[pairs[:, 0]] > cfg.pt_cut
            values = (m, y.sum(), target.sum(), len(pairs), pair_target.sum())
            for key, value in zip(TOTALS, values, strict=True):
                totals[key] += int(value)
            counts += tally(out["edge_scores"][row, :m], y, target, cuts)
            n_events += 1
    per_cut = rates(totals, counts, cuts, n_events)
    metrics = {
        "n_events": n_events,
        "pt_cut": cfg.pt_cut,
        "candidates_per_event": totals["candidates"] / n_events,
        "candidate_efficiency": totals["true"] / max(totals["true_pairs"], 1),
        "candidate_purity": totals["true"] / max(totals["candidates"], 1),
        "cuts": per_cut,
    }
    metrics["files"] = _plot(opts, per_cut)
    return metrics


def _plot(opts: EvalOptions, per_cut: list[dict]) -> list[str]:
    plt = pyplot(opts.out / "filter_cuts.png")
    if plt is None:
        return []
    fig, ax = plt.subplots(figsize=(5, 4))
    x = [r["cut"] for r in per_cut]
    for key in ("efficiency", "efficiency_target", "purity", "kept_fraction"):
        ax.plot(x, [r[key] for r in per_cut], marker="o", label=key)
    ax.set_xscale("log")
    ax.set_xlabel("filter score cut")
    ax.set_ylim(0, 1.05)
    ax.legend()
    fig.tight_layout()
    fig.savefig(opts.out / "filter_cuts.png")
    plt.close(fig)
    return ["filter_cuts.png"]


def summary(metrics: dict) -> str:
    lines = [
        f"candidates: {metrics['candidates_per_event']:.0f} edges per event, efficiency "
        f"{metrics['candidate_efficiency']:.3f}, purity {metrics['candidate_purity']:.3f}",
        f"{'cut':>6} {'efficiency':>10} {'pT>' + format(metrics['pt_cut'], 'g'):>8} {'purity':>7} "
        f"{'kept':>6} {'edges/event':>11}",
    ]
    for r in metrics["cuts"]:
        lines.append(
            f"{r['cut']:>6g} {r['efficiency']:>10.4f} {r['efficiency_target']:>8.4f} {r['purity']:>7.4f} "
            f"{r['kept_fraction']:>6.3f} {r['edges_per_event']:>11.0f}"
        )
    return "\n".join(lines)
