"""``smilejax tune CONFIG [key=value ...] --space SPACE.yaml --backend optuna|keras-tuner``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from smilejax.commands.common import add_command, add_config_args

EPILOG = """\
Every trial is a normal smilejax run in STUDY_DIR/trial-XXXX (config.yaml, metrics.jsonl, checkpoints,
W&B run in the group named after the study). Running the same command again continues the study;
a trial that was interrupted resumes from its newest checkpoint.

cluster-wide: srun -n K smilejax tune ... makes K workers of one study, each training its own trials
on its own device(s): Optuna shares STUDY_DIR/optuna.journal (put STUDY_DIR on a shared filesystem),
keras-tuner serves its oracle over gRPC from task 0 (KERASTUNER_ORACLE_IP/PORT override the address).

algorithms: optuna: tpe (default), random, cmaes; keras-tuner: bayesian (default), random, hyperband.
pruners (optuna): none (default), median, asha, hyperband, fed with the objective each time it is
logged (eval/... metrics every run.eval_every steps).

exit codes: 0 done, 2 bad config, search space, objective metric (one a run does not log) or option,
reported before any trial runs."""


def register(sub) -> None:
    parser = add_command(
        sub,
        "tune",
        help="hyperparameter optimisation (Optuna or keras-tuner), one run per trial",
        description="Search hyperparameters: a backend proposes values for the fields in SPACE.yaml, "
        "each trial trains CONFIG with them, and the objective metric it logs goes back to the backend.",
        epilog=EPILOG,
    )
    add_config_args(parser)
    parser.add_argument("--space", required=True, metavar="SPACE.yaml", help="search space (see docs/HPO.md)")
    parser.add_argument("--backend", choices=["optuna", "keras-tuner"], default="optuna")
    parser.add_argument(
        "--algorithm", help="sampler / oracle (default: tpe for optuna, bayesian for keras-tuner)"
    )
    parser.add_argument("--pruner", default="none", help="optuna: none, median, asha, hyperband")
    parser.add_argument("--trials", type=int, default=20, help="trials in the whole study (all workers)")
    parser.add_argument("--dir", type=Path, help="study directory (default runs/tune-<space file name>)")
    parser.add_argument("--name", help="study name, also the W&B group (default: the directory's name)")
    parser.add_argument(
        "--metric",
        help="objective metric (overrides the space file's objective.metric); one a run logs, checked "
        "before the first trial",
    )
    parser.add_argument("--mode", choices=["min", "max"], help="minimise or maximise the metric")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler (each worker adds its rank)")
    parser.add_argument(
        "--vectorise",
        type=int,
        default=1,
        metavar="K",
        help="train K trials at once in one jit(vmap) program (optuna; only shape-preserving parameters)",
    )
    parser.add_argument(
        "--stale-after",
        type=float,
        default=300.0,
        metavar="S",
        help="seconds without a worker's heartbeat before its running trial is retried (optuna)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from smilejax.tune import worker as workers

    worker = workers.start()  # before JAX starts: device choice and single-process trials

    from smilejax import config
    from smilejax.tune import space as spaces
    from smilejax.tune import study

    space = spaces.load(args.space, metric=args.metric, mode=args.mode)
    base = config.apply_overrides(config.read_yaml(args.config), args.overrides)
    options = study.Options(
        dir=args.dir or Path("runs") / f"tune-{Path(args.space).stem}",
        backend=args.backend,
        algorithm=args.algorithm,
        pruner=args.pruner,
        trials=args.trials,
        seed=args.seed,
        vectorise=args.vectorise,
        stale_after=args.stale_after,
        name=args.name,
    )
    summary = study.tune(base, space, options, worker)
    if summary is not None:
        print(summary.table())
        if summary.best:
            best = summary.best
            print(
                f"\nbest: trial {best['number']}: {summary.metric} = {best['value']:.6g}  ({best['run_dir']})"
            )
            print("  " + " ".join(f"{k}={v}" for k, v in best["params"].items()))
        else:
            logging.getLogger("smilejax").warning("no trial completed")
        print(f"study: {options.dir}/study.json, {options.dir}/study.png")
    return 0
