"""``smilejax bench parallel MODEL``: the same training steps under each parallel strategy and device count.

Strategies are mesh shapes of the one train step (``smilejax/steps.py``):

===============  ==========================================  ==========================================
strategy         overrides on n devices                      what moves between devices
===============  ==========================================  ==========================================
``dp-jit``       ``mesh.data=n train.parallel=jit``          gradient all-reduce inserted by XLA
``dp-shardmap``  ``mesh.data=n train.parallel=shard_map``    ``lax.pmean`` of per-device loss/gradients
``fsdp``         ``mesh.data=1 mesh.fsdp=n``                 parameters gathered, gradients reduced
``tensor``       ``mesh.tensor=T mesh.data=n/T`` (T=2)       activations inside a layer + data axis
===============  ==========================================  ==========================================

Every cell trains from the same initial parameters on the same synthetic global batches, so at a given
device count all strategies must reach the same loss (checked; exit code 1 when they do not). Weak
scaling (default) keeps ``--per-device-batch``; ``--global-batch`` keeps the global batch (strong
scaling). Each cell reports step time, samples/s, efficiency against one device, the compiled step's
memory per device, and the bytes its collectives move (``smilejax.xla.hlo_stats``). A scaling model
(``_parallel_report.predict``) then predicts weak scaling from 1 to 64 Perlmutter-like nodes, from a
compute time that is measured (a GPU study's own step, or ``--step-ms`` from elsewhere) or stated
(``--mfu``); on a CPU without either it predicts nothing, since a CPU step says nothing of a GPU's.

Under ``srun`` (or any launcher ``smilejax.runtime`` knows) the same command measures the cross-process
path: device counts must be multiples of the process count, and process 0 writes the results.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from smilejax.bench import _parallel_report as report
from smilejax.commands.common import add_command, int_list

log = logging.getLogger(__name__)

STRATEGIES = ("dp-jit", "dp-shardmap", "fsdp", "tensor")


# ---------------------------------------------------------------- command line


def register(sub) -> None:
    parser = add_command(
        sub,
        "parallel",
        help="data parallel (jit vs shard_map), FSDP and tensor parallel: speed, memory, communication",
        description=__doc__,
    )
    parser.add_argument(
        "config",
        metavar="MODEL",
        nargs="?",
        help="packaged config name (see `smilejax train --help`) or YAML file",
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. model.layers=2"
    )
    parser.add_argument(
        "--strategies",
        default="dp-jit,dp-shardmap,fsdp",
        help=f"comma-separated, from {', '.join(STRATEGIES)} (default: %(default)s)",
    )
    parser.add_argument(
        "--devices", type=int_list(1), help="device counts, e.g. 1,2,4,8 (default: powers of two up to all)"
    )
    batch = parser.add_mutually_exclusive_group()
    batch.add_argument("--per-device-batch", type=int, default=16, help="weak scaling (default: %(default)s)")
    batch.add_argument("--global-batch", type=int, help="strong scaling: the same global batch everywhere")
    parser.add_argument("--tensor", type=int, default=2, help="tensor axis size of 'tensor' (default: 2)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per cell (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: %(default)s)")
    parser.add_argument(
        "--loss-rtol",
        type=float,
        help="allowed relative loss difference between strategies (default: 1e-4 fp32, 2e-2 bf16)",
    )
    parser.add_argument("--out", default="bench-results", help="results folder (default: %(default)s)")
    parser.add_argument(
        "--from-results",
        metavar="PARALLEL_JSON",
        help="measure nothing: rerun only the scaling model on a saved parallel.json (other assumptions)",
    )

    model = parser.add_argument_group("scaling model (defaults: Perlmutter GPU nodes, see docs/SCALING.md)")
    model.add_argument("--nodes", type=int_list(1), default=[1, 2, 4, 8, 16, 32, 64])
    model.add_argument(
        "--collectives-from",
        metavar="PARALLEL_JSON",
        help="take each strategy's collectives from another study's largest cell (e.g. an 8-device run "
        "when this one measures a single GPU)",
    )
    model.add_argument("--model-batch", type=int, help="per-GPU batch to predict (default: the measured one)")
    model.add_argument(
        "--step-ms",
        type=float,
        help="t_compute from a GPU step measured elsewhere: its ms per step at --step-batch per GPU "
        "(e.g. docs/PERFORMANCE.md's H100 steps); overrides --compute",
    )
    model.add_argument("--step-batch", type=int, help="per-GPU batch of the --step-ms step")
    model.add_argument(
        "--compute",
        choices=("auto", "measured", "flops"),
        default="auto",
        help="t_compute from the measured 1-device step, or from its FLOPs / (peak × --mfu); "
        "auto: measured on GPUs, flops elsewhere (default: %(default)s)",
    )
    model.add_argument("--peak-tflops", type=float, default=312.0, help="per GPU (A100 bf16 dense: 312)")
    model.add_argument(
        "--mfu",
        type=float,
        help="assumed model FLOPs utilisation for --compute flops (no default: an assumption is stated)",
    )
    model.add_argument("--gpus-per-node", type=int, default=4)
    model.add_argument("--nic-gbs", type=float, default=25.0, help="GB/s per GPU's NIC (Slingshot-11: 25)")
    model.add_argument("--intra-gbs", type=float, default=100.0, help="GB/s between GPUs of a node (NVLink)")
    model.add_argument(
        "--link-efficiency", type=float, default=0.8, help="fraction of peak bandwidth reached"
    )
    model.add_argument("--alpha-intra-us", type=float, default=2.0, help="latency per ring step in a node")
    model.add_argument(
        "--alpha-inter-us", type=float, default=5.0, help="latency per ring step between nodes"
    )
    model.add_argument("--overlap", type=float, default=0.0, help="fraction of communication hidden (0-1)")
    model.add_argument(
        "--train-samples",
        type=float,
        help="samples one training sees (epochs × training set; salt's GN2 recipe: 40 × 302.75M = "
        "1.211e10): adds its predicted hours at each node count (step time only; docs/PERFORMANCE.md, "
        "'GN2: weeks to hours')",
    )
    parser.set_defaults(run=run)


# ---------------------------------------------------------------- plan


def parse_strategies(text: str) -> list[str]:
    from smilejax.config import ConfigError

    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in STRATEGIES]
    if unknown or not names:
        import difflib

        close = difflib.get_close_matches(unknown[0], STRATEGIES, n=1) if unknown else []
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"--strategies: unknown strategy {unknown[0] if unknown else text!r}{hint}; "
            f"choose from {', '.join(STRATEGIES)}"
        )
    return list(dict.fromkeys(names))


def strategy_overrides(strategy: str, n: int, tensor: int) -> list[str] | None:
    """Config overrides that make ``strategy`` on ``n`` devices; None when it cannot use ``n``."""
    if strategy == "tensor":
        if n < tensor or n % tensor:
            return None
        return [f"mesh.data={n // tensor}", "mesh.fsdp=1", f"mesh.tensor={tensor}", "train.parallel=jit"]
    data, fsdp = (1, n) if strategy == "fsdp" else (n, 1)
    parallel = "shard_map" if strategy == "dp-shardmap" else "jit"
    return [f"mesh.data={data}", f"mesh.fsdp={fsdp}", "mesh.tensor=1", f"train.parallel={parallel}"]


def _check_args(args: argparse.Namespace) -> None:
    from smilejax.config import ConfigError

    for name in ("steps", "per_device_batch", "tensor", "model_batch", "global_batch"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.warmup < 0:
        raise ConfigError(f"--warmup must be at least 0, got {args.warmup}")
    if not 0 <= args.overlap <= 1:
        raise ConfigError(f"--overlap is a fraction between 0 and 1, got {args.overlap}")
    if (args.step_ms is None) != (args.step_batch is None):
        raise ConfigError("--step-ms and --step-batch go together: a step time and the batch it ran")
    for name in ("step_ms", "step_batch", "mfu"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {value}")


# ---------------------------------------------------------------- run


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    if args.from_results:
        return _model_only(args)
    if not args.config:
        from smilejax import registry
        from smilejax.config import ConfigError

        known = ", ".join(registry.configs()) or "none installed"
        raise ConfigError(f"MODEL is missing: a packaged config name ({known}), or a YAML file")
    if args.collectives_from:
        report.read_results(args.collectives_from, "--collectives-from")  # fail before measuring, not after
    strategies = parse_strategies(args.strategies)

    from smilejax import runtime

    runtime.initialize()  # before anything touches devices: srun / mpiexec start jax.distributed here

    import jax
    import numpy as np
    from tqdm import tqdm

    from smilejax import registry
    from smilejax.bench import _parallel_measure as measure
    from smilejax.bench import _synthetic
    from smilejax.bench._target import load_config
    from smilejax.config import ConfigError

    lead = jax.process_index() == 0
    procs = jax.process_count()
    devices = args.devices or [2**k for k in range(16) if 2**k <= jax.device_count() and 2**k % procs == 0]
    measure.check_devices(devices)
    base_cfg = load_config(args.config, args.overrides)
    spec = registry.model(base_cfg.model.name)
    precision = base_cfg.train.precision
    rtol = args.loss_rtol if args.loss_rtol is not None else (1e-4 if precision == "fp32" else 2e-2)
    total_steps = args.warmup + args.steps

    plan, skipped = _plan(args, devices, strategies)

    batches: dict[int, list[dict[str, np.ndarray]]] = {}
    done: dict[tuple, dict[str, Any]] = {}  # on one device fsdp is dp-jit's very program: measure it once
    rows: list[dict[str, Any]] = []
    bar = tqdm(plan, desc="bench parallel", unit="cell", disable=not lead, dynamic_ncols=True)
    for s, n, extra in bar:
        bar.set_postfix(strategy=s, devices=n)
        gb = args.global_batch or args.per_device_batch * n
        if (tuple(extra), gb) in done:
            rows.append({**done[tuple(extra), gb], "strategy": s})
            continue
        cfg = load_config(
            args.config,
            [
                *args.overrides,
                *extra,
                f"data.batch_size={gb}",
                f"run.steps={total_steps}",
                "logging.progress=false",
            ],
        )
        if gb not in batches:  # the same global batches for every strategy at this size
            seed = cfg.run.seed
            batches[gb] = [
                _synthetic.batch(spec, cfg.model, gb, seed=seed * 7919 + i) for i in range(total_steps)
            ]
        result = measure.measure(spec, cfg, n, batches[gb], warmup=args.warmup)
        rows.append(_row(s, n, procs, gb, result))
        done[tuple(extra), gb] = rows[-1]
    bar.close()

    _add_efficiency(rows)
    worst = _add_loss_agreement(rows)
    model = report.predict(args, rows, jax.devices()[0].platform)
    if lead:
        report.write_measured(args, rows, skipped, precision)
        if model is None:
            log.warning("no scaling model: %s", report.NO_COMPUTE)
        else:
            report.write_model(args, *model)
    return _agreement(worst, rtol)


def _plan(args: argparse.Namespace, devices: list[int], strategies: list[str]) -> tuple[list, list]:
    """The cells to measure, (strategy, devices, overrides), and those skipped; every cell is checked
    before any compiles."""
    from smilejax.config import ConfigError

    plan, skipped = [], []
    for n in devices:
        for s in strategies:
            extra = strategy_overrides(s, n, args.tensor)
            (plan if extra is not None else skipped).append((s, n, extra))
    if not plan:
        raise ConfigError("nothing to measure: no strategy fits the requested device counts")
    for s, n, _ in plan:  # strong scaling: check every cell before compiling any
        split = n // args.tensor if s == "tensor" else n  # devices the batch is split over
        if args.global_batch and args.global_batch % split:
            raise ConfigError(
                f"--global-batch {args.global_batch} does not split over the {split} batch-sharded "
                f"devices of {s} on {n} devices; choose a multiple of {split}"
            )
    for s, n, _ in skipped:
        log.warning(
            "skipping %s on %d device(s): it needs a multiple of --tensor=%d devices", s, n, args.tensor
        )
    return plan, skipped


def _agreement(worst: dict[str, Any], rtol: float) -> int:
    """The exit code: 1, with why, when the strategies' losses disagree beyond ``rtol``."""
    if worst["rel_diff"] > rtol:
        log.error(
            "losses disagree: %s on %d devices reached %.6g, %s reached %.6g (relative %.2g > %.2g)",
            worst["strategy"],
            worst["devices"],
            worst["loss"],
            worst["reference"],
            worst["reference_loss"],
            worst["rel_diff"],
            rtol,
        )
        if worst["strategy"] == "dp-shardmap":
            log.error(
                "dp-shardmap averages per-device losses (pmean), as PyTorch DDP does: a loss normalised by "
                "per-device counts (a mean over valid tracks or pairs) then differs from the global-batch "
                "loss that dp-jit minimises; a loss that is a plain mean over examples agrees exactly"
            )
        return 1
    log.info(
        "losses agree across strategies: largest relative difference %.2g (tolerance %.2g)",
        worst["rel_diff"],
        rtol,
    )
    return 0


