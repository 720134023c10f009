"""``smilejax eval RUN_DIR``: physics evaluation of a trained run (metrics JSON and plots)."""

from __future__ import annotations

import argparse
from pathlib import Path

from smilejax.commands.common import existing


def register(sub) -> None:
    parser = sub.add_parser(
        "eval",
        help="evaluate a trained run: physics metrics (JSON) and plots (PNG)",
        description="Evaluate the model of RUN_DIR at its newest checkpoint (or --step) on a split of its "
        "own data, through its own input pipeline and normalisation, and write metrics.json and PNG "
        "plots into --out. The evaluation is chosen by the run's model (smilejax.evaluation.<model>). "
        "GN2: b-tagging discriminant D_b = ln(p_b / (fc p_c + ftau p_tau + (1 - fc - ftau) p_light)), "
        "b-efficiency vs light- and c-rejection against an impact-parameter baseline, rejections at "
        "the 70/77/85% working points, ROC AUC, track-origin accuracy, vertex pair efficiency/purity. "
        "MLPF: on the first --jets events, MLPF's particles and the rule-based PF candidates (ycand) "
        "against the target particles: per-class (charged hadron, neutral hadron, photon, electron, muon, "
        "any) efficiency and fake rate of elements; jets (fastjet ee_genkt R=0.4 p=-1, pT > 5 GeV) of MLPF, "
        "PF and target particles matched to generator jets within dR < 0.1: response reco/gen pT median, "
        "IQR/median and matched fraction; missing-pT response against genmet.",
        epilog="exit codes: 0 done, 1 failed, 2 not a run directory, no evaluator for the model, bad "
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
        help="evaluate the first N jets (MLPF: events) of the split (default: all)",
    )
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    parser.add_argument(
        "--fc", type=float, default=0.2, help="c fraction in D_b's denominator (default 0.2, ATLAS GN2v01)"
    )
    parser.add_argument(
        "--ftau", type=float, default=0.01, help="tau fraction in D_b's denominator (default 0.01, GN2v01)"
    )
    parser.add_argument(
        "--ip-fit-jets",
        type=int,
        default=5000,
        help="training jets that fill the impact-parameter baseline's templates (default 5000)",
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (default RUN_DIR/eval)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    existing(args.run_dir, "run directory")
    from smilejax import evaluation

    opts = evaluation.EvalOptions(
        out=args.out if args.out is not None else args.run_dir / "eval",
        split=args.split,
        jets=args.jets,
        step=args.step,
        fc=args.fc,
        ftau=args.ftau,
        ip_fit_jets=args.ip_fit_jets,
    )
    evaluation.run(args.run_dir, opts)
    return 0
