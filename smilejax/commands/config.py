"""``smilejax config CONFIG [key=value ...]``: resolve, check and print a config."""

from __future__ import annotations

import argparse

import yaml

from smilejax.commands.common import add_config_args


def register(sub) -> None:
    parser = sub.add_parser(
        "config",
        help="print the resolved config (defaults filled in, overrides applied, checked)",
        description="Resolve and check a config without running anything, and print it as YAML.",
    )
    add_config_args(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from smilejax import config

    print(yaml.safe_dump(config.to_dict(config.load(args.config, args.overrides)), sort_keys=False), end="")
    return 0
