"""``smilejax import SOURCE CHECKPOINT``: a model trained elsewhere as a smilejax run directory."""

from __future__ import annotations

import argparse

from .common import OVERRIDES_HELP, add_command

EPILOG = """\
sources (each declared by the model that can import it, ModelSpec.importers):
  salt   ATLAS salt's GN2: a Lightning .ckpt or a SaltModel state-dict .pt, with salt's training YAML
         (--config; default: the config.yaml salt writes next to its checkpoints or one folder up).
         The variables, normalisation (from the checkpoint, else data.norm_dict), class names and
         weights, task weights and learning-rate schedule are carried over.

RUN_DIR gets config.yaml, run.json (with the import's provenance), norm_dict.yaml and a checkpoint of
step 0 with the imported weights. smilejax eval, export and serve take it as any run, and
`smilejax train RUN_DIR/config.yaml` trains on from the imported weights (a fresh optimizer and
learning-rate schedule). If the training data (salt's train_file, or data.path=FILES) cannot be
read here, the checkpoint holds the weights alone: pass data.path=FILES to train.

exit codes: 0 done, 2 a file is missing or the model cannot be imported (the message names the
part of the config or the weight)."""


def register(sub) -> None:
    parser = add_command(
        sub,
        "import",
        help="import a model trained elsewhere (salt's GN2) as a run directory",
        description="Turn CHECKPOINT, trained with SOURCE, into a smilejax run directory.",
        epilog=EPILOG,
    )
    parser.add_argument("source", metavar="SOURCE", help="where the model was trained: salt")
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="the model's weights (.ckpt, .pt)")
    parser.add_argument("--config", metavar="FILE", help="the source's training config (salt: its YAML)")
    parser.add_argument(
        "--out", metavar="RUN_DIR", help="run directory to write (default runs/MODEL-SOURCE-NAME)"
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from smilejax import importer

    result = importer.make_run(
        args.source, args.checkpoint, config_path=args.config, out=args.out, overrides=args.overrides
    )
    print(f"{result.run_dir}: {result.model}, {result.param_count:,} parameters imported from {args.source}")
    print(f"  evaluate: smilejax eval {result.run_dir}")
    print(f"  export:   smilejax export {result.run_dir} --out REPO")
    if result.trainable:
        print(f"  train on: smilejax train {result.run_dir}/config.yaml")
    else:
        print(f"  train on: smilejax train {result.run_dir}/config.yaml data.path=FILES")
    return 0
