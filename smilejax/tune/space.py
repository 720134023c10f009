"""The search space: a YAML file of config fields to tune, checked against the config before any trial.

::

    objective: {metric: eval/loss, mode: min}    # any logged metric; min or max
    parameters:
      optimizer.lr: {type: float, low: 1.0e-4, high: 1.0e-2, scale: log}
      optimizer.weight_decay: {type: float, low: 0.0, high: 0.1}
      model.hidden: {type: int, low: 16, high: 64, step: 16}
      optimizer.name: {type: choice, values: [adamw, lion]}
      optimizer.b2: {type: float, low: 0.95, high: 0.999, when: {optimizer.name: adamw}}

Keys are dotted config fields, as in ``smilejax train`` overrides. ``when`` makes a parameter
conditional on choice parameters listed before it. ``Space.check`` builds the config with every
parameter at its bounds (and every choice) through ``config.apply_overrides`` + ``config.from_dict``,
so an unknown field, a wrong type or an invalid value fails before any trial, naming the parameter.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import yaml

from smilejax import config
from smilejax.config import ConfigError

# Set by the study for every trial; tuning them would break the study's bookkeeping.
RESERVED = ("run.dir", "logging.group", "logging.name", "logging.progress")

_TOP = {"objective", "parameters"}
_OBJECTIVE = {"metric", "mode"}
_FIELDS = {
    "float": {"type", "low", "high", "scale", "step", "when"},
    "int": {"type", "low", "high", "scale", "step", "when"},
    "choice": {"type", "values", "when"},
}


class SpaceError(ConfigError):
    """A search space that cannot be used; the message names the file and the parameter."""


@dataclasses.dataclass(frozen=True)
class Objective:
    metric: str = "eval/loss"
    mode: Literal["min", "max"] = "min"

    def better(self, a: float, b: float) -> bool:
        return a < b if self.mode == "min" else a > b


@dataclasses.dataclass(frozen=True)
class Param:
    key: str  # dotted config field
    kind: Literal["float", "int", "choice"]
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    values: tuple = ()
    when: tuple[tuple[str, tuple], ...] = ()  # (parent key, allowed parent values)

    def probes(self) -> tuple:
        """The values that ``Space.check`` builds a config with: the bounds, or every choice."""
        return self.values if self.kind == "choice" else (self.low, self.high)


@dataclasses.dataclass(frozen=True)
class Space:
    params: tuple[Param, ...]
    objective: Objective
    source: str = "<space>"

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def is_active(self, param: Param, values: dict[str, Any]) -> bool:
        return all(parent in values and values[parent] in allowed for parent, allowed in param.when)

    def active(self, values: dict[str, Any]) -> dict[str, Any]:
        """``values`` restricted to the parameters their conditions leave active (in space order)."""
        out: dict[str, Any] = {}
        for p in self.params:
            if p.key in values and self.is_active(p, out):
                out[p.key] = values[p.key]
        return out

    def overrides(self, values: dict[str, Any]) -> list[str]:
        """``key=value`` overrides (values written as YAML) for the active parameters."""
        return [f"{key}={_yaml_value(v)}" for key, v in self.active(values).items()]

    def check(self, tree: dict) -> None:
        """Raises SpaceError unless every parameter value the space can produce makes a valid config."""
        try:
            base = config.from_dict(copy.deepcopy(tree))
        except ConfigError as err:
            raise SpaceError(f"the base config is invalid before tuning: {err}") from err
        if self.objective.metric.startswith("eval/") and base.run.eval_every <= 0:
            raise SpaceError(
                f"{self.source}: objective.metric={self.objective.metric!r} is an evaluation metric but "
                "run.eval_every is 0; set run.eval_every (and run.eval_steps) or tune a training metric"
            )
        for p in self.params:
            parents = list(self._activating(p))
            for probe in p.probes():
                overrides = [*parents, f"{p.key}={_yaml_value(probe)}"]
                try:
                    config.from_dict(config.apply_overrides(copy.deepcopy(tree), overrides))
                except ConfigError as err:
                    raise SpaceError(f"{self.source}: parameters.{p.key} = {probe!r}: {err}") from err

    def _activating(self, param: Param) -> Iterator[str]:
        """Overrides of the parents (and theirs) that make ``param`` active."""
        by_key = {p.key: p for p in self.params}
        for parent, allowed in param.when:
            yield from self._activating(by_key[parent])
            yield f"{parent}={_yaml_value(allowed[0])}"


# ---------------------------------------------------------------- reading


def load(path: str | Path, *, metric: str | None = None, mode: str | None = None) -> Space:
    """The space in ``path``; ``metric`` / ``mode``, when given, replace the file's objective."""
    path = Path(path)
    if not path.exists():
        raise SpaceError(f"search space file {str(path)!r} does not exist")
    try:
        tree = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SpaceError(f"{path}: not valid YAML: {err}") from err
    return parse(tree, source=str(path), metric=metric, mode=mode)


