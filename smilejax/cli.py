"""The ``smilejax`` command line: a thin dispatcher over ``smilejax.commands``."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from smilejax.commands import register_all
from smilejax.commands.common import LAUNCH_EPILOG


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smilejax",
        description="Train, tune and serve High-Energy-Physics models with JAX, laptop to GPU cluster.",
        epilog=LAUNCH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    register_all(sub)
    return parser


def _setup_logging(verbose: bool) -> None:
    # Only process 0 talks; the others report warnings and errors.
    rank = next(
        (
            os.environ[v]
            for v in ("SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "JAX_PROCESS_ID")
            if v in os.environ
        ),
        "0",
    )
    level = logging.DEBUG if verbose else logging.INFO if rank == "0" else logging.WARNING
    logging.basicConfig(level=level, format=f"%(asctime)s [{rank}] %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("absl", "orbax", "jax._src", "grain"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    return dispatch(_parser().parse_args(argv))


def dispatch(args: argparse.Namespace) -> int:
    """Runs a parsed command (``args.run``) with the CLI's logging and its errors as exit statuses."""
    _setup_logging(args.verbose)
    from smilejax.config import ConfigError

    try:
        return args.run(args)
    except ConfigError as err:
        if args.verbose:
            raise
        print(f"smilejax: config error: {err}", file=sys.stderr)
        return 2
    except FloatingPointError as err:  # a NaN/inf loss: the last good checkpoint stays
        print(f"smilejax: stopped: {err}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError, KeyError) as err:
        if args.verbose:
            raise
        print(f"smilejax: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
