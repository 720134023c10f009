"""``smilejax bench input CONFIG``: examples/s (``jets_per_s``: jets, events, ...) from data files to
device-ready global batches.

Runs the run's own input path: the data format's source and Grain pipeline (``make_inputs`` of
``smilejax train``, with the config's shuffling, block order and bucketing), then
``jax.make_array_from_process_local_data`` onto the mesh's batch sharding, for each combination of
``--threads`` (Grain read threads) and ``--workers`` (Grain worker processes). Every setting warms up
(its prefetch buffer fills), then ``--batches`` global batches are timed. Speeds are per process;
"per core" divides by the cores the setting may use (threads × max(workers, 1), at most the process's
CPUs), ``cpu_util`` is the
CPU time the process and its workers actually spent per second, and ``jets_per_cpu_s`` the jets per
CPU second they spent (robust to other load on the machine). ``est_16_cores`` extrapolates that
linearly to the 16 cores one GPU gets on a 4-GPU node (Perlmutter: 64 cores / 4 GPUs): an upper bound,
to be checked by the rows with more threads and workers.

With no ``--files`` and no ``data.path``, a synthetic set of ``--jets`` examples is made first (once, in
``OUT/data``) by the maker the model family declares (``smilejax data make NAME``); a family without
one reads its data format's own default set (what ``smilejax train`` reads with ``data.path`` null).
"""

from __future__ import annotations

import argparse
import logging

from smilejax import plotting
from smilejax.commands.common import OVERRIDES_HELP, add_command, int_list

log = logging.getLogger(__name__)

COLUMNS = [
    "threads",
    "workers",
    "cores",
    "jets_per_s",
    "jets_per_s_per_core",
    "vs_first",
    "cpu_util",
    "jets_per_cpu_s",
    "ms_per_batch",
    "tracks_mean",
    "padding",
    "est_16_cores",
]
GPU_CORES = 16  # CPU cores per GPU on a 4-GPU Perlmutter node


def register(sub) -> None:
    parser = add_command(
        sub,
        "input",
        help="input pipeline speed: examples/s from files to device-ready batches, per process and core",
        description=__doc__,
    )
    parser.add_argument(
        "config", metavar="CONFIG", help="packaged config (see `smilejax train --help`) or YAML config"
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)
    parser.add_argument("--files", nargs="+", help="data files or globs (default: data.path)")
    parser.add_argument(
        "--jets",
        type=int,
        metavar="N",
        help="examples in the synthetic set made without files (default 200000; families that declare "
        "a maker)",
    )
    parser.add_argument("--threads", type=int_list(0), default=[1, 2, 4], help="read threads to try (1,2,4)")
    parser.add_argument("--workers", type=int_list(0), default=[0, 2], help="worker processes to try (0,2)")
    parser.add_argument("--batches", type=int, default=20, help="timed global batches per setting")
    parser.add_argument("--out", default="bench-results/input", help="folder for JSON, table and plot")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from smilejax.bench import _input_measure, common

    if args.batches < 1 or (args.jets is not None and args.jets < 1):
        raise SystemExit("--batches and --jets must be at least 1")
    cfg, made = _input_measure.load(args)
    rows = []
    for workers in args.workers:
        for threads in args.threads:
            if threads < 1:
                raise SystemExit("--threads must be at least 1")
            rows.append(_input_measure.measure(cfg, threads=threads, workers=workers, batches=args.batches))
    first = rows[0]["jets_per_s"]
    for r in rows:
        r["vs_first"] = r["jets_per_s"] / first
        # CPU seconds, not wall time: robust on a shared machine, optimistic where scaling is not linear
        per_core = r["jets_per_cpu_s"] or r["jets_per_s_per_core"]
        r["est_16_cores"] = per_core * GPU_CORES
    extra = {
        "data": cfg.data.path,
        "synthetic_jets": made,
        "global_batch": cfg.data.batch_size,
        "bucket_tracks": list(getattr(cfg.data, "bucket_tracks", [])),
        "target_jets_per_s_per_gpu": 300_000,
    }
    path = common.write_results(args.out, "input", rows, columns=COLUMNS, extra=extra)
    _plot(rows, path.with_suffix(".png"), f"{cfg.data.format}, global batch {cfg.data.batch_size}")
    return 0


def _plot(rows: list[dict], path, title: str) -> None:
    plt = plotting.pyplot(path)
    if plt is None:
        return

    fig, ax = plt.subplots(figsize=(max(5, 1.0 * len(rows)), 4))
    labels = [f"{r['threads']} thr\n{r['workers']} wrk" for r in rows]
    bars = ax.bar(labels, [r["jets_per_s"] for r in rows], color="tab:green")
    ax.bar_label(bars, labels=[f"{r['jets_per_s']:.3g}" for r in rows], fontsize=8)
    ax.set_ylabel("jets / s per process (device-ready)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
