"""A small perf_analyzer: concurrent clients send the same batch; throughput and latency percentiles.

Every load is bounded by a request count and a duration, whichever ends first.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np


@dataclasses.dataclass
class LoadResult:
    concurrency: int
    batch_size: int
    requests: int  # completed without error
    failures: int
    wall_s: float
    latencies_s: list[float]
    errors: list[str]  # the first few failures' messages

    def summary(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies_s) * 1e3
        p50, p90, p99 = np.percentile(lat, [50, 90, 99]) if lat.size else (float("nan"),) * 3
        return {
            "concurrency": self.concurrency,
            "batch_size": self.batch_size,
            "requests": self.requests,
            "failures": self.failures,
            "inferences_per_s": self.requests * self.batch_size / self.wall_s if self.wall_s else 0.0,
            "p50_ms": float(p50),
            "p90_ms": float(p90),
            "p99_ms": float(p99),
        }


def run(
    make_client: Callable[[], Any],
    batch: Mapping[str, np.ndarray],
    *,
    concurrency: int,
    requests: int = 200,
    duration_s: float = 30.0,
    warmup: int = 1,
) -> LoadResult:
    """``concurrency`` threads, each with its own ``make_client()`` (anything with ``infer(batch)``),
    send ``batch`` until ``requests`` were sent in all or ``duration_s`` passed."""
    if concurrency < 1 or requests < 1:
        raise ValueError(f"concurrency and requests must be at least 1, got {concurrency} and {requests}")
    batch_size = len(next(iter(batch.values())))
    lock = threading.Lock()
    issued = 0
    latencies: list[float] = []
    errors: list[str] = []
    failures = 0
    start = threading.Barrier(concurrency + 1)
    deadline = [0.0]

    def worker() -> None:
        nonlocal issued, failures
        client = make_client()
        try:
            for _ in range(warmup):  # first calls compile or connect; not measured
                client.infer(batch)
        except Exception as err:
            with lock:
                failures += 1
                errors.append(f"warm-up: {err}")
        start.wait()
        while True:
            with lock:
                if issued >= requests or time.perf_counter() > deadline[0]:
                    break
                issued += 1
            t0 = time.perf_counter()
            try:
                client.infer(batch)
            except Exception as err:
                with lock:
                    failures += 1
                    if len(errors) < 5:
                        errors.append(str(err))
                continue
            with lock:
                latencies.append(time.perf_counter() - t0)
        close = getattr(client, "close", None)
        if close:
            close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    deadline[0] = float("inf")
    start.wait()
    t0 = time.perf_counter()
    deadline[0] = t0 + duration_s
    for t in threads:
        t.join(timeout=duration_s + 120)
    wall = time.perf_counter() - t0
    return LoadResult(concurrency, batch_size, len(latencies), failures, wall, latencies, errors)
