"""``smilejax bench hpo``: search quality against compute for the tuners, and vectorised-trial throughput.

Search: a small model on a synthetic set (the packaged config ``hpo-study`` by default: the same code
path as the full model at CPU sizes) is tuned by each method over ``--seeds`` seeds with the same trial
budget: random search (Optuna's sampler, the baseline), Optuna TPE, TPE with ASHA pruning, keras-tuner
Bayesian optimisation and keras-tuner Hyperband. The objective and parameters are the
study's search space: ``--space``, by default the file a packaged config ships beside it,
``spaces/<config>.yaml``; hpo-study's tunes the jet-flavour loss over the learning rate, weight decay
and two auxiliary-task loss weights). Compute is the training steps the trials spent (pruned and
budget-limited trials count what they ran). Results: a table of the best objective per method (median
over seeds, and at half the compute) and a plot of the best-so-far curves.

Vectorised: K trials differing in learning rate trained in one ``jit(vmap)`` program
(``smilejax.tune.vectorised``), end to end (input pipeline, compile, steps, evaluation, a final
checkpoint per trial), against separate runs that do the same: trials per second. Only
``--sequential-runs`` separate runs are timed; the time of K of them is that mean times K, an
extrapolation the results name as such (``sequential_s_extrapolated``).
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import statistics
import time
from pathlib import Path

from smilejax.commands.common import OVERRIDES_HELP, add_command

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "hpo-study"  # a packaged config: the sizes of a study that runs on CPUs
# method: (backend, algorithm, pruner)
METHODS = {
    "random": ("optuna", "random", "none"),
    "optuna-tpe": ("optuna", "tpe", "none"),
    "optuna-tpe-asha": ("optuna", "tpe", "asha"),
    "keras-bayesian": ("keras-tuner", "bayesian", "none"),
    "keras-hyperband": ("keras-tuner", "hyperband", "none"),
}
COLUMNS = [
    "method",
    "seeds",
    "trials",
    "best_median",
    "best_min",
    "best_max",
    "best_at_half",
    "steps",
    "minutes",
]
V_COLUMNS = [
    "k",
    "devices",
    "trials_per_s",
    "sequential_trials_per_s",
    "speedup",
    "program_s",
    "sequential_s_extrapolated",
]


def register(sub) -> None:
    parser = add_command(
        sub,
        "hpo",
        help="HPO: best objective against compute per tuner, and vectorised-trial throughput",
        description=__doc__,
    )
    parser.add_argument(
        "config",
        nargs="?",
        default=DEFAULT_CONFIG,
        metavar="CONFIG",
        help=f"packaged config or YAML file (default {DEFAULT_CONFIG}: a model small enough for CPU studies)",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
    parser.add_argument("--seeds", type=int, default=3, help="repeats of every method (default 3)")
    parser.add_argument(
        "--space",
        metavar="SPACE.yaml",
        help="search space (default: the packaged config's spaces/<config>.yaml; see docs/HPO.md)",
    )
    parser.add_argument("--trials", type=int, default=10, help="trial budget per study (default 10)")
    parser.add_argument("--steps", type=int, default=40, help="training steps of a full trial (default 40)")
    parser.add_argument("--eval-every", type=int, default=10, help="steps between evaluations (default 10)")
    parser.add_argument("--vectorise", default="1,4", help="K values for the throughput study ('' skips it)")
    parser.add_argument("--vectorise-steps", type=int, default=20, help="steps of each vectorised trial")
    parser.add_argument(
        "--sequential-runs",
        type=int,
        default=2,
        help="separate runs timed for the sequential baseline, scaled to K (default 2)",
    )
    parser.add_argument("--skip-search", action="store_true", help="only the vectorised throughput study")
    parser.add_argument("--out", default="bench-results/hpo", help="folder for JSON, tables and plots")
    parser.set_defaults(run=run)


def _base(args: argparse.Namespace, steps: int, checkpoint_every: int) -> dict:
    from smilejax import config

    tree = config.read_yaml(args.config)
    overrides = [
        f"run.steps={steps}",
        f"run.eval_every={args.eval_every}",
        "run.eval_steps=2",
        f"run.log_every={args.eval_every}",
        f"run.checkpoint_every={checkpoint_every}",
        "run.keep_checkpoints=1",
        *args.overrides,
    ]
    return config.apply_overrides(tree, overrides)


def run(args: argparse.Namespace) -> int:
    from smilejax.tune import worker as workers

    if args.sequential_runs < 1:
        raise SystemExit(f"--sequential-runs must be at least 1, got {args.sequential_runs}")
    workers.start()  # single-process trials, this process's devices
    from smilejax.bench import common

    out = Path(args.out)
    if not args.skip_search:
        from smilejax.tune import plots
        from smilejax.tune import space as spaces

        space_file = space_path(args.config, args.space)
        space = spaces.load(space_file)
        rows, curves = search(args, out, space)
        extra = {"space": str(space_file), "trials": args.trials}
        common.write_results(out, "hpo", rows, columns=COLUMNS, extra=extra)
        metric = space.objective.metric
        plots.best_vs_compute(curves, out / "hpo.png", metric=metric, xlabel="training steps spent")
    ks = [int(k) for k in args.vectorise.split(",") if k.strip()]
    if ks:
        rows, timed = throughput(args, ks)
        common.write_results(
            out,
            "hpo_vectorised",
            rows,
            columns=V_COLUMNS,
            extra={"sequential_runs_s": timed},
            notes=[sequential_note(len(timed))],
        )
    return 0


# ---------------------------------------------------------------- search quality against compute


def space_path(config: str, given: str | None) -> Path:
    """The study's search space: ``given``, else the one a packaged config ships beside it
    (``spaces/<config>.yaml`` in its configs package)."""
    from smilejax import registry
    from smilejax.config import ConfigError

    if given:
        return Path(given)
    packaged = registry.configs().get(config)
    path = packaged.parent / "spaces" / f"{config}.yaml" if packaged else None
    if path is None or not path.is_file():
        raise ConfigError(
            f"bench hpo: config {config!r} ships no search space (spaces/{config}.yaml beside a packaged "
            "config); give one with --space SPACE.yaml"
        )
    return path


def search(args: argparse.Namespace, out: Path, space) -> tuple[list[dict], dict]:
    from tqdm import tqdm

    from smilejax.tune import study, worker

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown --methods {unknown}; choose from {', '.join(METHODS)}")
    base = _base(args, args.steps, args.eval_every)
    rows, curves = [], {}
    runs = [(m, s) for m in methods for s in range(args.seeds)]
    for method, seed in tqdm(runs, desc="hpo studies", unit="study"):
        backend, algorithm, pruner = METHODS[method]
        directory = out / "studies" / f"{method}-seed{seed}"
        options = study.Options(
            dir=directory, backend=backend, algorithm=algorithm, pruner=pruner, trials=args.trials, seed=seed
        )
        t0 = time.perf_counter()
        summary = study.tune(copy.deepcopy(base), space, options, worker.local())
        minutes = (time.perf_counter() - t0) / 60
        curve = best_so_far(summary.trials)
        curves.setdefault(method, []).append(curve)
        rows.append({"method": method, "seed": seed, "curve": curve, "minutes": minutes})
    return _table(rows, methods, args.trials), curves


def best_so_far(trials: list[dict]) -> list[tuple[int, float]]:
    """(steps spent so far, best complete objective so far) after each trial, in trial order."""
    spent, best, curve = 0, None, []
    for t in sorted(trials, key=lambda t: t["number"]):
        spent += int(t.get("step") or 0)
        if t["state"] == "complete" and t["value"] is not None:
            best = t["value"] if best is None else min(best, t["value"])
        if best is not None:
            curve.append((spent, best))
    return curve


def _table(rows: list[dict], methods: list[str], trials: int) -> list[dict]:
    table = []
    for method in methods:
        mine = [r for r in rows if r["method"] == method and r["curve"]]
        if not mine:
            continue
        finals = [r["curve"][-1][1] for r in mine]
        half = []
        for r in mine:
            budget = r["curve"][-1][0] / 2
            before = [b for spent, b in r["curve"] if spent <= budget]
            half.append(before[-1] if before else float("nan"))
        table.append(
            {
                "method": method,
                "seeds": len(mine),
                "trials": trials,
                "best_median": statistics.median(finals),
                "best_min": min(finals),
                "best_max": max(finals),
                "best_at_half": statistics.median(half),
                "steps": statistics.median(r["curve"][-1][0] for r in mine),
                "minutes": statistics.median(r["minutes"] for r in mine),
            }
        )
    return table


# ---------------------------------------------------------------- vectorised throughput


def sequential_note(timed: int) -> str:
    """What the sequential columns rest on, written under the table."""
    return (
        f"sequential_trials_per_s: {timed} separate runs timed one after another, each with its own input "
        "pipeline, compilation, evaluation and final checkpoint (as every vectorised trial gets one). "
        "sequential_s_extrapolated = K × their mean, not measured for K runs: it assumes every separate "
        "run costs the same whatever its learning rate. speedup = trials_per_s / sequential_trials_per_s."
    )


def throughput(args: argparse.Namespace, ks: list[int]) -> tuple[list[dict], list[float]]:
    """Trials per second: one ``jit(vmap)`` program of K trials against separate runs; the rows and the
    seconds of each timed separate run."""
    import jax

    from smilejax import config, trainer
    from smilejax.tune import vectorised

    # Both sides checkpoint alike: the final checkpoint of each trial, which a study keeps, and no
    # periodic ones (a vectorised program has none).
    base = _base(args, args.vectorise_steps, checkpoint_every=0)
    out = Path(args.out) / "vectorised"

    def cfgs(k: int, tag: str) -> list:
        return [
            config.load(
                copy.deepcopy(base), [f"optimizer.lr={1e-3 * (1 + i)}", f"run.dir={out / tag / str(i)}"]
            )
            for i in range(k)
        ]

    # Separate runs cost the same whatever the learning rate: time a few, scale to K (labelled so).
    timed = []
    for cfg in cfgs(args.sequential_runs, "sequential"):
        t0 = time.perf_counter()
        trainer.train(cfg)
        timed.append(time.perf_counter() - t0)
    per_trial = statistics.fmean(timed)
    rows = []
    for k in ks:
        t0 = time.perf_counter()
        outcomes = vectorised.train(cfgs(k, f"k{k}"), "loss", save=True)
        seconds = time.perf_counter() - t0
        if any(o.state != "complete" for o in outcomes):
            log.warning("K=%d: trials %s did not complete", k, [o.state for o in outcomes])
        rows.append(
            {
                "k": k,
                "devices": math.gcd(k, jax.local_device_count()),
                "trials_per_s": k / seconds,
                "sequential_trials_per_s": 1 / per_trial,
                "speedup": per_trial * k / seconds,
                "program_s": seconds,
                "sequential_s_extrapolated": per_trial * k,
            }
        )
    return rows, timed
