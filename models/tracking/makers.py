"""``smilejax data make trackml-synthetic|trackml-pythia``: events in the TrackML challenge's CSV format
(what ``data.format=trackml`` reads) from a simulated TrackML-like detector. Light: the generator is
imported when a maker runs."""

from __future__ import annotations

import argparse
import sys

from smilejax import host

from ..spec import Maker

SYNTHETIC_ABOUT = "TrackML-format events from particle guns in a TrackML-like detector (numpy only)"
PYTHIA_ABOUT = "TrackML-format events: Pythia 8 tt̄ plus soft-QCD pile-up in a TrackML-like detector"


def _add_common(parser: argparse.ArgumentParser) -> None:
    from smilejax.generators.workers import add_arguments

    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (event*-{hits,...}.csv)")
    parser.add_argument("--events", required=True, type=int, metavar="N", help="number of events")
    parser.add_argument(
        "--pileup", type=float, default=0.0, metavar="MU", help="mean pile-up interactions (default 0)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--gzip", action="store_true", help="write .csv.gz files")
    add_arguments(parser)


def _run(kind: str, args: argparse.Namespace) -> int:
    if args.events < 1:
        raise ValueError(f"--events must be at least 1, not {args.events}")
    if args.pileup < 0:
        raise ValueError(f"--pileup must be >= 0, not {args.pileup}")
    if kind == "pythia":
        from smilejax.generators.pythia import require_generators

        try:
            require_generators()
        except ImportError as err:
            print(f"smilejax: {err}", file=sys.stderr)
            return 2
    from . import make_events

    workers = max(1, min(args.workers, args.events))
    info = make_events.make(
        args.out,
        args.events,
        args.pileup,
        args.seed,
        kind=kind,
        workers=workers,
        gzip=args.gzip,
        progress=not args.no_progress,
    )
    rate = info["events"] / info["seconds"]
    print(
        f"wrote {info['events']} events ({info['hits_mean']:.0f} hits per event on average, pile-up "
        f"{args.pileup:g}) in {info['seconds']:.1f} s ({rate:.2f} events/s, {workers} workers): {args.out}\n"
        f"train on it with: data.format=trackml data.path={args.out}"
    )
    return 0


SYNTHETIC = Maker(
    about=SYNTHETIC_ABOUT,
    add_arguments=_add_common,
    run=lambda args: _run("synthetic", args),
    description=(
        f"{SYNTHETIC_ABOUT}: 40 pions/muons per interaction (1 + Poisson(--pileup) interactions), helices "
        "with multiple scattering, smeared hits, cells, inefficiency and noise. Every event is seeded from "
        "(--seed, event number), so a set does not depend on --workers."
    ),
)
PYTHIA = Maker(
    about=PYTHIA_ABOUT,
    add_arguments=_add_common,
    run=lambda args: _run("pythia", args),
    description=(
        f"{PYTHIA_ABOUT} (pile-up: Poisson(--pileup) interactions spread along z with sigma 55 mm; about "
        "10^5 hits per event at --pileup 200). Worker k makes a contiguous block of events from seeds "
        f"(--seed, k): reproducible for the same --seed and --workers. Needs: {host.pip_install('.[pythia]')}"
    ),
)
