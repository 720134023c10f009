"""Run configuration: typed dataclasses filled from YAML plus ``dotted.key=value`` overrides.

Every model config shares the sections ``run``, ``data``, ``model``, ``optimizer``, ``mesh``,
``logging`` and ``train``. The ``model`` and ``data`` sections take the dataclass that the chosen
model (``model.name``) and data format (``data.format``) declare, so a misspelled key or a wrong
type anywhere fails before any work, naming the key and the closest valid ones; every such problem of a
config is reported at once. A YAML file may start from another (``base: NAME``, a packaged config that
an installed model family ships, or ``base: ../common.yaml``, a path relative to the file) and give only
what changes: sections merge key by key.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from smilejax import registry
from smilejax.inputs.spec import DataConfig
from smilejax.typed import ConfigError, build, unknown_keys


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
    # early stopping (callbacks/early_stop.py): stop after this many evaluations (run.eval_every) without
    # an eval/loss lower than the best by more than min_delta, and keep the best parameters; 0: off
    early_stop_patience: int = 0
    early_stop_min_delta: float = 0.0


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
    """The packaged configs' names: the ``*.yaml`` of the packages registered under ``smilejax.configs``."""
    return list(registry.configs())


BASE_KEY = "base"  # a config file's parent: a packaged config name or a YAML path relative to the file


def read_yaml(source: str | Path) -> dict:
    """A config file's content merged over its ``base`` chain; ``source`` is a path or the name of a
    packaged config."""
    return _read_chain(_locate(source), ())


def _locate(source: str | Path, referrer: Path | None = None) -> Path:
    """The file of ``source``: a path (relative to ``referrer``'s folder, for a base) or a packaged name."""
    path = Path(source)
    if referrer is not None and not path.is_absolute():
        path = referrer.parent / path
    if path.is_file():
        return path
    try:
        known = registry.configs()
    except KeyError as err:  # a broken or conflicting config package
        raise ConfigError(str(err)) from err
    if str(source) in known:
        return known[str(source)]
    close = difflib.get_close_matches(str(source), list(known), n=3)
    hint = f"did you mean {', '.join(close)}?" if close else f"packaged configs: {', '.join(known) or 'none'}"
    if referrer is None:
        raise ConfigError(f"config {str(source)!r} is neither a file nor a packaged config; {hint}")
    raise ConfigError(
        f"{referrer}: base {str(source)!r} is neither a file (relative to {referrer.parent}) nor a "
        f"packaged config; {hint}"
    )


def _read_chain(path: Path, chain: tuple[Path, ...]) -> dict:
    resolved = path.resolve()
    if resolved in chain:
        names = " -> ".join(str(p) for p in (*chain, resolved))
        raise ConfigError(f"config bases form a cycle: {names}")
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    if BASE_KEY not in content:
        return content
    base = content.pop(BASE_KEY)
    if not isinstance(base, str) or not base:
        raise ConfigError(
            f"{path}: base must be a packaged config name ({', '.join(packaged())}) or a YAML path, "
            f"got {base!r}"
        )
    return merge(_read_chain(_locate(base, referrer=path), (*chain, resolved)), content)


def merge(base: dict, changes: dict) -> dict:
    """``changes`` over ``base``: mappings merge key by key, anything else (lists too) replaces."""
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    """Sets ``a.b.c=value`` (value parsed as YAML) in a nested dict; validation comes later."""
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            problems.append(f"override {item!r} is not of the form key=value")
            continue
        node = tree
        *parents, leaf = key.split(".")
        for i, part in enumerate(parents):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                problems.append(f"override {item!r}: {'.'.join(parents[: i + 1])} is not a section")
                break
            node = child
        else:
            try:
                node[leaf] = yaml.safe_load(raw) if raw else ""
            except yaml.YAMLError as err:
                problems.append(f"override {item!r}: the value is not valid YAML ({err.problem})")
    if problems:
        raise ConfigError(*problems)
    return tree


def load(source: str | Path | dict, overrides: list[str] | None = None) -> Config:
    tree = dict(source) if isinstance(source, dict) else read_yaml(source)
    tree = apply_overrides(tree, list(overrides or []))
    return from_dict(tree)


