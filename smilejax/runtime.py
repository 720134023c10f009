"""Cluster detection and ``jax.distributed`` start-up.

``detect()`` turns the launcher's environment variables into a :class:`ClusterEnv` (pure, testable);
``initialize()`` starts ``jax.distributed`` from it once per process. Launchers, in detection order:

- explicit: ``JAX_COORDINATOR_ADDRESS`` + ``JAX_NUM_PROCESSES`` + ``JAX_PROCESS_ID``
  (optional ``JAX_LOCAL_RANK`` / ``JAX_LOCAL_SIZE``), for hand-started processes;
- Slurm, inside a job step (``srun``); a bare ``sbatch``/``salloc`` shell is a single process;
- Open MPI ``mpirun`` (coordinator from ``JAX_COORDINATOR_ADDRESS`` or ``MASTER_ADDR``);
- PBS Pro with PALS or MPICH ``mpiexec`` (``PMI_RANK``/``PMI_SIZE``, coordinator from ``$PBS_NODEFILE``).

Both one process per GPU and one process per node work: each process gets its contiguous block of
the node's visible GPUs (``local_device_ids``), unless Slurm has already bound each task its own
(``srun --gpus-per-task``). NVIDIA (``CUDA_VISIBLE_DEVICES``) and AMD GPUs (``ROCR_VISIBLE_DEVICES``,
``HIP_VISIBLE_DEVICES``) alike. ``JAX_COORDINATOR_PORT`` overrides the coordinator port;
by default it is derived from the job and step ids, so concurrent job steps do not collide.

Never call ``initialize()`` inside Grain (or any ``multiprocessing``) worker: only launcher-started
processes join the distributed system. It refuses in ``multiprocessing`` children, and
``SMILEJAX_NO_DISTRIBUTED=1`` forces a single process anywhere.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import re
import zlib
from collections.abc import Mapping, MutableMapping

import jax

from smilejax.slurm_format import expand_hostlist, parse_tasks_per_node

logger = logging.getLogger(__name__)

PORT_MIN, PORT_MAX = 20000, 60000
DEFAULT_PORT = 29431  # used only when no job id is known to derive one from


@dataclasses.dataclass(frozen=True)
class ClusterEnv:
    launcher: str  # "single" | "explicit" | "slurm" | "openmpi" | "pbs" (PBS Pro/PALS/MPICH mpiexec)
    num_processes: int
    process_id: int
    coordinator: str | None  # "host:port", None when single
    local_rank: int  # rank among processes on this node
    local_size: int  # processes on this node
    num_nodes: int
    local_device_ids: list[int] | None  # GPU ids this process should own; None = all visible


SINGLE = ClusterEnv("single", 1, 0, None, 0, 1, 1, None)


# ---- small parsers (pure)


def _int(environ: Mapping[str, str], name: str, default: int | None = None) -> int:
    value = environ.get(name)
    if value is None or value.strip() == "":
        if default is None:
            raise ValueError(f"{name} is not set")
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer") from None


def _first(environ: Mapping[str, str], *names: str) -> str | None:
    """Name of the first variable that is set and non-empty."""
    return next((n for n in names if environ.get(n, "").strip()), None)


def _check_rank(rank: int, size: int, rank_var: str, size_var: str) -> None:
    if size < 1:
        raise ValueError(f"{size_var}={size} must be at least 1")
    if not 0 <= rank < size:
        raise ValueError(f"{rank_var}={rank} is outside [0, {size_var}={size})")


def _derived_port(*ids: str) -> int:
    """A port in [PORT_MIN, PORT_MAX) that is a pure function of the job (and step) ids."""
    return PORT_MIN + zlib.crc32(".".join(ids).encode()) % (PORT_MAX - PORT_MIN)


def _port(environ: Mapping[str, str], *ids: str | None, fallback_var: str | None = None) -> int:
    """JAX_COORDINATOR_PORT, else ``fallback_var`` (e.g. MASTER_PORT), else derived from the ids."""
    for var in ("JAX_COORDINATOR_PORT", fallback_var):
        if var and environ.get(var, "").strip():
            port = _int(environ, var)
            if not 0 < port < 65536:
                raise ValueError(f"{var}={port} is not a TCP port")
            return port
    known = [i for i in ids if i]
    return _derived_port(*known) if known else DEFAULT_PORT


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _with_port(host_or_address: str, port: int) -> str:
    """Keep an address that already names a port ("host:1234", "[::1]:1234"), else append ``port``."""
    if re.fullmatch(r"[^:]+:\d+|\[.*\]:\d+", host_or_address):
        return host_or_address
    return _address(host_or_address, port)


def local_device_ids(visible: int | None, local_rank: int, local_size: int) -> list[int] | None:
    """GPU indices (into the visible list) this process owns, or None to use every visible GPU.

    One process per GPU (or a process that sees one GPU) and one process per node need no split;
    otherwise the visible GPUs are dealt out in contiguous blocks, one block per local process.
    """
    if visible is None or visible <= 1 or local_size == 1:
        return None
    if visible % local_size:
        raise ValueError(
            f"{visible} visible GPUs cannot be split evenly among {local_size} processes on this node; "
            "launch one process per GPU (e.g. srun --gpus-per-task=1), one per node, "
            "or a number of processes that divides the GPU count"
        )
    per = visible // local_size
    return list(range(local_rank * per, (local_rank + 1) * per))


def visible_gpu_count(environ: Mapping[str, str]) -> int | None:
    """Number of GPUs this process can see, or None when the environment does not say.

    ROCm hides GPUs with ``ROCR_VISIBLE_DEVICES`` first; ``HIP_VISIBLE_DEVICES`` (else
    ``CUDA_VISIBLE_DEVICES``, which HIP also reads) then picks among the rest: the innermost list counts.
    """
    var = _visible_var(environ)
    if var:
        return len(_device_list(environ[var]))
    if environ.get("SLURM_STEP_GPUS", "").strip():
        return len(environ["SLURM_STEP_GPUS"].split(","))
    if environ.get("SLURM_GPUS_ON_NODE", "").strip():
        return _int(environ, "SLURM_GPUS_ON_NODE")
    return None


def narrow_visible_devices(environ: MutableMapping[str, str], ids: list[int]) -> None:
    """Leave only the visible GPUs at ``ids`` (indices, as ``local_device_ids``) to a JAX not started yet."""
    var = _visible_var(environ)
    if var is None:
        environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, ids))  # CUDA's and HIP's variable
    else:
        visible = _device_list(environ[var])
        environ[var] = ",".join(visible[i] for i in ids)


def _visible_var(environ: Mapping[str, str]) -> str | None:
    """The innermost variable that lists this process's GPUs (see visible_gpu_count), or None."""
    if environ.get("HIP_VISIBLE_DEVICES", "").strip():  # HIP ignores an empty value
        return "HIP_VISIBLE_DEVICES"
    if "CUDA_VISIBLE_DEVICES" in environ:
        return "CUDA_VISIBLE_DEVICES"
    if environ.get("ROCR_VISIBLE_DEVICES", "").strip():
        return "ROCR_VISIBLE_DEVICES"
    return None


