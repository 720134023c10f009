"""``smilejax data``: make datasets (``data make NAME``) and the data formats' own tools.

Makers come from the entry-point group ``smilejax.makers`` (``models.spec.Maker``), the other actions
from ``smilejax.data_commands`` (a format's ``register(subparsers)``: normalisation dicts, file checks,
...). Both are loaded only when the command is ``data`` (the CLI's second stage, ``extend``), and a
``data make NAME`` loads only that maker: a family's package may import JAX.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys

log = logging.getLogger(__name__)


def register(sub) -> None:
    parser = sub.add_parser(
        "data",
        help="make datasets (synthetic, generators), and the data formats' tools (normalisation, checks)",
        description="Make datasets with the installed makers (`smilejax data make --help` lists them), "
        "and run the installed data formats' own tools (normalisation dicts, file checks, ...).",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    parser.set_defaults(extend=functools.partial(add_actions, actions))


def add_actions(actions, parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """The CLI's second stage: ``make`` with the makers and the formats' commands. Only what ``argv``
    asks for is loaded (``data make NAME``: that maker), everything for ``--help`` or an unknown name."""
    if actions.choices:  # added already
        return
    from smilejax import registry

    words = [t for t in argv if not t.startswith("-")]  # the action, then (for make) the maker
    action = words[0] if words else None
    make = actions.add_parser(
        "make",
        help="generate a dataset",
        description="Generate a dataset with one of the installed makers (written under a temporary name, "
        "then renamed); `smilejax data make NAME --help` gives a maker's options.",
    )
    makers = make.add_subparsers(dest="maker", metavar="MAKER", required=True)
    names = list(registry.makers())
    if action == "make":
        named = words[1] if len(words) > 1 and words[1] in names else None
        _add_makers(makers, [named] if named else names)
        return
    try:
        commands = registry.data_commands()
    except KeyError as err:  # a broken format's tools: the makers and the other commands still work
        print(f"smilejax: warning: {err}", file=sys.stderr)
        commands = []
    for register_commands in commands:
        register_commands(actions)
    if action not in actions.choices:  # --help, or a wrong name: argparse lists every choice
        _add_makers(makers, names)


def _add_makers(makers, names: list[str]) -> None:
    from smilejax import registry

    found = registry.makers()
    for name in names:
        try:
            maker = found[name]
        except KeyError as err:  # a broken maker is listed with its error, the others still work
            makers.add_parser(name, help=f"(does not load: {err})").set_defaults(run=_broken(err))
            continue
        m = makers.add_parser(name, help=maker.about, description=maker.description or maker.about)
        maker.add_arguments(m)
        m.set_defaults(run=maker.run)


def _broken(err: Exception):
    def run(args: argparse.Namespace) -> int:
        print(f"smilejax: {err}", file=sys.stderr)
        return 2

    return run
