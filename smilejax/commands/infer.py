"""``smilejax infer FILE... --server HOST:PORT --model NAME``: stream data files through a served model."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .common import add_command, existing

EPILOG = """\
Each FILE is read in order, --batch-size examples a request, with at most --max-in-flight requests
on the wire; its scores go to <stem>.scores.h5 beside it (or --out): one dataset per model output
(e.g. jet probabilities), whose row i is the score of the file's example i (for an HDF5 file, row i
of its tables). The file is written whole or not at all.

The file is read as the run the export came from read its data (format, variables, element count,
normalisation): --repo names the export repository, or a copy of its smilejax_export.json.

Transient failures (server unreachable or not up yet, connection reset, timeout, HTTP 502/503/504,
gRPC UNAVAILABLE) are retried --retries times with exponential backoff; a bad request (wrong shape,
unknown model, refused key) fails at once with the server's message.

Security: --key-file (or SMILEJAX_SERVE_KEY) sends the key 'smilejax serve --key-file' asks for;
--tls-root CA speaks gRPC over TLS, --tls-cert/--tls-key add a client certificate (mutual TLS).
See docs/SERVING-HPC.md for tunnels and certificates.

exit codes: 0 every file scored, 1 a request failed (after its retries), 2 bad option or input."""


def register(sub) -> None:
    parser = add_command(
        sub,
        "infer",
        help="score data files with a served model (batched, bounded in-flight requests, retries)",
        description="Stream FILE's examples through a model served by Triton (smilejax serve) and write "
        "the scores beside it.",
        epilog=EPILOG,
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="data files (e.g. HDF5) to score")
    parser.add_argument("--server", metavar="HOST:PORT", help="the server's endpoint (gRPC or HTTP port)")
    parser.add_argument("--model", help="the served model's name (e.g. from smilejax serve)")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="no server: run the exported run's model (its run directory) here, with the same batches "
        "(the baseline of a served model's throughput)",
    )
    parser.add_argument(
        "--repo",
        required=True,
        metavar="REPO",
        help="the export repository, or its smilejax_export.json: how to read FILE",
    )
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc", help="default grpc")
    parser.add_argument(
        "--batch-size", type=int, help="examples per request (default: the export's --max-batch-size)"
    )
    parser.add_argument("--max-in-flight", type=int, default=4, help="requests at once (default 4)")
    parser.add_argument("--retries", type=int, default=5, help="tries after a transient failure (default 5)")
    parser.add_argument("--timeout", type=float, default=60, help="seconds per request (default 60)")
    parser.add_argument("--key-file", help="file holding the server's inference key")
    parser.add_argument("--tls-root", metavar="CA", help="PEM CA of the server certificate: gRPC over TLS")
    parser.add_argument("--tls-cert", help="PEM client certificate (mutual TLS)")
    parser.add_argument("--tls-key", help="PEM client private key (mutual TLS)")
    parser.add_argument("--out", help="scores file (one FILE) or folder (several; default: beside each FILE)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def _metadata(repo: str) -> dict:
    from smilejax.serve.repository import METADATA

    path = existing(repo, "export repository")
    path = path / METADATA if path.is_dir() else path
    existing(path, "export metadata (smilejax_export.json)")
    return json.loads(path.read_text())


def _targets(files: list[str], out: str | None) -> list[Path | None]:
    if out is None:
        return [None] * len(files)
    if len(files) == 1 and not Path(out).is_dir():
        return [Path(out)]
    from smilejax.serve.stream import scores_path

    Path(out).mkdir(parents=True, exist_ok=True)
    return [Path(out) / scores_path(f).name for f in files]


def run(args: argparse.Namespace) -> int:
    for f in args.files:
        existing(f, "file")
    metadata = _metadata(args.repo)
    if args.batch_size is None:  # the largest batch the server takes
        args.batch_size = int(metadata.get("triton", {}).get("max_batch_size", 64))
    if args.batch_size < 1 or args.max_in_flight < 1 or args.retries < 0:
        raise ValueError("--batch-size and --max-in-flight must be at least 1, --retries at least 0")
    if args.in_process == bool(args.server and args.model):
        raise ValueError("give --server and --model (a served model), or --in-process")
    from smilejax.serve.client import InferenceError
    from smilejax.serve.stream import Connection, InProcess, Retry, infer_file, transient

    key = os.environ.get("SMILEJAX_SERVE_KEY")
    if args.key_file:
        key = existing(args.key_file, "key file").read_text().strip()
    if args.in_process:
        connection = InProcess(metadata)
    else:
        connection = Connection(
            args.server,
            args.model,
            protocol=args.protocol,
            key=key,
            tls_root=args.tls_root,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            timeout_s=args.timeout,
        )
    for path, target in zip(args.files, _targets(args.files, args.out), strict=True):
        try:
            written, stats = infer_file(
                path,
                connection,
                metadata,
                out=target,
                batch_size=args.batch_size,
                max_in_flight=args.max_in_flight,
                retry=Retry(retries=args.retries),
                progress=not args.no_progress,
            )
        except Exception as err:
            if not (isinstance(err, InferenceError) or transient(err)):
                raise  # a bad option or input: exit 2 with its message
            after = f" (after {args.retries} retries)" if transient(err) else ""
            print(f"smilejax: error: {path}: {err}{after}", file=sys.stderr)
            return 1
        print(
            f"{path} -> {written}: {stats.rows} rows in {stats.wall_s:.1f} s ({stats.rows_per_s:.0f} rows/s; "
            f"{stats.requests} requests, {stats.retries} retries)",
            flush=True,
        )
    return 0
