"""A launch request resolved against its system and checked before anything is written or submitted."""

from __future__ import annotations

import dataclasses
import datetime
import glob
import os
import re
import sys
from pathlib import Path

from smilejax.launch.systems import LaunchError, System


@dataclasses.dataclass(frozen=True)
class Job:
    system: System
    nodes: int
    tasks_per_node: int  # processes per node: gpus_per_node (one per GPU) ... 1 (one per node)
    gpus_per_node: int
    time_s: int
    signal_margin_s: int
    name: str
    account: str | None
    queue: str | None
    qos: str | None
    constraint: str | None
    run_dir: Path  # absolute
    workdir: Path  # where the job runs (the submit directory): relative config paths stay valid
    max_requeues: int
    extra_directives: tuple[str, ...] = ()
    stage: Stage | None = None

    @property
    def processes(self) -> int:
        return self.nodes * self.tasks_per_node

    @property
    def cpus_per_task(self) -> int | None:
        """The node's CPUs shared by its processes: a job gets whole nodes, all their CPUs whatever GPUs
        it uses (Frontier, 4 of 8 GCDs: 4 processes of 56 / 4 = 14 cores)."""
        cpus = self.system.cpus_per_node
        return max(cpus // self.tasks_per_node, 1) if cpus else None

    @property
    def python(self) -> str:
        """The interpreter in the job: the system's, else the one running `smilejax launch` (its venv)."""
        if self.system.python:
            return self.system.python
        return "python3" if self.system.container else sys.executable

    def describe(self) -> str:
        per = (
            "node" if self.tasks_per_node == 1 else "GPU" if self.tasks_per_node == self.gpus_per_node else ""
        )
        procs = f"{self.processes} process(es)" + (f", one per {per}" if per else "")
        gpus = f" × {self.gpus_per_node} GPUs" if self.gpus_per_node else ""
        return (
            f"{self.system.name}: {self.nodes} node(s){gpus}, {procs}, time limit {format_time(self.time_s)}"
        )


@dataclasses.dataclass(frozen=True)
class Stage:
    """Inputs copied to node-local storage before training; ``overrides`` point the config at the copies."""

    root: str  # the system's node-local folder; the job adds smilejax-<job id>
    sources: tuple[str, ...]  # absolute files or folders
    overrides: tuple[tuple[str, tuple[str, ...]], ...]  # (config key, staged names) for data.path/eval_path
    total_bytes: int


# ---------------------------------------------------------------- time


def parse_time(value: str) -> int:
    """A time limit in seconds, in Slurm's formats (PBS reads the same): ``MINUTES``, ``MINUTES:SECONDS``,
    ``HOURS:MINUTES:SECONDS``, ``DAYS-HOURS[:MINUTES[:SECONDS]]``."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", value.strip())
    if not m:
        raise LaunchError(f"time limit {value!r} is not MINUTES, HH:MM:SS or D-HH:MM:SS")
    days, a, b, c = (int(g) if g is not None else None for g in m.groups())
    if days is not None:
        seconds = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    elif c is not None:
        seconds = a * 3600 + b * 60 + c
    else:
        seconds = a * 60 + (b or 0)
    if seconds <= 0:
        raise LaunchError(f"time limit {value!r} must be positive")
    return seconds


def format_time(seconds: int) -> str:
    h, rest = divmod(seconds, 3600)
    return f"{h:02d}:{rest // 60:02d}:{rest % 60:02d}"


# ---------------------------------------------------------------- resources


def resources(
    system: System,
    *,
    nodes: int,
    gpus_per_node: int | None,
    tasks_per_node: int | None,
    time: str | None,
    signal_margin_s: int | None,
) -> tuple[int, int, int, int]:
    """(gpus per node, tasks per node, time limit s, signal margin s), or a LaunchError naming the option."""
    if nodes < 1:
        raise LaunchError(f"--nodes must be at least 1, got {nodes}")
    have = system.gpus_per_node
    gpus = have if gpus_per_node is None else gpus_per_node
    if gpus < 0:
        raise LaunchError(f"--gpus-per-node must be 0 or more, got {gpus}")
    if gpus > have:
        raise LaunchError(
            f"--gpus-per-node {gpus}: {system.name} has {have} GPU(s) per node"
            + ("" if have else " (a CPU system: use --tasks-per-node for processes)")
        )
    tasks = (gpus or 1) if tasks_per_node is None else tasks_per_node
    if tasks < 1:
        raise LaunchError(f"--tasks-per-node must be at least 1, got {tasks}")
    if gpus and gpus % tasks:
        raise LaunchError(
            f"--tasks-per-node {tasks} does not divide the {gpus} GPUs per node: use {gpus} (one process "
            f"per GPU), 1 (one per node) or another divisor"
        )
    cpus = system.cpus_per_node
    if cpus and tasks > cpus:
        raise LaunchError(f"--tasks-per-node {tasks}: {system.name} has {cpus} CPUs per node")
    limit = parse_time(time or system.time)
    margin = system.signal_margin_s if signal_margin_s is None else signal_margin_s
    if not 0 < margin < limit:
        raise LaunchError(
            f"--signal-margin {margin} s must be positive and shorter than the time limit ({limit} s)"
        )
    return gpus, tasks, limit, margin


def check_fit(cfg, job_gpus: int, processes: int) -> None:
    """The config's mesh and batch fit the job's devices (known only on GPU systems) and processes."""
    from smilejax import mesh as meshlib
    from smilejax.config import check_batch_sizes

    divisor, devices = 1, ""  # the devices are known only on GPU systems
    if job_gpus:
        shape = meshlib.mesh_shape(cfg.mesh, job_gpus)
        for axis in cfg.mesh.rules.get("batch", []):
            divisor *= shape.get(axis, 1)
        divisor *= cfg.train.grad_accum
        devices = f"on {job_gpus} GPUs (mesh {shape})"
    check_batch_sizes(cfg.data, processes=processes, divisor=divisor, devices=devices)


def default_run_dir(cfg, workdir: Path) -> Path:
    """``runs/<model>-<date>-<time>`` under the submit directory, as ``smilejax train`` names it."""
    model = cfg.model.name.rpartition(":")[2].lower() if ":" in cfg.model.name else cfg.model.name
    return workdir / "runs" / f"{model}-{datetime.datetime.now():%Y%m%d-%H%M%S}"


# ---------------------------------------------------------------- staging

_SAFE_NAME = re.compile(r"[\w.+=@%-]+")


def stage_plan(cfg, system: System, stage_dir: str | None, workdir: Path) -> Stage:
    """What ``--stage`` copies: every entry of ``data.path`` and ``data.eval_path`` (globs expanded)."""
    root = stage_dir or system.stage_dir
    if not root:
        raise LaunchError(f"--stage: {system.name} names no node-local stage_dir; give --stage-dir")
    if not cfg.data.path:
        raise LaunchError("--stage needs data.path (files, a glob or a comma list) to copy")
    by_name: dict[str, str] = {}
    overrides = []
    for key in ("path", "eval_path"):
        value = getattr(cfg.data, key)
        if not value:
            continue
        staged = []
        for src in _expand(value, workdir, f"data.{key}"):
            name = os.path.basename(src.rstrip("/"))
            if not _SAFE_NAME.fullmatch(name):
                raise LaunchError(
                    f"--stage: cannot stage {src!r}: its name has characters a path list cannot hold"
                )
            if by_name.setdefault(name, src) != src:
                raise LaunchError(f"--stage: {by_name[name]} and {src} have the same name {name!r}")
            staged.append(name)
        overrides.append((f"data.{key}", tuple(staged)))
    total = sum(_size(p) for p in by_name.values())
    cap = system.stage_capacity_gb
    if cap is not None and total > cap * 1e9:
        raise LaunchError(
            f"--stage: the inputs hold {total / 1e9:.1f} GB, more than the {cap:g} GB {system.name} allows "
            f"in {root} per node"
        )
    return Stage(root=root, sources=tuple(by_name.values()), overrides=tuple(overrides), total_bytes=total)


def _expand(value: str, workdir: Path, key: str) -> list[str]:
    out: list[str] = []
    for part in (p.strip() for p in str(value).split(",")):
        if not part:
            continue
        part = os.path.expanduser(os.path.expandvars(part))
        part = part if os.path.isabs(part) else str(workdir / part)
        found = sorted(glob.glob(part)) if glob.has_magic(part) else [part] if os.path.exists(part) else []
        if not found:
            raise LaunchError(f"--stage: {key} entry {part!r} matches no file")
        out += [os.path.abspath(f) for f in found if os.path.abspath(f) not in out]
    return out


def _size(path: str) -> int:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
    return os.path.getsize(path)