def _device_list(value: str) -> list[str]:
    """The GPUs a *_VISIBLE_DEVICES value names: "" or "-1"/"NoDevFiles" hide every GPU."""
    return [d.strip() for d in value.split(",") if d.strip() not in ("", "-1", "NoDevFiles")]


def _slurm_gpus_per_task(environ: Mapping[str, str]) -> int | None:
    """``--gpus-per-task`` of the job or step (``SLURM_GPUS_PER_TASK``, ``[type:]count``), else None."""
    m = re.fullmatch(r"\s*(?:[^:,]+:)?(\d+)\s*", environ.get("SLURM_GPUS_PER_TASK", ""))
    return int(m[1]) if m else None


# ---- launchers


def _explicit(environ: Mapping[str, str]) -> ClusterEnv:
    n = _int(environ, "JAX_NUM_PROCESSES")
    rank = _int(environ, "JAX_PROCESS_ID")
    _check_rank(rank, n, "JAX_PROCESS_ID", "JAX_NUM_PROCESSES")
    local_size = _int(environ, "JAX_LOCAL_SIZE", 1)
    local_rank = _int(environ, "JAX_LOCAL_RANK", 0)
    _check_rank(local_rank, local_size, "JAX_LOCAL_RANK", "JAX_LOCAL_SIZE")
    address = _with_port(environ["JAX_COORDINATOR_ADDRESS"].strip(), _port(environ))
    return ClusterEnv(
        launcher="explicit",
        num_processes=n,
        process_id=rank,
        coordinator=address,
        local_rank=local_rank,
        local_size=local_size,
        num_nodes=-(-n // local_size),
        local_device_ids=local_device_ids(visible_gpu_count(environ), local_rank, local_size),
    )


def _slurm(environ: Mapping[str, str]) -> ClusterEnv:
    n_var = _first(environ, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS") or "SLURM_STEP_NUM_TASKS"
    n = _int(environ, n_var)
    rank = _int(environ, "SLURM_PROCID")
    _check_rank(rank, n, "SLURM_PROCID", n_var)
    nodelist_var = _first(environ, "SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
    if nodelist_var is None:
        raise ValueError("SLURM_STEP_NODELIST is not set: cannot choose the coordinator host")
    hosts = expand_hostlist(environ[nodelist_var])
    if not hosts:
        raise ValueError(f"{nodelist_var}={environ[nodelist_var]!r} names no host")
    nodes_var = _first(environ, "SLURM_STEP_NUM_NODES", "SLURM_NNODES")
    num_nodes = _int(environ, nodes_var) if nodes_var else len(hosts)
    node_id = _int(environ, "SLURM_NODEID", 0)
    tpn_var = _first(environ, "SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE")
    if tpn_var:
        per_node = parse_tasks_per_node(environ[tpn_var])
        if node_id >= len(per_node):
            raise ValueError(
                f"SLURM_NODEID={node_id} but {tpn_var}={environ[tpn_var]!r} lists {len(per_node)} nodes"
            )
        local_size = per_node[node_id]
    else:
        local_size = -(-n // num_nodes)
    local_rank = _int(environ, "SLURM_LOCALID", 0)
    _check_rank(local_rank, local_size, "SLURM_LOCALID", tpn_var or "local size")
    # Job and step id in the port: two srun steps of one job (or two jobs on a node) pick different ports.
    step_id = environ.get("SLURM_STEP_ID", environ.get("SLURM_STEPID"))
    port = _port(environ, environ.get("SLURM_JOB_ID"), step_id)
    visible = visible_gpu_count(environ)
    # With --gpus-per-task Slurm has bound each task its own GPUs (the visible ones): nothing to deal out.
    bound = visible is not None and visible == _slurm_gpus_per_task(environ)
    return ClusterEnv(
        launcher="slurm",
        num_processes=n,
        process_id=rank,
        coordinator=_address(hosts[0], port),
        local_rank=local_rank,
        local_size=local_size,
        num_nodes=num_nodes,
        local_device_ids=None if bound else local_device_ids(visible, local_rank, local_size),
    )


def _coordinator_host(environ: Mapping[str, str], launcher: str) -> str:
    for var in ("JAX_COORDINATOR_ADDRESS", "MASTER_ADDR"):
        if environ.get(var, "").strip():
            return environ[var].strip()
    raise ValueError(
        f"{launcher}: set JAX_COORDINATOR_ADDRESS (or MASTER_ADDR) to the first node's host name, "
        "e.g. JAX_COORDINATOR_ADDRESS=$(hostname) in the job script before mpirun"
    )


def _openmpi(environ: Mapping[str, str]) -> ClusterEnv:
    n = _int(environ, "OMPI_COMM_WORLD_SIZE")
    rank = _int(environ, "OMPI_COMM_WORLD_RANK")
    _check_rank(rank, n, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE")
    local_size = _int(environ, "OMPI_COMM_WORLD_LOCAL_SIZE", 1)
    local_rank = _int(environ, "OMPI_COMM_WORLD_LOCAL_RANK", 0)
    _check_rank(local_rank, local_size, "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE")
    host = _coordinator_host(environ, "Open MPI")
    port = _port(environ, environ.get("SLURM_JOB_ID") or environ.get("PBS_JOBID"), fallback_var="MASTER_PORT")
    return ClusterEnv(
        launcher="openmpi",
        num_processes=n,
        process_id=rank,
        coordinator=_with_port(host, port),
        local_rank=local_rank,
        local_size=local_size,
        num_nodes=-(-n // local_size),
        local_device_ids=local_device_ids(visible_gpu_count(environ), local_rank, local_size),
    )


def _pbs(environ: Mapping[str, str]) -> ClusterEnv:
    n = _int(environ, "PMI_SIZE")
    rank = _int(environ, "PMI_RANK")
    _check_rank(rank, n, "PMI_RANK", "PMI_SIZE")
    nodefile = environ.get("PBS_NODEFILE", "").strip()
    if nodefile:
        try:
            with open(nodefile) as f:
                lines = [line.strip() for line in f if line.strip()]
        except OSError as e:
            raise ValueError(f"PBS_NODEFILE={nodefile!r} cannot be read: {e}") from None
        if not lines:
            raise ValueError(f"PBS_NODEFILE={nodefile!r} is empty")
        host, num_nodes = lines[0], len(dict.fromkeys(lines))
    else:
        host, num_nodes = _coordinator_host(environ, "mpiexec without PBS_NODEFILE"), None
    rank_var = _first(environ, "PALS_LOCAL_RANKID", "MPI_LOCALRANKID", "PMI_LOCAL_RANK")
    size_var = _first(environ, "PALS_LOCAL_SIZE", "MPI_LOCALNRANKS", "PMI_LOCAL_SIZE")
    if rank_var and size_var:
        local_rank, local_size = _int(environ, rank_var), _int(environ, size_var)
        _check_rank(local_rank, local_size, rank_var, size_var)
    elif num_nodes is not None and n <= num_nodes:
        local_rank, local_size = 0, 1  # one process per node needs no local rank
    else:
        raise ValueError(
            "PALS_LOCAL_RANKID/PALS_LOCAL_SIZE (or MPI_LOCALRANKID/MPI_LOCALNRANKS) are not set: "
            "cannot tell processes on one node apart"
        )
    if num_nodes is None:
        num_nodes = -(-n // local_size)
    # PBS has no step id: concurrent mpiexec calls in one job need JAX_COORDINATOR_PORT.
    job_id = environ.get("PBS_JOBID", "").split(".")[0]
    return ClusterEnv(
        launcher="pbs",
        num_processes=n,
        process_id=rank,
        coordinator=_with_port(host, _port(environ, job_id)),
        local_rank=local_rank,
        local_size=local_size,
        num_nodes=num_nodes,
        local_device_ids=local_device_ids(visible_gpu_count(environ), local_rank, local_size),
    )


def _in_slurm_step(environ: Mapping[str, str]) -> bool:
    # The batch shell of sbatch has SLURM_NTASKS and SLURM_PROCID=0 but no step id: it is one process.
    step = _first(environ, "SLURM_STEP_ID", "SLURM_STEPID", "SLURM_STEP_NUM_TASKS")
    return step is not None and "SLURM_PROCID" in environ


_EXPLICIT_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def detect(environ: Mapping[str, str] | None = None) -> ClusterEnv:
    """Read the launcher's environment (default ``os.environ``); raises ValueError naming a bad variable."""
    environ = os.environ if environ is None else environ
    if environ.get("SMILEJAX_NO_DISTRIBUTED", "").strip() not in ("", "0"):
        return SINGLE
    if all(environ.get(v, "").strip() for v in _EXPLICIT_VARS):
        return _explicit(environ)
    if _in_slurm_step(environ):
        return _slurm(environ)
    if "OMPI_COMM_WORLD_SIZE" in environ:
        return _openmpi(environ)
    if "PMI_SIZE" in environ and "PMI_RANK" in environ:
        return _pbs(environ)
    return SINGLE


# ---- start-up

_initialized: ClusterEnv | None = None


def initialize(env: ClusterEnv | None = None) -> ClusterEnv:
    """Start ``jax.distributed`` for this process (once; later calls return the same ClusterEnv).

    Call it before anything touches JAX devices. A single process (or a ``multiprocessing`` child,
    such as a Grain worker) starts nothing.
    """
    global _initialized
    if _initialized is not None:
        return _initialized
    if multiprocessing.parent_process() is not None:
        logger.debug("smilejax.runtime: in a multiprocessing worker, staying a single process")
        return SINGLE
    env = detect() if env is None else env
    if env.num_processes > 1:
        already = getattr(jax.distributed, "is_initialized", lambda: False)()
        if not already:
            # CPU backends need gloo for cross-process collectives; GPU backends ignore it.
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
            jax.distributed.initialize(
                coordinator_address=env.coordinator,
                num_processes=env.num_processes,
                process_id=env.process_id,
                local_device_ids=env.local_device_ids,
            )
    _initialized = env
    logger.info("%s", describe(env))
    return env


def describe(env: ClusterEnv) -> str:
    """One line for logs: launcher, nodes, processes, this process's rank and devices."""
    if env.launcher == "single" and env.num_processes == 1:
        where = "single process"
    else:
        where = (
            f"{env.launcher}: process {env.process_id}/{env.num_processes} on {env.num_nodes} node(s), "
            f"local rank {env.local_rank}/{env.local_size}, coordinator {env.coordinator}"
        )
    devices = "all visible devices" if env.local_device_ids is None else f"GPUs {env.local_device_ids}"
    return f"{where}, {devices}"
