"""``smilejax bench serve RUN_DIR``: Triton serving throughput and latency against in-process JAX.

Exports RUN_DIR's model (or takes ``--repo``), starts a real Triton Inference Server on it, and for every
model the server can run, protocol (HTTP, gRPC) and client concurrency, sends the same pipeline batch
of ``--batch-size`` jets from concurrent clients (a small perf_analyzer; each level bounded by
``--requests`` and ``--duration``). Reports inferences/s (jets/s) and latency p50/p90/p99 per request,
next to the jitted in-process forward pass on the same batch at the same concurrency (``vs_in_process``
is the served speed over it). Writes ``OUT/serve.json``, ``OUT/serve.md`` and ``OUT/serve.png``; the
server's log is ``OUT/triton.log``.
"""

from __future__ import annotations

import argparse
import logging
import socket

from smilejax import plotting
from smilejax.commands.common import add_command, choice_list, existing, int_list

log = logging.getLogger(__name__)

COLUMNS = [
    "target",
    "protocol",
    "concurrency",
    "batch_size",
    "requests",
    "failures",
    "inferences_per_s",
    "vs_in_process",
    "p50_ms",
    "p90_ms",
    "p99_ms",
]
IN_PROCESS = "in-process JAX"


def register(sub) -> None:
    parser = add_command(
        sub,
        "serve",
        help="Triton serving: inferences/s and latency percentiles vs client concurrency, and in-process JAX",
        description=__doc__,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a trained run directory")
    parser.add_argument(
        "--repo", help="an existing repository of this run (default: export into OUT/repository)"
    )
    parser.add_argument("--models", help="comma list of repository models (default: all the server runs)")
    parser.add_argument(
        "--protocols", type=choice_list(("http", "grpc")), default=["http", "grpc"], help="http,grpc"
    )
    parser.add_argument(
        "--concurrency", type=int_list(1), default=[1, 2, 4, 8], help="client counts (1,2,4,8)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="jets per request (default 32)")
    parser.add_argument("--requests", type=int, default=200, help="requests per level at most (200)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per level at most (20)")
    parser.add_argument(
        "--max-batch-size", type=int, default=256, help="Triton max_batch_size when exporting"
    )
    parser.add_argument("--max-queue-delay-us", type=int, default=500, help="dynamic batching delay")
    parser.add_argument("--instances", type=int, default=1, help="model instances when exporting")
    parser.add_argument("--triton", help="tritonserver binary (default: see smilejax.serve.server)")
    parser.add_argument("--out", default="bench-results/serve", help="folder for JSON, table, plot, log")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from smilejax.bench import common
    from smilejax.serve import repository
    from smilejax.serve.server import TritonServer

    if args.batch_size < 1 or args.requests < 1 or args.duration <= 0:
        raise SystemExit("--batch-size and --requests must be at least 1, --duration positive")
    existing(args.run_dir, "run directory")
    if args.repo:
        existing(args.repo, "model repository (--repo)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    batch, forward = _batch_and_forward(args.run_dir, args.batch_size)
    rows = [_in_process(forward, batch, c, args) for c in args.concurrency]
    baseline = {r["concurrency"]: r["inferences_per_s"] for r in rows}

    repo = Path(args.repo) if args.repo else out / "repository"
    if not args.repo:
        options = repository.TritonOptions(
            max_batch_size=max(args.max_batch_size, args.batch_size),
            max_queue_delay_us=args.max_queue_delay_us,
            instances=args.instances,
        )
        repository.build(args.run_dir, repo, options=options)
    server = TritonServer(
        repo,
        http_port=_free_port(),
        grpc_port=_free_port(),
        models=[m for m in (args.models or "").split(",") if m] or None,
        binary=args.triton,
        exit_timeout_s=5,
        log_file=out / "triton.log",
    )
    with server:
        for model in server.models:
            for protocol in args.protocols:
                for concurrency in args.concurrency:
                    row = _served(server, model, protocol, batch, concurrency, args)
                    row["vs_in_process"] = row["inferences_per_s"] / baseline[concurrency]
                    rows.append(row)
    extra = {
        "run_dir": str(Path(args.run_dir).resolve()),
        "repository": str(repo.resolve()),
        "skipped_models": server.skipped,
        "batch_size": args.batch_size,
        "max_queue_delay_us": args.max_queue_delay_us,
        "note": "client and server share this machine's cores",
    }
    path = common.write_results(out, "serve", rows, columns=COLUMNS, extra=extra)
    _plot(rows, path.with_suffix(".png"), f"{Path(args.run_dir).name}: {args.batch_size} jets per request")
    failures = sum(r["failures"] for r in rows)
    return 1 if failures else 0


def _batch_and_forward(run_dir: str, batch_size: int):
    """One evaluation batch as the input pipeline makes it, and the model's forward pass."""
    from smilejax import registry, trained
    from smilejax.inputs import pipeline
    from smilejax.serve import export

    tm = trained.load(run_dir)
    dataset = registry.dataset(tm.cfg.data.format)
    source = dataset.source(tm.cfg.data, "eval")
    make = dataset.pipeline or pipeline.from_config
    data_cfg = tm.cfg.data.with_batch_size(batch_size)
    stream = make(source, data_cfg, seed=0, process_index=0, process_count=1, shuffle=False)
    batch = next(iter(stream))
    return batch, export.forward(tm)


class _InProcess:
    """The jitted forward pass behind the client interface ``infer(batch)``."""

    def __init__(self, forward):
        import jax

        self.jax = jax
        self.forward = forward
        self.fn = jax.jit(forward.fn)

    def infer(self, batch):
        return self.jax.block_until_ready(self.fn(*(batch[t.name] for t in self.forward.inputs)))


def _in_process(forward, batch, concurrency: int, args) -> dict:
    from smilejax.serve import load

    caller = _InProcess(forward)  # one compiled program, shared by the threads as a server would
    result = load.run(
        lambda: caller, batch, concurrency=concurrency, requests=args.requests, duration_s=args.duration
    )
    return {"target": IN_PROCESS, "protocol": "-", **result.summary(), "vs_in_process": 1.0}


def _served(server, model: str, protocol: str, batch, concurrency: int, args) -> dict:
    from smilejax.serve import load
    from smilejax.serve.client import Client

    url = server.http_url if protocol == "http" else server.grpc_url

    def make() -> Client:
        return Client(url, model, protocol=protocol)

    result = load.run(make, batch, concurrency=concurrency, requests=args.requests, duration_s=args.duration)
    if result.failures:
        log.warning(
            "%s over %s at concurrency %d: %d failures, e.g. %s",
            model,
            protocol,
            concurrency,
            result.failures,
            result.errors[:1],
        )
    return {"target": model, "protocol": protocol, **result.summary()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _plot(rows: list[dict], path, title: str) -> None:
    plt = plotting.pyplot(path)
    if plt is None:
        return

    fig, (ax_rate, ax_lat) = plt.subplots(1, 2, figsize=(11, 4))
    series: dict[str, list[dict]] = {}
    for r in rows:
        label = r["target"] if r["protocol"] == "-" else f"{r['target']} ({r['protocol']})"
        series.setdefault(label, []).append(r)
    for label, rs in series.items():
        style = {"color": "black", "linestyle": "--"} if label == IN_PROCESS else {"marker": "o"}
        conc = [r["concurrency"] for r in rs]
        (line,) = ax_rate.plot(conc, [r["inferences_per_s"] for r in rs], label=label, **style)
        ax_lat.plot(conc, [r["p99_ms"] for r in rs], **{**style, "color": line.get_color()})
        if label != IN_PROCESS:
            p50, p99 = [r["p50_ms"] for r in rs], [r["p99_ms"] for r in rs]
            ax_lat.fill_between(conc, p50, p99, color=line.get_color(), alpha=0.12)
    levels = sorted({r["concurrency"] for r in rows})
    for ax, ylabel in ((ax_rate, "inferences (jets) / s"), (ax_lat, "latency p99 ms (band: p50-p99)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    ax_lat.set_yscale("log")
    ax_rate.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
