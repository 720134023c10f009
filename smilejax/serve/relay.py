"""A delaying TCP relay: a long network path in user space, for kernels without ``netem``.

``python -m smilejax.serve.relay --map 127.0.0.1:9001=10.254.0.2:8001 --rtt-ms 50 [--jitter-ms J]
[--loss-pct P] [--max-seconds S]`` listens on the left address of each ``--map`` and forwards every
connection to the right one. Each chunk it reads is held for half the round trip before it is written
on (so a request and its answer see the whole round trip), plus a uniform jitter of up to +-J/2 that
never reorders the stream (TCP would not), and, with probability P % per direction, a retransmission
timeout (the chunk is "lost" and resent: Linux's minimum RTO, 200 ms, plus a round trip). A new
connection's first bytes leave one round trip after it was accepted, as after a TCP handshake. It
prints ``ready`` once listening and runs until SIGTERM/SIGINT or ``--max-seconds``.

Run it in the client's namespace (``NamespacePair.popen("client", ...)``): the client connects to the
relay on that namespace's loopback, and the relay's traffic to the server crosses the shaped veth.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import random
import signal
import socket
import sys
import time

CHUNK = 256 * 1024
QUEUED_CHUNKS = 256  # per direction: beyond it the relay stops reading, so TCP pushes back
MIN_RTO_S = 0.2


@dataclasses.dataclass(frozen=True)
class Delay:
    rtt_s: float = 0.0
    jitter_s: float = 0.0
    loss: float = 0.0  # probability per chunk and direction

    def one_way(self, rng: random.Random) -> float:
        delay = self.rtt_s / 2
        if self.jitter_s:
            delay += rng.uniform(-self.jitter_s / 2, self.jitter_s / 2)
        if self.loss and rng.random() < self.loss:
            delay += MIN_RTO_S + self.rtt_s
        return max(delay, 0.0)


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _pump(
    reader: asyncio.StreamReader,
    writer_ready: asyncio.Future,
    delay: Delay,
    rng: random.Random,
    not_before: float,
) -> None:
    """Reads chunks, and writes each one on at its due time (never before the previous one's)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue(QUEUED_CHUNKS)

    async def read() -> None:
        last_due = 0.0
        while chunk := await reader.read(CHUNK):
            last_due = max(last_due, max(loop.time(), not_before) + delay.one_way(rng))
            await queue.put((last_due, chunk))
        await queue.put((last_due, b""))

    reading = asyncio.create_task(read())
    try:
        writer: asyncio.StreamWriter = await writer_ready
        while True:
            due, chunk = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not chunk:
                if writer.can_write_eof():
                    writer.write_eof()
                break
            writer.write(chunk)
            await writer.drain()
    finally:
        reading.cancel()


async def _connection(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    target: tuple[str, int],
    delay: Delay,
    rng: random.Random,
) -> None:
    loop = asyncio.get_running_loop()
    _nodelay(client_writer)
    accepted = loop.time()
    upstream: asyncio.Future = loop.create_future()
    to_client: asyncio.Future = loop.create_future()
    to_client.set_result(client_writer)
    up = asyncio.create_task(_pump(client_reader, upstream, delay, rng, accepted + delay.rtt_s))
    try:
        server_reader, server_writer = await asyncio.open_connection(*target)
    except OSError:
        up.cancel()
        client_writer.close()
        return
    _nodelay(server_writer)
    upstream.set_result(server_writer)
    down = asyncio.create_task(_pump(server_reader, to_client, delay, rng, 0.0))
    try:
        await asyncio.gather(up, down)
    except (OSError, asyncio.CancelledError):
        pass
    finally:
        for task in (up, down):
            task.cancel()
        for w in (server_writer, client_writer):
            w.close()


def parse_map(text: str) -> tuple[tuple[str, int], tuple[str, int]]:
    """``LISTEN_HOST:PORT=TARGET_HOST:PORT``."""
    try:
        left, right = text.split("=")
        (lh, lp), (th, tp) = (side.rsplit(":", 1) for side in (left, right))
        return (lh, int(lp)), (th, int(tp))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected LISTEN_HOST:PORT=TARGET_HOST:PORT, got {text!r}"
        ) from None


async def serve(
    maps: list[tuple[tuple[str, int], tuple[str, int]]],
    delay: Delay,
    *,
    max_seconds: float,
    seed: int = 0,
) -> None:
    rng = random.Random(seed)
    servers = []
    connections: set[asyncio.Task] = set()  # cancelled on stop, so none is left pending at exit
    for listen, target in maps:

        async def handle(r, w, target=target):
            task = asyncio.current_task()
            connections.add(task)
            try:
                await _connection(r, w, target, delay, rng)
            finally:
                connections.discard(task)

        servers.append(await asyncio.start_server(handle, *listen, reuse_address=True))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), max_seconds)
    for s in servers:
        s.close()
    for task in list(connections):
        task.cancel()
    await asyncio.gather(*connections, return_exceptions=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m smilejax.serve.relay", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--map", type=parse_map, action="append", required=True, help="LISTEN=TARGET")
    parser.add_argument("--rtt-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--loss-pct", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=3600.0, help="stop after this long at most")
    args = parser.parse_args(argv)
    delay = Delay(args.rtt_ms / 1e3, args.jitter_ms / 1e3, args.loss_pct / 100)
    started = time.monotonic()
    asyncio.run(serve(args.map, delay, max_seconds=args.max_seconds, seed=args.seed))
    print(f"stopped after {time.monotonic() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
