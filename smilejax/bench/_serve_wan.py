"""``smilejax bench serve --rtt/--bandwidth/--jitter/--loss``: Triton across an emulated wide-area network.

Client and server live in two network namespaces joined by a veth pair (``smilejax.serve.netem``);
Triton runs in the server's, bound to its address, and the asynchronous load generator
(``smilejax.serve.aload``) in the client's. Bandwidth is shaped with tbf; delay, jitter and loss come
from netem where the kernel has it, else from the delaying relay (``smilejax.serve.relay``), which then
sits on every path of the sweep (rtt 0 too) so that the rows differ only in the delay asked for.
One server per (dynamic batching, TLS) setting stays up while the links, models, protocols, request
sizes and in-flight counts are swept; HTTP has no TLS in Triton, so TLS rows are gRPC only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from smilejax.serve import netem

log = logging.getLogger(__name__)

HTTP_PORT, GRPC_PORT = 8000, 8001  # inside a fresh namespace: nothing else listens there
RELAY_PORTS = {"http": 9000, "grpc": 9001}  # the relay's, on the client namespace's loopback
SETTINGS = ("model", "protocol", "tls", "batching", "rtt_ms", "bandwidth", "jitter_ms", "loss_pct", "path")


@dataclasses.dataclass
class _Sweep:
    """What every server of a sweep shares."""

    args: argparse.Namespace
    pair: netem.NamespacePair
    links: list[netem.Link]
    relay_all: bool  # no netem: the relay is on every path
    certs: dict[str, Path] | None
    batch_path: Path
    out: Path


def run(args: argparse.Namespace, pipeline_batch: dict[str, np.ndarray], out: Path) -> list[dict[str, Any]]:
    netem.require_root("smilejax bench serve with --rtt/--bandwidth/--jitter/--loss")
    links = [
        netem.Link(rtt_ms=rtt, bandwidth=bw, jitter_ms=args.jitter, loss_pct=args.loss)
        for bw in args.bandwidth
        for rtt in args.rtt
    ]
    repos = _repositories(args, out)
    batch = request_batch(next(iter(repos.values())), pipeline_batch, max(args.batch_size), args.data)
    batch_path = out / "batch.npz"
    np.savez(batch_path, **batch)
    rows: list[dict[str, Any]] = []
    with netem.NamespacePair() as pair:
        certs = make_certs(out / "tls", (pair.server_addr,)) if "on" in args.tls else None
        relay_all = not pair.netem and any(link.delays for link in links)
        log.info(
            "namespaces %s / %s; delay by %s", pair.client, pair.server, "relay" if relay_all else "netem"
        )
        sweep = _Sweep(args, pair, links, relay_all, certs, batch_path, out)
        for batching, repo in repos.items():
            for tls in args.tls:
                protocols = args.protocols if tls == "off" else [p for p in args.protocols if p == "grpc"]
                if protocols:
                    rows += _one_server(sweep, repo, batching, tls, protocols)
    return rows


def request_batch(repo: Path, pipeline_batch: dict, n: int, data_file: str | None) -> dict[str, np.ndarray]:
    """What a client sends to ``repo``'s models, ``n`` examples: the pipeline's batch when they take
    the model's own inputs; raw inputs (``smilejax_export.json``'s ``raw``) read from ``data_file``, or,
    without one, made up from their signature (standard-normal floats, every set slot valid, the
    pipeline batch's element count): the served program's time does not depend on the values."""
    from smilejax.serve import client

    meta_path = Path(repo) / "smilejax_export.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if not meta.get("raw"):
        return {k: np.asarray(v)[:n] for k, v in pipeline_batch.items()}
    if data_file:
        batch = client.raw_batch(repo, data_file, n)
        if len(next(iter(batch.values()))) < n:
            raise SystemExit(f"error: {data_file} holds fewer than the {n} examples a request needs")
        return batch
    elements = max((np.shape(v)[1] for v in pipeline_batch.values() if np.ndim(v) >= 2), default=1)
    rng = np.random.default_rng(0)
    batch = {}
    for t in meta["raw"]["inputs"]:
        shape = (n, *(elements if d == "elements" else d for d in t["dims"]))
        kind = np.dtype(t["dtype"]).kind
        batch[t["name"]] = (
            np.ones(shape, bool) if kind == "b" else rng.standard_normal(shape).astype(t["dtype"])
        )
    log.warning("raw inputs made up from their signature (give --data FILE to send a file's examples)")
    return batch


def _repositories(args: argparse.Namespace, out: Path) -> dict[str, Path]:
    """One repository per dynamic-batching setting (``--repo``: that one, as it was exported)."""
    from smilejax.serve import repository

    if args.repo:
        return {"as exported": Path(args.repo)}
    repos = {}
    for batching in args.batching:
        repos[batching] = out / f"repository-batching-{batching}"
        options = repository.TritonOptions(
            max_batch_size=max(args.max_batch_size, *args.batch_size),
            dynamic_batching=batching == "on",
            max_queue_delay_us=args.max_queue_delay_us,
            preferred_batch_sizes=tuple(args.preferred_batch_sizes),
            instances=args.instances,
        )
        repository.build(args.run_dir, repos[batching], options=options)
    return repos


def _one_server(sweep: _Sweep, repo: Path, batching: str, tls: str, protocols: list[str]) -> list[dict]:
    """One Triton (a batching and TLS setting) in the server namespace, every link swept against it."""
    from smilejax.serve.server import Security, TritonServer

    certs = sweep.certs or {}
    security = (
        Security(tls_cert=str(certs["server.pem"]), tls_key=str(certs["server.key"])) if tls == "on" else None
    )
    server = TritonServer(
        repo,
        host=sweep.pair.server_addr,
        http_port=HTTP_PORT,
        grpc_port=GRPC_PORT,
        models=[m for m in (sweep.args.models or "").split(",") if m] or None,
        binary=sweep.args.triton,
        security=security,
        exit_timeout_s=5,
        log_file=sweep.out / f"triton-batching-{batching.replace(' ', '-')}-tls-{tls}.log",
    )
    rows = []
    sweep.pair.call_in("server", server.__enter__)  # started from the namespace, Triton lives in it
    try:
        for link in sweep.links:
            path = sweep.pair.shape(link)
            relay = _start_relay(sweep.pair, link) if sweep.relay_all else None
            try:
                for model in server.models:
                    for protocol in protocols:
                        settings = {
                            "model": model,
                            "protocol": protocol,
                            "tls": tls,
                            "batching": batching,
                            "rtt_ms": link.rtt_ms,
                            "bandwidth": link.bandwidth or "-",
                            "jitter_ms": link.jitter_ms,
                            "loss_pct": link.loss_pct,
                            "path": "relay" if relay else path,
                        }
                        rows += [{**settings, **r} for r in _client_run(sweep, settings)]
            finally:
                if relay:
                    relay.terminate()
                    relay.wait(timeout=30)
    finally:
        server.stop()
    return rows


def _start_relay(pair: netem.NamespacePair, link: netem.Link) -> subprocess.Popen:
    maps = [
        f"127.0.0.1:{RELAY_PORTS['http']}={pair.server_addr}:{HTTP_PORT}",
        f"127.0.0.1:{RELAY_PORTS['grpc']}={pair.server_addr}:{GRPC_PORT}",
    ]
    cmd = [sys.executable, "-m", "smilejax.serve.relay", *(f"--map={m}" for m in maps)]
    cmd += [f"--rtt-ms={link.rtt_ms}", f"--jitter-ms={link.jitter_ms}", f"--loss-pct={link.loss_pct}"]
    relay = pair.popen("client", cmd, stdout=subprocess.PIPE, text=True)
    if relay.stdout.readline().strip() != "ready":
        relay.kill()
        raise RuntimeError(f"the relay did not start (rc={relay.wait()})")
    return relay


def _client_run(sweep: _Sweep, settings: dict[str, Any]) -> list[dict]:
    """The load generator in the client's namespace over every request size and in-flight count; each
    level's time is bounded, so is the whole run."""
    args, protocol, out = sweep.args, settings["protocol"], sweep.out
    if settings["path"] == "relay":
        url = f"127.0.0.1:{RELAY_PORTS[protocol]}"
    else:
        url = f"{sweep.pair.server_addr}:{HTTP_PORT if protocol == 'http' else GRPC_PORT}"
    spec = {
        "url": url,
        "model": settings["model"],
        "protocol": protocol,
        "tls_root": str(sweep.certs["ca.pem"]) if settings["tls"] == "on" and sweep.certs else None,
        "batches": str(sweep.batch_path),
        "levels": [{"in_flight": c, "batch_size": b} for b in args.batch_size for c in args.concurrency],
        "requests": args.requests,
        "duration_s": args.duration,
    }
    specs = out / "specs"
    specs.mkdir(exist_ok=True)
    name = f"{spec['model']}-{spec['protocol']}-{len(list(specs.glob('*.json')))}"
    spec_path, result_path = specs / f"{name}.json", specs / f"{name}.result"
    spec_path.write_text(json.dumps(spec))
    limit = len(spec["levels"]) * (spec["duration_s"] + 120) + 60
    cmd = [sys.executable, "-m", "smilejax.serve.aload", str(spec_path), str(result_path)]
    proc = sweep.pair.popen("client", cmd)
    try:
        rc = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"the load generator ran past {limit:.0f} s ({spec_path})") from None
    finally:  # also on SIGTERM (SystemExit): no load left running in a namespace about to go
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if rc or not result_path.exists():
        raise RuntimeError(f"the load generator failed (rc={rc}) on {spec_path}")
    rows = json.loads(result_path.read_text())
    for r in rows:
        if r.get("failures"):
            log.warning(
                "%s over %s: %d failures, e.g. %s",
                spec["model"],
                spec["protocol"],
                r["failures"],
                r["errors"][:1],
            )
        r.pop("errors", None)
    return rows


