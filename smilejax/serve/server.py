"""Starts and stops a real NVIDIA Triton Inference Server on a model repository.

The binary is, in this order: ``binary=``, ``$SMILEJAX_TRITONSERVER``, the one
``launch/install_triton.sh`` unpacked into this environment (``sys.prefix/triton``, from the
nvidia-pytriton wheel: Python backend only), ``tritonserver`` on PATH or ``/opt/tritonserver`` (NGC
containers: ONNX Runtime backend too). Models whose backend the server lacks are not loaded.

The Python backend's stub embeds this interpreter: its ``libpython`` directory goes on
``LD_LIBRARY_PATH`` and this environment's ``bin`` first on PATH, so the stub finds this venv's packages.

Security for wide-area serving (Triton's own mechanisms): TLS on gRPC (``tls_cert``/``tls_key``, and
``tls_root`` for mutual TLS), and a header key required on inference over HTTP and gRPC
(``key``; clients send it in the header ``smilejax-key`` over HTTP,
``triton-grpc-protocol-smilejax-key`` over gRPC; ``smilejax.serve.client.Client(key=...)`` does).
The key appears in the server's command line, so protect the host's process list, or use mutual TLS.
The key also guards metadata, statistics and model configs; health stays open. The administrative
APIs (model loading, shared memory, traces, logging) are restricted with a random key that no client
is told. Serving from an HPC site: docs/SERVING-HPC.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

from smilejax.serve.parent_death import launch_error, with_parent_death
from smilejax.serve.repository import METADATA

log = logging.getLogger(__name__)

KEY_HEADER = "smilejax-key"
ADMIN_HEADER = "smilejax-admin-key"
# What the inference key guards (health stays open: readiness probes and tunnels' checks need no key).
KEYED_APIS = ("inference", "metadata", "model-config", "statistics")
# Refused to every client: loading models (code the server runs), shared memory, traces and logs.
ADMIN_APIS = ("model-repository", "shared-memory", "trace", "logging")
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"  # gRPC clients send the key as this prefix + KEY_HEADER
INSTALL_HINT = (
    "no Triton Inference Server found: run `bash launch/install_triton.sh` (unpacks the server from the "
    "nvidia-pytriton wheel into this venv), set SMILEJAX_TRITONSERVER to a tritonserver binary, or run "
    "inside NVIDIA's tritonserver container"
)


class PortBusy(ValueError):
    """A port the server should listen on is taken (``endpoint``: http, grpc or metrics)."""

    def __init__(self, endpoint: str, host: str, port: int, reason: str):
        super().__init__(f"cannot serve {endpoint.upper()} on {host}:{port}: {reason}")
        self.endpoint, self.host, self.port = endpoint, host, port


def check_port(endpoint: str, host: str, port: int) -> None:
    """Raises PortBusy unless ``host:port`` can be listened on now (as Triton does, with SO_REUSEADDR,
    so a port whose last connections linger in TIME_WAIT counts as free)."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise PortBusy(endpoint, host, port, f"unknown address ({err.strerror})") from None
    failures = []
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
                probe.listen()
            except OSError as err:
                if err.errno == errno.EADDRINUSE:
                    raise PortBusy(endpoint, host, port, "the port is in use") from None
                failures.append(err.strerror)
    if len(failures) == len(addresses):  # e.g. an address of another machine (one family may lack it)
        raise PortBusy(endpoint, host, port, failures[0])


@dataclasses.dataclass(frozen=True)
class Security:
    tls_cert: str | None = None  # PEM server certificate: gRPC over TLS
    tls_key: str | None = None  # PEM server key
    tls_root: str | None = None  # PEM CA: clients must present a certificate it signed (mutual TLS)
    key: str | None = None  # value clients send in the KEY_HEADER header on inference

    def __post_init__(self):
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("gRPC TLS needs both a certificate and a key (--grpc-tls-cert, --grpc-tls-key)")
        if self.tls_root and not self.tls_cert:
            raise ValueError("mutual TLS (--grpc-tls-root) needs --grpc-tls-cert and --grpc-tls-key")
        for path in (self.tls_cert, self.tls_key, self.tls_root):
            if path and not Path(path).is_file():
                raise FileNotFoundError(f"{path}: no such file")
        if self.key is not None and (not self.key or any(c in self.key for c in ",:= \n")):
            raise ValueError("the inference key must be non-empty, without spaces, ',', ':' or '='")


