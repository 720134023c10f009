"""``smilejax bench train MODEL``: speed of one training step, padded and bucketed, against PyTorch.

The model's real ``Program`` (``steps.build``: sharded state, jitted step, optimizer) trains on a
synthetic batch that already sits on the devices (``input_spec`` shapes plus the family's
``synthetic_labels``), so the numbers are the step alone: no input pipeline. Each set length (the padded
one and every ``--bucket``; the family's ``bench.length_field``) is compiled ahead of time, warmed up,
and timed over ``--steps`` steps per repeat (``block_until_ready`` at the end of each repeat; the median
repeat counts). The family's PyTorch peer (``bench.torch_peer``), when it has one and ``--torch-python``
names an interpreter with torch, first trains the same shapes in a subprocess (eager and
``torch.compile``, bf16 autocast) and returns JSON; every row is then also given as a ratio to PyTorch
eager at the padded length, measured in the same run.

A family with a study of its own (``bench.study``: its shapes, its own reference) runs that instead;
its options are listed here once MODEL names it (``smilejax bench train MODEL --help``).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
from collections.abc import Callable

from smilejax import plotting
from smilejax.commands.common import OVERRIDES_HELP, add_command

log = logging.getLogger(__name__)

COLUMNS = [
    "impl",
    "mode",
    "attention",
    "tracks",
    "padding",
    "ms_per_step",
    "samples_per_s",
    "vs_padded",
    "vs_torch_eager",
    "mfu",
    "peak_mem_gb",
    "note",
]


def register(sub) -> None:
    parser = add_command(
        sub,
        "train",
        help="training-step speed: padded vs bucketed set lengths, vs PyTorch eager and compiled",
        description=__doc__,
    )
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="packaged config (see `smilejax train --help`), YAML config, or model name",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)
    parser.add_argument("--batch", type=int, help="global batch (default 4000)")
    parser.add_argument("--tracks", type=int, help="padded set length (default: the model config's)")
    parser.add_argument(
        "--bucket",
        type=int,
        nargs="+",
        action="extend",
        default=[],
        help="bucket lengths to time too",
    )
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per repeat (default 50)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats; the median counts")
    parser.add_argument(
        "--torch-python",
        metavar="PATH",
        help="interpreter with torch for the PyTorch peer (default: skip)",
    )
    parser.add_argument("--torch-modes", help="PyTorch modes (default eager,compile)")
    parser.add_argument(
        "--out",
        help="folder for JSON, table and plot (default bench-results/train; a family study's: "
        "bench-results/train-MODEL)",
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="after timing, run N more steps of every JAX row, trace N after them, and write where the "
        "device time goes "
        "(profile-*.md/.png: by kind of op, by model scope and pass, costliest ops; the trace opens in "
        "XProf); default 0: no trace",
    )
    parser.add_argument(
        "--attention",
        help="JAX attention implementations to time, comma-separated: math, chunked, cudnn "
        "(default: the model config's)",
    )
    parser.add_argument(
        "--vary",
        action="append",
        metavar="KEY=V1,V2",
        help="time every value of a config field, one row each (repeatable; every combination, with "
        "--attention too), e.g. --vary model.remat=false,true",
    )
    parser.set_defaults(run=run, extend=_extend)


def _extend(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    from smilejax.bench import _target

    _target.extend_with_study(parser, argv)


def run(args: argparse.Namespace) -> int:
    from smilejax.bench import _target, _train_jax, _train_torch, common

    if (args.batch is not None and args.batch < 1) or args.steps < 1 or args.repeats < 1:
        raise SystemExit("--batch, --steps and --repeats must be at least 1")
    if args.profile < 0:
        raise SystemExit("--profile must be 0 (no trace) or a number of steps")
    cfg = _target.load_config(args.model, args.overrides)
    study = _target.study(cfg.model.name)
    if study is not None:
        args.out = args.out or f"bench-results/train-{cfg.model.name}"
        return study.run(cfg, args)
    args.batch, args.out = args.batch or 4000, args.out or "bench-results/train"
    args.torch_modes = args.torch_modes or "eager,compile"
    field, padded, widths = _train_jax.lengths(cfg, args)
    peer = _train_torch.run_peer(cfg, args, widths)  # first: the accelerator is PyTorch's alone
    measured, failed = _train_jax.measure_variants(cfg, args)
    first = measured[0]
    torch_rows, torch_info = _train_torch.rows(peer, args, padded, first.params, first.flops)
    rows = [r for m in measured for r in m.rows] + failed + torch_rows
    varied = _train_jax.varied_columns(args)
    _train_jax.add_ratios(rows, varied)
    columns = COLUMNS[:3] + varied + COLUMNS[3:]
    extra = {"model": cfg.model.name, "params": first.params, "batch": args.batch, **torch_info}
    path = common.write_results(args.out, "train", rows, columns=columns, extra=extra)
    title = f"{cfg.model.name}, batch {args.batch}, {args.precision}"
    label = functools.partial(row_label, varied=varied, length=field)
    plot(rows, path.with_suffix(".png"), title, label=label)
    return 1 if peer.failed or failed else 0


def row_label(r: dict, varied: list[str] = (), length: str | None = None) -> str:
    """A bar's label: implementation and mode, the values of the varied fields (attention and
    ``--vary``), and the set length as ``FIELD=N`` (``length``: the config field)."""
    settings = "".join(f" {r[k]}" for k in ("attention", *varied) if r.get(k) is not None)
    size = f"{length or 'length'}={r['tracks']}" if r.get("tracks") is not None else ""
    return f"{r['impl']} {r['mode']}{settings}\n{size}"


def plot(
    rows: list[dict],
    path: os.PathLike,
    title: str,
    *,
    value: str = "samples_per_s",
    label: Callable[[dict], str] = row_label,
    ylabel: str = "samples / s (one training step)",
) -> None:
    """A bar per row that has ``value`` (JAX blue, PyTorch orange), named by ``label``; the family
    studies and ``bench roofline`` draw theirs with it too."""
    plt = plotting.pyplot(path)
    if plt is None:
        return

    done = [r for r in rows if r.get(value)]
    colors = {"jax": "tab:blue", "torch": "tab:orange"}  # impl "torch-eager" etc.: torch
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(done)), 4))
    bar_colors = [colors[r["impl"].split("-")[0]] for r in done]
    bars = ax.bar([label(r) for r in done], [r[value] for r in done], color=bar_colors)
    ax.bar_label(bars, labels=[f"{r[value]:.3g}" for r in done], fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
