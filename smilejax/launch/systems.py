"""HPC system descriptions: one YAML file per machine in the repository's ``launch/`` folder.

A system file states what a job script needs to know about a machine and nothing else: its
scheduler, GPUs and CPUs per node, default account/queue/QOS/constraint and time limit, the shell lines
that set up the software (modules, containers), environment variables (NCCL, libfabric, HDF5), extra
scheduler and launcher options, the GPUs' vendor and how processes get them (shared in an affinity order,
or bound per task by Slurm), node-local folders to make and where node-local storage is. ``--system``
takes a name (``perlmutter``) or a path to such a file.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from pathlib import Path
from typing import Literal

import yaml

# A source checkout (and an editable install) finds the files at the repository's top; a wheel ships
# them inside the package (see the packaging note in docs/HPC.md).
_HERE = Path(__file__).resolve().parent
_DIRS = (_HERE.parents[1] / "launch", _HERE / "files")
TEMPLATES = "templates"
SEARCH_VAR = "SMILEJAX_SYSTEMS"  # extra folders of system files, searched first (os.pathsep-separated)


class LaunchError(ValueError):
    """A launch request that cannot work; the message names the system file, option or key."""


@dataclasses.dataclass(frozen=True)
class System:
    """One machine. Field comments are the documentation of the YAML keys."""

    name: str = ""  # set from the file name
    description: str = ""
    scheduler: Literal["slurm", "pbs"] = "slurm"
    gpus_per_node: int = 0  # 0: a CPU system (then --tasks-per-node sets the processes)
    cpus_per_node: int | None = None  # CPUs divided among a node's processes (Slurm -c, PBS --depth)
    account: str | None = None  # defaults for --account, --queue, --qos, --constraint, --time
    queue: str | None = None  # Slurm partition or PBS queue
    qos: str | None = None
    constraint: str | None = None
    time: str = "01:00:00"
    account_required: bool = False  # the scheduler refuses jobs without an account (project)
    signal_margin_s: int = 120  # the warning signal comes this long before the time limit
    pbs_select: str = "{nodes}"  # PBS: the "-l select=" value; {nodes}, {gpus}, {tasks}, {cpus} filled in
    directives: list[str] = dataclasses.field(default_factory=list)  # extra #SBATCH/#PBS options, verbatim
    launcher_args: list[str] = dataclasses.field(default_factory=list)  # extra srun/mpiexec options
    setup: list[str] = dataclasses.field(default_factory=list)  # shell lines: module load, conda activate
    env: dict[str, str] = dataclasses.field(default_factory=dict)  # exported; values may use $VARS
    python: str | None = None  # the interpreter in the job; None: the one running `smilejax launch`
    container: str | None = None  # a prefix that runs python inside a container (shifter, podman-hpc)
    gpu_vendor: Literal["nvidia", "amd"] = "nvidia"  # amd: gpu_order sets ROCm's HIP_VISIBLE_DEVICES
    # shared: every process sees the node's GPUs and the runtime deals them out (local rank i, block i);
    # per_task: Slurm gives each process its own (--gpus-per-task; pick them with launcher_args' --gpu-bind).
    gpu_binding: Literal["shared", "per_task"] = "shared"
    gpu_order: list[int] | None = None  # shared binding: the visible GPUs' order, local rank i takes block i
    node_dirs: list[str] = dataclasses.field(default_factory=list)  # made on every node first; may use $VARS
    stage_dir: str | None = None  # node-local storage for --stage (/dev/shm, a local SSD); may use $VARS
    stage_capacity_gb: float | None = None  # what --stage may put there per node


def search_path() -> list[Path]:
    extra = [Path(p) for p in os.environ.get(SEARCH_VAR, "").split(os.pathsep) if p]
    return [*extra, *(d for d in _DIRS if d.is_dir())]


def names() -> list[str]:
    """Systems found on the search path (first wins)."""
    found: dict[str, Path] = {}
    for folder in search_path():
        for f in sorted(folder.glob("*.yaml")):
            found.setdefault(f.stem, f)
    return sorted(found)


def find(system: str) -> Path:
    """The file of ``system``: a path to a YAML file, or a name on the search path."""
    path = Path(system).expanduser()
    if path.suffix in (".yaml", ".yml") or os.sep in system:
        if not path.is_file():
            raise LaunchError(f"system file {system} does not exist")
        return path
    for folder in search_path():
        if (folder / f"{system}.yaml").is_file():
            return folder / f"{system}.yaml"
    known = names()
    close = difflib.get_close_matches(system, known, n=2)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise LaunchError(
        f"unknown system {system!r}: {hint}known systems: {', '.join(known) or 'none'} "
        f"(or give a path to a system file; {SEARCH_VAR} adds folders)"
    )


def load(system: str) -> System:
    path = find(system)
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise LaunchError(f"system file {path} is not valid YAML: {err}") from err
    if not isinstance(tree, dict):
        raise LaunchError(f"system file {path}: the top level must be a mapping of keys")
    tree.setdefault("name", path.stem)
    from smilejax.typed import ConfigError, build  # the typed builder of the run config

    try:
        sys_ = build(System, tree, "system")
    except ConfigError as err:
        raise LaunchError(f"system file {path}: {err}") from err
    _check(sys_, path)
    return sys_


def _check(s: System, path: Path) -> None:
    def bad(msg: str) -> LaunchError:
        return LaunchError(f"system file {path}: {msg}")

    if s.gpus_per_node < 0:
        raise bad(f"gpus_per_node must be 0 or more, got {s.gpus_per_node}")
    if s.cpus_per_node is not None and s.cpus_per_node < 1:
        raise bad(f"cpus_per_node must be positive, got {s.cpus_per_node}")
    if s.signal_margin_s < 1:
        raise bad(f"signal_margin_s must be positive, got {s.signal_margin_s}")
    for key in s.env:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise bad(f"env: {key!r} is not a shell variable name")
    if s.gpu_binding == "per_task" and s.scheduler != "slurm":
        raise bad("gpu_binding per_task is Slurm's --gpus-per-task; use shared (and gpu_order) with PBS")
    if s.gpu_binding == "per_task" and s.gpu_order is not None:
        raise bad("gpu_order has no effect with gpu_binding per_task: Slurm's --gpu-bind picks the GPUs")
    if s.gpu_order is not None and sorted(s.gpu_order) != list(range(s.gpus_per_node)):
        raise bad(f"gpu_order {s.gpu_order} must list each of the {s.gpus_per_node} GPU ids once")
    try:
        s.pbs_select.format(nodes=1, gpus=1, tasks=1, cpus=1)
    except (KeyError, IndexError, ValueError) as err:
        raise bad(
            f"pbs_select {s.pbs_select!r}: only {{nodes}}, {{gpus}}, {{tasks}}, {{cpus}} ({err})"
        ) from err
