"""``smilejax eval RUN`` for the edge classifier: edge efficiency and purity, track building, track
efficiency, fake and duplicate rates for pT > ``pt_cut`` and all pT, binned in pT and eta, and the
TrackML score (definitions: ``tracks``), and the track efficiency, fake and duplicate rates with acorn's
published definitions for its three matching styles (``matching``: ATLAS, one-way, two-way; tracks of at
least ``--min-track-length`` hits, targets pT >= 1 GeV, >= 3 hits, |eta| <= 4), with an added column
beside acorn's fake rate over all tracks: the fake rate of the tracks whose reconstructed pT (the
helix ``merge`` fits through their hits) is above 1 GeV (``fake_rate_reco_pt>1``; ``matching``).

Edge truth: consecutive hits of one particle (the batch's ``true_edges``; evaluation reads them);
"target" edges and particles have pT above the model's ``pt_cut``. Options: ``--score-cut`` (default:
the model's ``edge_cut``), ``--builder cc|walk``, ``--bridge`` (walk: the weakest edge it may cross
once when no edge above the cut is left), ``--merge pieces|hits`` (join the builder's pieces that one
helix fits within ``--merge-sigma`` tolerances; ``hits`` also attaches hits on no track: ``merge``),
``--min-hits``, ``--min-track-length`` (acorn's columns).

Files in ``opts.out``: ``track_efficiency.png`` (vs pT and eta), ``fake_duplicate.png`` (vs pT and eta),
``edge_scores.png`` (score distributions of true and false edges), ``tracking.npz`` (per particle and
per track arrays for custom plots).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from smilejax.evaluation import EvalOptions, predict
from smilejax.plotting import pyplot
from smilejax.trained import TrainedModel

from . import matching, tracks
from .merge import MergeConfig, positions, track_pt
from .merge import config as merge_config

log = logging.getLogger(__name__)

INPUTS = ("hits", "hit_mask", "edges", "edge_mask")
FIELDS = (*INPUTS, "particle", "pt", "eta", "weight", "true_edges", "true_edge_mask")
PT_BINS = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, np.inf])
ETA_BINS = np.linspace(-4, 4, 17)


def forward(model, batch: dict) -> dict:
    return {"edge_scores": model(*(batch[k] for k in INPUTS))["edge_scores"]}


def eval_inputs(trained: TrainedModel) -> TrainedModel:
    data = trained.cfg.data.with_batch_size(min(trained.cfg.data.global_batch_sizes()))
    if hasattr(data, "fields"):
        data = dataclasses.replace(data, fields=list(dict.fromkeys([*data.fields, *FIELDS])))
    return dataclasses.replace(trained, cfg=dataclasses.replace(trained.cfg, data=data))


def consecutive_truth(edges: np.ndarray, true_edges: np.ndarray, n_hits: int) -> np.ndarray:
    nxt = np.full(n_hits, -1, np.int64)
    nxt[true_edges[:, 0]] = true_edges[:, 1]
    return (nxt[edges[:, 0]] == edges[:, 1]) | (nxt[edges[:, 1]] == edges[:, 0])


def event_tracks(
    event: dict,
    scores: np.ndarray,
    cut: float,
    builder: str,
    min_hits: int,
    bridge: float | None = None,
    min_track_length: int = 5,
    merge: MergeConfig | None = None,
) -> dict:
    """One event's track building and matching: per-particle and per-track arrays, its score and
    acorn's counts per matching style (``acorn``; with the hits' features, ``event["hits"]``, also
    the counts of tracks by their fitted pT)."""
    n = int(event["hit_mask"].sum())
    m = int(event["edge_mask"].sum())
    edges = event["edges"][:m]
    particle = event["particle"][:n].astype(np.int64)
    xyz = positions(event["hits"][:n]) if "hits" in event else None
    labels = tracks.build(builder, n, edges, scores[:m], cut, min_hits, bridge, merge, xyz)
    # reconstructed pT of the tracks acorn counts (matchable), from merge's helix fit
    reco_pt = None if xyz is None else track_pt(labels, xyz, min_track_length)
    mt = tracks.match(labels, particle)
    pt_of = np.zeros(mt["n_particle"].size)
    eta_of = np.zeros(mt["n_particle"].size)
    pt_of[particle] = event["pt"][:n]
    eta_of[particle] = event["eta"][:n]
    ids = np.flatnonzero(mt["n_particle"] >= min_hits)
    ids = ids[ids > 0]
    matched = np.zeros(mt["n_particle"].size, bool)
    matched[mt["major"][mt["matched"]]] = True
    return {
        "particle_pt": pt_of[ids],
        "particle_eta": eta_of[ids],
        "particle_matched": matched[ids],
        "track_pt": pt_of[mt["major"]],
        "track_eta": eta_of[mt["major"]],
        "track_noise": mt["major"] == 0,
        "track_fake": mt["fake"],
        "track_duplicate": mt["duplicate"],
        "score": tracks.trackml_score(labels, particle, event["weight"][:n]),
        "acorn": {
            style: matching.event(
                labels,
                particle,
                pt_of,
                eta_of,
                style=style,
                min_track_length=min_track_length,
                track_pt=reco_pt,
            )
            for style in matching.STYLES
        },
    }


def _rate(flags: np.ndarray) -> float:
    return float(flags.mean()) if flags.size else float("nan")


def _binned(x: np.ndarray, flags: np.ndarray, bins: np.ndarray) -> dict:
    k = np.digitize(x, bins) - 1
    num = np.bincount(k[flags], minlength=len(bins) - 1)[: len(bins) - 1]
    den = np.bincount(k, minlength=len(bins) - 1)[: len(bins) - 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = num / den
    return {"edges": bins.tolist(), "rate": rate.tolist(), "count": den.tolist()}


def summarise(g: dict, pt_cut: float) -> dict:
    """Track metrics for all pT and pT > ``pt_cut`` from the gathered per-particle and per-track arrays."""
    out = {}
    for name, p_sel, t_sel in (
        ("all", np.ones_like(g["particle_pt"], bool), np.ones_like(g["track_pt"], bool)),
        (f"pt>{pt_cut:g}", g["particle_pt"] > pt_cut, (g["track_pt"] > pt_cut) & ~g["track_noise"]),
    ):
        out[name] = {
            "particles": int(p_sel.sum()),
            "tracks": int(t_sel.sum()),
            "track_efficiency": _rate(g["particle_matched"][p_sel]),
            "fake_rate": _rate(g["track_fake"][t_sel]),
            "duplicate_rate": _rate(g["track_duplicate"][t_sel]),
        }
    target = g["particle_pt"] > pt_cut
    out["binned"] = {
        "efficiency_vs_pt": _binned(g["particle_pt"], g["particle_matched"], PT_BINS),
        "efficiency_vs_eta": _binned(g["particle_eta"][target], g["particle_matched"][target], ETA_BINS),
        "fake_vs_pt": _binned(g["track_pt"], g["track_fake"], PT_BINS),
        "duplicate_vs_pt": _binned(g["track_pt"], g["track_duplicate"], PT_BINS),
        "fake_vs_eta": _binned(g["track_eta"], g["track_fake"], ETA_BINS),
        "duplicate_vs_eta": _binned(g["track_eta"], g["track_duplicate"], ETA_BINS),
    }
    return out


def evaluate(trained: TrainedModel, opts: EvalOptions) -> dict:
    trained = eval_inputs(trained)
    cfg = trained.cfg.model
    cut = opts.model.get("score_cut")
    cut = cfg.edge_cut if cut is None else cut
    builder, min_hits = opts.model.get("builder", "cc"), opts.model.get("min_hits", 3)
    bridge, min_length = opts.model.get("bridge"), opts.model.get("min_track_length", 5)
    mode, n_sigma = opts.model.get("merge"), opts.model.get("merge_sigma", MergeConfig.n_sigma)
    merge = merge_config(mode, n_sigma)
    summed = (*matching.COUNTS, *matching.RECO_PT_COUNTS)
    acorn = {style: dict.fromkeys(summed, 0) for style in matching.STYLES}
    src = predict.source(trained, opts.split)
    n_max = predict.available(src, trained.cfg.data.batch_size)
    if n_max == 0:
        raise ValueError(
            f"the {opts.split} split has no complete batch of {trained.cfg.data.batch_size} events"
        )
    n = n_max if opts.jets is None else min(opts.jets, n_max)
    gathered = predict.Gathered()
    edge = {"true": 0, "target": 0, "passed": 0, "passed_true": 0, "passed_target": 0}
    hist_true, hist_false = np.zeros(50), np.zeros(50)
    scores_list = []
    for batch, out in predict.batches(
        trained, src, forward, n, desc="eval tracking", unit="event", inputs=INPUTS
    ):
        for row in range(len(batch["hits"])):
            ev = {k: v[row] for k, v in batch.items()}
            m, n_hits = int(ev["edge_mask"].sum()), int(ev["hit_mask"].sum())
            s = out["edge_scores"][row][:m]
            t_m = int(ev["true_edge_mask"].sum())
            y = consecutive_truth(ev["edges"][:m], ev["true_edges"][:t_m], n_hits)
            tgt = y & (ev["pt"][ev["edges"][:m, 0]] > cfg.pt_cut)
            passed = s > cut
            for k, v in (("true", y), ("target", tgt), ("passed", passed), ("passed_true", passed & y)):
                edge[k] += int(v.sum())
            edge["passed_target"] += int((passed & tgt).sum())
            hist_true += np.histogram(s[y], 50, (0, 1))[0]
            hist_false += np.histogram(s[~y], 50, (0, 1))[0]
            res = event_tracks(ev, out["edge_scores"][row], cut, builder, min_hits, bridge, min_length, merge)
            scores_list.append(res.pop("score"))
            for style, counts in res.pop("acorn").items():
                for k in summed:
                    acorn[style][k] += counts[k]
            gathered.add(**res)
    g = gathered.join()
    metrics = {
        "n_events": len(scores_list),
        "score_cut": cut,
        "builder": builder,
        "min_hits": min_hits,
        "bridge": bridge,
        "merge": mode,
        "merge_sigma": n_sigma,
        "min_track_length": min_length,
        "edges": {
            "efficiency": edge["passed_true"] / max(edge["true"], 1),
            f"efficiency_pt>{cfg.pt_cut:g}": edge["passed_target"] / max(edge["target"], 1),
            "purity": edge["passed_true"] / max(edge["passed"], 1),
            "true": edge["true"],
            "passed": edge["passed"],
        },
        "tracks": summarise(g, cfg.pt_cut),
        "acorn": {style: matching.rates(c) for style, c in acorn.items()},
        "trackml_score": float(np.mean(scores_list)),
    }
    metrics["files"] = _plots(opts, metrics, g, hist_true, hist_false)
    return metrics


def _plots(opts: EvalOptions, metrics: dict, g: dict, hist_true, hist_false) -> list[str]:
    np.savez(opts.out / "tracking.npz", **g)
    files = ["tracking.npz"]
    plt = pyplot(opts.out / "track_efficiency.png")
    if plt is None:
        return files
    b = metrics["tracks"]["binned"]
    for name, panels in (
        (
            "track_efficiency.png",
            [("efficiency_vs_pt", "pT [GeV]"), ("efficiency_vs_eta", "eta (target pT)")],
        ),
        (
            "fake_duplicate.png",
            [
                ("fake_vs_pt", "pT [GeV]"),
                ("fake_vs_eta", "eta"),
                ("duplicate_vs_pt", "pT [GeV]"),
                ("duplicate_vs_eta", "eta"),
            ],
        ),
    ):
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
        for ax, (key, label) in zip(np.atleast_1d(axes), panels, strict=True):
            edges = np.asarray(b[key]["edges"], float)
            edges[-1] = edges[-2] * 1.5 if not np.isfinite(edges[-1]) else edges[-1]
            centres = 0.5 * (edges[1:] + edges[:-1])
            ax.step(centres, np.asarray(b[key]["rate"], float), where="mid")
            ax.set_xlabel(label)
            ax.set_ylabel(key.split("_vs_")[0])
            ax.set_ylim(0, 1.05)
        fig.tight_layout()
        fig.savefig(opts.out / name)
        plt.close(fig)
        files.append(name)
    fig, ax = plt.subplots(figsize=(5, 4))
    centres = np.linspace(0.01, 0.99, 50)
    ax.step(centres, hist_true, where="mid", label="true edges")
    ax.step(centres, hist_false, where="mid", label="false edges")
    ax.set_yscale("log")
    ax.set_xlabel("edge score")
    ax.legend()
    fig.tight_layout()
    fig.savefig(opts.out / "edge_scores.png")
    plt.close(fig)
    return [*files, "edge_scores.png"]


def summary(metrics: dict) -> str:
    rows = [
        f"TrackML score {metrics['trackml_score']:.3f}   "
        f"edges: efficiency {metrics['edges']['efficiency']:.3f}"
        f" purity {metrics['edges']['purity']:.3f}   ({metrics['builder']}, cut {metrics['score_cut']:g}"
        + ("" if metrics.get("merge") is None else f", --merge {metrics['merge']} {metrics['merge_sigma']:g}")
        + ")"
    ]
    for name, t in metrics["tracks"].items():
        if name == "binned":
            continue
        rows.append(
            f"{name:>8}: efficiency {t['track_efficiency']:.3f}  fake {t['fake_rate']:.3f}  "
            f"duplicate {t['duplicate_rate']:.3f}  ({t['particles']} particles, {t['tracks']} tracks)"
        )
    for style, t in metrics.get("acorn", {}).items():
        fake = matching.RECO_PT_FAKE
        cuts = [k.removeprefix(fake) for k in t if k.startswith(fake)]
        rows.append(
            f"acorn {style:>7}: efficiency {t['track_efficiency']:.3f}  fake {t['fake_rate']:.4f}  "
            + "".join(f"(fitted pT > {c}: {t[fake + c]:.4f} of {t['tracks_reco_pt']})  " for c in cuts)
            + f"duplicate {t['duplicate_rate']:.3f}  ({t['particles']} particles, {t['tracks']} tracks of "
            f">= {metrics['min_track_length']} hits)"
        )
    return "\n".join(rows)
