"""``smilejax serve REPO``: a real NVIDIA Triton Inference Server on a model repository, until Ctrl-C."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from .common import add_command, existing

EPILOG = """\
Where the server comes from:
  laptop / CI     bash launch/install_triton.sh   (the server binary and Python backend from the
                  nvidia-pytriton wheel, unpacked into the venv without touching its numpy)
  HPC / GPU node  NVIDIA's container, which also has the ONNX Runtime backend for the production
                  model, e.g. with Apptainer:
                    apptainer exec --nv docker://nvcr.io/nvidia/tritonserver:25.01-py3 \\
                      smilejax serve REPO --host 0.0.0.0 --key-file KEY --grpc-tls-cert ...
                  (smilejax, jax[cuda12] and onnxruntime-gpu pip-installed for the container's Python,
                  which must be 3.11 or newer, for the Python-backend models; give Docker
                  --shm-size=1g for the Python backend; ports, tunnels: docs/SERVING-HPC.md)

Models whose backend the server lacks are left out (the ONNX Runtime one with the wheel's server).
The server binds to 127.0.0.1 unless --host says otherwise. Across a wide-area network, use TLS on
gRPC (--grpc-tls-cert/--grpc-tls-key, --grpc-tls-root for mutual TLS) and require a key on inference
(--key-file, or SMILEJAX_SERVE_KEY): clients send it in the header 'smilejax-key' over HTTP and
'triton-grpc-protocol-smilejax-key' over gRPC (smilejax.serve.client.Client(..., key=...) does).
Triton receives the key on its command line: keep the host's process list private, or rely on
mutual TLS. Model loading, shared memory, traces and logging are refused to every client. Serving
from an HPC site (ports, SSH tunnels, certificates): docs/SERVING-HPC.md. Ctrl-C (or SIGTERM) stops
the server cleanly: Triton has --exit-timeout seconds for the requests in flight, then 15 s to unload
its models; a server still running then gets SIGTERM, and SIGKILL 5 s later (both said on stderr).
If smilejax serve itself is killed (SIGKILL, the OOM killer, a cancelled job), Linux sends Triton
SIGTERM (prctl PR_SET_PDEATHSIG), so it does not keep the GPU and the ports; elsewhere it keeps running.

exit codes: 0 stopped by Ctrl-C/SIGTERM, 1 Triton or a model failed, 2 bad option, no such REPO, or a
port in use (named, with the option that moves it)."""


def register(sub) -> None:
    parser = add_command(
        sub,
        "serve",
        help="serve a model repository with NVIDIA Triton Inference Server (HTTP and gRPC)",
        description="Start Triton Inference Server on REPO (see smilejax export), wait until its models "
        "are ready, print the endpoints, and serve until Ctrl-C.",
        epilog=EPILOG,
    )
    parser.add_argument("repo", metavar="REPO", help="model repository written by smilejax export")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=None, help="Prometheus metrics (default: off)")
    parser.add_argument("--models", help="comma list of models to load (default: all the server can run)")
    parser.add_argument("--triton", help="tritonserver binary (default: see smilejax.serve.server)")
    parser.add_argument("--grpc-tls-cert", help="PEM server certificate: gRPC over TLS")
    parser.add_argument("--grpc-tls-key", help="PEM server private key")
    parser.add_argument(
        "--grpc-tls-root", help="PEM CA certificate: require client certificates (mutual TLS)"
    )
    parser.add_argument("--key-file", help="file holding the key required on inference requests")
    parser.add_argument("--exit-timeout", type=int, default=30, help="seconds to finish requests on stop")
    parser.add_argument("--ready-timeout", type=float, default=600, help="seconds to wait for the models")
    parser.add_argument("--log-verbose", type=int, default=0, help="Triton's verbose log level")
    parser.set_defaults(run=run)


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: only its resolution tells, so warn
        return False


def run(args: argparse.Namespace) -> int:
    existing(args.repo, "model repository")
    from pathlib import Path

    from smilejax.serve.server import KEY_HEADER, PortBusy, Security, TritonServer

    key = os.environ.get("SMILEJAX_SERVE_KEY")
    if args.key_file:
        key = Path(args.key_file).read_text().strip()
    security = Security(
        tls_cert=args.grpc_tls_cert, tls_key=args.grpc_tls_key, tls_root=args.grpc_tls_root, key=key
    )
    if key is None and not _loopback(args.host):
        print(
            f"smilejax: warning: serving on {args.host} without --key-file (or SMILEJAX_SERVE_KEY): anyone "
            "who reaches this address can run inference; see docs/SERVING-HPC.md",
            file=sys.stderr,
            flush=True,
        )
    server = TritonServer(
        args.repo,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        models=[m for m in (args.models or "").split(",") if m] or None,
        binary=args.triton,
        security=security,
        exit_timeout_s=args.exit_timeout,
        log_verbose=args.log_verbose,
    )
    for model, why in server.skipped.items():
        print(f"not loading {model}: {why}", flush=True)

    def terminate(signum, frame):  # SIGTERM (scheduler, docker stop) stops like Ctrl-C
        raise KeyboardInterrupt

    def stopping(signum, frame):  # a second signal must not cut the bounded stop short
        # os.write: print here could re-enter a print the signal interrupted.
        os.write(2, f"already stopping Triton (killed {server.stop_seconds():g} s after SIGINT)\n".encode())

    # Both set here, not left to Python: a process started in the background by a non-interactive shell
    # (nohup ... &, as CI may run the tests) inherits SIGINT ignored, and Python then installs no
    # KeyboardInterrupt for it, so Ctrl-C would never stop the server.
    signal.signal(signal.SIGINT, terminate)
    signal.signal(signal.SIGTERM, terminate)
    try:
        server.start()  # inside the try: a signal the moment Triton exists still stops it
        server.wait_ready(args.ready_timeout)
        tls = " (TLS)" if security.tls_cert else ""
        print(
            f"ready: {', '.join(server.models)} at http://{server.http_url} and grpc{tls} {server.grpc_url}"
            + (f"; inference requires the {KEY_HEADER!r} header" if key else ""),
            flush=True,
        )
        code = server.process.wait()
        print(f"Triton exited with code {code}", file=sys.stderr)
        return 1
    except PortBusy as err:
        print(f"smilejax: error: {err}; choose another with --{err.endpoint}-port", file=sys.stderr)
        return 2
    except (RuntimeError, TimeoutError) as err:  # the server or a model failed to start
        print(f"smilejax: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, stopping)
        signal.signal(signal.SIGTERM, stopping)
        term_s = server.exit_timeout_s + server.stop_grace_s
        print(
            f"stopping Triton (SIGINT; if it still runs, SIGTERM after {term_s:g} s and SIGKILL after "
            f"{server.stop_seconds():g} s)",
            flush=True,
        )
        code = server.stop()
        print(f"stopped (Triton exit code {code})", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGINT, stopping)  # an error's stop is bounded and uninterrupted too
        signal.signal(signal.SIGTERM, stopping)
        server.stop()
