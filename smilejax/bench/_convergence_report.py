"""``bench convergence``'s results: the per-variant summary (final values, time and jets to the
reference's loss, the curve against the reference's within seed spread), ``convergence.json``/``.md``
and ``convergence.png``, from the points of every run (the command: ``convergence``)."""

from __future__ import annotations

import statistics
from pathlib import Path

from smilejax import plotting
from smilejax.bench import _convergence_spread

CPU_MODE = "reduced, CPU"  # the mode every output names when the study runs on CPUs

_POINT_KEYS = {"variant", "seed", "step", "jets", "train_s", "compile_s", "eval_s", "val_loss"}


def report(
    out: Path,
    points: list[dict],
    chosen: dict[str, tuple[str, ...]],
    headline: str,
    mode: str,
    settings: dict,
) -> None:
    """Writes ``convergence.json``, ``.md`` and ``.png`` into ``out`` from the points of every run."""
    from smilejax.bench import common

    rows, targets = summarise(points, list(chosen), settings["tolerance"])
    table = [_table_row(r, quality_keys(points, headline)) for r in rows]
    mean_target = statistics.fmean(targets.values())
    notes = [
        f"mode: {mode}" + (" (a small model and sample on CPUs: no GPU timing)" if mode == CPU_MODE else ""),
        f"target: per seed, the final validation loss of {next(iter(chosen))!r} with that seed (same initial "
        f"weights and jets; mean {mean_target:.4g}), reached within {100 * settings['tolerance']:g} %; "
        "s/jets to target: the mean over the seeds that reached theirs (reached: how many)",
        "train_s: wall seconds of the training steps, blocked before each evaluation (device time on a GPU); "
        "evaluations and compilation excluded. ± is the standard deviation over seeds.",
        f"max |Δloss| / seed sd: at each evaluation (the same step and jets in every variant), |mean val "
        f"loss over seeds - that of {next(iter(chosen))!r}| (= |mean paired per-seed difference|) over "
        f"the seed sd of {next(iter(chosen))!r} there, the largest, at its step; within spread: yes when it "
        f"is <= {_convergence_spread.LIMIT:g} (n/a: one seed, no spread)",
    ]
    if "torch" in settings:
        notes.append(
            f"torch-*: the PyTorch peer (torch {settings['torch']} on {settings['torch_device']}) trained "
            f"on the batches of {next(iter(chosen))!r} (the same jets in the same order, moved to the "
            "device before training), from the same initial weights, with the same AdamW settings and "
            "learning rate at every step, scored on the same held-out batches; its train_s: synchronised "
            "wall seconds of its steps, its compilation (a first forward and backward pass) and "
            "evaluations excluded"
        )
    extra = {
        "mode": mode,
        "variants": {n: list(o) for n, o in chosen.items()},
        **settings,
        "target_val_loss": targets,
        "summary": rows,
        "points": points,
    }
    common.write_results(out, "convergence", table, extra=extra, notes=notes)
    plot(points, list(chosen), headline, out / "convergence.png", mode, mean_target)


def quality_keys(points: list[dict], headline: str) -> list[str]:
    """The family's quality values of a point (not its errors, not the loss's other ``val_`` terms),
    the headline first."""
    keys = [k for k in points[0] if k not in _POINT_KEYS and not k.startswith("val_")]
    keys = [k for k in keys if not k.endswith("_err")]
    return list(dict.fromkeys([headline, *keys]))


def _runs(points: list[dict], variant: str) -> dict[int, list[dict]]:
    runs: dict[int, list[dict]] = {}
    for p in points:
        if p["variant"] == variant:
            runs.setdefault(p["seed"], []).append(p)
    return runs


