"""``smilejax train CONFIG [key=value ...]``."""

from __future__ import annotations

import argparse
import logging

from smilejax.commands.common import LAUNCH_EPILOG, add_command, add_config_args


def register(sub) -> None:
    parser = add_command(
        sub,
        "train",
        help="train a model (resumes when RUN_DIR already holds a checkpoint)",
        description="Train a model. CONFIG is a YAML file or the name of a packaged config. The run "
        "directory gets config.yaml (resolved), run.json (hardware, mesh, versions), metrics.jsonl, "
        "checkpoints/, and the W&B / TensorBoard files. Running again on the same run.dir resumes "
        "from its newest readable checkpoint.",
        epilog=LAUNCH_EPILOG,
    )
    add_config_args(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from smilejax import preemption

    preemption.listen()  # before the slow imports: an early scheduler warning must not kill us
    from smilejax import config, trainer

    result = trainer.train(config.load(args.config, args.overrides))
    if result.preempted:
        logging.getLogger("smilejax").warning(
            "stopped at step %d after a checkpoint; run the same command to resume", result.step
        )
    return result.exit_code