def _row(strategy: str, n: int, procs: int, global_batch: int, r: dict[str, Any]) -> dict[str, Any]:
    mib = 2**20
    return {
        "strategy": strategy,
        "devices": n,
        "processes": procs,
        "mesh": r["mesh"],
        "global_batch": global_batch,
        "per_device_batch": global_batch / n,
        "step_ms": r["step_s"] * 1e3,
        "samples_per_s": global_batch / r["step_s"],
        "mem_MiB": r.get("total_bytes", 0) / mib,
        "mem_args_MiB": r.get("argument_bytes", 0) / mib,
        "mem_temp_MiB": r.get("temp_bytes", 0) / mib,
        "comm_MB": r["comm_bytes"] / 1e6,
        "wire_MB": r["wire_bytes"] / 1e6,
        **{k: v for k, v in r.items() if k not in ("step_s", "mesh")},
    }


def _add_efficiency(rows: list[dict[str, Any]]) -> None:
    """Per-device throughput against the baseline: the strategy's own smallest device count, or
    dp-jit's where that is smaller (tensor parallel cannot run on one device)."""
    for row in rows:
        own = [r for r in rows if r["strategy"] == row["strategy"]]
        dp = [r for r in rows if r["strategy"] == "dp-jit"]
        base = min(
            own + [r for r in dp if r["devices"] < min(o["devices"] for o in own)], key=lambda r: r["devices"]
        )
        row["baseline"] = f"{base['strategy']}@{base['devices']}"
        row["efficiency"] = (row["samples_per_s"] / row["devices"]) / (
            base["samples_per_s"] / base["devices"]
        )


