"""The batch script of a job: ``launch/templates/<scheduler>.sh`` with the job's lines filled in.

Templates hold the fixed structure (environment, staging, training, requeue); this module renders only
the lines that depend on the job: scheduler directives, launcher options, exports and the commands.
"""

from __future__ import annotations

import re
import shlex

from smilejax.launch import systems
from smilejax.launch.job import Job, format_time
from smilejax.launch.systems import LaunchError

RANK_WRAPPER = "rank.sh"  # copied next to the script; every rank runs under it (see its header)
# The variable that gpu_order sets. On ROCm, HIP_VISIBLE_DEVICES orders the GPUs that ROCR_VISIBLE_DEVICES
# leaves visible; Slurm may set ROCR_VISIBLE_DEVICES for each step, over a value exported by the script.
VISIBLE_DEVICES = {"nvidia": "CUDA_VISIBLE_DEVICES", "amd": "HIP_VISIBLE_DEVICES"}
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


def template(name: str) -> tuple[str, str]:
    """(path, text) of ``templates/<name>`` on the system search path."""
    for folder in systems.search_path():
        path = folder / systems.TEMPLATES / name
        if path.is_file():
            return str(path), path.read_text()
    raise LaunchError(f"no job-script template {systems.TEMPLATES}/{name} in {systems.search_path()}")


def fill(text: str, values: dict[str, object], where: str) -> str:
    def sub(m: re.Match) -> str:
        if m[1] not in values:
            raise LaunchError(f"{where}: unknown placeholder {m[0]}")
        return str(values[m[1]])

    return _PLACEHOLDER.sub(sub, text)


def render(job: Job, script_path: str) -> str:
    """The script's text; ``script_path`` is where it will be written (resubmission names it)."""
    named = {
        "name": job.name,
        "account": job.account,
        "queue": job.queue,
        "qos": job.qos,
        "constraint": job.constraint,
        "run.dir": str(job.run_dir),
        "working directory": str(job.workdir),
    }
    for key, value in named.items():
        if value is not None and (not value or re.search(r"\s", value)):
            raise LaunchError(
                f"{key} {value!r} is empty or holds white space: a batch directive cannot take it"
            )
    pbs = job.system.scheduler == "pbs"
    path, text = template("pbs.sh" if pbs else "slurm.sh")
    run_dir = shlex.quote(str(job.run_dir))
    job_id = "${PBS_JOBID%%.*}" if pbs else "$SLURM_JOB_ID"
    python = f"{job.system.container} " if job.system.container else ""
    python += shlex.quote(job.python)
    overrides = job.stage.overrides if job.stage else ()
    values = {
        "system": job.system.name,
        "script": shlex.quote(script_path),
        "directives": "\n".join((_pbs_directives if pbs else _slurm_directives)(job)),
        "setup": "\n".join(job.system.setup) or "# (no set-up lines)",
        "env": "\n".join(_exports(job)) or "# (no environment variables)",
        "run_dir": run_dir,
        "workdir": shlex.quote(str(job.workdir)),
        "nodes": job.nodes,
        "processes": job.processes,
        "tasks_per_node": job.tasks_per_node,
        "time_s": job.time_s,
        "signal_margin_s": job.signal_margin_s,
        "max_requeues": job.max_requeues,
        "launcher_args": "".join(f"{a} " for a in _launcher_args(job)),
        "rank_wrapper": f'"$RUN_DIR/launch/{RANK_WRAPPER}"',
        "python": python,
        "overrides": "".join(f' "{key}={_staged(names)}"' for key, names in overrides),
        "preflight": _preflight_lines(job, python, pbs),
        "node_dirs": _node_dir_lines(job, pbs),
        "stage": _stage_lines(job, python, job_id, pbs),
        "unstage": _unstage_lines(job, pbs),
    }
    return fill(text, values, path)


def _staged(names: tuple[str, ...]) -> str:
    """A config path list pointing at the node-local copies ($STAGE is set by the script)."""
    return ",".join(f"$STAGE/{n}" for n in names)


def _slurm_directives(job: Job) -> list[str]:
    lines = [
        f"--job-name={job.name}",
        f"--nodes={job.nodes}",
        f"--ntasks-per-node={job.tasks_per_node}",
    ]
    if job.gpus_per_node:
        per_task = _gpus_per_task(job)
        lines.append(f"--gpus-per-task={per_task}" if per_task else f"--gpus-per-node={job.gpus_per_node}")
    if job.cpus_per_task:
        lines.append(f"--cpus-per-task={job.cpus_per_task}")
    lines.append(f"--time={format_time(job.time_s)}")
    options = {"account": job.account, "partition": job.queue, "qos": job.qos, "constraint": job.constraint}
    for option, value in options.items():
        if value:
            lines.append(f"--{option}={value}")
    lines += [
        "--requeue",
        f"--signal=USR1@{job.signal_margin_s}",
        "--open-mode=append",
        f"--output={job.run_dir}/launch/slurm-%j.out",
        f"--chdir={job.workdir}",
        *job.system.directives,
        *job.extra_directives,
    ]
    return [f"#SBATCH {line}" for line in lines]


