"""``smilejax bench convergence CONFIG``: training variants from the same seeds on the same sample, judged
by the quality they reach against jets seen and against training time.

A variant is a named set of config overrides (GN2's: ``padded`` as salt pads every batch to max_tracks,
``bucketed`` the same batches each padded to its longest jet, ``window16`` jets of 16 batches sorted by
track count first, ``packed`` several jets per row of track slots); the model family declares its
defaults and its quality metric (``Bench.convergence``; GN2: light and c rejection at 77 % b-efficiency).
Every (variant, seed) is one ``smilejax train`` run (``trainer.train``) with ``run.seed`` = seed, so
variants with the same seed start from the same weights and draw the same jets. Before the first step,
every ``--eval-every`` steps and after the last, the run is scored on the same held-out batches
(``run.eval_steps`` of them):
validation loss and the quality metric, with the jets seen and the training seconds so far (steps only,
blocked before each evaluation: device time on a GPU; evaluations and compilation left out).

Results in --out: ``convergence.json`` (every point and the per-variant summary), ``convergence.md``
(per variant: final validation loss and quality, mean ± sd over seeds, jets/s, the training time and
jets to reach the first variant's final validation loss with the same seed, and whether its validation
loss curve equals the first variant's within seed spread: the largest |difference of the means over
seeds| over the first variant's seed standard deviation at any evaluation, at most 1;
``_convergence_spread``) and ``convergence.png`` (validation loss and
the headline quality against jets seen and against training time, one line per variant, a band over the
seeds). On CPUs the study runs reduced and says so in every output.

``--torch`` adds the family's PyTorch peer (``Convergence.torch``; GN2: ``models/gn2/torch_train.py`` in
the salt reference environment) as variants ``torch-compile`` / ``torch-eager``: per seed it trains on the
first variant's very batches, from that run's initial weights, with its AdamW settings and learning rate
at every step, and is scored on the same held-out batches at the same steps (``_convergence_torch``).
"""

from __future__ import annotations

import argparse
import copy
import logging
import shlex
import shutil
import statistics
from pathlib import Path

from smilejax import plotting
from smilejax.bench import _convergence_spread
from smilejax.commands.common import OVERRIDES_HELP, add_command, choice_list

log = logging.getLogger(__name__)

CPU_MODE = "reduced, CPU"
TORCH_MODES = ("compile", "eager")  # of the PyTorch reference line (--torch)


