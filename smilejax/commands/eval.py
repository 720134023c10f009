"""``smilejax eval RUN_DIR``: physics evaluation of a trained run (metrics JSON and plots)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from smilejax.commands.common import existing

log = logging.getLogger(__name__)

# The generic options that take a value: their values are not RUN_DIR candidates.
_VALUED = ("--split", "--jets", "--step", "--out")


def register(sub) -> None:
    parser = sub.add_parser(
        "eval",
        help="evaluate a trained run: physics metrics (JSON) and plots (PNG)",
        description="Evaluate the model of RUN_DIR at its newest checkpoint (or --step) on a split of its "
        "own data, through its own input pipeline and normalisation, and write metrics.json and PNG "
        "plots into --out. What is measured is the model family's own evaluation, which may take "
        "options of its own: `smilejax eval RUN_DIR --help` lists those of RUN_DIR's family.",
        epilog="exit codes: 0 done, 1 failed, 2 not a run directory, no evaluation for the model, bad "
        "option or input.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="a run directory of smilejax train")
    parser.add_argument(
        "--split", default="eval", choices=["eval", "train"], help="data split (default eval)"
    )
    parser.add_argument(
        "--jets",
        type=int,
        default=None,
        metavar="N",
        help="evaluate the first N examples (jets, events...) of the split (default: all)",
    )
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default RUN_DIR/eval)")
    parser.set_defaults(run=run, extend=add_family_options, family_options=())


def add_family_options(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """The CLI's second stage: the evaluation options of RUN_DIR's model family, when ``argv`` names a
    run directory. Nothing is added otherwise; ``run`` then reports what is wrong with RUN_DIR."""
    run_dir = _run_dir(argv)
    if run_dir is None:
        return
    try:
        model_name = _model_name(run_dir)
        from smilejax import registry

        evaluation = registry.model(model_name).evaluation
    except Exception as err:  # an unreadable config or unknown family: `run` says so with exit 2
        log.debug("no evaluation options for %s: %s", run_dir, err)
        return
    if evaluation is None or not evaluation.options:
        return
    group = parser.add_argument_group(f"options of {model_name}'s evaluation", evaluation.about or None)
    for option in evaluation.options:
        kwargs = {"action": argparse.BooleanOptionalAction} if option.type is bool else {"type": option.type}
        group.add_argument(option.flag, dest=option.dest, default=option.default, help=option.help, **kwargs)
    parser.set_defaults(family_options=tuple(o.dest for o in evaluation.options))


def _run_dir(argv: list[str]) -> Path | None:
    """The first argument that is a run directory (holds config.yaml), skipping the generic options'
    values; ``argv`` may hold the whole command line or only this command's arguments."""
    skip = False
    for token in argv:
        if skip:
            skip = False
        elif token in _VALUED:
            skip = True
        elif not token.startswith("-") and (Path(token) / "config.yaml").is_file():
            return Path(token)
    return None


def _model_name(run_dir: Path) -> str:
    """The model name in a run's config.yaml, read without loading the config (no JAX)."""
    import yaml

    tree = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    name = (tree.get("model") or {}).get("name")
    if not isinstance(name, str):
        from smilejax import config

        name = config.load(run_dir / "config.yaml").model.name
    return name


def run(args: argparse.Namespace) -> int:
    existing(args.run_dir, "run directory")
    from smilejax import evaluation

    opts = evaluation.EvalOptions(
        out=args.out if args.out is not None else args.run_dir / "eval",
        split=args.split,
        jets=args.jets,
        step=args.step,
        model={dest: getattr(args, dest) for dest in args.family_options},
    )
    evaluation.run(args.run_dir, opts)
    return 0
