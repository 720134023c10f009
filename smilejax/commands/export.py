"""``smilejax export RUN_DIR --out REPO``: a trained model as StableHLO and ONNX in a Triton repository."""

from __future__ import annotations

import argparse

from .common import add_command, choice_list, existing, int_list

FORMATS = ("stablehlo", "onnx")  # smilejax.serve.export.FORMATS, without importing JAX here

EPILOG = """\
REPO gets, for a model exported as NAME (default: the model's name):
  NAME/         ONNX on Triton's ONNX Runtime backend (production; NVIDIA's tritonserver container)
  NAME_jax/     the StableHLO artifact (jax.export) run by JAX in Triton's Python backend
  NAME_onnx/    the same ONNX file run by onnxruntime in the Python backend (servers without ONNX Runtime)
  smilejax_export.json   inputs, outputs, dtypes, the normalisation, versions and the source run

Inputs: where the run's data format declares them (DatasetSpec.raw), the variables as the data
files store them (names and units of the files); the models apply the masks and the run's
normalisation inside. smilejax_export.json's "raw" lists them; smilejax.serve.client.raw_batch reads
them from a file. --pipeline-inputs exports the model's own inputs instead (the pipeline's batches).

Each artifact is checked against the in-process model (float32) before it is written. The batch
dimension is symbolic, and so is the element count (tracks) where the model allows it.
Serve it with: smilejax serve REPO"""


def register(sub) -> None:
    parser = add_command(
        sub,
        "export",
        help="export a trained model (StableHLO, ONNX) into a Triton model repository",
        description="Export RUN_DIR's model at its newest checkpoint into a Triton model repository.",
        epilog=EPILOG,
    )
    parser.add_argument(
        "run_dir", metavar="RUN_DIR", help="a smilejax run directory (config.yaml, checkpoints/)"
    )
    parser.add_argument("--out", required=True, metavar="REPO", help="model repository to write (created)")
    parser.add_argument(
        "--format",
        type=choice_list(FORMATS),
        default=list(FORMATS),
        help="comma list of stablehlo, onnx (default: both)",
    )
    parser.add_argument("--name", help="model name in the repository (default: from model.name)")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the newest readable)")
    parser.add_argument("--fixed-elements", action="store_true", help="keep the element count (axis 1) fixed")
    parser.add_argument(
        "--pipeline-inputs",
        action="store_true",
        help="take the model's own inputs as the input pipeline makes them, not the files' variables",
    )
    triton = parser.add_argument_group("Triton scheduling (config.pbtxt)")
    triton.add_argument(
        "--max-batch-size", type=int, default=64, help="largest batch a model runs (default 64)"
    )
    triton.add_argument("--no-dynamic-batching", action="store_true", help="run every request on its own")
    triton.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=500,
        help="how long a request waits for others (default 500)",
    )
    triton.add_argument(
        "--preferred-batch-sizes", type=int_list(1), default=(), help="comma list, e.g. 16,32"
    )
    triton.add_argument("--instances", type=int, default=1, help="model copies per device (default 1)")
    triton.add_argument(
        "--kind",
        choices=("auto", "cpu", "gpu"),
        default="auto",
        help="instance kind (default auto: GPU if any)",
    )
    triton.add_argument("--no-warmup", action="store_true", help="compile the JAX model on first requests")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    existing(args.run_dir, "run directory")
    from smilejax.serve import repository

    options = repository.TritonOptions(
        max_batch_size=args.max_batch_size,
        dynamic_batching=not args.no_dynamic_batching,
        max_queue_delay_us=args.max_queue_delay_us,
        preferred_batch_sizes=tuple(args.preferred_batch_sizes),
        instances=args.instances,
        kind=args.kind,
        warmup=not args.no_warmup,
    )
    meta = repository.build(
        args.run_dir,
        args.out,
        formats=args.format,
        name=args.name,
        options=options,
        step=args.step,
        symbolic_elements=not args.fixed_elements,
        raw=False if args.pipeline_inputs else None,
    )
    for model, info in meta["models"].items():
        print(f"{args.out}/{model}: {info['format']} on {info['runs_with']}")
    shapes = [
        f"{t['name']} {t['dtype']}[{', '.join(map(str, ['batch', *t['dims']]))}]" for t in meta["inputs"]
    ]
    kind = "the data files' variables" if meta["raw"] else "the model's own"
    print(f"inputs ({kind}): {'; '.join(shapes)}")
    return 0
