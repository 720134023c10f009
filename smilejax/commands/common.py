"""Pieces shared by the sub-commands' parsers."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

OVERRIDES_HELP = (
    "dotted overrides of any config field, e.g. optimizer.lr=3e-4 mesh.fsdp=4 run.steps=200 "
    "run.dir=runs/test (values are parsed as YAML); before or after the options"
)

LAUNCH_EPILOG = """\
The same command runs as one process (CPU or GPU), as several local processes, or as many
processes under srun / mpiexec: the runtime detects Slurm, Open MPI and PBS (PALS/MPICH) launchers,
or an explicit JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID, and starts
jax.distributed itself. Only process 0 prints and logs.

exit codes: 0 done, 1 failed, 2 bad config or input, 75 stopped by SIGTERM/SIGUSR1 after a
checkpoint (requeue and run the same command again to resume), 130 stopped by Ctrl-C after a
checkpoint (a second Ctrl-C aborts at once, without it)."""


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config",
        metavar="CONFIG",
        help="YAML file or the name of a packaged config (one an installed model family ships); a file "
        "may start from another with 'base: NAME' (or base: a path relative to it) and give only what "
        "changes",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)


class _Unparsed(Exception):
    pass


def _refuse(message: str) -> NoReturn:
    raise _Unparsed(message)


def peek(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace | None:
    """What ``argv`` gives ``parser``'s arguments so far, for an ``extend`` hook (``cli.parse``): options
    not added yet are left aside (so their values should follow the positionals), ``--help`` waits for the
    final parse, and arguments that do not parse give None instead of an exit."""
    helps = [a for a in argv if a == "-h" or (len(a) > 2 and "--help".startswith(a))]
    parser.error = _refuse  # an instance attribute: argparse calls self.error on any problem
    try:
        return parser.parse_known_args([a for a in argv if a not in helps])[0]
    except (_Unparsed, argparse.ArgumentError):
        return None
    finally:
        del parser.error


def existing(path: str | Path, what: str) -> Path:
    """``path``, or FileNotFoundError (one line, exit 2) when nothing is there: checked before the slow
    imports and before anything is written."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such {what}")
    return path


def add_command(sub, name: str, *, help: str, description: str | None, **kw) -> argparse.ArgumentParser:
    """A sub-command whose ``--help`` shows ``description`` (usually the module doc) as written."""
    return sub.add_parser(
        name, help=help, description=description, formatter_class=argparse.RawDescriptionHelpFormatter, **kw
    )


def int_list(minimum: int = 0):
    """argparse type: comma-separated integers, each at least ``minimum`` (``1,2,4`` -> [1, 2, 4])."""

    def parse(text: str) -> list[int]:
        try:
            values = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
        if not values or min(values) < minimum:
            raise argparse.ArgumentTypeError(f"expected integers >= {minimum}, e.g. 1,2,4; got {text!r}")
        return values

    return parse


def choice_list(choices: tuple[str, ...]):
    """argparse type: a comma-separated subset of ``choices`` (``http,grpc`` -> ["http", "grpc"])."""

    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in values if v not in choices]
        if bad or not values:
            raise argparse.ArgumentTypeError(f"unknown {bad or text!r}; choose from {', '.join(choices)}")
        return values

    return parse
