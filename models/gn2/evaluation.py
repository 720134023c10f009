"""GN2 evaluation: flavour tagging against an impact-parameter baseline, track origin, vertexing.

On the first ``opts.jets`` jets of the split (file order, the run's own pipeline and normalisation):

* GN2's b-tagging discriminant D_b (``flavour.discriminant``, fractions ``--fc``, ``--ftau``) and
  its cut at each of the 70/77/85% b-efficiency working points; AUCs (b vs light, b vs c) and light-
  and c-rejection at those working points, each with its binomial uncertainty and the background jets
  behind it (``flavour.rejections``; one resting on fewer than 10 passing jets is flagged and warned of);
* the same figures for the IP baseline (``ip_baseline``: templates from ``--ip-fit-jets`` training
  jets, then scored on exactly the evaluated jets);
* track-origin accuracy overall and per class, and vertex pair efficiency and purity (``tracks``), when
  the batches carry the truth labels and the model trained those heads (``aux_tasks`` not "off").

Files in ``opts.out``: ``roc_light.png``, ``roc_c.png`` (both taggers, ratio to the IP baseline),
``discriminant.png`` (D_b per flavour, working-point cuts), ``track_origin_confusion.png`` (with origin
labels) and ``scores.npz`` (per-jet flavour, GN2 probabilities, D_b and IP score, for custom plots).
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np

from smilejax.evaluation import EvalOptions, cell, predict
from smilejax.trained import TrainedModel

from . import flavour, ip_baseline, plots, tracks
from .model import JET_CLASSES, ORIGIN_CLASSES

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("tracks", "valid", "flavour")


def _forward(tasks: tuple[str, ...]):
    def forward(model, batch: dict) -> dict:
        out = model(batch["tracks"], batch["valid"], tasks=tasks)
        result = {"jet_logits": out["jet_logits"].astype(jnp.float32)}
        if "origin" in tasks:
            result["origin"] = jnp.argmax(out["origin_logits"], axis=-1).astype(jnp.int8)
        if "vertex" in tasks:
            result["vertex_prob"] = jax.nn.sigmoid(out["vertex_logits"].astype(jnp.float32))
        return result

    return forward


def _softmax64(logits: np.ndarray) -> np.ndarray:
    # float64 on the host: D_b of very confident jets stays finite where float32 would underflow
    x = logits.astype(np.float64)
    x = np.exp(x - x.max(axis=1, keepdims=True))
    return x / x.sum(axis=1, keepdims=True)


def _significance_reader(src):
    """A function batch -> signed d0 significance [b, t] (un-normalised), or None with the reason."""
    track_vars = list(getattr(src, "track_vars", []))
    if ip_baseline.VARIABLE not in track_vars:
        return None, f"the run's track inputs do not include {ip_baseline.VARIABLE}"
    i = track_vars.index(ip_baseline.VARIABLE)
    mean, std = src.track_norm(ip_baseline.VARIABLE)
    return (lambda batch: batch["tracks"][..., i].astype(np.float64) * std + mean), None


def _fit_ip(trained: TrainedModel, n_jets: int) -> ip_baseline.Templates:
    """IP templates from the first ``n_jets`` jets of the training split (one batch-wise read)."""
    train_src = predict.source(trained, "train")
    read, _ = _significance_reader(train_src)
    batch = train_src.read(np.arange(min(n_jets, len(train_src))))
    return ip_baseline.fit(read(batch), batch["valid"], batch["flavour"])


def evaluate(trained: TrainedModel, opts: EvalOptions) -> dict:
    src = predict.source(trained, opts.split)
    n_max = predict.available(src, trained.cfg.data.batch_size)
    n = n_max if opts.jets is None else min(opts.jets, n_max)
    if opts.jets is not None and opts.jets > n_max:
        log.warning("--jets %d: the %s split yields %d jets; evaluating those", opts.jets, opts.split, n_max)
    probe = src.read(np.arange(min(2, len(src))))
    missing = [k for k in REQUIRED_KEYS if k not in probe]
    if missing:
        raise ValueError(
            f"the run's data ({trained.cfg.data.format}) gives batches without {missing}; the GN2 evaluator "
            f"needs {list(REQUIRED_KEYS)}"
        )
    aux = getattr(trained.model, "aux_tasks", "auto") != "off"
    tasks = ("jet", *(("origin", "vertex") if aux and "track_origin" in probe else ()))

    fc, ftau = opts.model["fc"], opts.model["ftau"]
    read_sd0, ip_skipped = _significance_reader(src)
    templates = _fit_ip(trained, opts.model["ip_fit_jets"]) if read_sd0 else None
    if ip_skipped:
        log.warning("IP baseline skipped: %s", ip_skipped)

    gathered = predict.Gathered()
    origin = tracks.OriginCounts(len(ORIGIN_CLASSES))
    vertex = tracks.VertexCounts()
    for batch, out in predict.batches(trained, src, _forward(tasks), n, desc=f"eval gn2 ({opts.split})"):
        gathered.add(flavour=batch["flavour"], logits=out["jet_logits"])
        if templates is not None:
            gathered.add(ip=ip_baseline.score(templates, read_sd0(batch), batch["valid"]))
        if "origin" in tasks:
            origin.add(batch["track_origin"], out["origin"], batch["valid"])
            vertex.add(batch["track_vertex"], out["vertex_prob"], batch["valid"])
    jets = gathered.join()

    labels = jets["flavour"]
    probs = _softmax64(jets["logits"])
    db = flavour.discriminant(probs, fc, ftau)
    taggers = {"GN2": db} | ({"IP": jets["ip"]} if templates is not None else {})
    is_b, is_c, is_light = (labels == JET_CLASSES.index(k) for k in ("b", "c", "light"))
    if not is_b.any() or not is_light.any():
        raise ValueError(f"the {n} evaluated jets hold no b or no light jets; evaluate more (--jets)")

    wps = [f"{round(100 * wp)}" for wp in flavour.WORKING_POINTS]
    cuts = dict(zip(wps, flavour.cuts(db[is_b], flavour.WORKING_POINTS).tolist(), strict=True))
    metrics: dict = {
        "n_jets": int(n),
        "fractions": {"fc": fc, "ftau": ftau, "flight": 1.0 - fc - ftau},
        "flavour_counts": {k: int((labels == i).sum()) for i, k in enumerate(JET_CLASSES)},
        "working_points": list(flavour.WORKING_POINTS),
        "working_point_cuts": cuts,  # GN2's D_b cut per working point
        "taggers": {},
    }
    for name, score in taggers.items():
        metrics["taggers"][name] = flavour.summary(
            score[is_b], score[is_light], score[is_c] if is_c.any() else None
        )
        _warn_low_stats(name, metrics["taggers"][name])
    metrics["ip_baseline"] = (
        {**templates.describe(), "fit_split": "train"} if templates else {"skipped": ip_skipped}
    )
    metrics["track_origin"] = origin.result(ORIGIN_CLASSES) if "origin" in tasks else None
    metrics["vertexing"] = vertex.result() if "vertex" in tasks else None

    info = f"GN2 step {trained.step}, {n} {opts.split} jets\n$f_c$ = {fc}, $f_\\tau$ = {ftau}"
    written = _plot(opts, taggers, labels, cuts, metrics["track_origin"], info, trained.step)
    scores_path = opts.out / "scores.npz"
    np.savez_compressed(
        scores_path,
        flavour=labels,
        probs=probs.astype(np.float32),
        db=db,
        **({"ip": jets["ip"]} if templates else {}),
    )
    metrics["files"] = sorted(p.name for p in [*written, scores_path])
    return metrics


def _plot(
    opts: EvalOptions,
    taggers: dict[str, np.ndarray],
    labels: np.ndarray,
    cuts: dict[str, float],
    origin: dict | None,
    info: str,
    step: int,
) -> list:
    """The ROC curves against light and c jets, GN2's D_b per flavour and the track-origin confusion
    matrix (with origin labels); returns the files written."""
    is_b, is_c, is_light = (labels == JET_CLASSES.index(k) for k in ("b", "c", "light"))
    written = []
    for background, mask in (("light", is_light), ("c", is_c)):
        if mask.any():
            curves = {k: (v[is_b], v[mask]) for k, v in taggers.items()}
            written.append(opts.out / f"roc_{background}.png")
            plots.rejection_curves(curves, background, info, written[-1])
    written.append(opts.out / "discriminant.png")
    plots.discriminant_by_flavour(taggers["GN2"], labels, JET_CLASSES, info, cuts, written[-1])
    if origin:
        conf = np.asarray(origin["confusion"])
        title = f"GN2 track origin, step {step}"
        path = opts.out / "track_origin_confusion.png"
        written.append(
            plots.confusion_matrix(
                conf,
                list(ORIGIN_CLASSES),
                title,
                path,
                xlabel="predicted origin",
                ylabel="true origin (tracks)",
            )
        )
    return written


def _warn_low_stats(tagger: str, figures: dict) -> None:
    """One warning line per rejection that rests on fewer than ``flavour.MIN_PASSING`` passing jets."""
    for background in ("light", "c"):
        for wp, r in (figures[f"{background}_rejection"] or {}).items():
            if r["low_stats"]:
                log.warning(
                    "low statistics: %s's %s rejection at the %s%% WP rests on %d of %d %s jets passing the "
                    "cut (fewer than %d); evaluate more jets (--jets)",
                    tagger, background, wp, r["n_pass"], r["n_bkg"], background, flavour.MIN_PASSING,
                )  # fmt: skip


def summary(metrics: dict) -> str:
    """A short table of the headline numbers."""
    wps = [f"{round(100 * wp)}" for wp in metrics["working_points"]]
    head = f"{'tagger':<8}{'AUC b/l':>9}{'AUC b/c':>9}" + "".join(f"{'l-rej' + w:>9} " for w in wps)
    head += "".join(f"{'c-rej' + w:>9} " for w in wps)
    lines = [
        f"{metrics['model']} step {metrics['step']}: {metrics['n_jets']} {metrics['split']} jets "
        f"{metrics['flavour_counts']}, fc={metrics['fractions']['fc']}, ftau={metrics['fractions']['ftau']}",
        head,
    ]
    starred = False

    def rejection_cell(r: dict | None) -> str:
        nonlocal starred
        if r is None:
            return cell(None, 9) + " "
        starred |= r["low_stats"]
        return cell(r["rejection"], 9) + ("*" if r["low_stats"] else " ")

    for name, t in metrics["taggers"].items():
        row = f"{name:<8}{cell(t['auc_b_vs_light'], 9)}{cell(t['auc_b_vs_c'], 9)}"
        row += "".join(rejection_cell(t["light_rejection"][w]) for w in wps)
        row += "".join(rejection_cell((t["c_rejection"] or {}).get(w)) for w in wps)
        lines.append(row)
    if starred:
        lines.append(f"* fewer than {flavour.MIN_PASSING} background jets pass the cut (low_stats)")
    if metrics.get("track_origin"):
        lines.append(f"track origin accuracy {cell(metrics['track_origin']['accuracy'], 0).strip()}")
    if metrics.get("vertexing"):
        v = metrics["vertexing"]
        lines.append(
            f"vertex pairs: efficiency {cell(v['pair_efficiency'], 0).strip()}, "
            f"purity {cell(v['pair_purity'], 0).strip()}"
        )
    return "\n".join(lines)
