"""``smilejax import SOURCE CHECKPOINT``: a model trained elsewhere as a smilejax run directory."""

from __future__ import annotations

import argparse
import textwrap

from .common import OVERRIDES_HELP, add_command

EPILOG = """\
RUN_DIR gets config.yaml, run.json (with the import's provenance), norm_dict.yaml and a checkpoint of
step 0 with the imported weights. smilejax eval, export and serve take it as any run, and
`smilejax train RUN_DIR/config.yaml` trains on from the imported weights (a fresh optimizer and
learning-rate schedule). If the training data (the source config's, or data.path=FILES) cannot be
read here, the checkpoint holds the weights alone: pass data.path=FILES to train.

exit codes: 0 done, 2 a file is missing or the model cannot be imported (the message names the
part of the config or the weight)."""


def sources_help() -> str:
    """The sources some model imports, each with its importer's description (finding them imports every
    model)."""
    from smilejax import importer

    known = sorted(importer.importers().items())
    if not known:
        return "sources: none (no model declares an importer, ModelSpec.importers)"
    indent = 4 + max(len(source) for source, _ in known)
    lines = ["sources (each declared by the model that imports it, ModelSpec.importers):"]
    for source, (spec, load) in known:
        text = f"{importer.describe(load)} (model: {spec.name})".lstrip()
        lines += textwrap.wrap(
            text, width=100, initial_indent=f"  {source:<{indent - 2}}", subsequent_indent=" " * indent
        )
    return "\n".join(lines)


class _HelpWithSources(argparse.Action):
    """-h: the help with the sources listed, found only when asked for (importing every model takes a
    second that the other commands' parsing must not pay)."""

    def __init__(self, option_strings: list[str], dest: str, help: str | None = None):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        parser.epilog = f"{sources_help()}\n\n{EPILOG}"
        parser.print_help()
        parser.exit()


def register(sub) -> None:
    parser = add_command(
        sub,
        "import",
        help="import a model trained with another framework as a run directory",
        description="Turn CHECKPOINT, trained with SOURCE, into a smilejax run directory.",
        epilog=EPILOG,
        add_help=False,
    )
    parser.add_argument("-h", "--help", action=_HelpWithSources, help="show this help message and exit")
    parser.add_argument("source", metavar="SOURCE", help="where the model was trained (sources: below)")
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="the model's weights")
    parser.add_argument(
        "--config", metavar="FILE", help="the source's training config (default: where the source keeps it)"
    )
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
