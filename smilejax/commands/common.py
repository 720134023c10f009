"""Pieces shared by the sub-commands' parsers."""

from __future__ import annotations

import argparse

OVERRIDES_HELP = (
    "dotted overrides of any config field, e.g. optimizer.lr=3e-4 mesh.fsdp=4 run.steps=200 "
    "run.dir=runs/test (values are parsed as YAML)"
)

LAUNCH_EPILOG = """\
The same command runs as one process (CPU or GPU), as several local processes, or as many
processes under srun / mpiexec: the runtime detects Slurm, Open MPI and PBS (PALS/MPICH) launchers,
or an explicit JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID, and starts
jax.distributed itself. Only process 0 prints and logs.

exit codes: 0 done, 1 failed, 2 bad config or input, 75 stopped by SIGTERM/SIGUSR1 after a
checkpoint (requeue and run the same command again to resume)."""


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG", help="YAML file or packaged config name (e.g. gn2)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)
