"""The run config a benchmark measures: ``MODEL`` is a packaged config, a YAML file, or a model name.

The data section is replaced by the synthetic placeholder format (``_synthetic.FORMAT``): the study
feeds its own device-resident batches, so no reader (and no Grain) is imported.

A model family whose ``spec.bench.study`` names a module has a study of its own: ``bench train`` (and
``bench roofline``, where the module offers ``cases``) take that module's options through the CLI's
two-stage hook (``parser.set_defaults(extend=...)``, see ``extend_with_study``).
"""

from __future__ import annotations

import argparse
import importlib
import types

from smilejax import config, registry
from smilejax.bench import _synthetic
from smilejax.config import Config, ConfigError


def load_config(target: str, overrides: list[str] | tuple = ()) -> Config:
    cfg_tree = _tree(target)
    cfg_tree["data"] = {
        "format": _synthetic.FORMAT,
        "batch_size": cfg_tree.get("data", {}).get("batch_size", 32),
    }
    return config.load(cfg_tree, list(overrides))


def _tree(target: str) -> dict:
    try:
        return config.read_yaml(target)
    except ConfigError as err:
        try:  # a registered model with no config of that name: its defaults
            registry.model(target)
        except KeyError:
            raise err from None
        return {"model": {"name": target}}


def study(model_name: str) -> types.ModuleType | None:
    """The module of the family's own study (``spec.bench.study``), or None: the generic study."""
    name = registry.model(model_name).bench.study
    return importlib.import_module(name) if name else None


def extend_with_study(parser: argparse.ArgumentParser, argv: list[str], *, needs: str = "run") -> None:
    """The CLI's second stage (``fn(parser, argv)``, ``argv`` the command's arguments): adds the options
    of the family study of the ``MODEL`` that ``argv`` names, when its module has the function ``needs``.
    A model that does not resolve adds nothing: the command itself then reports it."""
    from smilejax.commands.common import peek

    known = peek(parser, argv)
    if known is None or not known.model:
        return
    try:
        name = _tree(known.model).get("model", {}).get("name")
        module = study(name) if isinstance(name, str) else None
    except (ConfigError, KeyError, ImportError):
        return
    if module is not None and hasattr(module, needs):
        module.add_arguments(parser)
