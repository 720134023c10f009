"""The emulated wide-area network of ``smilejax bench serve --rtt/--bandwidth``: namespaces that are made
and always removed, tbf's bandwidth, the relay's round trip as a client measures it, a short sweep
through a real Triton, and the refusal without root. Root (CI runs as root); never skipped."""

from __future__ import annotations

import json
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import pytest

from smilejax.serve import netem, relay
from tests.conftest import run_cli

ECHO_PORT, RELAY_PORT = 7000, 9000


@pytest.fixture
def root():
    if netem.os.geteuid() != 0:
        pytest.fail("these tests create network namespaces and need root (CI runs them as root)")


def leftovers(pair: netem.NamespacePair) -> list[str]:
    """The pair's namespaces that exist, and its veth ends seen in this host's namespace."""
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    devices = [d for d in (pair.client_dev, pair.server_dev) if f": {d}@" in links or f": {d}:" in links]
    return [ns for ns in (pair.client, pair.server) if ns in netem.namespaces()] + devices


def test_namespace_pair_is_made_and_removed_also_after_an_exception(root):
    with netem.NamespacePair() as pair:
        assert leftovers(pair) == [pair.client, pair.server]  # the veth pair is not in this host's
        addr = subprocess.run(["ip", "-n", pair.server, "-o", "addr", "show", "dev", pair.server_dev],
                              capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert f"{pair.server_addr}/30" in addr
        here = netem.os.readlink("/proc/thread-self/ns/net")  # call_in runs fn inside the namespace
        assert pair.call_in("client", netem.os.readlink, "/proc/thread-self/ns/net") != here
    assert leftovers(pair) == []
    with pytest.raises(ZeroDivisionError), netem.NamespacePair() as failed:
        _ = 1 / 0
    assert leftovers(failed) == []


@contextmanager
def echo_server(pair: netem.NamespacePair, sink: bool = False):
    """A TCP server in the server namespace that echoes (or, ``sink``, counts the bytes it gets)."""
    listener = pair.call_in("server", socket.create_server, (pair.server_addr, ECHO_PORT))
    received = [0, 0.0]  # bytes, time of the last

    def handle(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            while data := conn.recv(1 << 16):
                if sink:
                    received[0] += len(data)
                    received[1] = time.perf_counter()
                else:
                    conn.sendall(data)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield received
    finally:
        listener.close()


def test_tbf_limits_the_bandwidth(root):
    size, rate = 2_500_000, 10e6  # 2 s at 10 Mbit/s
    with netem.NamespacePair() as pair, echo_server(pair, sink=True) as received:
        assert pair.shape(netem.Link(bandwidth="10mbit")) == "none"

        def send() -> float:
            t0 = time.perf_counter()
            with socket.create_connection((pair.server_addr, ECHO_PORT), timeout=30) as conn:
                conn.sendall(b"\0" * size)
            deadline = time.monotonic() + 30
            while received[0] < size and time.monotonic() < deadline:
                time.sleep(0.01)
            return received[1] - t0

        seconds = pair.call_in("client", send)
    assert received[0] == size
    assert 0.7 * size * 8 / rate < seconds < 2.0 * size * 8 / rate, seconds


def echo_times(port: int, rounds: int = 20) -> tuple[float, float, float]:
    """(connect and first echo, fastest and median echo round trip) in ms."""
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sendall(b"x")
        conn.recv(16)
        first = time.perf_counter() - t0
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            conn.sendall(b"y")
            conn.recv(16)
            times.append(time.perf_counter() - t)
    return first * 1e3, min(times) * 1e3, statistics.median(times) * 1e3


@pytest.mark.parametrize("rtt_ms", [0, 30])
def test_the_relay_adds_the_round_trip_asked_for(root, rtt_ms):
    with netem.NamespacePair() as pair, echo_server(pair):
        cmd = [sys.executable, "-m", "smilejax.serve.relay", f"--rtt-ms={rtt_ms}", "--max-seconds=60",
               f"--map=127.0.0.1:{RELAY_PORT}={pair.server_addr}:{ECHO_PORT}"]  # fmt: skip
        proc = pair.popen("client", cmd, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "ready"
            first, fastest, median = pair.call_in("client", echo_times, RELAY_PORT)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    # What a client sees, the relay's overhead included: the fastest round trip is the path's delay
    # (a busy machine only adds to it), the median is looser.
    assert rtt_ms <= fastest < rtt_ms + 3, fastest
    assert median < rtt_ms + 15, median
    assert 2 * rtt_ms <= first < 2 * rtt_ms + 60, first  # a handshake's round trip, then the echo


def test_relay_delay_jitter_and_loss():
    rng = random.Random(0)
    assert relay.Delay(0.02).one_way(rng) == pytest.approx(0.01)
    jittered = [relay.Delay(0.02, jitter_s=0.01).one_way(rng) for _ in range(200)]
    assert 0.005 <= min(jittered) < 0.006 and 0.014 < max(jittered) <= 0.015
    assert relay.Delay(0.02, loss=1.0).one_way(rng) == pytest.approx(0.01 + relay.MIN_RTO_S + 0.02)


def test_netem_rules_where_the_kernel_has_netem():
    link = netem.Link(rtt_ms=50, bandwidth="1gbit", jitter_ms=4, loss_pct=0.1)
    rules = netem.qdiscs("eth9", link, netem=True)
    assert rules[0] == ["dev", "eth9", "root", "handle", "1:", "netem", "delay", "25.0ms", "2.0ms",
                        "loss", "0.1%"]  # fmt: skip
    assert rules[1][:6] == ["dev", "eth9", "parent", "1:1", "handle", "10:"] and "1000000000bit" in rules[1]
    assert netem.qdiscs("eth9", link, netem=False)[0][:6] == ["dev", "eth9", "root", "handle", "1:", "tbf"]
    with pytest.raises(ValueError, match="kbit, mbit, gbit"):
        netem.rate_bits("10mbps")


def test_refused_without_root(monkeypatch, tmp_path, capsys):
    from smilejax import cli

    monkeypatch.setattr(netem.os, "geteuid", lambda: 1000)
    with pytest.raises(netem.NeedsRoot, match="needs root"):
        netem.NamespacePair().create()
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "serve", str(tmp_path), "--rtt", "0,20"])
    assert "needs root" in str(exc.value.code) and "--rtt" in str(exc.value.code)


def test_bench_serve_across_a_short_wan(root, tiny_gn2_run, tmp_path):
    before = {ns for ns in netem.namespaces() if ns.startswith(netem.PREFIX)}
    out = tmp_path / "wan"
    proc = run_cli("bench", "serve", str(tiny_gn2_run), "--rtt", "0,20", "--models", "gn2_onnx",
                   "--protocols", "grpc", "--concurrency", "1,4", "--batch-size", "4", "--requests", "30",
                   "--duration", "3", "--out", str(out), devices=1, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = json.loads((out / "serve.json").read_text())["rows"]
    assert (out / "serve.md").exists() and (out / "serve.png").stat().st_size > 10_000
    assert [(r["rtt_ms"], r["in_flight"]) for r in rows] == [(0, 1), (0, 4), (20, 1), (20, 4)]
    assert all(r["failures"] == 0 and r["requests"] > 0 and r["path"] == "relay" for r in rows)
    by = {(r["rtt_ms"], r["in_flight"]): r for r in rows}
    assert by[0, 1]["p50_ms"] < 20 <= by[20, 1]["p50_ms"] < 20 + 3 * by[0, 1]["p50_ms"] + 20
    assert by[20, 1]["requests_per_s"] < 1000 / 20  # one request in flight: at most one per round trip
    assert by[20, 4]["requests_per_s"] > 1.5 * by[20, 1]["requests_per_s"]  # more in flight hide the RTT
    assert not {ns for ns in netem.namespaces() if ns.startswith(netem.PREFIX)} - before
