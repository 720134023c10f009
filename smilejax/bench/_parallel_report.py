"""The scaling prediction of ``bench parallel`` (``predict``) and what it writes: the measured and the
predicted tables (``parallel``, ``parallel_scaling_model``), the notes under the prediction, the plots,
and reading a saved ``parallel.json`` back (``--from-results``, ``--collectives-from``)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from smilejax import plotting

log = logging.getLogger(__name__)

STUDY = "parallel"
MODEL_STUDY = "parallel_scaling_model"
COLUMNS = [
    "strategy",
    "devices",
    "processes",
    "mesh",
    "global_batch",
    "step_ms",
    "samples_per_s",
    "efficiency",
    "mem_MiB",
    "comm_MB",
    "wire_MB",
    "collectives",
    "loss",
    "loss_rel_diff",
]
MODEL_COLUMNS = [
    "strategy",
    "nodes",
    "gpus",
    "t_compute_ms",
    "t_comm_ms",
    "t_step_ms",
    "samples_per_s",
    "eff_vs_1node",
    "eff_vs_1gpu",
]


NO_COMPUTE = (
    "no compute time to model: a CPU step says nothing of a GPU's; give --step-ms and --step-batch (a GPU "
    "step measured elsewhere) or --mfu (an assumed utilisation of --peak-tflops)"
)


def _compute_time(
    args: argparse.Namespace, base: dict[str, Any], platform: str, batch: int
) -> tuple[float, str] | None:
    """Seconds of compute per GPU step at ``batch`` per GPU, and what that rests on; None when nothing
    measured or stated gives it (a CPU study without --step-ms or --mfu)."""
    proportional = "assumed proportional to the batch"
    if args.step_ms is not None:
        scale = batch / args.step_batch
        return args.step_ms / 1e3 * scale, (
            f"given: {args.step_ms:g} ms per step at {args.step_batch} per GPU (--step-ms, measured "
            f"elsewhere) × {scale:g} ({proportional})"
        )
    scale = batch / base["per_device_batch"]
    if args.compute == "measured" or (args.compute == "auto" and platform == "gpu"):
        return base["step_ms"] / 1e3 * scale, (
            f"measured step of {base['strategy']} on {base['devices']} device(s) ({platform}), "
            f"{base['step_ms']:.4g} ms at {base['per_device_batch']} per device, × {scale:g} ({proportional})"
        )
    if args.mfu is None or not base.get("flops"):  # no assumption stated, or no cost analysis
        return None
    return base["flops"] * scale / (args.peak_tflops * 1e12 * args.mfu), (
        f"{base['flops']:.4g} FLOPs per device per step (XLA cost analysis, {base['strategy']} on "
        f"{base['devices']} device(s)) × {scale:g} / ({args.peak_tflops:g} TFLOP/s × MFU {args.mfu:g}, "
        "both assumed)"
    )


def predict(
    args: argparse.Namespace, rows: list[dict[str, Any]], platform: str
) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
    """The predicted rows and their assumptions; None without a compute time (``_compute_time``)."""
    from smilejax.bench import _scaling_model
    from smilejax.bench._parallel_measure import expand
    from smilejax.xla import hlo_stats

    net = _scaling_model.Network(
        gpus_per_node=args.gpus_per_node,
        nic_gbs=args.nic_gbs,
        intra_gbs=args.intra_gbs,
        efficiency=args.link_efficiency,
        alpha_intra_us=args.alpha_intra_us,
        alpha_inter_us=args.alpha_inter_us,
        overlap=args.overlap,
    )
    base = min(rows, key=lambda r: (r["devices"], r["strategy"] != "dp-jit"))
    batch = args.model_batch or int(args.step_batch or base["per_device_batch"])
    compute = _compute_time(args, base, platform, batch)
    if compute is None:
        return None
    t_compute, source = compute

    comm_rows, where = rows, ""
    if args.collectives_from:
        comm_rows, _ = read_results(args.collectives_from, "--collectives-from")
        where = f" of {args.collectives_from}"
    out, sources = [], {}
    for strategy in dict.fromkeys(r["strategy"] for r in comm_rows):
        largest = max((r for r in comm_rows if r["strategy"] == strategy), key=lambda r: r["devices"])
        if largest["devices"] > 1:
            ops = expand(largest["ops"])
            sources[strategy] = (
                f"collectives of the {largest['devices']}-device cell{where} ({largest['mesh']})"
            )
        elif strategy == "dp-jit":  # one device measured: the gradient all-reduce of data parallelism
            grad_bytes = 4 * largest["param_count"]
            ops = [hlo_stats.Collective("all-reduce", grad_bytes, 2, ("data",))]
            sources[strategy] = f"one all-reduce of the fp32 gradients ({grad_bytes / 1e6:.3g} MB), assumed"
        else:
            continue
        for r in _scaling_model.predict(
            ops,
            t_compute=t_compute,
            per_gpu_batch=batch,
            net=net,
            nodes=args.nodes,
        ):
            if args.train_samples:  # one training's hours at this rate (a projection: step time only)
                r["train_hours"] = args.train_samples / r["samples_per_s"] / 3600
            out.append({"strategy": strategy, **r})
    assumptions = {
        "network": net.describe(),
        "per_gpu_batch": batch,
        "t_compute_s": t_compute,
        "t_compute_source": source,
        "collectives_source": sources,
        "model": "t_step = t_compute + (1 - overlap) * t_comm; see smilejax/bench/_scaling_model.py",
    }
    if args.train_samples:
        assumptions["train_samples"] = args.train_samples
    return out, assumptions


def read_results(path: str, flag: str) -> tuple[list[dict[str, Any]], str]:
    """The rows and platform of a saved ``parallel.json``."""
    import json

    from smilejax.config import ConfigError

    try:
        saved = json.loads(Path(path).read_text())
        rows, platform = saved["rows"], saved["machine"]["platform"]
    except FileNotFoundError:
        raise ConfigError(f"{flag} {path}: no such file") from None
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{flag} {path}: not a parallel.json of this study ({err})") from None
    if saved.get("study") != STUDY or not rows:
        raise ConfigError(f"{flag} {path}: not a parallel.json of this study, or it has no rows")
    return rows, platform


def write_measured(
    args: argparse.Namespace, rows: list[dict[str, Any]], skipped: list, precision: str
) -> None:
    from smilejax.bench import common

    out = Path(args.out)
    weak = args.global_batch is None
    extra = {
        "scaling": "weak (fixed per-device batch)" if weak else "strong (fixed global batch)",
        "precision": precision,
        "steps": args.steps,
        "warmup": args.warmup,
        "skipped": [f"{s}@{n}" for s, n, _ in skipped],
    }
    common.write_results(out, STUDY, rows, columns=COLUMNS, extra=extra)
    _plot(_plot_measured, out / f"{STUDY}.png", rows, extra["scaling"])


def write_model(
    args: argparse.Namespace, model_rows: list[dict[str, Any]], assumptions: dict[str, Any]
) -> None:
    from smilejax.bench import common

    out = Path(args.out)
    common.write_results(
        out,
        MODEL_STUDY,
        model_rows,
        columns=MODEL_COLUMNS + (["train_hours"] if "train_samples" in assumptions else []),
        extra={"assumptions": assumptions},
        notes=model_notes(assumptions),
    )
    _plot(_plot_model, out / f"{MODEL_STUDY}.png", model_rows, assumptions)
    a = assumptions
    sixteen = [r for r in model_rows if r["nodes"] == 16]
    for r in sixteen:
        log.info(
            "predicted weak-scaling efficiency 1 -> 16 nodes, %s: %.1f%%",
            r["strategy"],
            100 * r["eff_vs_1node"],
        )
    log.info(
        "t_compute %.3g ms per step at %d per GPU (%s)",
        a["t_compute_s"] * 1e3,
        a["per_gpu_batch"],
        a["t_compute_source"],
    )


def model_notes(assumptions: dict[str, Any]) -> list[str]:
    """What a predicted row rests on, written under the table: every number that was not measured."""
    a, net = assumptions, assumptions["network"]
    collectives = "; ".join(f"{s}: {source}" for s, source in a["collectives_source"].items())
    notes = [
        "Predicted, not measured: t_step = t_compute + (1 - overlap) × t_comm, weak scaling "
        "(smilejax/bench/_scaling_model.py).",
        f"t_compute: {a['t_compute_s'] * 1e3:.4g} ms per step at {a['per_gpu_batch']} per GPU; "
        f"{a['t_compute_source']}.",
        f"Network (assumed): {net['gpus_per_node']} GPUs per node, {net['nic_gbs']:g} GB/s NIC per GPU, "
        f"{net['intra_gbs']:g} GB/s between GPUs of a node, {net['efficiency']:g} of link peak reached, "
        f"{net['alpha_intra_us']:g} µs per ring step in a node and {net['alpha_inter_us']:g} µs between "
        f"nodes, {net['overlap']:g} of communication hidden behind compute.",
        f"Collectives per step: {collectives}.",
    ]
    if "train_samples" in a:
        notes.append(
            f"train_hours: {a['train_samples']:.4g} samples (one training) over samples_per_s; step time "
            "only: no validation, input stalls, compilation or job start."
        )
    return notes


def _plot(draw, path: Path, *data) -> None:
    plt = plotting.pyplot(path)  # a bare GPU box may lack matplotlib
    if plt is not None:
        draw(plt, path, *data)


def _plot_measured(plt, path: Path, rows: list[dict[str, Any]], scaling: str) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        mine = sorted((r for r in rows if r["strategy"] == strategy), key=lambda r: r["devices"])
        x = [r["devices"] for r in mine]
        left.plot(x, [r["samples_per_s"] for r in mine], marker="o", label=strategy)
        right.plot(x, [r["efficiency"] for r in mine], marker="o", label=strategy)
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("devices")
        ax.grid(alpha=0.3)
    left.set_ylabel("samples / s")
    right.set_ylabel("efficiency vs baseline (per device)")
    right.axhline(1.0, color="grey", lw=0.8)
    left.legend()
    fig.suptitle(f"smilejax bench parallel: {scaling}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_model(plt, path: Path, rows: list[dict[str, Any]], assumptions: dict[str, Any]) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        mine = [r for r in rows if r["strategy"] == strategy]
        ax.plot(
            [r["nodes"] for r in mine], [100 * r["eff_vs_1node"] for r in mine], marker="o", label=strategy
        )
    ax.axhline(90, color="red", ls="--", lw=0.8, label="target 90% at 16 nodes")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("nodes")
    ax.set_ylabel("predicted weak-scaling efficiency vs 1 node (%)")
    net = assumptions["network"]
    ax.set_title(
        f"{net['gpus_per_node']} GPUs/node, NIC {net['nic_gbs']:g} GB/s/GPU, "
        f"intra-node {net['intra_gbs']:g} GB/s, overlap {net['overlap']:g}, "
        f"batch {assumptions['per_gpu_batch']}/GPU",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
