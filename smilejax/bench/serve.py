"""``smilejax bench serve RUN_DIR``: Triton serving throughput and latency against in-process JAX.

Exports RUN_DIR's model (or takes ``--repo``), starts a real Triton Inference Server on it, and for every
model the server can run, protocol (HTTP, gRPC) and client concurrency, sends the same pipeline batch
of ``--batch-size`` jets from concurrent clients (a small perf_analyzer; each level bounded by
``--requests`` and ``--duration``). Reports inferences/s (jets/s) and latency p50/p90/p99 per request,
next to the jitted in-process forward pass on the same batch at the same concurrency (``vs_in_process``
is the served speed over it). Writes ``OUT/serve.json``, ``OUT/serve.md`` and ``OUT/serve.png``; the
server's log is ``OUT/triton.log``.

With ``--rtt``, ``--bandwidth``, ``--jitter`` or ``--loss`` it measures across an emulated wide-area
network instead (root only; see ``smilejax.bench._serve_wan``): client and server in two network
namespaces joined by a veth pair it creates and removes, shaped with tc (and netem, or a delaying
relay where the kernel lacks netem); an asynchronous client keeps ``--concurrency`` requests in flight;
the sweep covers round trip x bandwidth x ``--batching on,off`` x ``--tls off,on`` (gRPC) x protocol x
request size x in-flight count. Rows go to the same ``OUT/serve.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import logging
import socket

from smilejax import plotting
from smilejax.commands.common import add_command, choice_list, existing, int_list

WAN_COLUMNS = [
    "model",
    "protocol",
    "tls",
    "batching",
    "rtt_ms",
    "bandwidth",
    "path",
    "in_flight",
    "batch_size",
    "requests",
    "failures",
    "inferences_per_s",
    "requests_per_s",
    "p50_ms",
    "p99_ms",
    "first_ms",
    "exec_batch",
]

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
    parser.add_argument(
        "--data", help="a data file whose examples the requests carry (models with raw inputs)"
    )
    parser.add_argument("--models", help="comma list of repository models (default: all the server runs)")
    parser.add_argument(
        "--protocols", type=choice_list(("http", "grpc")), default=["http", "grpc"], help="http,grpc"
    )
    parser.add_argument(
        "--concurrency",
        type=int_list(1),
        default=[1, 2, 4, 8],
        help="client counts; with --rtt etc., requests in flight (1,2,4,8)",
    )
    parser.add_argument(
        "--batch-size", type=int_list(1), default=[32], help="examples per request, a comma list (32)"
    )
    parser.add_argument("--requests", type=int, default=200, help="requests per level at most (200)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per level at most (20)")
    parser.add_argument(
        "--max-batch-size", type=int, default=256, help="Triton max_batch_size when exporting"
    )
    parser.add_argument("--max-queue-delay-us", type=int, default=500, help="dynamic batching delay")
    parser.add_argument(
        "--preferred-batch-sizes", type=int_list(1), default=[], help="dynamic batching's, e.g. 16,32"
    )
    parser.add_argument("--instances", type=int, default=1, help="model instances when exporting")
    parser.add_argument("--triton", help="tritonserver binary (default: see smilejax.serve.server)")
    wan = parser.add_argument_group("wide-area network (root: network namespaces and tc)")
    wan.add_argument("--rtt", type=_float_list, help="round-trip times to add, ms, e.g. 0,1,10,50,100")
    wan.add_argument("--bandwidth", type=_rate_list, help="tc rates, e.g. 1gbit,10gbit (default: unshaped)")
    wan.add_argument("--jitter", type=float, default=0.0, help="round-trip jitter, +- ms (uniform)")
    wan.add_argument("--loss", type=float, default=0.0, help="loss per direction, percent")
    wan.add_argument(
        "--tls", type=choice_list(("off", "on")), default=["off"], help="gRPC over TLS: off,on (off)"
    )
    wan.add_argument(
        "--batching", type=choice_list(("on", "off")), default=["on"], help="dynamic batching: on,off (on)"
    )
    parser.add_argument("--out", default="bench-results/serve", help="folder for JSON, table, plot, log")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from smilejax.bench import _serve_wan, common
    from smilejax.serve import repository
    from smilejax.serve.server import TritonServer

    if args.requests < 1 or args.duration <= 0:
        raise SystemExit("--requests must be at least 1, --duration positive")
    existing(args.run_dir, "run directory")
    if args.repo:
        existing(args.repo, "model repository (--repo)")
    if args.data:
        existing(args.data, "data file (--data)")
    if _wan(args):
        return _run_wan(args)
    if len(args.batch_size) > 1:
        raise SystemExit("over loopback, --batch-size takes one size (several sizes: add --rtt 0)")
    args.batch_size = args.batch_size[0]
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
            preferred_batch_sizes=tuple(args.preferred_batch_sizes),
            instances=args.instances,
        )
        repository.build(args.run_dir, repo, options=options)
    served = _serve_wan.request_batch(repo, batch, args.batch_size, args.data)  # raw inputs, say
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
                    row = _served(server, model, protocol, served, concurrency, args)
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


def _wan(args: argparse.Namespace) -> bool:
    return bool(args.rtt or args.bandwidth or args.jitter or args.loss)


def _run_wan(args: argparse.Namespace) -> int:
    from pathlib import Path

    from smilejax.bench import _serve_wan, common
    from smilejax.serve import netem

    try:
        netem.require_root("smilejax bench serve with --rtt/--bandwidth/--jitter/--loss")
    except (PermissionError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    args.rtt = args.rtt or [0.0]
    args.bandwidth = args.bandwidth or [None]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    batch, _ = _batch_and_forward(args.run_dir, max(args.batch_size))
    rows = _serve_wan.run(args, batch, out)
    extra = {
        "run_dir": str(Path(args.run_dir).resolve()),
        "jitter_ms": args.jitter,
        "loss_pct": args.loss,
        "max_queue_delay_us": args.max_queue_delay_us,
        "instances": args.instances,
    }
    notes = [
        "client and server share this machine's cores; the link is a veth pair between two namespaces",
        "path: netem (kernel delay), relay (user-space delaying TCP relay), none (no delay asked)",
        "first_ms: a fresh client's connect, TLS handshake and first answer; exec_batch: inferences per"
        " model execution on the server (dynamic batching merges requests)",
    ]
    path = common.write_results(out, "serve", rows, columns=WAN_COLUMNS, extra=extra, notes=notes)
    _plot_wan(rows, path.with_suffix(".png"), f"{Path(args.run_dir).name} across an emulated WAN")
    return 1 if sum(r["failures"] for r in rows) else 0


def _float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected numbers >= 0, e.g. 0,1,10,50; got {text!r}")
    return values


def _rate_list(text: str) -> list[str]:
    from smilejax.serve.netem import rate_bits

    rates = [v.strip() for v in text.split(",") if v.strip()]
    try:
        for rate in rates:
            rate_bits(rate)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if not rates:
        raise argparse.ArgumentTypeError(f"expected rates such as 1gbit,10gbit; got {text!r}")
    return rates


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


def _plot_wan(rows: list[dict], path, title: str) -> None:
    """One column per round trip: requests/s and p50-p99 latency against requests in flight."""
    plt = plotting.pyplot(path)
    if plt is None or not rows:
        return
    rtts = sorted({r["rtt_ms"] for r in rows})
    fig, axes = plt.subplots(2, len(rtts), figsize=(3.6 * len(rtts) + 1, 6.5), squeeze=False, sharey="row")
    varying = [k for k in ("model", "protocol", "tls", "batching", "bandwidth", "batch_size")
               if len({r[k] for r in rows}) > 1]  # fmt: skip
    for col, rtt in enumerate(rtts):
        series: dict[str, list[dict]] = {}
        for r in rows:
            if r["rtt_ms"] == rtt and r["requests"]:
                label = ", ".join(f"{k}={r[k]}" for k in varying) or r["protocol"]
                series.setdefault(label, []).append(r)
        ax_rate, ax_lat = axes[0][col], axes[1][col]
        for label, rs in sorted(series.items()):
            rs = sorted(rs, key=lambda r: r["in_flight"])
            x = [r["in_flight"] for r in rs]
            (line,) = ax_rate.plot(x, [r["inferences_per_s"] for r in rs], marker="o", label=label)
            ax_lat.plot(x, [r["p50_ms"] for r in rs], marker="o", color=line.get_color())
            ax_lat.fill_between(x, [r["p50_ms"] for r in rs], [r["p99_ms"] for r in rs],
                                color=line.get_color(), alpha=0.15)  # fmt: skip
        ax_rate.set_title(f"RTT {rtt:g} ms")
        for ax in (ax_rate, ax_lat):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("requests in flight")
            ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("inferences / s")
    axes[1][0].set_ylabel("latency ms (p50, band to p99)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
