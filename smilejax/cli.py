"""The ``smilejax`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import yaml

OVERRIDES_HELP = (
    "dotted overrides of any config field, e.g. optimizer.lr=3e-4 mesh.fsdp=4 run.steps=200 "
    "run.dir=runs/test (values are parsed as YAML)"
)

EPILOG = """\
The same command runs as one process (CPU or GPU), as several local processes, or as many
processes under srun / mpiexec: the runtime detects Slurm, Open MPI and PBS (PALS/MPICH) launchers,
or an explicit JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID, and starts
jax.distributed itself. Only process 0 prints and logs.

exit codes: 0 done, 1 failed, 2 bad config or input, 75 stopped by SIGTERM/SIGUSR1 after a
checkpoint (requeue and run the same command again to resume)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smilejax",
        description="Train, tune and serve High-Energy-Physics models with JAX, laptop to GPU cluster.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = sub.add_parser(
        "train",
        help="train a model (resumes when RUN_DIR already holds a checkpoint)",
        description="Train a model. CONFIG is a YAML file or the name of a packaged config. The run "
        "directory gets config.yaml (resolved), run.json (hardware, mesh, versions), metrics.jsonl, "
        "checkpoints/, and the W&B / TensorBoard files. Running again on the same run.dir resumes "
        "from its newest readable checkpoint.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("config", metavar="CONFIG", help="YAML file or packaged config name")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)

    show = sub.add_parser(
        "config",
        help="print the resolved config (defaults filled in, overrides applied, checked)",
        description="Resolve and check a config without running anything, and print it as YAML.",
    )
    show.add_argument("config", metavar="CONFIG", help="YAML file or packaged config name")
    show.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)
    return parser


def _setup_logging(verbose: bool) -> None:
    # Only process 0 talks; the others report warnings and errors.
    rank = next(
        (
            os.environ[v]
            for v in ("SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "JAX_PROCESS_ID")
            if v in os.environ
        ),
        "0",
    )
    level = logging.DEBUG if verbose else logging.INFO if rank == "0" else logging.WARNING
    logging.basicConfig(level=level, format=f"%(asctime)s [{rank}] %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("absl", "orbax", "jax._src", "grain"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(args.verbose)
    from smilejax import config
    from smilejax.preemption import EXIT_PREEMPTED

    try:
        cfg = config.load(args.config, args.overrides)
        if args.command == "config":
            print(yaml.safe_dump(config.to_dict(cfg), sort_keys=False), end="")
            return 0
        from smilejax import train

        result = train.train(cfg)
    except config.ConfigError as err:
        print(f"smilejax: config error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"smilejax: error: {err}", file=sys.stderr)
        return 2
    if result.preempted:
        logging.getLogger("smilejax").warning(
            "stopped at step %d after a checkpoint; run the same command to resume", result.step
        )
        return EXIT_PREEMPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
