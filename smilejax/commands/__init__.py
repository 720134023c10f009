"""One module per ``smilejax`` sub-command, each with ``register(subparsers)``.

A module's top level imports nothing heavy (no JAX), so ``smilejax --help`` stays instant; the
parser it registers sets ``run=callable(args) -> exit code`` (and may set ``extend``, see ``cli.parse``).
Adding a command is adding a module and its name below.
"""

from __future__ import annotations

import importlib

# The command modules, in the order --help lists them (common.py holds shared pieces, not a command).
COMMANDS = (
    "train",
    "eval",
    "tune",
    "export",
    "serve",
    "infer",
    "launch",
    "bench",
    "data",
    "config",
    "doctor",
    "import_model",
    "plot",
)


def names() -> list[str]:
    return list(COMMANDS)


def register_all(sub) -> None:
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
