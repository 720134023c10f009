"""The LFI benchmark's options (``smilejax bench train npe-...``, ``bench_study``): the parser group, their
checks, and the config each task trains with (``--config-for``)."""

from __future__ import annotations

import argparse

from smilejax.config import Config

TASKS = ("two_moons", "gaussian_linear", "slcp", "bernoulli_glm")
BUDGETS = (1_000, 10_000, 100_000)
NOT_OPTIONS = ("bucket", "torch_modes", "vary", "tracks", "attention")
DEFAULTS = {
    "tasks": ",".join(TASKS),
    "budgets": ",".join(map(str, BUDGETS)),
    "seeds": 3,
    "epochs": 100.0,
    "patience": 20,
    "posterior_samples": 10_000,
    "observations": "all",
    "no_sbi": False,
    "no_smilejax": False,
    "first_seed": 0,
    "add_runs": "",
    "label": "",
    "config_for": "",
    "rescore": "",
    "torch_threads": 0,
    "sbi_max_epochs": 0,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This study's options of ``smilejax bench train npe-...`` (beside the generic ones)."""
    group = parser.add_argument_group("npe only: the simulation-based-inference benchmark")
    group.add_argument("--tasks", default=DEFAULTS["tasks"], help="benchmark tasks, comma-separated")
    group.add_argument(
        "--budgets", default=DEFAULTS["budgets"], help="simulation budgets (default 1000,10000,100000)"
    )
    group.add_argument("--seeds", type=int, default=3, help="trainings per task and budget, each side")
    group.add_argument("--epochs", type=float, default=100, help="smilejax's passes over the set (at most)")
    group.add_argument(
        "--patience",
        type=int,
        default=20,
        help="smilejax: early stopping after this many epochs without a lower validation loss, on 10%% "
        "held out, keeping the best parameters, as sbi (its stop_after_epochs); 0: --epochs passes on all",
    )
    group.add_argument("--posterior-samples", type=int, default=10_000, help="draws per observation (C2ST)")
    group.add_argument("--observations", default="all", help="reference observations: all, N-M or i,j,k")
    group.add_argument("--no-sbi", action="store_true", help="smilejax alone (no sbi environment needed)")
    group.add_argument("--no-smilejax", action="store_true", help="sbi alone (its side run apart)")
    group.add_argument("--first-seed", type=int, default=0, help="seeds: first-seed, first-seed+1, ...")
    group.add_argument(
        "--add-runs",
        default="",
        help="lfi-runs.json files of earlier runs (comma-separated) whose rows join this table",
    )
    group.add_argument(
        "--label",
        default="",
        help="a name for this run's smilejax variant (e.g. its flow): its rows are then 'smilejax (LABEL)' "
        "and never pool with other smilejax rows joined by --add-runs",
    )
    group.add_argument(
        "--config-for",
        default="",
        metavar="TASK=CONFIG,...",
        help="train TASK with another config (packaged name or YAML, the same KEY=VALUE overrides "
        "applied), both sides; other tasks use MODEL's",
    )
    group.add_argument(
        "--rescore",
        default="",
        metavar="DIR",
        help="train nothing: score the posterior draws an earlier run saved in DIR/draws (its --out) "
        "where it had not (a run stopped while scoring) and write the tables; with --observations, "
        "those only (several at once: one observation each)",
    )
    group.add_argument("--torch-threads", type=int, default=0, help="sbi's torch threads (0: its default)")
    group.add_argument(
        "--sbi-max-epochs", type=int, default=0, help="cap on sbi's epochs (0: early stopping alone)"
    )


def numbers(text: str, what: str) -> list[int]:
    """A comma-separated option of counts (``1000,1e4``), each at least 10."""
    try:
        values = [int(float(v)) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 10:
        raise SystemExit(f"--{what} {text}: expected comma-separated counts of at least 10")
    return values


def check(cfg: Config, args: argparse.Namespace) -> None:
    """Refuses the generic options this study ignores and bad values; fills the defaults of options a
    caller's namespace lacks (a study run from Python)."""
    wrong = [f"--{k.replace('_', '-')}" for k in NOT_OPTIONS if getattr(args, k, None) not in (None, [], 0)]
    if wrong:
        raise SystemExit(f"{', '.join(wrong)}: not an option of bench train {cfg.model.name}")
    if cfg.model.name != "npe":
        raise SystemExit(f"the LFI benchmark trains NPE; the config's model is {cfg.model.name!r}")
    for key, value in DEFAULTS.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.seeds < 1 or args.epochs <= 0 or args.posterior_samples < 10:
        raise SystemExit("--seeds and --epochs must be positive, --posterior-samples at least 10")
    if args.patience < 0:
        raise SystemExit("--patience must be at least 0 (0: no early stopping)")
    if args.first_seed < 0:
        raise SystemExit("--first-seed must be at least 0")


def task_configs(cfg: Config, args: argparse.Namespace, names: list[str]) -> dict[str, Config]:
    """The config each task trains with: ``--config-for TASK=CONFIG`` (loaded as MODEL is, with the same
    overrides), else MODEL's ``cfg``. One config cannot suit every task (e.g. conditioning on x as it is
    helped two_moons and not gaussian_linear)."""
    from smilejax.bench import _target

    out = dict.fromkeys(names, cfg)
    for item in (i.strip() for i in (args.config_for or "").split(",") if i.strip()):
        task, _, source = item.partition("=")
        task, source = task.strip(), source.strip()
        if not source:
            raise SystemExit(f"--config-for {item}: expected TASK=CONFIG")
        if task not in out:
            raise SystemExit(f"--config-for {item}: {task!r} is not among --tasks ({', '.join(names)})")
        out[task] = _target.load_config(source, getattr(args, "overrides", None) or [])
        if out[task].model.name != "npe":
            raise SystemExit(f"--config-for {item}: its model is {out[task].model.name!r}, not npe")
    return out