def register(sub) -> None:
    parser = add_command(
        sub,
        "convergence",
        help="training variants (padded, bucketed, packed, ...) judged by quality vs jets seen and time",
        description=__doc__,
    )
    parser.add_argument("config", metavar="CONFIG", help="packaged config (e.g. gn2) or YAML config")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)
    parser.add_argument(
        "--variants",
        help="comma list of the variants to train, the first the reference (default: all the family's, "
        "in its order; GN2: padded,bucketed,window16,packed)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="'NAME KEY=VALUE ...'",
        help="define (or redefine) a variant, its name and overrides in one quoted argument, e.g. "
        "--variant 'window4 data.bucket_tracks=[16,24] data.bucket_window=4' (repeatable; name it in "
        "--variants too when --variants is given)",
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds per variant: run.seed 0..N-1 (default 3)")
    parser.add_argument("--steps", type=int, default=2000, help="training steps of every run (default 2000)")
    parser.add_argument("--eval-every", type=int, default=200, help="steps between evaluations (default 200)")
    parser.add_argument(
        "--eval-batches",
        type=int,
        help="held-out batches per evaluation (run.eval_steps; default: the config's)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.005,
        help="a run reaches its target within this fraction of it (default 0.005: 0.5 %%, so that the "
        "reference itself reaches it before its last, flat, evaluations)",
    )
    parser.add_argument("--out", default="bench-results/convergence", help="folder for JSON, table and plot")
    parser.add_argument(
        "--torch",
        action="store_true",
        help="add the family's PyTorch peer as a variant per --torch-modes ('torch-compile'): trained on the "
        "first variant's very batches, from its initial weights, with its optimizer and learning rate "
        "at every step, evaluated on the same held-out batches; run first, before JAX takes the device. "
        "Needs the family's reference environment (GN2: .salt-ref, `make reference`; or --torch-python)",
    )
    parser.add_argument(
        "--torch-modes",
        type=choice_list(TORCH_MODES),
        default=["compile"],
        help="with --torch: comma list of compile (torch.compile) and eager (default compile)",
    )
    parser.add_argument(
        "--torch-python", help="with --torch: the interpreter with torch (default: the family's)"
    )
    parser.set_defaults(run=run)


# ---------------------------------------------------------------- variants and configs


def variants(args: argparse.Namespace, family: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """The variants to train, in order: --variants' names among the family's and --variant's."""
    defined = dict(family)
    for text in args.variant:
        name, *overrides = shlex.split(text) or [""]
        if not name or "=" in name:
            raise SystemExit(f"bench convergence: --variant {text!r} must start with the variant's name")
        defined[name] = tuple(overrides)
    names = [n.strip() for n in args.variants.split(",") if n.strip()] if args.variants else list(defined)
    unknown = [n for n in names if n not in defined]
    if unknown:
        raise SystemExit(
            f"bench convergence: unknown variant(s) {unknown}; known: {', '.join(defined)} "
            "(define one with --variant 'NAME KEY=VALUE ...')"
        )
    if not names or len(set(names)) != len(names):
        raise SystemExit(f"bench convergence: --variants needs distinct names, got {names}")
    return {n: defined[n] for n in names}


def check_keys(tree: dict, chosen: dict[str, tuple[str, ...]], config_name: str) -> None:
    """Refuses, before any training, a variant that sets a key the config's sections do not have."""
    from smilejax import config

    known = set(config.field_keys(tree))
    problems = []
    for name, overrides in chosen.items():
        for item in overrides:
            key = item.partition("=")[0]
            if key not in known:
                problems.append(f"variant {name!r} sets {key!r}, which config {config_name!r} does not know")
    if problems:
        raise SystemExit(
            "bench convergence: " + "; ".join(problems) + " (this build's config has no such field: leave "
            "the variant out of --variants or redefine it with --variant)"
        )


def run_config(args: argparse.Namespace, base: dict, overrides: tuple[str, ...], seed: int, run_dir: Path):
    """The ``Config`` of one (variant, seed) run."""
    from smilejax import config

    fixed = [  # after the user's overrides: the probe's timing and a fresh run depend on them
        f"run.steps={args.steps}",
        "run.eval_every=0",  # the probe evaluates, outside the timed steps
        f"run.log_every={args.eval_every}",
        "run.checkpoint_every=0",
        "run.keep_checkpoints=1",
        f"run.seed={seed}",
        f"run.dir={run_dir}",
        "logging.progress=false",
        "logging.tensorboard=false",
        "train.early_stop_patience=0",  # every variant trains all its steps
    ]
    if args.eval_batches:
        fixed.append(f"run.eval_steps={args.eval_batches}")
    return config.load(copy.deepcopy(base), [*args.overrides, *overrides, *fixed])


# ---------------------------------------------------------------- the study


def run(args: argparse.Namespace) -> int:
    import jax

    from smilejax import config, registry, trainer
    from smilejax.bench import _convergence_probe

    if args.seeds < 1 or args.steps < 1 or args.eval_every < 1:
        raise SystemExit("bench convergence: --seeds, --steps and --eval-every must be at least 1")
    base = config.apply_overrides(config.read_yaml(args.config), args.overrides)
    probe_cfg = config.from_dict(copy.deepcopy(base))
    spec = registry.model(probe_cfg.model.name)
    hook = spec.bench.convergence
    if hook is None:
        raise SystemExit(f"bench convergence: model family {spec.name!r} declares no convergence hook")
    chosen = variants(args, hook.variants)
    check_keys(base, chosen, args.config)
    out = Path(args.out)

    points: list[dict] = []
    torch_points, torch_about = [], {}
    if args.torch:  # before JAX touches the device (_convergence_torch)
        from smilejax.bench import _convergence_torch

        torch_modes = args.torch_modes
        reference = next(iter(chosen.values()))

        def reference_config(seed: int, run_dir: Path):
            return run_config(args, base, reference, seed, run_dir)

        torch_points, torch_about = _convergence_torch.run(
            spec, torch_modes, args.torch_python, args.seeds, args.eval_every, reference_config, out
        )
    mode = CPU_MODE if jax.devices()[0].platform == "cpu" else jax.devices()[0].platform.upper()

    # seed-major: a seed's variants run back to back, so a drift in the machine's load (a shared node)
    # falls on every variant alike
    for seed in range(args.seeds):
        for name, overrides in chosen.items():
            run_dir = out / "runs" / f"{name}-seed{seed}"
            shutil.rmtree(run_dir, ignore_errors=True)  # a rerun into the same --out trains afresh
            cfg = run_config(args, base, overrides, seed, run_dir)
            log.info("bench convergence: %s, seed %d (%s)", name, seed, " ".join(overrides) or "no overrides")
            probe = _convergence_probe.Probe(cfg, hook, args.eval_every)
            result = trainer.train(cfg, callbacks=[probe])
            if result.exit_code:  # a stop signal (preemption): no more runs, nothing half reported
                raise SystemExit(result.exit_code)
            points += [{"variant": name, "seed": seed, **p} for p in probe.points]

    points += torch_points
    settings = {"steps": args.steps, "eval_every": args.eval_every, "seeds": args.seeds}
    settings["tolerance"] = args.tolerance
    if args.torch:
        first = next(iter(chosen))
        for m in torch_modes:  # listed after the JAX variants; trained on the first one's batches
            chosen[f"torch-{m}"] = (f"PyTorch peer, torch {m}, on the batches of {first!r}",)
        settings.update(torch_about)
    report(out, points, chosen, hook.headline, mode, settings)
    return 0


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