def find_binary(binary: str | os.PathLike | None = None) -> Path:
    candidates = [
        binary,
        os.environ.get("SMILEJAX_TRITONSERVER"),
        Path(sys.prefix) / "triton" / "pytriton" / "tritonserver" / "bin" / "tritonserver",
        shutil.which("tritonserver"),
        "/opt/tritonserver/bin/tritonserver",
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
        if candidate is binary and binary is not None:
            raise FileNotFoundError(f"{binary}: not an executable tritonserver")
    raise FileNotFoundError(INSTALL_HINT)


def backends_of(binary: Path) -> set[str]:
    """The backends installed beside ``binary`` (``../backends/<name>``)."""
    directory = binary.parent.parent / "backends"
    return {p.name for p in directory.iterdir() if p.is_dir()} if directory.is_dir() else set()


class TritonServer:
    """``with TritonServer(repo, http_port=..., grpc_port=...) as server:`` starts, waits until the
    models are ready, and stops the server at the end (``stop``: SIGINT, then SIGTERM and SIGKILL). On
    Linux, a server started from the main thread also gets SIGTERM if this process is killed."""

    def __init__(
        self,
        repo: str | os.PathLike,
        *,
        host: str = "127.0.0.1",
        http_port: int = 8000,
        grpc_port: int = 8001,
        metrics_port: int | None = None,  # None: no metrics endpoint
        models: list[str] | None = None,  # None: every model of the repository the server can run
        binary: str | os.PathLike | None = None,
        security: Security | None = None,
        exit_timeout_s: int = 30,
        stop_grace_s: float = 15,  # after exit_timeout_s, for unloading the models: then SIGTERM
        kill_grace_s: float = 5,  # after SIGTERM: then SIGKILL
        log_file: str | os.PathLike | None = None,  # None: the server logs to this process's output
        log_verbose: int = 0,
    ):
        self.repo = Path(repo).resolve()
        if not self.repo.is_dir():
            raise FileNotFoundError(f"{repo}: no such model repository")
        self.binary = find_binary(binary)
        self.host, self.http_port, self.grpc_port, self.metrics_port = (
            host,
            http_port,
            grpc_port,
            metrics_port,
        )
        self.security = security or Security()
        self.exit_timeout_s = exit_timeout_s
        self.stop_grace_s, self.kill_grace_s = stop_grace_s, kill_grace_s
        self.log_file = Path(log_file) if log_file else None
        self.log_verbose = log_verbose
        self.models, self.skipped = self._choose_models(models)
        self.process: subprocess.Popen | None = None
        self._log: IO | None = None
        self._admin_key = secrets.token_hex(16)

    # ---- set-up

    def _choose_models(self, wanted: list[str] | None) -> tuple[list[str], dict[str, str]]:
        """Models to load and, for those left out, why."""
        meta_path = self.repo / METADATA
        available = backends_of(self.binary)
        backends = json.loads(meta_path.read_text())["models"] if meta_path.exists() else {}
        backends = {name: info["backend"] for name, info in backends.items()}
        if not backends:  # a repository smilejax did not write: whatever has a config
            backends = {p.parent.name: "?" for p in self.repo.glob("*/config.pbtxt")}
        if wanted:
            unknown = [m for m in wanted if m not in backends]
            if unknown:
                raise ValueError(f"model(s) {unknown} are not in {self.repo} (it has {sorted(backends)})")
            lacking = [m for m in wanted if backends[m] not in available | {"?"}]
            if lacking:
                raise ValueError(
                    f"{self.binary} has no {backends[lacking[0]]!r} backend for {lacking[0]!r} "
                    f"(its backends: {sorted(available)})"
                )
            return list(wanted), {}
        chosen = [m for m, b in sorted(backends.items()) if b in available or b == "?"]
        skipped = {m: f"no {b!r} backend in this server" for m, b in backends.items() if m not in chosen}
        if not chosen:
            raise ValueError(f"the server has none of the backends {self.repo}'s models need: {skipped}")
        return chosen, skipped

    def command(self) -> list[str]:
        cmd = [
            str(self.binary),
            f"--model-repository={self.repo}",
            f"--backend-directory={self.binary.parent.parent / 'backends'}",
            "--model-control-mode=explicit",
            *(f"--load-model={m}" for m in self.models),
            "--strict-readiness=true",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--log-verbose={self.log_verbose}",
            # The Python backend's shared-memory regions are named by this prefix: one per server, so
            # several servers can share a machine.
            f"--backend-config=python,shm-region-prefix-name=smilejax_{os.getpid()}_{self.http_port}_",
        ]
        if self.metrics_port is None:
            cmd.append("--allow-metrics=false")
        else:
            cmd += [f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}"]
        caches = self.binary.parent.parent / "caches"
        if caches.is_dir():
            cmd.append(f"--cache-directory={caches}")
        sec = self.security
        if sec.tls_cert:
            cmd += [
                "--grpc-use-ssl=true",
                f"--grpc-server-cert={sec.tls_cert}",
                f"--grpc-server-key={sec.tls_key}",
            ]
            if sec.tls_root:
                cmd += ["--grpc-use-ssl-mutual=true", f"--grpc-root-cert={sec.tls_root}"]
        # The administrative APIs take a key nobody is told: with explicit model control, a client that
        # reaches a port could otherwise unload models, or load one whose Python code the server runs.
        admin = ",".join(ADMIN_APIS)
        cmd += [
            f"--http-restricted-api={admin}:{ADMIN_HEADER}={self._admin_key}",
            f"--grpc-restricted-protocol={admin}:{ADMIN_HEADER}={self._admin_key}",
        ]
        if sec.key:
            keyed = ",".join(KEYED_APIS)
            cmd += [
                f"--http-restricted-api={keyed}:{KEY_HEADER}={sec.key}",
                f"--grpc-restricted-protocol={keyed}:{KEY_HEADER}={sec.key}",
            ]
        return cmd

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env

    # ---- life cycle

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def ports(self) -> dict[str, int]:
        """The ports the server listens on, by endpoint."""
        ports = {"http": self.http_port, "grpc": self.grpc_port}
        if self.metrics_port is not None:
            ports["metrics"] = self.metrics_port
        return ports

    def start(self) -> TritonServer:
        """Starts the server; raises PortBusy first when one of its ports is taken, so that the error
        names the port rather than leaving it to Triton's log."""
        if self.process is not None:
            raise RuntimeError("the server is already started")
        for endpoint, port in self.ports().items():
            check_port(endpoint, self.host, port)
        out = None
        if self.log_file:
            self._log = out = open(self.log_file, "ab")  # noqa: SIM115 (closed in stop)
        shown = " ".join(self.command()).replace(self._admin_key, "***")
        log.info("starting Triton: %s", shown.replace(self.security.key or "\0", "***"))
        # Its own session: a terminal's Ctrl-C reaches us, and we stop the server in order. Tied to this
        # process's life (Linux, started from the main thread): if we are killed (SIGKILL, OOM), Triton
        # gets SIGTERM rather than holding the GPU and the ports; see smilejax.serve.parent_death.
        self.process = subprocess.Popen(
            with_parent_death(self.command()),
            env=self.env(),
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
        )
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout_s: float = 300) -> None:
        """Returns once every loaded model is ready; raises if the server exits or the time runs out."""
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if self.process is None:
                raise RuntimeError("the server is not started")
            if self.process.poll() is not None:
                code = self.process.returncode
                # the launcher's reason first: otherwise it reads as Triton's own failure
                reason = launch_error(code, self._log_text())
                if reason is not None:
                    raise RuntimeError(
                        f"Triton was not started: {reason} (launcher exit code {code}){self._tail()}"
                    )
                raise RuntimeError(f"Triton exited with code {code} before it was ready{self._tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"Triton was not ready after {timeout_s:.0f} s{self._tail()}")
            time.sleep(0.2)

    def _log_text(self) -> str | None:
        if self.log_file and self.log_file.exists():
            return self.log_file.read_text(errors="replace")
        return None

    def _tail(self, chars: int = 4000) -> str:
        text = self._log_text()
        return "" if text is None else f"; its log ({self.log_file}) ends:\n" + text[-chars:]

    def stop_seconds(self) -> float:
        """The longest ``stop`` waits before it sends SIGKILL."""
        return self.exit_timeout_s + self.stop_grace_s + self.kill_grace_s

    def stop(self) -> int | None:
        """Stops the server and returns its exit code, in bounded time: SIGINT (Triton finishes the
        requests in flight for up to ``exit_timeout_s``, then unloads its models); if it is still running
        ``stop_grace_s`` after that, SIGTERM to its process group (Triton and its Python backend's
        stubs); ``kill_grace_s`` later, SIGKILL to the group. Each escalation is logged."""
        if self.process is None:
            return None
        try:
            self._signal_until_stopped()
        finally:
            if self._log:
                self._log.close()
                self._log = None
        return self.process.returncode

    def _signal_until_stopped(self) -> None:
        proc = self.process
        waits = {
            signal.SIGINT: self.exit_timeout_s + self.stop_grace_s,
            signal.SIGTERM: self.kill_grace_s,
            signal.SIGKILL: 10.0,  # only a process stuck in the kernel outlives this
        }
        previous = None
        for sig, wait_s in waits.items():
            if proc.poll() is not None:
                return
            if previous is None:
                proc.send_signal(sig)
            else:
                log.warning(
                    "Triton (pid %d) did not stop within %g s of %s; sending %s to its process group",
                    proc.pid, waits[previous], previous.name, sig.name,
                )  # fmt: skip
                # Its own session (start_new_session): the group is Triton and its backends' stubs.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=wait_s)
            previous = sig
        if proc.poll() is None:
            log.error("Triton (pid %d) outlived SIGKILL by %g s; leaving it", proc.pid, waits[signal.SIGKILL])

    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