def _add_loss_agreement(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Relative loss difference of every cell against the first strategy measured at the same device
    count; returns the worst cell."""
    worst = {"rel_diff": 0.0}
    for row in rows:
        ref = next(r for r in rows if r["devices"] == row["devices"])
        diff = abs(row["loss"] - ref["loss"]) / max(abs(ref["loss"]), 1e-12)
        row["loss_rel_diff"] = diff
        if diff >= worst["rel_diff"]:
            worst = {
                "rel_diff": diff,
                "strategy": row["strategy"],
                "devices": row["devices"],
                "loss": row["loss"],
                "reference": ref["strategy"],
                "reference_loss": ref["loss"],
            }
    return worst


# ---------------------------------------------------------------- scaling model


# ---------------------------------------------------------------- output


def _model_only(args: argparse.Namespace) -> int:
    """``--from-results``: the scaling model on saved measurements, with this command's assumptions."""
    from smilejax.config import ConfigError

    rows, platform = report.read_results(args.from_results, "--from-results")
    model = report.predict(args, rows, platform)
    if model is None:
        raise ConfigError(f"--from-results {args.from_results}: {report.NO_COMPUTE}")
    model_rows, assumptions = model
    report.write_model(args, model_rows, {**assumptions, "measurements": args.from_results})
    return 0
