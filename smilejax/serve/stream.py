"""Streams a data file through a served model, as CMS's SONIC clients do: ``infer_file(path, ...)``.

- The file's examples are read in order, ``batch_size`` at a time, and sent by ``max_in_flight`` threads,
  each with its own ``Client``: at most that many requests are in flight, and at most that many
  batches (plus one being read) are in memory.
- Transient failures (the server not reachable yet, a connection reset, a timeout, HTTP 502/503/504,
  gRPC UNAVAILABLE/DEADLINE_EXCEEDED/RESOURCE_EXHAUSTED) are retried with exponential backoff and
  jitter, on a fresh connection; anything else (a bad request: wrong shape, unknown model, a refused
  key) fails at once with the server's message.
- Scores go to ``<stem>.scores.h5`` beside the input (or ``out``): one dataset per model output whose
  row ``i`` is the score of the input's example ``i`` (for an HDF5 file, row ``i`` of its tables).

The file is read as the export takes it (the repository's ``smilejax_export.json`` names the data
format and its options): the variables as the file stores them for a raw export (``client.raw_batch``;
the model normalises inside), else the model's own inputs through the run's data format with the
normalisation the export recorded.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import errno
import logging
import random
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from smilejax.serve.client import Client, InferenceError
from smilejax.serve.files import (  # noqa: F401 (re-exported: their home was here)
    SUFFIX,
    Reader,
    ScoresFile,
    file_reader,
    scores_path,
)

log = logging.getLogger(__name__)

TRANSIENT_STATUS = {
    "502",  # HTTP: a proxy found no server
    "503",
    "504",
    "StatusCode.UNAVAILABLE",  # gRPC: not reachable (yet), connection lost
    "StatusCode.DEADLINE_EXCEEDED",
    "StatusCode.RESOURCE_EXHAUSTED",
}

TRANSIENT_ERRNO = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.ETIMEDOUT}


@dataclasses.dataclass(frozen=True)
class Connection:
    """Where the model is served and how to reach it (see ``smilejax.serve.client.Client``)."""

    url: str
    model: str
    protocol: str = "grpc"
    key: str | None = None
    tls_root: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    timeout_s: float = 60.0

    def __post_init__(self):
        for path in (self.tls_root, self.tls_cert, self.tls_key):
            if path and not Path(path).is_file():
                raise FileNotFoundError(f"{path}: no such file")
        if bool(self.tls_cert) != bool(self.tls_key) or (self.tls_cert and not self.tls_root):
            raise ValueError("a client certificate needs its key and the server's CA (--tls-root)")

    def client(self) -> Client:
        return Client(
            self.url,
            self.model,
            protocol=self.protocol,
            key=self.key,
            tls_root=self.tls_root,
            tls_cert=self.tls_cert,
            tls_key=self.tls_key,
            timeout_s=self.timeout_s,
        )


class InProcess:
    """The exported run's model run by JAX in this process, in place of a server (same reader, batches
    and scores file): the baseline a served model's throughput is compared with."""

    url = "in-process"

    def __init__(self, metadata: Mapping[str, Any]):
        import jax

        from smilejax import trained
        from smilejax.serve import export

        run = metadata["source_run"]
        tm = trained.load(run["dir"], step=run.get("step"))
        # the program the export made: the files' variables in (raw) or the model's own inputs
        fwd = export.forward(tm, raw=bool(metadata.get("raw")))
        self.model = str(metadata.get("name", "model"))
        self._names = [t.name for t in fwd.inputs]
        self._fn = jax.jit(fwd.fn)
        self._get = jax.device_get

    def client(self) -> InProcess:
        return self

    def warm(self, batch: Mapping[str, np.ndarray]) -> None:
        """Compiles for ``batch``'s shapes before the clock starts (a server compiled when it loaded);
        ``stream`` warms every batch size it will send (``batch_shapes``)."""
        self.infer(batch)

    def infer(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self._get(self._fn(*(batch[n] for n in self._names)))
        return {k: np.asarray(v) for k, v in out.items()}

    def close(self) -> None:
        pass


@dataclasses.dataclass(frozen=True)
class Retry:
    """``retries`` more tries per request after a transient failure, waiting ``backoff_s * 2**k`` (at
    most ``max_backoff_s``, with +-25% jitter so that clients do not retry in step)."""

    retries: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 10.0

    def wait_s(self, attempt: int) -> float:
        return min(self.backoff_s * 2**attempt, self.max_backoff_s) * random.uniform(0.75, 1.25)


@dataclasses.dataclass
class Stats:
    rows: int = 0
    requests: int = 0
    retries: int = 0
    wall_s: float = 0.0

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.wall_s if self.wall_s else 0.0


def transient(err: BaseException) -> bool:
    """Whether trying again may succeed: the network or an overloaded server, not the request."""
    if isinstance(err, InferenceError):
        status = getattr(err.__cause__, "status", None)
        return callable(status) and str(status()) in TRANSIENT_STATUS
    # tritonclient's HTTP client lets socket errors through: refused, reset, timed out, unreachable
    return isinstance(err, (ConnectionError, TimeoutError)) or (
        isinstance(err, OSError) and err.errno in TRANSIENT_ERRNO
    )


class _Sender:
    """One ``Client`` per thread; a transient failure drops the thread's connection and retries."""

    def __init__(self, connection: Connection | InProcess, retry: Retry, stats: Stats):
        self.connection, self.retry, self.stats = connection, retry, stats
        self._local = threading.local()
        self._lock = threading.Lock()
        self._clients: list[Client | InProcess] = []
        self.cancelled = threading.Event()

    def _client(self) -> Client | InProcess:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self.connection.client()
            with self._lock:
                self._clients.append(client)
        return client

    def send(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        for attempt in range(self.retry.retries + 1):
            try:
                out = self._client().infer(batch)
                with self._lock:
                    self.stats.requests += 1
                return out
            except Exception as err:
                if not transient(err) or attempt == self.retry.retries or self.cancelled.is_set():
                    raise
                wait = self.retry.wait_s(attempt)
                log.warning("transient failure (%s); retry %d in %.1f s", _message(err), attempt + 1, wait)
                with self._lock:
                    self.stats.retries += 1
                self._local.client = None  # a fresh connection for the next try
                if self.cancelled.wait(wait):
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        for client in self._clients:
            with contextlib.suppress(Exception):  # closing a connection that already failed
                client.close()


def batch_shapes(n: int, batch_size: int) -> list[np.ndarray]:
    """The indices of one batch of each size that ``stream`` sends for ``n`` examples: the first and,
    when ``batch_size`` does not divide ``n``, the shorter last one."""
    firsts = [0] if n else []
    if n > batch_size and n % batch_size:
        firsts.append(n - n % batch_size)
    return [np.arange(first, min(first + batch_size, n)) for first in firsts]


def _message(err: BaseException) -> str:
    return str(err) or type(err).__name__


def stream(
    reader: Reader,
    connection: Connection | InProcess,
    write: Callable[[int, dict[str, np.ndarray]], None],
    *,
    batch_size: int = 256,
    max_in_flight: int = 4,
    retry: Retry = Retry(),
    progress: bool = True,
) -> Stats:
    """Sends ``reader``'s examples in order; ``write(first_row, outputs)`` gets each batch's outputs as
    it completes (in any order). Raises the first request that fails for good (pending ones are dropped)."""
    if batch_size < 1 or max_in_flight < 1 or retry.retries < 0:
        raise ValueError(
            f"batch_size and max_in_flight must be at least 1 and retries at least 0, got {batch_size}, "
            f"{max_in_flight} and {retry.retries}"
        )
    from tqdm import tqdm

    n = len(reader)
    stats = Stats()
    sender = _Sender(connection, retry, stats)
    pending: dict[cf.Future, int] = {}
    bar = tqdm(total=n, unit="row", disable=not progress, desc=connection.model, smoothing=0.1)
    warm = getattr(connection, "warm", None)
    if warm is not None:  # every shape compiles before the clock starts, the short last batch's too
        for indices in batch_shapes(n, batch_size):
            warm(reader.read(indices))
    t0 = time.perf_counter()

    def finish(done: set[cf.Future]) -> None:
        for future in done:
            first = pending.pop(future)
            out = future.result()  # raises the request's error
            rows = len(next(iter(out.values())))
            write(first, out)
            stats.rows += rows
            bar.update(rows)

    pool = cf.ThreadPoolExecutor(max_in_flight, thread_name_prefix="infer")
    try:
        for first in range(0, n, batch_size):
            batch = reader.read(np.arange(first, min(first + batch_size, n)))
            pending[pool.submit(sender.send, batch)] = first
            if len(pending) >= max_in_flight:
                done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                finish(done)
        while pending:
            done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            finish(done)
    finally:
        sender.cancelled.set()  # threads waiting to retry give up at once
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True)
        sender.close()
        bar.close()
        stats.wall_s = time.perf_counter() - t0
    return stats


# ---------------------------------------------------------------- files


def infer_file(
    path: str | Path,
    connection: Connection | InProcess,
    metadata: Mapping[str, Any],
    *,
    out: str | Path | None = None,
    batch_size: int = 256,
    max_in_flight: int = 4,
    retry: Retry = Retry(),
    progress: bool = True,
) -> tuple[Path, Stats]:
    """Streams ``path`` through the served model; returns the scores file and the counts."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    target = Path(out) if out else scores_path(path)
    with tempfile.TemporaryDirectory(prefix="smilejax-infer-") as workdir:
        reader = file_reader(path, metadata, Path(workdir))
        try:
            attrs = {"input": str(path.resolve()), "model": connection.model, "server": connection.url}
            scores = ScoresFile(target, len(reader), attrs)
            ok = False
            try:
                stats = stream(
                    reader,
                    connection,
                    scores.write,
                    batch_size=batch_size,
                    max_in_flight=max_in_flight,
                    retry=retry,
                    progress=progress,
                )
                ok = stats.rows == len(reader)
            finally:
                scores.close(ok)
        finally:
            getattr(reader, "close", lambda: None)()
    return target, stats
