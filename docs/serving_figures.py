"""The figures of docs/SERVING.md from the study's results (docs/results/serving-cpu-*.json).

.venv/bin/python docs/serving_figures.py
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

DOCS = Path(__file__).resolve().parent
RESULTS = DOCS / "results"


def rows(name: str) -> list[dict]:
    path = RESULTS / f"serving-cpu-{name}.json"
    return [r for r in json.loads(path.read_text())["rows"] if r["requests"]] if path.exists() else []


def by(rs: list[dict], **match) -> list[dict]:
    return sorted((r for r in rs if all(r[k] == v for k, v in match.items())), key=lambda r: r["in_flight"])


def _log2(ax, xlabel="requests in flight") -> None:
    ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)


def inflight(name: str, protocol: str, batch_size: int, out: Path) -> None:
    """Requests/s against requests in flight, one line per round trip, with the closed-loop bound
    in_flight / RTT; p50 latency beside it."""
    rs = by(rows(name), protocol=protocol, batch_size=batch_size)
    if not rs:
        return
    fig, (ax, ax_lat) = plt.subplots(1, 2, figsize=(11, 4.2))
    for rtt in sorted({r["rtt_ms"] for r in rs}):
        line = by(rs, rtt_ms=rtt)
        x = [r["in_flight"] for r in line]
        (h,) = ax.plot(x, [r["requests_per_s"] for r in line], marker="o", label=f"RTT {rtt:g} ms")
        if rtt:
            ax.plot(x, [n * 1e3 / rtt for n in x], ls=":", color=h.get_color(), lw=1)
        ax_lat.plot(x, [r["p50_ms"] for r in line], marker="o", color=h.get_color())
        ax_lat.fill_between(x, [r["p50_ms"] for r in line], [r["p99_ms"] for r in line], color=h.get_color(),
                            alpha=0.12)  # fmt: skip
    top = max(r["requests_per_s"] for r in rs)
    ax.set_ylim(1, top * 2)
    ax.set_ylabel("requests / s (dotted: in_flight / RTT)")
    ax_lat.set_ylabel("latency ms (p50, band to p99)")
    for a in (ax, ax_lat):
        _log2(a)
        a.set_yscale("log")
    ax.legend(fontsize=8)
    fig.suptitle(f"gRPC, {batch_size} jet(s) per request, async client: in flight vs round trip (CPU)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def tls(out: Path) -> None:
    rs = rows("tls")
    if not rs:
        return
    fig, (ax_first, ax_p50) = plt.subplots(1, 2, figsize=(11, 4.2))
    rtts, sizes = sorted({r["rtt_ms"] for r in rs}), sorted({r["batch_size"] for r in rs})
    width = 0.35
    for i, setting in enumerate(("off", "on")):
        first = [min(r["first_ms"] for r in rs if r["rtt_ms"] == rtt and r["tls"] == setting) for rtt in rtts]
        ax_first.bar([j + i * width for j in range(len(rtts))], first, width, label=f"TLS {setting}")
        for rtt, ls in zip(rtts, ("-", "--"), strict=False):
            line = [by(rs, tls=setting, rtt_ms=rtt, batch_size=s, in_flight=1) for s in sizes]
            ax_p50.plot(sizes, [ln[0]["p50_ms"] if ln else float("nan") for ln in line], ls=ls, marker="o",
                        color=f"C{i}", label=f"TLS {setting}, RTT {rtt:g} ms")  # fmt: skip
    ax_first.set_xticks([j + width / 2 for j in range(len(rtts))], [f"RTT {r:g} ms" for r in rtts])
    ax_first.set_ylabel("ms to the first answer of a new client")
    ax_first.legend()
    _log2(ax_p50, "jets per request")
    ax_p50.set_yscale("log")
    ax_p50.set_ylabel("p50 latency ms, 1 request in flight")
    ax_p50.legend(fontsize=8)
    fig.suptitle("What gRPC over TLS costs: connection set-up and per-request latency (CPU)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def batching(out: Path) -> None:
    rs = rows("batching")
    if not rs:
        return
    fig, (ax, ax_b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, rtt in enumerate(sorted({r["rtt_ms"] for r in rs})):
        for setting, ls in (("on", "-"), ("off", "--")):
            line = by(rs, rtt_ms=rtt, batching=setting)
            x = [r["in_flight"] for r in line]
            label = f"batching {setting}, RTT {rtt:g} ms"
            ax.plot(x, [r["requests_per_s"] for r in line], ls=ls, marker="o", color=f"C{i}", label=label)
            ax_b.plot(x, [r["exec_batch"] for r in line], ls=ls, marker="o", color=f"C{i}", label=label)
    ax.set_ylabel("requests (= jets) / s")
    ax_b.set_ylabel("jets per model execution (server statistics)")
    for a in (ax, ax_b):
        _log2(a)
    ax.legend(fontsize=8)
    fig.suptitle("Dynamic batching, 1 jet per request, gRPC (CPU)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def bandwidth(out: Path) -> None:
    rs = rows("bandwidth")
    if not rs:
        return
    fig, (ax, ax_rate) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, bw in enumerate(
        sorted({r["bandwidth"] for r in rs}, key=lambda b: float(b[:-4] or 0) * (1e3 if "g" in b else 1))
    ):
        for protocol, ls in (("grpc", "-"), ("http", "--")):
            line = sorted(
                (r for r in rs if r["bandwidth"] == bw and r["protocol"] == protocol),
                key=lambda r: r["batch_size"],
            )
            x = [r["batch_size"] for r in line]
            label = f"{bw}, {protocol}"
            ax.plot(x, [r["p50_ms"] for r in line], ls=ls, marker="o", color=f"C{i}", label=label)
            ax_rate.plot(
                x, [r["inferences_per_s"] for r in line], ls=ls, marker="o", color=f"C{i}", label=label
            )
    for a in (ax, ax_rate):
        _log2(a, "jets per request")
        a.set_yscale("log")
    ax.set_ylabel("p50 latency ms")
    ax_rate.set_ylabel("jets / s")
    ax.legend(fontsize=8)
    fig.suptitle("Request size against bandwidth (tbf), RTT 1 ms, 4 in flight (CPU)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    inflight("inflight", "grpc", 1, DOCS / "serving-inflight.png")
    inflight("inflight32", "grpc", 32, DOCS / "serving-inflight-32.png")
    tls(DOCS / "serving-tls.png")
    batching(DOCS / "serving-batching.png")
    bandwidth(DOCS / "serving-bandwidth.png")
