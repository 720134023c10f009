"""Typed construction of config dataclasses from plain YAML trees: every unknown key (with the closest
valid ones) and every wrongly typed value is collected into one ``ConfigError``. Used for the run config
(``smilejax.config``) and the system files of ``smilejax launch``."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key. Several problems (``problems``) are
    reported together, one per line, so that a user fixes them in one go."""

    def __init__(self, *problems: str):
        self.problems = list(problems)
        if len(problems) == 1:
            super().__init__(problems[0])
        else:
            super().__init__(f"{len(problems)} problems:\n  " + "\n  ".join(problems))


def unknown_keys(tree: dict, valid: set[str], where: str) -> list[str]:
    """A problem for each key of ``tree`` not in ``valid``, with the closest valid names."""
    problems = []
    for key in tree:
        if key not in valid:
            close = difflib.get_close_matches(str(key), sorted(valid), n=3, cutoff=0.5)
            hint = f"did you mean {' or '.join(repr(c) for c in close)}?" if close else "valid keys:"
            listing = "" if close else " " + ", ".join(sorted(valid))
            problems.append(f"unknown config key {where}{key!r}: {hint}{listing}")
    return problems


def build(cls: type, values: Any, where: str, problems: list[str] | None = None) -> Any:
    """``cls`` from ``values``. Every problem found is added to ``problems`` (the result is then None);
    without a ``problems`` list, they are raised together."""
    if problems is None:
        problems = []
        built = build(cls, values, where, problems)
        if problems:
            raise ConfigError(*problems)
        return built
    if values is None:
        values = {}
    if not isinstance(values, dict):
        problems.append(f"{where} must be a section (mapping), got {type(values).__name__}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    found = unknown_keys(values, fields, f"{where}.")
    kwargs = {}
    for name, value in values.items():
        if name in fields:
            try:
                kwargs[name] = coerce(value, hints[name], f"{where}.{name}")
            except ConfigError as err:
                found += err.problems
    problems += found
    if found:
        return None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:  # a section's own checks (__post_init__)
        problems.append(f"{where}: {err}")
        return None


def coerce(value: Any, hint: Any, key: str) -> Any:
    """``value`` checked against ``hint`` (ints widen to floats); raises ConfigError naming ``key``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {hint}")
    if origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads off/on/no/yes as booleans
            words = ("off", "no", "false") if not value else ("on", "yes", "true")
            value = next((w for w in words if w in args), value)
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint_text = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{key} must be one of {', '.join(map(repr, args))}, got {value!r}{hint_text}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list, got {type(value).__name__} {value!r}")
        item = args[0] if args else Any
        return origin(coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {type(value).__name__} {value!r}")
        item = args[1] if len(args) == 2 else Any
        return {k: coerce(v, item, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return build(hint, value, key)
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1 reads "3e-4" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if hint in (int, str, bool) and type(value) is hint:
        return value
    if hint is float or hint in (int, str, bool):
        raise ConfigError(f"{key} must be {hint.__name__}, got {type(value).__name__} {value!r}")
    return value
