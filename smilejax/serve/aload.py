"""An asynchronous load generator: one event loop keeps up to N requests in flight on one connection
pool (``tritonclient.http.aio`` / ``tritonclient.grpc.aio``), as a production client would.

``await measure(url, model, batch, protocol=..., in_flight=N, requests=R, duration_s=D)`` sends
``batch`` (the model's inputs found in it) until R requests were sent or D seconds passed, never more
than N at once, and returns throughput, latency percentiles, the time to the first answer on a fresh
connection (connect, TLS handshake, first inference) and the mean batch the server ran (its statistics:
inferences over executions, >1 when dynamic batching merged requests).

``python -m smilejax.serve.aload SPEC.json OUT.json`` runs the levels a spec lists (how ``smilejax
bench serve`` drives it inside the client's network namespace): ``{"url", "model", "protocol",
"tls_root", "batches": NPZ with one array per input, "levels": [{"in_flight", "batch_size"}],
"requests", "duration_s"}``; the NPZ's arrays are sliced to each level's batch size.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from smilejax.serve.client import key_headers

REQUEST_TIMEOUT_S = 60.0


def _client(url: str, protocol: str, in_flight: int, tls_root: str | None):
    if protocol == "http":
        import tritonclient.http.aio as triton

        if tls_root:
            raise ValueError("TLS is offered on gRPC only (Triton's HTTP endpoint is plain HTTP)")
        return triton, triton.InferenceServerClient(url, conn_limit=in_flight, conn_timeout=REQUEST_TIMEOUT_S)
    import tritonclient.grpc.aio as triton

    return triton, triton.InferenceServerClient(url, ssl=bool(tls_root), root_certificates=tls_root)


def _as_dict(message: Any) -> dict:
    if isinstance(message, dict):
        return message
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(message, preserving_proto_field_name=True)


async def _counts(client: Any, model: str, headers: dict | None = None) -> tuple[int, int]:
    """(inferences, executions) the server has run for ``model`` so far."""
    stats = _as_dict(await client.get_inference_statistics(model, headers=headers))["model_stats"][0]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


async def measure(
    url: str,
    model: str,
    batch: Mapping[str, np.ndarray],
    *,
    protocol: str = "grpc",
    in_flight: int = 1,
    requests: int = 200,
    duration_s: float = 10.0,
    tls_root: str | None = None,
    key: str | None = None,
) -> dict[str, Any]:
    """``key``: the inference key of a server that requires one (sent as ``client.Client`` sends it)."""
    if in_flight < 1 or requests < 1 or duration_s <= 0:
        raise ValueError("in_flight and requests must be at least 1, duration_s positive")
    from tritonclient.utils import np_to_triton_dtype

    triton, client = _client(url, protocol, in_flight, tls_root)
    headers = key_headers(protocol, key)
    batch_size = len(next(iter(batch.values())))
    try:
        t0 = time.perf_counter()
        meta = _as_dict(
            await asyncio.wait_for(client.get_model_metadata(model, headers=headers), REQUEST_TIMEOUT_S)
        )
        inputs = []
        for spec in meta["inputs"]:
            if spec["name"] not in batch:
                continue  # the server names the missing inputs in its answer
            array = np.ascontiguousarray(batch[spec["name"]])
            tensor = triton.InferInput(spec["name"], list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        outputs = [triton.InferRequestedOutput(t["name"]) for t in meta["outputs"]]

        async def infer() -> None:
            await asyncio.wait_for(
                client.infer(model, inputs, outputs=outputs, headers=headers), REQUEST_TIMEOUT_S
            )

        await infer()  # the first answer: connection, handshake, first inference
        first_s = time.perf_counter() - t0
        for _ in range(2):  # open the pool's connections before timing
            await asyncio.gather(*(infer() for _ in range(in_flight)))
        before = await _counts(client, model, headers)
        result = await _run(infer, in_flight, requests, duration_s)
        after = await _counts(client, model, headers)
    finally:
        await client.close()
    inferences, executions = after[0] - before[0], after[1] - before[1]
    lat = np.asarray(result["latencies"]) * 1e3
    p50, p90, p99 = np.percentile(lat, [50, 90, 99]) if lat.size else (float("nan"),) * 3
    done, wall = len(result["latencies"]), result["wall_s"]
    return {
        "in_flight": in_flight,
        "batch_size": batch_size,
        "requests": done,
        "failures": result["failures"],
        "inferences_per_s": done * batch_size / wall if wall else 0.0,
        "requests_per_s": done / wall if wall else 0.0,
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "first_ms": first_s * 1e3,
        "exec_batch": inferences / executions if executions else float("nan"),
        "errors": result["errors"],
    }


async def _run(infer, in_flight: int, requests: int, duration_s: float) -> dict[str, Any]:
    """``in_flight`` workers share a budget of ``requests`` and a deadline."""
    latencies: list[float] = []
    errors: list[str] = []
    failures = 0
    issued = 0
    start = time.perf_counter()
    deadline = start + duration_s

    async def worker() -> None:
        nonlocal issued, failures
        while issued < requests and time.perf_counter() < deadline:
            issued += 1
            t0 = time.perf_counter()
            try:
                await infer()
            except Exception as err:  # counted; the first few kept
                failures += 1
                if len(errors) < 5:
                    errors.append(f"{type(err).__name__}: {err}"[:300])
                continue
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return {
        "latencies": latencies,
        "failures": failures,
        "errors": errors,
        "wall_s": time.perf_counter() - start,
    }


async def run_spec(spec: dict[str, Any]) -> list[dict[str, Any]]:
    with np.load(spec["batches"]) as data:
        full = {k: data[k] for k in data.files}
    rows = []
    for level in spec["levels"]:
        batch = {k: v[: level["batch_size"]] for k, v in full.items()}
        try:
            row = await measure(
                spec["url"],
                spec["model"],
                batch,
                protocol=spec["protocol"],
                in_flight=level["in_flight"],
                requests=spec["requests"],
                duration_s=spec["duration_s"],
                tls_root=spec.get("tls_root"),
            )
        except Exception as err:  # a level that cannot start is a row of failures, not a lost sweep
            row = {**level, "requests": 0, "failures": 1, "errors": [f"{type(err).__name__}: {err}"[:300]]}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "errors"}), file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m smilejax.serve.aload SPEC.json OUT.json", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        spec = json.load(f)
    rows = asyncio.run(run_spec(spec))
    with open(argv[1], "w") as f:
        json.dump(rows, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
