"""The ``smilejax`` command line: a thin dispatcher over ``smilejax.commands``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
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


# A config override on the command line: a dotted key (its first part a config section), '=', and a
# value (any text, parsed as YAML).
_OVERRIDE = re.compile(r"([A-Za-z_][\w-]*)(\.[\w-]+)+=")


def main(argv: list[str] | None = None) -> int:
    return dispatch(parse(argv))


def parse(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """The command line as a namespace. A command with config overrides takes KEY=VALUE anywhere around
    its options: argparse alone leaves those after an option unrecognized, and gives those after an
    option of several values (--files a b, --bucket 16 24) to that option.

    Two stages: a command whose parser sets ``extend=fn`` (``set_defaults``) first gets ``fn(its parser,
    its arguments)``, the arguments after the command's name without the overrides, to add the options
    that depend on them (``smilejax eval RUN_DIR`` the run's family options); ``--help`` then shows them
    too. ``commands.common.peek`` reads what those arguments give so far."""
    parser = parser or _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _extend(parser, argv)
    argv, overrides = _split_overrides(command, argv)
    args, leftover = parser.parse_known_args(argv)
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    if leftover:
        command.error(_unrecognized(leftover, args))
    return args


def _extend(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """Runs the ``extend`` hooks of the command ``argv`` names; the command's parser. A hook may add
    sub-commands (``data make NAME``): the deeper command's own hook runs next, each at most once."""
    extended: set[int] = set()
    while True:
        command, start = _command_parser(parser, argv)
        extend = command.get_default("extend")
        if extend is None or id(command) in extended:
            return command
        extended.add(id(command))
        rest, _ = _split_overrides(command, argv)  # the command's name and what precedes it hold no override
        try:
            extend(command, rest[start:])
        except (FileNotFoundError, ValueError, KeyError) as err:  # the arguments do not fit: exit 2
            command.error(str(err))


def _command_parser(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.ArgumentParser, int]:
    """The parser of the (sub-)sub-command that ``argv`` names (``bench serve``), or ``parser``, and where
    its own arguments start in ``argv``."""
    start = 0
    for i, word in enumerate(argv):
        if word.startswith("-"):
            continue
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None or word not in sub.choices:
            break
        parser, start = sub.choices[word], i + 1
    return parser, start


def _split_overrides(command: argparse.ArgumentParser, argv: list[str]) -> tuple[list[str], list[str]]:
    """(the other arguments, the KEY=VALUE overrides) for a command that takes overrides; a KEY=VALUE
    that is the value of an option (--vary model.heads=2,4) stays with its option."""
    if not any(a.dest == "overrides" for a in command._actions):
        return argv, []
    options = {name: a for a in command._actions for name in a.option_strings}
    rest, overrides, value_next = [], [], False
    for token in argv:
        (rest if value_next or not _is_override(token) else overrides).append(token)
        # argparse takes unique prefixes of long options too (--spa for --space)
        named = [
            a
            for name, a in options.items()
            if name == token or (token.startswith("--") and name.startswith(token))
        ]
        value_next = len({id(a) for a in named}) == 1 and named[0].nargs in (None, "?", 1)
    return rest, overrides


def _is_override(token: str) -> bool:
    """Whether ``token`` is a config override: ``section.key=value``, and no file of that name (a foreign
    checkpoint may be called ``epoch=039-val_loss=0.59.ckpt``; a config file ``model.embed=64.yaml``)."""
    match = _OVERRIDE.match(token)
    if match is None:
        return False
    from smilejax.config import Config  # only for a candidate: the config module imports JAX

    sections = {f.name for f in dataclasses.fields(Config)}
    return match.group(1) in sections and not os.path.exists(token)


def _unrecognized(leftover: list[str], args: argparse.Namespace) -> str:
    """argparse's message, plus the dotted override meant when an --option names a config field."""
    message = f"unrecognized arguments: {' '.join(leftover)}"
    option = next((t for t in leftover if t.startswith("--")), None)
    if option is None or not hasattr(args, "overrides"):
        return message
    name, has_value, value = option[2:].partition("=")
    if not has_value:
        after = leftover[leftover.index(option) + 1 :]
        value = after[0] if after and not after[0].startswith("-") else "VALUE"
    keys = _config_keys_named(name.replace("-", "_"), getattr(args, "config", None))
    if not keys:
        return message
    meant = " or ".join(f"{key}={value}" for key in keys)
    return f"{message}\nconfig fields are set as KEY=VALUE, not as options: did you mean {meant}?"


def _config_keys_named(name: str, source: str | None) -> list[str]:
    """The dotted config fields called ``name`` (a leaf such as steps, or a dotted key), for the config
    ``source`` where it loads (its model's and data format's fields too)."""
    from smilejax import config

    try:
        tree = config.read_yaml(source) if source else {}
    except config.ConfigError:
        tree = {}
    keys = config.field_keys(tree)
    return [k for k in keys if k == name or k.rsplit(".", 1)[-1] == name]


def dispatch(args: argparse.Namespace) -> int:
    """Runs a parsed command (``args.run``) with the CLI's logging and its errors as exit statuses."""
    _setup_logging(args.verbose)
    from smilejax.config import ConfigError
    from smilejax.preemption import EXIT_INTERRUPTED

    try:
        return args.run(args)
    except KeyboardInterrupt:  # a Ctrl-C outside a training loop (which checkpoints and exits itself)
        if args.verbose:
            raise
        print("smilejax: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
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