def _mean_sd(values: list[float]) -> tuple[float, float]:
    values = [float(v) for v in values]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(points: list[dict], names: list[str], tolerance: float) -> tuple[list[dict], dict[str, float]]:
    """Per variant: final values (mean, sd over seeds), jets/s, and the training time and jets to reach
    (within ``tolerance``, a fraction) the final validation loss of the reference (the first variant)
    with the same seed: the same initial weights and jets, so the comparison is paired; and those
    targets, by seed."""
    finals = {n: [run[-1] for run in _runs(points, n).values()] for n in names}
    targets = {str(p["seed"]): p["val_loss"] for p in finals[names[0]]}
    quality = [k for k in finals[names[0]][0] if k not in _POINT_KEYS and not k.startswith("val_")]
    quality = [k for k in quality if not k.endswith("_err")]
    rows = []
    for name in names:
        last = finals[name]
        row: dict = {"variant": name, "seeds": len(last)}
        for key in ["val_loss", *quality]:
            row[key], row[f"{key}_sd"] = _mean_sd([p[key] for p in last])
        row["jets_per_s"], row["jets_per_s_sd"] = _mean_sd([p["jets"] / p["train_s"] for p in last])
        row["train_s"] = statistics.fmean(p["train_s"] for p in last)
        row["compile_s"] = statistics.fmean(p["compile_s"] for p in last)
        runs = _runs(points, name).items()
        hits = [_first_at(run, targets.get(str(seed)), tolerance) for seed, run in runs]
        reached = [h for h in hits if h is not None]
        row["reached"] = f"{len(reached)}/{len(hits)}"
        row["time_to_target_s"] = statistics.fmean(h["train_s"] for h in reached) if reached else None
        row["jets_to_target"] = statistics.fmean(h["jets"] for h in reached) if reached else None
        curve = _convergence_spread.spread(points, names[0], name)  # the loss curve against the reference's
        row.update(curve_max_delta=curve["max_delta"], curve_ratio=curve["max_ratio"], reference=names[0])
        row["curve_at_step"], row["within_spread"] = curve["at_step"], curve["within"]
        rows.append(row)
    return rows, targets


def _first_at(run: list[dict], target: float | None, tolerance: float) -> dict | None:
    """The first point of ``run`` within ``tolerance`` (a fraction) of ``target`` or below it."""
    if target is None:
        return None
    return next((p for p in run if p["val_loss"] <= target + tolerance * abs(target)), None)


def _table_row(row: dict, quality: list[str]) -> dict:
    def pm(key: str, digits: str = ".4g") -> str:
        return f"{row[key]:{digits}} ± {row[key + '_sd']:{digits}}"

    cells = {"variant": row["variant"], "seeds": row["seeds"], "final val loss": pm("val_loss")}
    cells.update({k: pm(k, ".3g") for k in quality if k in row})
    cells["jets/s"] = pm("jets_per_s", ".4g")
    cells["train s"] = row["train_s"]
    ttt = row["time_to_target_s"]
    cells["s to target"] = "not reached" if ttt is None else f"{ttt:.4g}"
    cells["jets to target"] = "" if row["jets_to_target"] is None else f"{row['jets_to_target']:.4g}"
    cells["reached"] = row["reached"]
    ratio, within = row.get("curve_ratio"), row.get("within_spread")
    at = f" (step {row['curve_at_step']})"
    cells["max |Δloss| / seed sd"] = "n/a (1 seed)" if ratio is None else f"{ratio:.3g}{at}"
    cells["within spread"] = "n/a" if within is None else ("yes" if within else "no")
    if row["variant"] == row.get("reference"):  # its own curve: nothing to compare
        cells["max |Δloss| / seed sd"] = cells["within spread"] = "reference"
    return cells


# ---------------------------------------------------------------- plot


def plot(points: list[dict], names: list[str], headline: str, path: Path, mode: str, target: float) -> None:
    """Validation loss and the headline quality against jets seen and training seconds: per variant the
    mean over seeds, a band from the lowest to the highest seed; the mean target loss dashed."""
    import numpy as np

    plt = plotting.pyplot(path)
    if plt is None or not points:
        return
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), squeeze=False)
    for name in names:
        runs = list(_runs(points, name).values())
        n = min(len(r) for r in runs)
        for row, key in enumerate(("val_loss", headline)):
            y = np.array([[p[key] for p in r[:n]] for r in runs], np.float64)
            for col, xkey in enumerate(("jets", "train_s")):
                x = np.mean([[p[xkey] for p in r[:n]] for r in runs], axis=0)
                ax = axes[row][col]
                (line,) = ax.plot(x, y.mean(0), marker=".", label=name)
                ax.fill_between(x, y.min(0), y.max(0), color=line.get_color(), alpha=0.2)
    for row, key in enumerate(("validation loss", headline)):
        for col, xlabel in enumerate(("jets seen", "training seconds")):
            ax = axes[row][col]
            ax.set_xlabel(xlabel)
            ax.set_ylabel(key)
            ax.grid(alpha=0.3)
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))  # jets: 1e4, not overlapping digits
            if row == 0:
                ax.axhline(target, color="grey", linestyle="--", linewidth=0.8)
    axes[0][0].legend()
    seeds = len({p["seed"] for p in points})
    fig.suptitle(f"bench convergence ({mode}): mean of {seeds} seed(s), band min-max")
    plotting.save(fig, path)
