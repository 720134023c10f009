"""``smilejax launch --system SYSTEM --nodes N CONFIG [key=value ...]``: a batch job on an HPC system."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from smilejax.commands.common import add_command, add_config_args

EPILOG = """\
The job script, the frozen config and the job log go to RUN_DIR/launch/. The job trains with
`smilejax train`; Slurm (--signal) or the PBS rank wrapper warns the run before the time limit, the run
checkpoints and exits 75, and the job requeues itself (Slurm) or submits its successor (PBS), which
resumes from the checkpoint until run.steps are done. See docs/HPC.md.

examples:
  smilejax launch --system perlmutter --nodes 2 --account m1234 my-run.yaml run.dir=$SCRATCH/run1
  smilejax launch --system polaris --nodes 4 --account MyProj --queue prod --stage my-run.yaml data.path=...
  smilejax launch --system perlmutter --nodes 8 --tasks-per-node 1 --dry-run run.yaml  # a process per node"""


def register(sub) -> None:
    parser = add_command(
        sub,
        "launch",
        help="write a batch script for an HPC system into the run directory and submit it",
        description="Write a batch job for SYSTEM (a file of launch/, e.g. perlmutter, polaris, slurm-gpu, "
        "local, or a path to one) that trains CONFIG on N nodes, and submit it with sbatch or qsub. "
        "Everything is checked (system, resources, config, mesh) before anything is written or submitted.",
        epilog=EPILOG,
    )
    parser.add_argument(
        "--system", required=True, help="system name (a file of launch/) or path to a system YAML"
    )
    parser.add_argument("--nodes", type=int, default=1, metavar="N", help="nodes (default 1)")
    parser.add_argument(
        "--gpus-per-node", type=int, metavar="G", help="GPUs per node (default: all the system has)"
    )
    parser.add_argument(
        "--tasks-per-node",
        type=int,
        metavar="T",
        help="processes per node: the GPU count (default, one per GPU), 1 (one per node, all its GPUs) or "
        "another divisor; on CPU systems the process count (default 1)",
    )
    parser.add_argument("--time", help="time limit: MINUTES, HH:MM:SS or D-HH:MM:SS (default: the system's)")
    parser.add_argument("--account", help="account / project charged (default: the system's)")
    parser.add_argument("--queue", help="Slurm partition or PBS queue (default: the system's)")
    parser.add_argument("--qos", help="Slurm quality of service (default: the system's)")
    parser.add_argument("--constraint", help="Slurm node constraint (default: the system's)")
    parser.add_argument("--name", help="job name (default: smilejax-MODEL)")
    parser.add_argument(
        "--signal-margin",
        type=int,
        metavar="SECONDS",
        help="warn the run this long before the time limit (default: the system's); it needs time to "
        "finish a step and write a checkpoint",
    )
    parser.add_argument(
        "--max-requeues", type=int, default=20, metavar="N", help="requeues or resubmissions at most (20)"
    )
    parser.add_argument(
        "--stage",
        action="store_true",
        help="copy data.path and data.eval_path to node-local storage first (one task per node) "
        "and train from the copies",
    )
    parser.add_argument("--stage-dir", help="node-local folder for --stage (default: the system's)")
    parser.add_argument(
        "--directive",
        action="append",
        default=[],
        metavar="OPTION",
        help="extra scheduler option for the script header, e.g. --directive=--mail-type=END (repeatable)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the script; write and submit nothing")
    parser.add_argument(
        "--wait",
        action="store_true",
        help="block until the job has ended (requeues included); exit with its code",
    )
    add_config_args(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from smilejax import config
    from smilejax.launch import job as jobs
    from smilejax.launch import script, submit, systems
    from smilejax.launch.systems import LaunchError

    log = logging.getLogger("smilejax.launch")
    system = systems.load(args.system)
    gpus, tasks, limit, margin = jobs.resources(
        system,
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        tasks_per_node=args.tasks_per_node,
        time=args.time,
        signal_margin_s=args.signal_margin,
    )
    if args.max_requeues < 0:
        raise LaunchError(f"--max-requeues must be 0 or more, got {args.max_requeues}")
    account = args.account or system.account
    if system.account_required and not account:
        raise LaunchError(f"{system.name} needs an account (project) to charge: give --account")
    workdir = Path.cwd()
    cfg = config.load(args.config, args.overrides)
    jobs.check_fit(cfg, args.nodes * gpus, args.nodes * tasks)
    run_dir = Path(cfg.run.dir) if cfg.run.dir else jobs.default_run_dir(cfg, workdir)
    run_dir = run_dir if run_dir.is_absolute() else workdir / run_dir
    cfg.run.dir = str(run_dir)
    model = cfg.model.name.rpartition(":")[2].lower()
    job = jobs.Job(
        system=system,
        nodes=args.nodes,
        tasks_per_node=tasks,
        gpus_per_node=gpus,
        time_s=limit,
        signal_margin_s=margin,
        name=args.name or f"smilejax-{model}",
        account=account,
        queue=args.queue or system.queue,
        qos=args.qos or system.qos,
        constraint=args.constraint or system.constraint,
        run_dir=run_dir,
        workdir=workdir,
        max_requeues=args.max_requeues,
        extra_directives=tuple(args.directive),
        stage=jobs.stage_plan(cfg, system, args.stage_dir, workdir) if args.stage else None,
    )
    script_path = submit.launch_dir(run_dir) / "job.sh"
    text = script.render(job, str(script_path))
    if args.dry_run:
        print(text, end="")
        return 0
    path = submit.write(job, cfg, text)
    log.info("%s; script %s", job.describe(), path)

    def announce(job_id: str) -> None:
        print(job_id, flush=True)
        logs = f"slurm-{job_id}.out" if system.scheduler == "slurm" else f"pbs-{job_id.split('.')[0]}.out"
        log.info("submitted job %s; log %s", job_id, submit.launch_dir(run_dir) / logs)

    code = submit.submit(job, path, wait=args.wait, on_id=announce)
    if args.wait:
        print(f"smilejax launch: job ended with exit code {code}", file=sys.stderr)
    return code
