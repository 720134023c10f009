"""A wide-area network on one machine: two network namespaces joined by a veth pair, shaped with ``tc``.

``with NamespacePair() as pair:`` creates a client and a server namespace (unique names, so parallel
runs do not clash) joined by a veth pair whose two ends hold the addresses of a private /30
(``pair.client_addr``, ``pair.server_addr``) that exist only inside them; it removes both namespaces
(and with them the veth pair) when the block ends, on an exception, on SIGTERM/SIGHUP, and at exit.
``pair.shape(Link(...))`` limits bandwidth with a ``tbf`` qdisc on each end and, where the kernel has
``netem``, adds half the round trip, jitter and loss on each end; where it has not (``netem_available``
is False), ``smilejax.serve.relay`` adds the delay in user space. ``pair.call_in(side, fn)`` runs ``fn``
in a thread that entered a namespace: sockets it opens, and processes it starts, live there.

Root only (creating namespaces needs CAP_SYS_ADMIN): ``require_root`` refuses clearly otherwise.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
PREFIX = "sjxwan"  # every namespace this module makes starts with it
NETNS_DIR = "/run/netns"


class NeedsRoot(PermissionError):
    """Network namespaces and qdiscs need root."""


def require_root(what: str = "a WAN emulation") -> None:
    if os.geteuid() != 0:
        raise NeedsRoot(
            f"{what} creates network namespaces and a veth pair and shapes them with tc, which needs root: "
            "run it as root (e.g. `sudo -E .venv/bin/smilejax bench serve ...`), or leave out --rtt, "
            "--bandwidth, --jitter and --loss to benchmark over loopback"
        )
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        raise FileNotFoundError(f"{what} needs {' and '.join(missing)} (iproute2: apt-get install iproute2)")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode:
        raise RuntimeError(f"`ip {' '.join(args)}` failed: {proc.stderr.strip()}")
    return proc


def namespaces() -> list[str]:
    """The network namespaces that exist now (names from ``ip netns list``)."""
    return [line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line.strip()]


@dataclasses.dataclass(frozen=True)
class Link:
    """What the path between client and server looks like, both ways together."""

    rtt_ms: float = 0.0  # round-trip delay added (half on each direction)
    bandwidth: str | None = None  # tc rate, e.g. 1gbit, 100mbit; None: unshaped
    jitter_ms: float = 0.0  # the round trip varies uniformly by up to +-jitter_ms
    loss_pct: float = 0.0  # packets (relay: chunks) lost per direction, in percent

    def __post_init__(self):
        if self.rtt_ms < 0 or self.jitter_ms < 0 or not 0 <= self.loss_pct < 100:
            raise ValueError(f"rtt and jitter must be >= 0 and loss in [0, 100): {self}")
        if self.bandwidth is not None and rate_bits(self.bandwidth) <= 0:
            raise ValueError(f"bandwidth must be positive, got {self.bandwidth!r}")

    @property
    def delays(self) -> bool:
        return bool(self.rtt_ms or self.jitter_ms or self.loss_pct)


_UNITS = {"": 1, "bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12}


def rate_bits(rate: str) -> float:
    """Bits per second of a tc rate such as ``10gbit`` or ``100mbit`` (only bit units: tc's ``mbps``
    means megabytes, a classic mix-up, so it is refused)."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([a-z]*)\s*", rate.lower())
    if not match or match.group(2) not in _UNITS:
        raise ValueError(f"bandwidth {rate!r}: expected a number and one of kbit, mbit, gbit (e.g. 1gbit)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _enter(name: str) -> None:
    fd = os.open(f"{NETNS_DIR}/{name}", os.O_RDONLY)
    try:
        os.setns(fd, os.CLONE_NEWNET)
    finally:
        os.close(fd)


def call_in(name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a fresh thread that entered network namespace ``name`` (setns is
    per thread, so this process's other threads stay where they are); re-raises what ``fn`` raised."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            _enter(name)
            box["value"] = fn(*args, **kwargs)
        except BaseException as err:  # handed to the caller
            box["error"] = err

    thread = threading.Thread(target=target, name=f"netns-{name}", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class NamespacePair:
    """Client and server namespaces joined by a veth pair; see the module docstring."""

    def __init__(self, token: str | None = None):
        token = token or f"{os.getpid() % 0xFFFF:04x}{secrets.token_hex(2)}"
        self.client, self.server = f"{PREFIX}-c-{token}", f"{PREFIX}-s-{token}"
        self.client_dev, self.server_dev = f"sjc{token}", f"sjs{token}"  # <= 15 characters
        # A /30 of 10.254.0.0/16; it exists only inside these namespaces, never on this host's network.
        base = random.Random(token).randrange(0, 1 << 14) * 4
        prefix = f"10.254.{base >> 8}."
        self.client_addr, self.server_addr = f"{prefix}{(base & 0xFF) + 1}", f"{prefix}{(base & 0xFF) + 2}"
        self.netem = False
        self._created = False
        self._old_handlers: dict[int, Any] = {}

    # ---- life cycle

    def create(self) -> NamespacePair:
        require_root()
        self._created = True  # from here on, remove() cleans up whatever exists
        atexit.register(self.remove)
        _ip("netns", "add", self.client)
        _ip("netns", "add", self.server)
        # Made inside the client namespace with its peer in the server's: no name ever in this host's.
        veth = ["link", "add", self.client_dev, "type", "veth", "peer", "name", self.server_dev]
        _ip("-n", self.client, *veth, "netns", self.server)
        for ns, dev, addr in (
            (self.client, self.client_dev, self.client_addr),
            (self.server, self.server_dev, self.server_addr),
        ):
            _ip("-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        self.netem = netem_available(self.client)
        return self

    def remove(self) -> None:
        """Deletes both namespaces (the veth pair goes with them); safe to call twice."""
        if not self._created:
            return
        self._created = False
        errors = []
        for ns in (self.client, self.server):
            if ns in namespaces():
                proc = _ip("netns", "del", ns, check=False)
                if proc.returncode:
                    errors.append(proc.stderr.strip())
        atexit.unregister(self.remove)
        if errors:
            raise RuntimeError(f"could not remove network namespaces: {errors}")

    def __enter__(self) -> NamespacePair:
        for sig in (signal.SIGTERM, signal.SIGHUP):  # a stopped job cleans up as an exception does
            if threading.current_thread() is threading.main_thread():
                self._old_handlers[sig] = signal.signal(sig, _raise_exit)
        try:
            return self.create()
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            self.remove()
        finally:
            for sig, handler in self._old_handlers.items():
                signal.signal(sig, handler)
            self._old_handlers.clear()

    # ---- use

    def namespace(self, side: str) -> str:
        if side not in ("client", "server"):
            raise ValueError(f"side must be client or server, got {side!r}")
        return self.client if side == "client" else self.server

    def call_in(self, side: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return call_in(self.namespace(side), fn, *args, **kwargs)

    def popen(self, side: str, cmd: list[str], **kwargs: Any) -> subprocess.Popen:
        """A process in one namespace (``ip netns exec``)."""
        return subprocess.Popen(["ip", "netns", "exec", self.namespace(side), *cmd], **kwargs)

    def shape(self, link: Link) -> str:
        """Applies ``link`` to both ends, replacing what was there. Returns who delays: ``none``,
        ``netem``, or ``relay`` (netem is missing: the caller must put a relay on the path)."""
        for ns, dev in ((self.client, self.client_dev), (self.server, self.server_dev)):
            subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root"],
                           capture_output=True, timeout=30)  # fmt: skip
            for qdisc in qdiscs(dev, link, netem=self.netem):
                _tc(ns, qdisc)
        if not link.delays:
            return "none"
        return "netem" if self.netem else "relay"


def _raise_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def qdiscs(dev: str, link: Link, *, netem: bool) -> list[list[str]]:
    """The ``tc qdisc add`` argument lists for one end: netem (half the round trip, half the jitter,
    the loss) as the root with tbf under it, or tbf alone."""
    tbf = []
    if link.bandwidth:
        rate = rate_bits(link.bandwidth)
        # burst: at least 10 ms of traffic and a 64 KiB segment (veth sends GSO super-packets);
        # latency bounds the queue, as a router's buffer would.
        burst = max(64 * 1024, int(rate / 8 / 100))
        tbf = ["tbf", "rate", f"{int(rate)}bit", "burst", str(burst), "latency", "100ms"]
    rules = []
    if netem and link.delays:
        half, jitter = link.rtt_ms / 2, link.jitter_ms / 2
        rule = ["dev", dev, "root", "handle", "1:", "netem", "delay", f"{half}ms"]
        if jitter:
            rule.append(f"{jitter}ms")
        if link.loss_pct:
            rule += ["loss", f"{link.loss_pct}%"]
        rules.append(rule)
        if tbf:
            rules.append(["dev", dev, "parent", "1:1", "handle", "10:", *tbf])
    elif tbf:
        rules.append(["dev", dev, "root", "handle", "1:", *tbf])
    return rules


def _tc(ns: str, args: list[str]) -> None:
    cmd = ["ip", "netns", "exec", ns, "tc", "qdisc", "add", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if proc.returncode:
        raise RuntimeError(f"`{' '.join(cmd[4:])}` failed in {ns}: {proc.stderr.strip()}")


def netem_available(ns: str) -> bool:
    """Whether the kernel has the netem qdisc (tried on the namespace's loopback, then removed)."""
    add = ["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "0ms"]
    if subprocess.run(add, capture_output=True, timeout=30).returncode:
        return False
    subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", "lo", "root"],
                   capture_output=True, timeout=30)  # fmt: skip
    return True