def parse(tree: Any, *, source: str = "<space>", metric: str | None = None, mode: str | None = None) -> Space:
    if not isinstance(tree, dict):
        raise SpaceError(f"{source}: the top level must be a mapping with 'parameters' (and 'objective')")
    _check_keys(tree, _TOP, source, "")
    obj = tree.get("objective") or {}
    if not isinstance(obj, dict):
        raise SpaceError(f"{source}: objective must be a mapping {{metric: ..., mode: min|max}}")
    _check_keys(obj, _OBJECTIVE, source, "objective.")
    objective = Objective(
        metric=metric or obj.get("metric", "eval/loss"), mode=mode or obj.get("mode", "min")
    )
    if not isinstance(objective.metric, str) or not objective.metric:
        raise SpaceError(f"{source}: objective.metric must be the name of a logged metric, e.g. eval/loss")
    if objective.mode not in ("min", "max"):
        raise SpaceError(f"{source}: objective.mode must be 'min' or 'max', got {objective.mode!r}")

    raw = tree.get("parameters")
    if not isinstance(raw, dict) or not raw:
        raise SpaceError(f"{source}: 'parameters' must be a non-empty mapping of config fields to ranges")
    params: list[Param] = []
    for key, spec in raw.items():
        params.append(_param(str(key), spec, {p.key: p for p in params}, source))
    return Space(params=tuple(params), objective=objective, source=source)


def _param(key: str, spec: Any, earlier: dict[str, Param], source: str) -> Param:
    where = f"{source}: parameters.{key}"
    if key in RESERVED:
        raise SpaceError(f"{where}: {key} is set by the study for every trial and cannot be tuned")
    if "." not in key:
        raise SpaceError(f"{where}: name a field inside a section, e.g. optimizer.lr (not a whole section)")
    if not isinstance(spec, dict):
        raise SpaceError(f"{where}: must be a mapping such as {{type: float, low: 1e-4, high: 1e-2}}")
    kind = spec.get("type")
    if kind not in _FIELDS:
        close = difflib.get_close_matches(str(kind), list(_FIELDS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SpaceError(f"{where}: type must be one of float, int, choice, got {kind!r}{hint}")
    _check_keys(spec, _FIELDS[kind], source, f"parameters.{key}.")
    when = _conditions(spec.get("when"), earlier, where)
    if kind == "choice":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise SpaceError(f"{where}: a choice needs a non-empty list 'values'")
        if len({_yaml_value(v) for v in values}) != len(values):
            raise SpaceError(f"{where}: values {values} repeat an entry")
        return Param(key, "choice", values=tuple(_freeze(v) for v in values), when=when)

    number = float if kind == "float" else int
    bounds = {}
    for name in ("low", "high"):
        value = spec.get(name)
        if isinstance(value, str) and kind == "float":  # YAML 1.1 reads 1e-4 (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or (kind == "int" and not isinstance(value, int)):
            raise SpaceError(f"{where}: {name} must be a number ({kind}), got {value!r}")
        bounds[name] = number(value)
    low, high = bounds["low"], bounds["high"]
    if not low < high:
        raise SpaceError(f"{where}: empty range: low ({low}) must be below high ({high})")
    scale = spec.get("scale", "linear")
    if scale not in ("linear", "log"):
        raise SpaceError(f"{where}: scale must be 'linear' or 'log', got {scale!r}")
    if scale == "log" and low <= 0:
        raise SpaceError(f"{where}: a log scale needs low > 0, got {low}")
    step = spec.get("step")
    if step is not None:
        if not isinstance(step, int | float) or isinstance(step, bool) or step <= 0:
            raise SpaceError(f"{where}: step must be a positive number, got {step!r}")
        if kind == "int" and not isinstance(step, int):
            raise SpaceError(f"{where}: an int parameter needs an integer step, got {step!r}")
        if scale == "log":
            raise SpaceError(f"{where}: step and a log scale do not combine")
        n = (high - low) / step
        if abs(n - round(n)) > 1e-6:
            raise SpaceError(f"{where}: step {step} does not divide the range {low}..{high}")
    return Param(key, kind, low=low, high=high, log=scale == "log", step=step, when=when)


def _conditions(raw: Any, earlier: dict[str, Param], where: str) -> tuple[tuple[str, tuple], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not raw:
        raise SpaceError(
            f"{where}: when must map a choice parameter to its value(s), e.g. {{optimizer.name: adamw}}"
        )
    out = []
    for parent, allowed in raw.items():
        if parent not in earlier:
            close = difflib.get_close_matches(str(parent), list(earlier), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SpaceError(
                f"{where}: when names {parent!r}, which is not a parameter listed before it{hint}"
            )
        if earlier[parent].kind != "choice":
            raise SpaceError(f"{where}: when names {parent!r}, which is not a choice parameter")
        allowed = tuple(_freeze(v) for v in (allowed if isinstance(allowed, list) else [allowed]))
        unknown = [v for v in allowed if v not in earlier[parent].values]
        if unknown:
            raise SpaceError(
                f"{where}: when {parent} in {list(allowed)}: {unknown} not among its values "
                f"{list(earlier[parent].values)}"
            )
        out.append((str(parent), allowed))
    return tuple(out)


def _check_keys(tree: dict, valid: set[str], source: str, prefix: str) -> None:
    for key in tree:
        if key not in valid:
            close = difflib.get_close_matches(str(key), sorted(valid), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"valid: {', '.join(sorted(valid))}"
            raise SpaceError(f"{source}: unknown key {prefix}{key}; {hint}")


def _freeze(value: Any) -> Any:
    """Lists become tuples so that choice values are hashable; ``_yaml_value`` writes them back as lists."""
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    return [_thaw(v) for v in value] if isinstance(value, tuple) else value


def _yaml_value(value: Any) -> str:
    """A value as the YAML text that ``config.apply_overrides`` parses back into the same value."""
    text = yaml.safe_dump(_thaw(value), default_flow_style=True, width=10_000).strip()
    return text.removesuffix("...").strip()