def from_dict(tree: dict) -> Config:
    problems: list[str] = []
    problems += unknown_keys(tree, {f.name for f in dataclasses.fields(Config)}, "")
    classes = {**_FIXED_SECTIONS, **_chosen_sections(tree, problems)}
    built = {name: build(cls, tree.get(name, {}), name, problems) for name, cls in classes.items()}
    problems += _value_problems(built)  # with the type problems: the user fixes them in one go
    if problems:
        raise ConfigError(*problems)
    return Config(**built)


def _chosen_sections(tree: dict, problems: list[str]) -> dict[str, type]:
    """The ``model`` and ``data`` sections' classes, as ``model.name`` and ``data.format`` choose them."""
    chosen = {}
    for section, key, what, names, lookup in (
        ("model", "name", "model", registry.models, registry.model),
        ("data", "format", "data format", registry.datasets, registry.dataset),
    ):
        values = tree.get(section)
        if not isinstance(values, dict):
            problems.append(f"the config needs a {section!r} section")
        elif not values.get(key):
            known = ", ".join(names()) or "none"
            problems.append(f"{section}.{key} is missing (a registered {what}: {known}; or 'module:SPEC')")
        else:
            try:
                chosen[section] = lookup(values[key]).config
            except KeyError as err:
                problems.append(str(err.args[0]))
    return chosen


def field_keys(tree: dict | None = None) -> list[str]:
    """Every dotted config field (``run.steps``, ...): the fixed sections', and those of the model and
    data format that ``tree`` names, where they load."""
    classes = {**_FIXED_SECTIONS, **_chosen_sections(tree or {}, [])}
    return [key for name, cls in classes.items() for key in _keys_of(cls, name)]


def _keys_of(cls: type, where: str) -> list[str]:
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        if f.init:
            nested = dataclasses.is_dataclass(hints[f.name])
            keys += _keys_of(hints[f.name], f"{where}.{f.name}") if nested else [f"{where}.{f.name}"]
    return keys


def _value_problems(sections: dict[str, Any]) -> list[str]:
    """Value checks that types alone cannot express, of the sections that were built (a section with
    type problems is None, and the checks that need it are left out); every failing one is reported."""
    run, data, model, mesh, train, optimizer = (
        sections.get(name) for name in ("run", "data", "model", "mesh", "train", "optimizer")
    )
    problems = []
    positive = (
        "run.steps",
        "run.log_every",
        "data.batch_size",
        "train.grad_accum",
        "run.preemption_check_every",
        "run.profile_steps",
    )
    for key in positive:
        section, name = key.split(".")
        value = getattr(sections.get(section), name, None)
        if value is not None and value < 1:
            problems.append(f"{key} must be at least 1, got {value}")
    if run is not None and run.profile_at < -1:
        problems.append(f"run.profile_at must be -1 (no trace) or a step >= 0, got {run.profile_at}")
    for axis in ("data", "fsdp", "tensor") if mesh is not None else ():
        size = getattr(mesh, axis)
        if size == 0 or size < -1:
            problems.append(f"mesh.{axis} must be -1 (fill) or a positive size, got {size}")
    if data is not None and train is not None and train.grad_accum >= 1:
        problems += [
            f"{data.describe_batch(size)}={size} is not divisible by train.grad_accum={train.grad_accum}"
            for size in data.global_batch_sizes()
            if size % train.grad_accum
        ]
    if data is not None and train is not None and train.grad_accum > 1 and (why := data.microbatch_problem()):
        problems.append(f"train.grad_accum={train.grad_accum}: {why}")
    if optimizer is not None and optimizer.lr <= 0:
        problems.append(f"optimizer.lr must be positive, got {optimizer.lr}")
    if data is not None and model is not None:
        # the data format's completion of the model config (DatasetSpec.model_config) refuses sections
        # that conflict (a class dict and the model's own class weights): here, before anything is written
        completes = registry.dataset(data.format).model_config
        try:
            if completes is not None:
                completes(data, model)
        except ValueError as err:
            problems.append(str(err))
    return problems


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


# ---------------------------------------------------------------- saving


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
