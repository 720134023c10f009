"""``smilejax plot RUN_DIR [RUN_DIR ...]``: training curves of runs (``smilejax.training_curves``)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    parser = sub.add_parser(
        "plot",
        help="draw the training curves of runs: loss, eval metrics, throughput, MFU",
        description="Draw, from each run's metrics.jsonl, the training and evaluation loss, the other "
        "evaluation metrics, the throughput (samples/s) and the MFU (where the run logged it) against the "
        "step or the training loop's wall time (summed from the logged step times), one line per run "
        "named by its directory.",
        epilog="exit codes: 0 done, 2 a run directory or its metrics.jsonl is missing, empty or unreadable",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", type=Path, help="run directories")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="FILE.png",
        help="output image (default: RUN_DIR/training_curves.png for one run, ./training_curves.png for "
        "several)",
    )
    parser.add_argument(
        "--x", choices=("step", "time"), default="step", help="horizontal axis (default step)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from smilejax import training_curves

    out = args.out or (args.run_dirs[0] if len(args.run_dirs) == 1 else Path()) / "training_curves.png"
    training_curves.write(args.run_dirs, out, args.x)
    print(f"wrote {out}")
    return 0
