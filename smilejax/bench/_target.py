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
    """The CLI's second stage (``fn(parser, argv)``): adds the options of the family study of the
    ``MODEL`` that ``argv`` names, when its module has the function ``needs``. A model that does not
    resolve adds nothing: the command itself then reports it."""
    target, overrides = _model_argument(parser, argv)
    if not target:
        return
    try:
        tree = _tree(target)
        name = tree.get("model", {}).get("name")
        for item in overrides:  # the last model.name=... override wins, as in config.load
            key, _, value = item.partition("=")
            name = value if key == "model.name" else name
        module = study(name) if isinstance(name, str) else None
    except (ConfigError, KeyError, ImportError):
        return
    if module is not None and hasattr(module, needs):
        module.add_arguments(parser)


def _model_argument(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[str | None, list[str]]:
    """(MODEL, KEY=VALUE overrides) of the command line ``argv`` (the whole one or the command's own),
    read with a copy of ``parser``'s options that neither fails nor prints help."""
    rest = list(argv)
    for word in parser.prog.split()[1:]:  # "smilejax bench train": drop "bench", "train" when present
        words = [t for t in rest if not t.startswith("-")]
        if words and words[0] == word:
            rest = rest[rest.index(word) + 1 :]
    probe = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    probe.add_argument("model", nargs="?")
    probe.add_argument("overrides", nargs="*")
    for action in parser._actions:  # argparse has no public way to list a parser's options
        if action.option_strings and action.dest != "help":
            flat = action.nargs == 0
            kind = {"action": "store_true"} if flat else {"nargs": action.nargs}
            probe.add_argument(*action.option_strings, dest=f"_{action.dest}", **kind)
    try:
        known, _ = probe.parse_known_args(rest)
    except argparse.ArgumentError:  # a malformed command line: the real parser says what is wrong
        return None, []
    return known.model, [o for o in known.overrides if "=" in o]
