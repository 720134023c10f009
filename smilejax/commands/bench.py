"""``smilejax bench STUDY ...``: performance studies (modules of ``smilejax.bench``)."""

from __future__ import annotations

import importlib
import pkgutil

import smilejax.bench as studies

from .common import add_command


def register(sub) -> None:
    parser = add_command(
        sub,
        "bench",
        help="performance studies: throughput, scaling, input pipeline, serving, convergence",
        description="Performance studies. Each reports speeds as ratios against a baseline measured in "
        "the same run and writes JSON, a table and plots into --out, with the machine, date and command.",
    )
    studies_sub = parser.add_subparsers(dest="study", metavar="STUDY", required=True)
    names = (m.name for m in pkgutil.iter_modules(studies.__path__))
    for module in sorted(n for n in names if not n.startswith("_") and n != "common"):
        importlib.import_module(f"{studies.__name__}.{module}").register(studies_sub)
