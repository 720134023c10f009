"""``smilejax bench roofline MODEL``: an NVIDIA GPU's training step, compiled and bounded without the GPU.

XLA compiles the model's real training step (the one `bench train` times) for the --target GPU on
this machine, whatever it has (a laptop, a login node, CI): JAX's CUDA plugin compiles for a described
device without one. The optimized program is then read kernel by kernel: the bytes each must move and
the FLOPs of its matrix products bound its time from below, max(bytes / bandwidth, FLOPs / peak),
summed over the step. It predicts, it does not measure: it says how many kernels a step launches, how
many GB it moves, which model scope and pass moves them (forward, backward, optimizer), and how a change
(--attention, --vary, --bucket, --pack) moves the bound. Measured steps take longer (1.4-1.7x the bound for a
transformer step on an H100, docs/PERFORMANCE.md): compare bounds with each other, and measure with
`bench train` on the GPU. Custom kernels (cuDNN attention, Pallas) count their memory traffic only.

Needs JAX's CUDA plugin for this JAX version, ptxas and cuDNN (`make gpu-compiler`: 1.7 GB in the
venv's gpu-compiler folder, or a folder named by SMILEJAX_GPU_COMPILER). They are kept off the venv's
path so that nothing else starts looking for a GPU: the study runs in a subprocess that adds them.
Writes roofline.json/.md/.png and, per row, roofline-<row>.md (by kind of op, by model scope and pass,
the costliest kernels).

  smilejax bench roofline MODEL --bucket 16 24 --attention math,cudnn --vary model.remat=false,true

Packed rows (``--pack SLOTS:JETS``: several jets share a row of track slots, ``inputs.packing``) and rows
holding a real sample's jets (``--lengths-from FILE``: padded, bucket and packed rows of the same
--batch jets drawn from an ftag_h5 file): ``_packed_cases``. Samples/s count jets, not packed rows.

A family with a study of its own (``bench.study``) whose module offers ``cases`` bounds the shapes that
study times; its options are listed here once MODEL names it (``smilejax bench roofline MODEL --help``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from smilejax.bench import _packed_cases
from smilejax.commands.common import OVERRIDES_HELP, add_command

log = logging.getLogger(__name__)

COMPILER_ENV = "SMILEJAX_GPU_COMPILER"
_CHILD_ARGS = "SMILEJAX_ROOFLINE_ARGS"
COLUMNS = [
    "target",
    "attention",
    *_packed_cases.PAD_COLUMNS,
    "elements",
    "events",
    "kernels",
    "gb_per_step",
    "bound_ms",
    "memory_bound",
    "samples_per_s_bound",
    "vs_first",
    "model_tflop",
    "note",
]


def register(sub) -> None:
    from smilejax.xla.devices import TARGETS

    parser = add_command(
        sub,
        "roofline",
        help="a GPU training step compiled on this machine: kernels, GB moved and a time bound, per scope",
        description=__doc__,
    )
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="packaged config (see `smilejax train --help`), YAML config, or model name",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)
    parser.add_argument("--target", choices=sorted(TARGETS), default="h100", help="the GPU (default h100)")
    parser.add_argument("--batch", type=int, help="global batch (default 4000)")
    parser.add_argument("--tracks", type=int, help="padded set length (default: the config's)")
    parser.add_argument(
        "--bucket", type=int, nargs="+", action="extend", default=[], help="bucket lengths too"
    )
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument(
        "--attention", help="attention implementations, comma-separated (math, chunked, cudnn, pallas)"
    )
    parser.add_argument(
        "--vary",
        action="append",
        metavar="KEY=V1,V2",
        help="bound every value of a config field (repeatable; every combination, with --attention too): "
        "--vary model.remat=false,true",
    )
    _packed_cases.add_arguments(parser)
    parser.add_argument("--top", type=int, default=15, help="costliest kernels listed per row (default 15)")
    parser.add_argument("--out", default="bench-results/roofline", help="results folder")
    parser.set_defaults(run=run, extend=_extend)


def _extend(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    from smilejax.bench import _target

    _target.extend_with_study(parser, argv, needs="cases")


def compiler_dir() -> Path:
    """Where JAX's CUDA plugin for this JAX lives (``make gpu-compiler``); SystemExit if nowhere."""
    folder = Path(os.environ.get(COMPILER_ENV) or Path(sys.prefix) / "gpu-compiler")
    if not list(folder.glob("jax_plugins/xla_cuda*")):
        raise SystemExit(
            f"bench roofline: no JAX CUDA plugin in {folder}. It compiles for a GPU without one: run "
            f"`make gpu-compiler` (or `bash launch/install_gpu_compiler.sh`), or set {COMPILER_ENV} "
            "to a folder holding jax-cuda12-plugin, jax-cuda12-pjrt, nvidia-cuda-nvcc-cu12 and "
            "nvidia-cudnn-cu12"
        )
    return folder


