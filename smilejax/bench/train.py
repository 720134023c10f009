"""``smilejax bench train MODEL``: speed of one training step, padded and bucketed, against PyTorch.

The model's real ``Program`` (``steps.build``: sharded state, jitted step, optimizer) trains on a
synthetic batch that already sits on the devices (``input_spec`` shapes plus the model's labels, see
``_models.py``), so the numbers are the step alone: no input pipeline. Each set length (the padded one
and every ``--bucket``) is compiled ahead of time, warmed up, and timed over ``--steps`` steps per
repeat (``block_until_ready`` at the end of each repeat; the median repeat counts). The model's PyTorch
peer, when it has one and ``--torch-python`` names an interpreter with torch, first trains the same
shapes in a subprocess (eager and ``torch.compile``, bf16 autocast) and returns JSON; every row is then also
given as a ratio to PyTorch eager at the padded length, measured in the same run.
"""

from __future__ import annotations

import argparse
import logging
import os

from smilejax.commands.common import OVERRIDES_HELP

log = logging.getLogger(__name__)

COLUMNS = [
    "impl",
    "mode",
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
    parser = sub.add_parser(
        "train",
        help="training-step speed: padded vs bucketed set lengths, vs PyTorch eager and compiled",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL", help="packaged config (gn2), YAML config, or model name")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)
    parser.add_argument("--batch", type=int, default=4000, help="global batch (default 4000)")
    parser.add_argument("--tracks", type=int, help="padded set length (default: the model config's)")
    parser.add_argument(
        "--bucket",
        type=int,
        nargs="+",
        action="extend",
        default=[],
        help="bucket lengths to time too (KEY=VALUE overrides go before the options)",
    )
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per repeat (default 50)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats; the median counts")
    parser.add_argument(
        "--torch-python", metavar="PATH", help="interpreter with torch for the PyTorch peer (default: skip)"
    )
    parser.add_argument("--torch-modes", default="eager,compile", help="PyTorch modes (eager,compile)")
    parser.add_argument("--out", default="bench-results/train", help="folder for JSON, table and plot")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from smilejax.bench import _train_jax, _train_torch, common
    from smilejax.bench._target import load_config

    if args.batch < 1 or args.steps < 1 or args.repeats < 1:
        raise SystemExit("--batch, --steps and --repeats must be at least 1")
    cfg = load_config(args.model, args.overrides)
    _, padded, widths = _train_jax.lengths(cfg, args)
    peer = _train_torch.run_peer(cfg, args, widths)  # first: the accelerator is PyTorch's alone
    measured = _train_jax.measure(cfg, args)
    torch_rows, torch_info = _train_torch.rows(peer, args, padded, measured.params, measured.flops)
    rows = measured.rows + torch_rows
    _train_jax.add_ratios(rows)
    extra = {"model": cfg.model.name, "params": measured.params, "batch": args.batch, **torch_info}
    path = common.write_results(args.out, "train", rows, columns=COLUMNS, extra=extra)
    _plot(rows, path.with_suffix(".png"), f"{cfg.model.name}, batch {args.batch}, {args.precision}")
    return 1 if peer.failed else 0


def _plot(rows: list[dict], path: os.PathLike, title: str) -> None:
    try:
        import matplotlib
    except ImportError:  # a bare GPU node: the JSON and the table are written already
        log.warning("matplotlib is not installed: no plot %s", path)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r.get("samples_per_s")]
    labels = [f"{r['impl']} {r['mode']}\n{r['tracks']} {'tracks' if r['tracks'] else ''}" for r in done]
    colors = {"jax": "tab:blue", "torch": "tab:orange"}
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(done)), 4))
    bars = ax.bar(labels, [r["samples_per_s"] for r in done], color=[colors[r["impl"]] for r in done])
    ax.bar_label(bars, labels=[f"{r['samples_per_s']:.3g}" for r in done], fontsize=8)
    ax.set_ylabel("samples / s (one training step)")
    ax.set_title(title)
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
