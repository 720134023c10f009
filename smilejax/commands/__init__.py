"""One module per ``smilejax`` sub-command, each with ``register(subparsers)``.

A module's top level imports nothing heavy (no JAX), so ``smilejax --help`` stays instant; the
parser it registers sets ``run=callable(args) -> exit code``. Adding a command is adding a module.
"""

from __future__ import annotations

import importlib
import pkgutil

# Commands in the order --help lists them; modules not named here follow alphabetically.
ORDER = ["train", "eval", "tune", "export", "serve", "launch", "bench", "data", "config", "doctor"]


def names() -> list[str]:
    found = {m.name for m in pkgutil.iter_modules(__path__) if m.name != "common"}
    return [n for n in ORDER if n in found] + sorted(found - set(ORDER))


def register_all(sub) -> None:
    for name in names():
        importlib.import_module(f"{__name__}.{name}").register(sub)