def _pbs_directives(job: Job) -> list[str]:
    select = job.system.pbs_select.format(
        nodes=job.nodes, gpus=job.gpus_per_node, tasks=job.tasks_per_node, cpus=job.system.cpus_per_node or 1
    )
    lines = [f"-N {job.name[:63]}", f"-l select={select}", f"-l walltime={format_time(job.time_s)}"]
    if job.account:
        lines.append(f"-A {job.account}")
    if job.queue:
        lines.append(f"-q {job.queue}")
    lines += ["-j oe", f"-o {job.run_dir}/launch/pbs.out", *job.system.directives, *job.extra_directives]
    return [f"#PBS {line}" for line in lines]


def _launcher_args(job: Job) -> list[str]:
    args = []
    if job.cpus_per_task:
        # srun no longer passes the batch's --cpus-per-task on (Slurm 22.05+); mpiexec spaces ranks by depth.
        pbs = job.system.scheduler == "pbs"
        args.append(f"--depth={job.cpus_per_task}" if pbs else f"--cpus-per-task={job.cpus_per_task}")
    per_task = _gpus_per_task(job)
    if per_task:
        args.append(f"--gpus-per-task={per_task}")  # stated for the step too, as -c is
    system_args = job.system.launcher_args
    if not job.gpus_per_node:  # the system's GPU options (--gpu-bind) have no GPUs to bind in this job
        system_args = [a for a in system_args if not a.startswith("--gpu")]
    return [*args, *system_args]


def _gpus_per_task(job: Job) -> int | None:
    """GPUs Slurm binds to each process (gpu_binding per_task), else None (every process sees the node's)."""
    if job.system.gpu_binding != "per_task" or not job.gpus_per_node:
        return None
    return job.gpus_per_node // job.tasks_per_node


def _exports(job: Job) -> list[str]:
    lines = [f'export {key}="{_dq(value)}"' for key, value in job.system.env.items()]
    order = job.system.gpu_order
    if order and job.tasks_per_node > 1 and job.gpus_per_node == job.system.gpus_per_node:
        # Every rank sees all GPUs (NCCL peer access) in affinity order; the runtime gives local rank i
        # the i-th block of them.
        lines.append(f"export {VISIBLE_DEVICES[job.system.gpu_vendor]}={','.join(map(str, order))}")
    return lines


def _dq(value: str) -> str:
    """Inside double quotes: keep $VARS expanding, escape what would end or break the string."""
    return re.sub(r'(["\\`])', r"\\\1", str(value))


def _per_node(pbs: bool) -> str:
    """The launcher prefix for one task on each node of the job."""
    return (
        'mpiexec -n "$NODES" --ppn 1'
        if pbs
        else 'srun --nodes="$NODES" --ntasks="$NODES" --ntasks-per-node=1'
    )


def _preflight_lines(job: Job, python: str, pbs: bool) -> str:
    """`smilejax doctor` as one training process on the first node: it must see the GPUs that process
    would (its launcher options, the same GPU binding), else the job ends before training, not requeued."""
    if not job.gpus_per_node:
        return "# (none: a CPU job)"
    per_task = _gpus_per_task(job)
    gpus = per_task or job.gpus_per_node
    one = "mpiexec -n 1 --ppn 1" if pbs else "srun --nodes=1 --ntasks=1 --ntasks-per-node=1"
    args = "".join(f"{a} " for a in _launcher_args(job))
    system = _dq(job.system.name)
    wanted = (
        f"the {gpus} GPU(s) a process of this {system} job gets"
        if per_task
        else f"the node's {gpus} GPU(s), which every process of this {system} job sees"
    )
    why = f"JAX on the first node does not see {wanted} (the report above says why); not training"
    return (
        f"{one} {args}{python} -m smilejax doctor --expect gpu --expect-devices {gpus} ||\n"
        f'    {{ echo "smilejax-launch: preflight failed: {why}" >&2; exit 1; }}'
    )


def _node_dir_lines(job: Job, pbs: bool) -> str:
    """``mkdir -p`` of the system's node_dirs on every node: node-local folders exist only where made."""
    if not job.system.node_dirs:
        return "# (none in the system file)"
    # Double quotes: the folders may name variables of the job ($SLURM_JOB_ID).
    dirs = " ".join(f'"{_dq(d)}"' for d in job.system.node_dirs)
    return (
        f"{_per_node(pbs)} mkdir -p {dirs} ||\n"
        '    { echo "smilejax-launch: making the node folders failed" >&2; exit 1; }'
    )


def _stage_lines(job: Job, python: str, job_id: str, pbs: bool) -> str:
    if not job.stage:
        return "# (none: --stage not given)"
    sources = " ".join(shlex.quote(s) for s in job.stage.sources)
    # Double quotes: a stage_dir may name variables of the job (Frontier's /mnt/bb/$USER).
    return (
        f'STAGE="{_dq(job.stage.root)}/smilejax-{job_id}"\n'
        f'{_per_node(pbs)} {python} -m smilejax.launch.stage "$STAGE" {sources} ||\n'
        '    { echo "smilejax-launch: staging to $STAGE failed" >&2; exit 1; }'
    )


def _unstage_lines(job: Job, pbs: bool) -> str:
    if not job.stage:
        return "# (nothing staged)"
    comment = "# node-local copies go with the job (a requeued job may land on other nodes)"
    return f'{comment}\n{_per_node(pbs)} rm -rf "$STAGE"'
