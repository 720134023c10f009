"""Finds models and data formats by name.

``gn2`` means the module ``smilejax.models.gn2`` (its ``SPEC``); ``package.module:ATTR`` names one
outside the package, so a physicist can train their own model without editing smilejax.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from typing import Any

from smilejax.inputs.spec import DatasetSpec
from smilejax.models.spec import ModelSpec

_NOT_PLUGINS = {
    "spec",
    "layers",
    "pipeline",
    "cache",
    "workers",
    "ftag_synthetic",
    "ftag_pythia",
    "mlpf_format",
    "mlpf_synthetic",
    "mlpf_pythia",
}


def _names(package: str) -> list[str]:
    path = importlib.import_module(package).__path__
    return sorted(m.name for m in pkgutil.iter_modules(path) if m.name not in _NOT_PLUGINS)


def _lookup(package: str, name: str, kind: type, what: str) -> Any:
    if ":" in name:
        module_name, _, attr = name.partition(":")
    else:
        known = _names(package)
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(known) or 'none'}"
            raise KeyError(f"unknown {what} {name!r}; {hint}")
        module_name, attr = f"{package}.{name}", "SPEC"
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise KeyError(f"cannot load {what} {name!r}: {err}") from err
    if not isinstance(obj, kind):
        raise KeyError(f"{what} {name!r} is a {type(obj).__name__}, not a {kind.__name__}")
    return obj


def model(name: str) -> ModelSpec:
    return _lookup("smilejax.models", name, ModelSpec, "model")


def dataset(name: str) -> DatasetSpec:
    return _lookup("smilejax.inputs", name, DatasetSpec, "data format")


def models() -> list[str]:
    return _names("smilejax.models")


def datasets() -> list[str]:
    return _names("smilejax.inputs")
