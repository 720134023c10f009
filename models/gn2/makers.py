"""``smilejax data make ftag-synthetic|ftag-pythia``: GN2's datasets in the ATLAS flavour-tagging HDF5 format
(what ``data.format=ftag_h5`` reads). Light: the generators are imported when a maker runs."""

from __future__ import annotations

import argparse
import sys

from smilejax import host

from ..spec import Maker

SYNTHETIC_ABOUT = "synthetic ATLAS flavour-tagging jets (numpy only, ~5e4 jets/s)"
PYTHIA_ABOUT = (
    "ATLAS flavour-tagging jets from Pythia 8 tt̄ events at 13 TeV with pile-up (~100 jets/s per core)"
)
DEFAULT_PILEUP = 34.0  # keep equal to make_pythia.DEFAULT_PILEUP (not imported: this module stays light)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="PATH", help="output file (.h5)")
    parser.add_argument("--jets", required=True, type=int, metavar="N", help="number of jets")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def _add_pythia(parser: argparse.ArgumentParser) -> None:
    from smilejax.generators.workers import add_arguments

    _add_common(parser)
    parser.add_argument(
        "--pileup",
        type=float,
        default=DEFAULT_PILEUP,
        metavar="MU",
        help=f"mean minimum-bias interactions overlaid per event, with fake tracks (default "
        f"{DEFAULT_PILEUP:g}, about ATLAS's Run 2 average; 0: neither)",
    )
    parser.add_argument("--plot", metavar="PNG", help="also write a histogram of the tracks per jet")
    add_arguments(parser)


def _report(path, n_jets: int) -> int:
    """Print what the file holds (jets per flavour, and the generator's speed when it recorded it)."""
    import h5py
    import numpy as np

    with h5py.File(path, "r", locking=False) as f:
        flav = np.bincount(f["jets"].fields("flavour_label")[:], minlength=4)
        extra = ""
        if "n_events" in f.attrs:
            secs = float(f.attrs["seconds"])
            cpu = float(f.attrs["cpu_seconds"])
            extra = (
                f" from {int(f.attrs['n_events'])} events in {secs:.1f} s ({n_jets / secs:.0f} jets/s "
                f"with {int(f.attrs['workers'])} workers, {n_jets / cpu:.0f} jets per CPU-second)"
            )
    print(f"wrote {n_jets} jets (b {flav[0]}, c {flav[1]}, light {flav[2]}, tau {flav[3]}){extra}: {path}")
    return 0


def _report_tracks(path, plot: str | None) -> None:
    from . import multiplicity

    print(multiplicity.describe(multiplicity.summary(path)))
    if plot:
        multiplicity.plot({str(path): path}, plot)
        print(f"wrote {plot}")


def _check_jets(args: argparse.Namespace) -> None:
    if args.jets < 1:
        raise ValueError(f"--jets must be at least 1, not {args.jets}")


def _run_synthetic(args: argparse.Namespace) -> int:
    from . import make_synthetic

    _check_jets(args)
    return _report(make_synthetic.make(args.out, args.jets, args.seed), args.jets)


def _run_pythia(args: argparse.Namespace) -> int:
    from smilejax.generators.pythia import require_generators

    _check_jets(args)
    if args.pileup < 0:
        raise ValueError(f"--pileup must be >= 0, not {args.pileup}")
    try:
        require_generators()
    except ImportError as err:
        print(f"smilejax: {err}", file=sys.stderr)
        return 2
    from . import make_pythia

    path = make_pythia.make(
        args.out,
        args.jets,
        args.seed,
        workers=args.workers,
        pileup=args.pileup,
        progress=not args.no_progress,
    )
    code = _report(path, args.jets)
    _report_tracks(path, args.plot)
    return code


SYNTHETIC = Maker(
    about=SYNTHETIC_ABOUT,
    add_arguments=_add_common,
    run=_run_synthetic,
    description=SYNTHETIC_ABOUT + ".",
)
PYTHIA = Maker(
    about=PYTHIA_ABOUT,
    add_arguments=_add_pythia,
    run=_run_pythia,
    description=(
        f"{PYTHIA_ABOUT}. Pile-up: Poisson(--pileup) soft-QCD interactions per event along the beam line "
        "(sigma_z 42 mm), their tracks labelled Pileup, and fake tracks labelled Fake; GN2's track selection "
        "and 40-track cap (docs/GN2_DATA.md). Worker k generates its share of the jets from seeds (seed, k) "
        "and the parts are merged in order, so the file is reproducible for the same --seed and --workers "
        f"(not across worker counts). Needs: {host.pip_install('.[pythia]')}"
    ),
)