def run(args: argparse.Namespace) -> int:
    """Starts the study in a subprocess that can see the CUDA plugin (see the module doc)."""
    folder = compiler_dir()
    options = {k: v for k, v in vars(args).items() if k not in ("run", "extend")}  # no functions in JSON
    env = {
        **os.environ,
        _CHILD_ARGS: json.dumps({"options": options, "argv": sys.argv[1:]}),
        "PYTHONPATH": os.pathsep.join([str(folder), *filter(None, [os.environ.get("PYTHONPATH")])]),
        # The CPU stays the default backend: the plugin only compiles, for a described GPU.
        "JAX_PLATFORMS": "cpu",
        "JAX_SKIP_CUDA_CONSTRAINTS_CHECK": "1",
    }
    return subprocess.run([sys.executable, "-m", __name__], env=env, check=False).returncode


def _cases(cfg, spec, args: argparse.Namespace) -> tuple[Any, list[tuple[dict[str, Any], dict]]]:
    """``cfg`` at the padded length (the program's), and (row columns, synthetic host batch) per set
    length (the padded one and the buckets), or per shape of the family's own study (its ``cases``)."""
    import importlib

    from smilejax.bench import _train_jax

    study = importlib.import_module(spec.bench.study) if spec.bench.study else None
    if study is not None and hasattr(study, "cases"):  # a study of its own has shapes of its own
        if args.bucket or args.pack or args.lengths_from:
            raise SystemExit(f"--bucket/--pack/--lengths-from: not for bench roofline {cfg.model.name}")
        return cfg, study.cases(args)
    if args.pack or args.lengths_from:  # packed rows, or the shapes of a sample's jets
        return _packed_cases.cases(cfg, spec, args, args.batch or 4000)
    padded_cfg, by_length = _train_jax.length_batches(cfg, spec, args, args.batch or 4000)
    if by_length[0][0] is None:  # no known set length
        return cfg, [({}, host) for _, host in by_length]
    padded = by_length[-1][0]
    cases = [({"tracks": w, "padding": "padded" if w == padded else "bucket"}, h) for w, h in by_length]
    return padded_cfg, cases


def _bound_case(program, host: dict, target, args) -> tuple[dict[str, Any], dict]:
    """(totals, breakdown) of ``program``'s step on ``host``'s shapes, compiled for the target."""
    import jax

    from smilejax.xla import profile
    from smilejax.xla import roofline as _roofline

    sharding = program.batch_sharding
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding) for k, v in host.items()}
    # The abstract mesh names the GPU to code that picks GPU kernels (models.kernel_mode, Pallas).
    with jax.sharding.use_abstract_mesh(program.mesh.abstract_mesh):
        text = program.train_step.lower(program.abstract_state, batch).compile().as_text()
        flops = program.step_flops(batch)
    found = _roofline.kernels(text)
    totals = _roofline.bound(found, target, args.precision)
    totals["model_tflop"] = flops / 1e12 if flops else None
    times = _roofline.kernel_times(found, target, args.precision)
    breakdown = profile.summarise(times, {}, profile.hlo_ops(text)[1], steps=1, top=args.top)
    return totals, breakdown


def _write_breakdown(out: Path, label: str, title: str, breakdown: dict) -> None:
    from smilejax.xla import profile

    (out / f"roofline-{label}.json").write_text(json.dumps({"label": title, **breakdown}, indent=2) + "\n")
    intro = "Each kernel's roofline bound in ms per step, and its share of the step's bound."
    text = profile.summary_markdown(f"Roofline bound of one step: {title}", intro, breakdown)
    (out / f"roofline-{label}.md").write_text(text)


