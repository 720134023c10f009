"""Run configuration: typed dataclasses filled from YAML plus ``dotted.key=value`` overrides.

Every model config shares the sections ``run``, ``data``, ``model``, ``optimizer``, ``mesh``,
``logging`` and ``train``. The ``model`` and ``data`` sections take the dataclass that the chosen
model (``model.name``) and data format (``data.format``) declare, so a misspelled key or a wrong
type anywhere fails before any work, naming the key and the closest valid ones.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from smilejax import registry
from smilejax.inputs.spec import DataConfig

CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key."""


@dataclasses.dataclass
class RunConfig:
    dir: str = ""  # empty: runs/<model>-<date>-<time>
    steps: int = 100
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0  # 0: no evaluation during training
    eval_steps: int = 10
    checkpoint_every: int = 100  # 0: only at the end and on preemption
    keep_checkpoints: int = 3
    profile_at: int = -1  # the profiler traces steps profile_at+1 .. profile_at+profile_steps; -1: off
    profile_steps: int = 5
    preemption_check_every: int = 10  # steps between cross-process agreements on a stop signal


@dataclasses.dataclass
class OptimizerConfig:
    name: Literal["adamw", "lion", "lamb"] = "adamw"
    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_norm: float = 0.0  # global-norm gradient clipping; 0: off
    schedule: Literal["constant", "cosine", "onecycle"] = "constant"
    warmup: float = 0.0  # a fraction of run.steps when < 1, else a number of steps
    initial_lr: float = 0.0  # where warm-up starts
    final_lr: float = 0.0  # where cosine / one-cycle decay ends


@dataclasses.dataclass
class MeshConfig:
    """Device mesh axes (-1 fills the rest) and logical-to-mesh axis rules.

    Data parallel, FSDP and tensor parallel are mesh shapes under the same rules:
    ``mesh.fsdp=8`` shards parameters and optimizer state over ``embed``; ``mesh.tensor=2``
    splits ``mlp`` and ``heads``.
    """

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    rules: dict[str, list[str]] = dataclasses.field(
        default_factory=lambda: {
            "batch": ["data", "fsdp"],
            "embed": ["fsdp"],
            "mlp": ["tensor"],
            "heads": ["tensor"],
        }
    )


@dataclasses.dataclass
class TrainConfig:
    precision: Literal["fp32", "bf16"] = "fp32"  # compute dtype; parameters and optimizer stay fp32
    grad_accum: int = 1  # micro-batches per optimizer step
    parallel: Literal["jit", "shard_map"] = "jit"  # how data parallelism is expressed
    donate: bool = True  # reuse the train state's buffers for the updated state


@dataclasses.dataclass
class LoggingConfig:
    wandb: Literal["online", "offline", "off"] = "off"  # WANDB_MODE, when set, wins
    project: str = "smilejax"
    group: str | None = None
    name: str | None = None
    tensorboard: bool = True
    progress: bool = True


@dataclasses.dataclass
class Config:
    run: RunConfig
    data: DataConfig
    model: Any
    optimizer: OptimizerConfig
    mesh: MeshConfig
    logging: LoggingConfig
    train: TrainConfig


_FIXED_SECTIONS = {
    "run": RunConfig,
    "optimizer": OptimizerConfig,
    "mesh": MeshConfig,
    "logging": LoggingConfig,
    "train": TrainConfig,
}


# ---------------------------------------------------------------- loading


