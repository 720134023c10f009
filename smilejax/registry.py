"""Finds model families, data formats, packaged configs, data makers, data commands and optional features.

Everything comes from installed packages' entry points (``pyproject.toml``'s
``[project.entry-points."smilejax.models"]`` and the other groups below), smilejax's own families and any
other package's alike; the framework names none of them. ``package.module:ATTR`` in a config names a
model or data format that no package registers (a physicist's own model, a test's toy).
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.metadata
import importlib.resources
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from smilejax.inputs.spec import DatasetSpec
from smilejax.models.spec import Maker, ModelSpec

MODELS = "smilejax.models"  # name -> ModelSpec
FORMATS = "smilejax.formats"  # name -> DatasetSpec
CONFIGS = "smilejax.configs"  # name -> a package holding *.yaml configs
MAKERS = "smilejax.makers"  # name -> Maker (smilejax data make NAME)
DATA_COMMANDS = "smilejax.data_commands"  # name -> register(subparsers): more `smilejax data` commands
FEATURES = "smilejax.features"  # name -> a sequence of smilejax.features.Feature (smilejax doctor)


class RegistryError(KeyError):
    """An unknown name (with the close matches and the known ones) or an entry point that does not load.
    A KeyError, printed without KeyError's quotes."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@functools.cache
def _entry_points(group: str) -> dict[str, importlib.metadata.EntryPoint]:
    """The group's entry points by name; two distributions registering one name is an error naming both."""
    found: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in importlib.metadata.entry_points(group=group):
        if ep.name in found and found[ep.name].value != ep.value:
            raise RegistryError(
                f"{group} {ep.name!r} is registered twice: {_describe(found[ep.name])} and {_describe(ep)}"
            )
        found[ep.name] = ep
    return found


def clear_cache() -> None:
    """Forget the entry points seen so far (after a package was installed or sys.path changed)."""
    _entry_points.cache_clear()


def _describe(ep: importlib.metadata.EntryPoint) -> str:
    dist = ep.dist
    where = f"{dist.name} {dist.version}" if dist is not None else "an unknown distribution"
    return f"{ep.name} = {ep.value} (from {where})"


def _load(group: str, ep: importlib.metadata.EntryPoint) -> Any:
    try:
        return ep.load()
    except Exception as err:  # a broken plug-in is named, whatever it raised while importing
        raise RegistryError(
            f"the {group} entry point {_describe(ep)} does not load: {type(err).__name__}: {err}"
        ) from err


def _unknown(what: str, name: str, known: list[str]) -> RegistryError:
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return RegistryError(f"unknown {what} {name!r}; {hint}known: {', '.join(known) or 'none'}")


def _check(obj: Any, kind: type, what: str, name: str) -> Any:
    if not isinstance(obj, kind):
        raise RegistryError(f"{what} {name!r} is a {type(obj).__name__}, not a {kind.__name__}")
    return obj


def _get(group: str, name: str, kind: type, what: str) -> Any:
    """The registered ``name`` of ``group``, or the object that ``module:ATTR`` names."""
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            obj = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise RegistryError(f"cannot load {what} {name!r}: {err}") from err
        return _check(obj, kind, what, name)
    eps = _entry_points(group)
    if name not in eps:
        raise _unknown(what, name, sorted(eps))
    return _check(_load(group, eps[name]), kind, what, name)


def model(name: str) -> ModelSpec:
    return _get(MODELS, name, ModelSpec, "model")


def dataset(name: str) -> DatasetSpec:
    return _get(FORMATS, name, DatasetSpec, "data format")


def models() -> list[str]:
    """The registered model families' names (nothing is imported)."""
    return sorted(_entry_points(MODELS))


def datasets() -> list[str]:
    """The registered data formats' names (nothing is imported)."""
    return sorted(_entry_points(FORMATS))


class _Lazy(Mapping[str, Any]):
    """A group's objects by name, each loaded (and checked) when first asked for."""

    def __init__(self, group: str, kind: type, what: str):
        self._group, self._kind, self._what = group, kind, what
        self._eps = _entry_points(group)

    def __getitem__(self, name: str) -> Any:
        return _get(self._group, name, self._kind, self._what)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._eps))

    def __len__(self) -> int:
        return len(self._eps)

    def __contains__(self, name: object) -> bool:
        return name in self._eps


def makers() -> Mapping[str, Maker]:
    """``smilejax data make``'s generators by name; a maker's module loads when it is looked up."""
    return _Lazy(MAKERS, Maker, "data maker")


def configs() -> dict[str, Path]:
    """Every packaged config by name (its file's stem): the ``*.yaml`` of each package registered under
    ``smilejax.configs``. One name in two packages is an error naming both."""
    found: dict[str, Path] = {}
    origin: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in _entry_points(CONFIGS).values():
        for path in _yaml_files(ep):
            if path.stem in found and found[path.stem] != path:
                raise RegistryError(
                    f"packaged config {path.stem!r} is in two packages: {found[path.stem]} "
                    f"({_describe(origin[path.stem])}) and {path} ({_describe(ep)})"
                )
            found[path.stem], origin[path.stem] = path, ep
    return dict(sorted(found.items()))


def _yaml_files(ep: importlib.metadata.EntryPoint) -> list[Path]:
    try:
        root = importlib.resources.files(ep.module)
    except Exception as err:
        raise RegistryError(
            f"the {CONFIGS} entry point {_describe(ep)} does not load: {type(err).__name__}: {err}"
        ) from err
    files = []
    for entry in root.iterdir():
        if entry.name.endswith(".yaml") and entry.is_file():
            if not isinstance(entry, Path):  # a zipped package: bases are paths relative to the file
                raise RegistryError(f"{_describe(ep)}: {entry.name} is not a file on disk ({entry!r})")
            files.append(entry)
    return files


def data_commands() -> list[Callable[[Any], None]]:
    """The ``register(subparsers)`` functions that add ``smilejax data`` sub-commands, by entry-point name."""
    eps = _entry_points(DATA_COMMANDS)
    return [_check(_load(DATA_COMMANDS, eps[n]), Callable, "data command", n) for n in sorted(eps)]


def features() -> list[Any]:
    """The optional features that installed packages declare (``smilejax doctor``), by entry-point name."""
    from smilejax.features import Feature  # imported here: smilejax.features may use this module

    eps = _entry_points(FEATURES)
    found = []
    for name in sorted(eps):
        declared = _load(FEATURES, eps[name])
        declared = declared if isinstance(declared, list | tuple) else [declared]
        found += [_check(f, Feature, "feature", name) for f in declared]
    return found