def study(args: argparse.Namespace) -> int:
    from jax.experimental import topologies

    from smilejax import mesh as meshlib
    from smilejax import registry, steps
    from smilejax.bench import _train_jax, common
    from smilejax.bench._target import load_config
    from smilejax.bench.train_step import plot
    from smilejax.inputs import packing
    from smilejax.xla import roofline as _roofline

    if args.batch is not None and args.batch < 1:
        raise SystemExit("--batch must be at least 1")
    # The step's config has a synthetic data section: overrides of the config's own data format's fields
    # (data.pack_row_multiple, read by the packed rows) are checked against that format instead.
    own = _packed_cases.own_data_overrides(args.overrides)
    if own:
        _packed_cases.data_config(args.model, args.overrides)
    cfg = load_config(args.model, [o for o in args.overrides if o not in own])
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision=args.precision))
    spec = registry.model(cfg.model.name)
    target = _roofline.TARGETS[args.target]
    topology = topologies.get_topology_desc(
        platform="cuda", topology_name=args.target, target_config=target.target_config(), topology="1x1x1"
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, failed = [], 0
    for variant, labels in _train_jax.variants(cfg, args):
        settings = {"attention": getattr(variant.model, "attention", None), **labels}
        padded, cases = _cases(variant, spec, args)
        # One program per variant, as bench train builds it: each set length only retraces its step.
        program = steps.build(spec, padded, meshlib.build_mesh(variant.mesh, devices=topology.devices))
        for columns, host in cases:
            row = {"impl": "jax", "mode": "bound", "target": args.target, **settings, **columns}
            row.update(_packed_cases.padding_columns(host))
            label = _train_jax.row_label(variant, labels, *_shape_label(columns))
            log.info("roofline %s: compiling for %s", label, target.description)
            try:
                totals, breakdown = _bound_case(program, host, target, args)
            except Exception as err:  # cuDNN refusing a shape, say: the other rows still count
                log.exception("roofline %s failed", label)
                rows.append({**row, "note": f"failed: {type(err).__name__}: {str(err)[:160]}"})
                failed += 1
                continue
            samples = packing.examples(host)  # jets, not packed rows
            rows.append({**row, **totals, "samples_per_s_bound": samples / (totals["bound_ms"] / 1e3)})
            _write_breakdown(out, label, f"{label} on {target.description}", breakdown)
    _add_ratios(rows, ["tracks", "padding", "jets_per_row", "elements", "events"])
    varied = _train_jax.varied_columns(args)
    present = [c for c in COLUMNS if any(r.get(c) is not None for r in rows)]
    columns = present[:2] + varied + present[2:]
    extra = {"model": cfg.model.name, "target": dataclasses.asdict(target), "precision": args.precision}
    path = common.write_results(out, "roofline", rows, columns=columns, extra=extra)
    plot(
        rows,
        path.with_suffix(".png"),
        f"{cfg.model.name} on {target.description} (bound, not measured), {args.precision}",
        value="samples_per_s_bound",
        label=lambda r: (
            " ".join(str(r[k]) for k in ("attention", *varied) if r.get(k) is not None)
            + "\n"
            + " ".join(str(v) for v in _shape_label(r))
        ),
        ylabel="samples / s at the roofline bound",
    )
    return 1 if failed else 0


def _shape_label(columns: dict[str, Any]) -> list[object]:
    """A row's shape in its file name: ``24``, ``packed64x16``, ``256-128``."""
    if columns.get("padding") == "packed":
        return [f"packed{columns['tracks']}x{columns['jets_per_row']}"]
    return [columns[k] for k in ("tracks", "elements", "events") if columns.get(k) is not None]


def _add_ratios(rows: list[dict], shape_keys: list[str]) -> None:
    """``vs_first``: the first row of the same shape's bound over this row's (> 1: a lower bound)."""
    first: dict[tuple, float] = {}
    for r in rows:
        if r.get("bound_ms"):
            key = tuple(r.get(k) for k in shape_keys)
            base = first.setdefault(key, r["bound_ms"])
            r["vs_first"] = base / r["bound_ms"]


def _main() -> int:
    from smilejax import cli

    request = json.loads(os.environ.pop(_CHILD_ARGS))
    sys.argv = ["smilejax", *request["argv"]]  # the results record the command as typed
    return cli.dispatch(argparse.Namespace(**request["options"], run=study))


if __name__ == "__main__":
    sys.exit(_main())