def make_certs(folder: Path, ips: tuple[str, ...] = ()) -> dict[str, Path]:
    """A throwaway CA and a server certificate it signed (ECDSA P-256, valid 2 days) for 127.0.0.1,
    localhost and every private address the bench hands out, written with openssl."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {n: folder / n for n in ("ca.pem", "ca.key", "server.pem", "server.key", "server.csr")}
    ext = folder / "san.cnf"
    ext.write_text(
        "subjectAltName=" + ",".join(["DNS:localhost", "IP:127.0.0.1", *(f"IP:{ip}" for ip in ips)]) + "\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"]
    ca, server = ["-subj", "/CN=smilejax bench CA"], ["-subj", "/CN=smilejax bench server"]
    steps = [
        ["req", "-x509", *ec, *ca, "-keyout", paths["ca.key"], "-out", paths["ca.pem"]],
        ["req", *ec, *server, "-keyout", paths["server.key"], "-out", paths["server.csr"]],
        ["x509", "-req", "-in", paths["server.csr"], "-CA", paths["ca.pem"], "-CAkey", paths["ca.key"],
         "-CAcreateserial", "-out", paths["server.pem"], "-days", "2", "-extfile", ext],
    ]  # fmt: skip
    for step in steps:
        proc = subprocess.run(["openssl", *map(str, step)], capture_output=True, text=True, timeout=60)
        if proc.returncode:
            raise RuntimeError(f"openssl {step[0]} failed: {proc.stderr.strip()}")
    return paths
