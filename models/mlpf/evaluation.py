"""MLPF evaluation: particle efficiency and fake rate, jet and missing-pT response, against rule-based PF.

On the first ``opts.jets`` *events* of the split (the run's own unshuffled, bucketed pipeline; the
incomplete last batch is dropped as in training), three particle collections of the same events are
compared: MLPF's prediction, the rule-based PF candidates ``ycand`` ("PF") and the target particles
("target", the reference jets and MET of a perfect reconstruction). How each is read from the batch and
the model's outputs: ``particles``.

* particles (MLPF and PF): per class (charged hadron, neutral hadron, photon, electron, muon) and for
  "any" particle, the element-level efficiency (elements with a target particle of the class that are
  predicted as that class) and fake rate (elements predicted as the class that have no target particle),
  with counts and the confusion matrix [target class, predicted class] (definitions: ``particles``);
* jets (MLPF, PF, target): ``ee_genkt`` R = 0.4, p = -1, pT > 5 GeV with ``fastjet`` (particleflow's
  CLIC definition), each generator jet (``genjets``, pT > 5 GeV) matched to the closest reco jet with
  ΔR < 0.1; the response reco pT / gen pT of matched jets: median, IQR (75th - 25th percentile), IQR /
  median (the resolution), and the matched fraction = matched gen jets / gen jets (``jets``,
  ``response``). Skipped, with the reason in the JSON, when fastjet is not installed;
* missing pT (MLPF, PF, target): |Σ pT vector| of the collection's particles against ``genmet``; the
  response reco / gen over events with genmet > 0 (median, IQR, IQR / median) and the difference
  reco - gen in GeV (median, IQR).

Files in ``opts.out``: ``particle_rates.png`` (efficiency and fake rate per class), ``efficiency_vs_pt.png``
(vs target pT), ``fake_rate_vs_pt.png`` (vs predicted pT), ``confusion_mlpf.png``, ``confusion_pf.png``,
``jet_response.png``, ``jet_pt.png``, ``met_response.png``, ``met.png`` and, for custom plots,
``jets.npz`` (per generator jet: pT, eta and the matched reco pT of each collection, NaN when unmatched)
and ``met.npz`` (per event: genmet and each collection's missing pT).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from smilejax.evaluation import EvalOptions, cell, predict
from smilejax.trained import TrainedModel

from . import jets, particles, plots, response

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("X", "mask", "ytarget", "ytarget_pt_orig", "ytarget_e_orig", "ycand", "genmet", "genjets")
FIELDS = (*REQUIRED_KEYS, "event_mask")  # what evaluation asks a format with ``data.fields`` to read
COLLECTIONS = ("MLPF", "PF", "target")
RECO = ("MLPF", "PF")  # compared with the target particles element by element


def _forward(model, batch: dict) -> dict:
    return model(batch["X"], batch["mask"])


def _eval_inputs(trained: TrainedModel) -> TrainedModel:
    """The run with a data config for evaluation: every field evaluation needs, and, for element-budget
    batching, fixed batches of events (the budget's batch of its widest bucket, so memory stays within
    the budget) in file order instead of batches grouped by bucket."""
    data = trained.cfg.data.with_batch_size(min(trained.cfg.data.global_batch_sizes()))
    if hasattr(data, "fields"):
        data = dataclasses.replace(data, fields=list(dict.fromkeys([*data.fields, *FIELDS])))
    return dataclasses.replace(trained, cfg=dataclasses.replace(trained.cfg, data=data))


def evaluate(trained: TrainedModel, opts: EvalOptions) -> dict:
    trained = _eval_inputs(trained)
    batch_size = trained.cfg.data.batch_size
    src = predict.source(trained, opts.split)
    n_max = predict.available(src, batch_size)
    if n_max == 0:
        raise ValueError(
            f"the {opts.split} split has {len(src)} events, fewer than one batch of {batch_size}; "
            f"lower data.batch_size or use more data"
        )
    n = n_max if opts.jets is None else min(opts.jets, n_max)
    if opts.jets is not None and opts.jets > n_max:
        log.warning(
            "--jets %d: the %s split yields %d events; evaluating those", opts.jets, opts.split, n_max
        )
    probe = src.read(np.arange(min(2, len(src))))
    missing = [k for k in REQUIRED_KEYS if k not in probe]
    if missing:
        raise ValueError(
            f"the run's data ({trained.cfg.data.format}) gives batches without {missing}; the MLPF evaluator "
            f"needs {list(REQUIRED_KEYS)}"
        )
    jetdef = jets.CLIC
    jets_skipped = jets.missing()
    if jets_skipped:
        log.warning("jets skipped: %s", jets_skipped)

    counts = {name: particles.ClassCounts() for name in RECO}
    gathered = predict.Gathered()
    n_events = 0
    for batch, out in predict.batches(
        trained, src, _forward, n, desc=f"eval mlpf ({opts.split})", unit="event", inputs=("X", "mask")
    ):
        rows = np.flatnonzero(batch.get("event_mask", np.ones(len(batch["X"]), bool)))
        n_events += rows.size
        X = batch["X"][rows]
        valid = batch["mask"][rows].astype(bool) & (X[..., 0] != 0)
        coll = {
            "MLPF": particles.from_prediction(
                X, out["binary_logits"][rows], out["pid_logits"][rows], out["momentum"][rows]
            ),
            "PF": particles.from_candidates(batch["ycand"][rows]),
            "target": particles.from_target(
                batch["ytarget"][rows], batch["ytarget_pt_orig"][rows], batch["ytarget_e_orig"][rows]
            ),
        }
        for name in RECO:
            counts[name].add(coll["target"], coll[name], valid)
        gathered.add(
            genmet=batch["genmet"][rows].astype(np.float64),
            **{f"met_{name}": response.missing_pt(p, valid) for name, p in coll.items()},
        )
        if not jets_skipped:
            gen = jets.from_padded(batch["genjets"][rows], jetdef.pt_min)
            gathered.add(gen_pt=gen.pt, gen_eta=gen.eta)
            for name, p in coll.items():
                reco = jets.cluster(p, valid & (p.cls != 0), jetdef)
                idx = jets.match(gen, reco, rows.size, jetdef.match_dr)
                gathered.add(**{f"jet_pt_{name}": jets.take(reco.pt, idx), f"jets_{name}": reco.pt})
    result = gathered.join()

    metrics: dict = {
        "n_events": int(n_events),
        "n_elements": int(counts["MLPF"].confusion.sum()),
        "collections": {
            "MLPF": "the model's particles",
            "PF": "rule-based particle-flow candidates (ycand)",
            "target": "target particles (ytarget)",
        },
        "particles": {name: counts[name].result() for name in RECO},
        "jets": {"skipped": jets_skipped} if jets_skipped else _jet_metrics(result, jetdef),
        "met": _met_metrics(result),
    }
    metrics["files"] = _write(trained, opts, metrics, counts, result, jets_skipped is None)
    return metrics


def _jet_metrics(result: dict, jetdef: jets.JetDefinition) -> dict:
    gen_pt = result["gen_pt"]
    out: dict = {"definition": jetdef.describe(), "gen_jets": int(gen_pt.size)}
    for name in COLLECTIONS:
        matched = np.isfinite(result[f"jet_pt_{name}"])
        out[name] = {
            **response.summary(result[f"jet_pt_{name}"] / gen_pt),
            "jets": int(result[f"jets_{name}"].size),
            "matched": int(matched.sum()),
            "matched_fraction": float(matched.mean()) if gen_pt.size else None,
        }
    return out


def _met_metrics(result: dict) -> dict:
    gen = result["genmet"]
    positive = gen > 0
    out: dict = {"events": int(gen.size), "events_with_genmet": int(positive.sum())}
    for name in COLLECTIONS:
        reco = result[f"met_{name}"]
        diff = response.summary(reco - gen)
        out[name] = {
            **response.summary(reco[positive] / gen[positive]),
            "difference_median": diff["median"],
            "difference_iqr": diff["iqr"],
        }
    return out


def _write(
    trained: TrainedModel,
    opts: EvalOptions,
    metrics: dict,
    counts: dict[str, particles.ClassCounts],
    result: dict[str, np.ndarray],
    with_jets: bool,
) -> list[str]:
    """The plots and per-jet / per-event arrays; returns the file names."""
    out = opts.out
    title = f"MLPF step {trained.step}, {metrics['n_events']} {opts.split} events"
    written = _write_particles(out, title, metrics, counts) + _write_met(out, title, metrics, result)
    if with_jets:
        written += _write_jets(out, title, metrics, result)
    return sorted(p.name for p in written)


def _write_particles(
    out: Path, title: str, metrics: dict, counts: dict[str, particles.ClassCounts]
) -> list[Path]:
    """Rates per class and vs pT, and a confusion matrix per collection."""
    written = [
        plots.rates(metrics["particles"], f"{title}: elements", out / "particle_rates.png"),
        plots.rates_vs_pt(
            {k: c.efficiency_binned() for k, c in counts.items()},
            particles.PT_EDGES,
            "efficiency",
            "target particle $p_T$ [GeV]",
            title,
            out / "efficiency_vs_pt.png",
        ),
        plots.rates_vs_pt(
            {k: c.fake_rate_binned() for k, c in counts.items()},
            particles.PT_EDGES,
            "fake rate",
            "predicted particle $p_T$ [GeV]",
            title,
            out / "fake_rate_vs_pt.png",
        ),
    ]
    for name, c in counts.items():
        written.append(
            plots.confusion_matrix(
                c.confusion,
                list(particles.CLASS_KEYS),
                f"{name} particle class, {title}",
                out / f"confusion_{name.lower()}.png",
                xlabel=f"{name} class",
                ylabel="target class (elements)",
            )
        )
    return written


def _write_met(out: Path, title: str, metrics: dict, result: dict[str, np.ndarray]) -> list[Path]:
    """The missing-pT response and spectrum, and the per-event values."""
    written = []
    gen = result["genmet"]
    positive = gen > 0
    written.append(
        plots.response_histograms(
            {k: result[f"met_{k}"][positive] / gen[positive] for k in COLLECTIONS},
            metrics["met"],
            "missing $p_T$ reco / gen",
            title,
            out / "met_response.png",
            bins=np.linspace(0.0, 5.0, 101),
        )
    )
    met_values = {"gen": gen, **{k: result[f"met_{k}"] for k in COLLECTIONS}}
    top = max(float(np.percentile(np.concatenate(list(met_values.values())), 99)), 1.0)
    written.append(
        plots.distributions(
            met_values, "missing $p_T$ [GeV]", title, out / "met.png", np.linspace(0, top, 51)
        )
    )
    np.savez_compressed(out / "met.npz", genmet=gen, **{k: result[f"met_{k}"] for k in COLLECTIONS})
    written.append(out / "met.npz")
    return written


def _write_jets(out: Path, title: str, metrics: dict, result: dict[str, np.ndarray]) -> list[Path]:
    """The jet-pT response and spectrum, and the per-jet values."""
    written = []
    gen_pt = result["gen_pt"]
    written.append(
        plots.response_histograms(
            {k: result[f"jet_pt_{k}"] / gen_pt for k in COLLECTIONS},
            metrics["jets"],
            "jet $p_T$ reco / gen (matched, $\\Delta R < 0.1$)",
            f"{title}, ee-genkt R=0.4, $p_T$ > 5 GeV",
            out / "jet_response.png",
        )
    )
    spectra = {"gen": gen_pt, **{k: result[f"jets_{k}"] for k in COLLECTIONS}}
    top = max(float(np.percentile(np.concatenate(list(spectra.values())), 99)) if gen_pt.size else 0, 10.0)
    written.append(
        plots.distributions(spectra, "jet $p_T$ [GeV]", title, out / "jet_pt.png", np.linspace(0, top, 51))
    )
    np.savez_compressed(
        out / "jets.npz",
        gen_pt=gen_pt,
        gen_eta=result["gen_eta"],
        **{f"pt_{k}": result[f"jet_pt_{k}"] for k in COLLECTIONS},
    )
    written.append(out / "jets.npz")
    return written


def summary(metrics: dict) -> str:
    """A short table of the headline numbers."""
    keys = ("any", *particles.CLASS_KEYS[1:])
    short = ("any", "ch.had", "n.had", "photon", "e", "mu")
    lines = [
        f"{metrics['model']} step {metrics['step']}: {metrics['n_events']} {metrics['split']} events, "
        f"{metrics['n_elements']} elements",
        f"{'':<8}"
        + "".join(f"{'eff ' + s:>11}" for s in short)
        + "".join(f"{'fake ' + s:>12}" for s in short),
    ]
    for name, p in metrics["particles"].items():
        row = f"{name:<8}" + "".join(cell(p["efficiency"][k], 11) for k in keys)
        lines.append(row + "".join(cell(p["fake_rate"][k], 12) for k in keys))
    jet = metrics["jets"]
    if "skipped" in jet:
        lines.append(f"jets skipped: {jet['skipped']}")
    else:
        lines.append(f"jets: {jet['gen_jets']} gen jets; response reco/gen pT of matched jets")
        lines.append(f"{'':<8}{'median':>9}{'IQR':>9}{'IQR/med':>9}{'matched':>9}")
        for name in COLLECTIONS:
            j = jet[name]
            lines.append(
                f"{name:<8}{cell(j['median'], 9)}{cell(j['iqr'], 9)}{cell(j['iqr_over_median'], 9)}"
                f"{cell(j['matched_fraction'], 9)}"
            )
    met = metrics["met"]
    lines.append(f"missing pT: {met['events_with_genmet']} events with genmet > 0; response reco/gen")
    for name in COLLECTIONS:
        m = met[name]
        lines.append(
            f"{name:<8}{cell(m['median'], 9)}{cell(m['iqr'], 9)}{cell(m['iqr_over_median'], 9)}"
            f"   reco-gen median {cell(m['difference_median'], 0).strip()} GeV"
        )
    return "\n".join(lines)