def packaged() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def read_yaml(source: str | Path) -> dict:
    """A config file's content; ``source`` is a path or the name of a packaged config."""
    path = Path(source)
    if not path.exists() and (CONFIG_DIR / f"{source}.yaml").exists():
        path = CONFIG_DIR / f"{source}.yaml"
    if not path.exists():
        close = difflib.get_close_matches(str(source), packaged(), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"packaged configs: {', '.join(packaged())}"
        raise ConfigError(f"config {source!r} is neither a file nor a packaged config; {hint}")
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return content


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    """Sets ``a.b.c=value`` (value parsed as YAML) in a nested dict; validation comes later."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        node = tree
        *parents, leaf = key.split(".")
        for i, part in enumerate(parents):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parents[: i + 1])} is not a section")
            node = child
        try:
            node[leaf] = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({err.problem})") from None
    return tree


def load(source: str | Path | dict, overrides: list[str] | None = None) -> Config:
    tree = dict(source) if isinstance(source, dict) else read_yaml(source)
    tree = apply_overrides(tree, list(overrides or []))
    return from_dict(tree)


def from_dict(tree: dict) -> Config:
    sections = {f.name for f in dataclasses.fields(Config)}
    _check_keys(tree, sections, "")
    for required in ("model", "data"):
        if not isinstance(tree.get(required), dict):
            raise ConfigError(f"the config needs a {required!r} section")
    model_name = tree["model"].get("name")
    if not model_name:
        raise ConfigError("model.name is missing (a packaged model such as 'gn2', or 'module:SPEC')")
    data_format = tree["data"].get("format")
    if not data_format:
        raise ConfigError("data.format is missing (a packaged format such as 'ftag_h5', or 'module:SPEC')")
    try:
        model_cls = registry.model(model_name).config
        data_cls = registry.dataset(data_format).config
    except KeyError as err:
        raise ConfigError(str(err.args[0])) from err
    built = {name: _build(cls, tree.get(name, {}), name) for name, cls in _FIXED_SECTIONS.items()}
    built["model"] = _build(model_cls, tree["model"], "model")
    built["data"] = _build(data_cls, tree["data"], "data")
    cfg = Config(**built)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Value checks that types alone cannot express."""
    positive = {
        "run.steps": cfg.run.steps,
        "run.log_every": cfg.run.log_every,
        "data.batch_size": cfg.data.batch_size,
        "train.grad_accum": cfg.train.grad_accum,
        "run.preemption_check_every": cfg.run.preemption_check_every,
        "run.profile_steps": cfg.run.profile_steps,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key} must be at least 1, got {value}")
    if cfg.run.profile_at < -1:
        raise ConfigError(f"run.profile_at must be -1 (no trace) or a step >= 0, got {cfg.run.profile_at}")
    for axis in ("data", "fsdp", "tensor"):
        size = getattr(cfg.mesh, axis)
        if size == 0 or size < -1:
            raise ConfigError(f"mesh.{axis} must be -1 (fill) or a positive size, got {size}")
    for size in cfg.data.global_batch_sizes():
        if size % cfg.train.grad_accum:
            raise ConfigError(
                f"{cfg.data.describe_batch(size)}={size} is not divisible by "
                f"train.grad_accum={cfg.train.grad_accum}"
            )
    if cfg.optimizer.lr <= 0:
        raise ConfigError(f"optimizer.lr must be positive, got {cfg.optimizer.lr}")


def check_batch_sizes(data: DataConfig, *, processes: int, divisor: int, devices: str) -> None:
    """Every global batch size divides over the ``processes`` and over ``divisor`` (the batch-sharded
    devices × train.grad_accum, described by ``devices``); errors name the config keys of the size."""
    for size in data.global_batch_sizes():
        if size % processes:
            raise ConfigError(
                f"{data.describe_batch(size)}={size} is not divisible by the {processes} processes"
            )
        if size % divisor:
            raise ConfigError(
                f"{data.describe_batch(size)}={size} must be divisible by the batch-sharded devices × "
                f"train.grad_accum = {divisor} {devices}"
            )


# ---------------------------------------------------------------- typed construction


def _check_keys(tree: dict, valid: set[str], where: str) -> None:
    for key in tree:
        if key not in valid:
            close = difflib.get_close_matches(str(key), sorted(valid), n=3, cutoff=0.5)
            hint = f"did you mean {' or '.join(repr(c) for c in close)}?" if close else "valid keys:"
            listing = "" if close else " " + ", ".join(sorted(valid))
            raise ConfigError(f"unknown config key {where}{key!r}: {hint}{listing}")


def _build(cls: type, values: Any, where: str) -> Any:
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a section (mapping), got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    _check_keys(values, fields, f"{where}.")
    kwargs = {name: _coerce(value, hints[name], f"{where}.{name}") for name, value in values.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:  # a section's own checks (__post_init__)
        raise ConfigError(f"{where}: {err}") from err


def _coerce(value: Any, hint: Any, key: str) -> Any:
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
                return _coerce(value, arg, key)
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
        return origin(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {type(value).__name__} {value!r}")
        item = args[1] if len(args) == 2 else Any
        return {k: _coerce(v, item, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
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


# ---------------------------------------------------------------- saving


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
