"""What every study shares: the machine it ran on, a timer that respects async dispatch, and result files.

A study's results go into ``OUT/<study>.json`` (rows plus the provenance below) and ``OUT/<study>.md``
(a markdown table ready to paste into docs/PERFORMANCE.md).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from smilejax.tables import markdown_table


def machine() -> dict[str, Any]:
    """Where a number was measured: host, CPUs, accelerators, software."""
    import jax

    devices = jax.devices()
    return {
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "platform": devices[0].platform,
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "process_count": jax.process_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
    }


def provenance() -> dict[str, Any]:
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in ["smilejax", *sys.argv[1:]]),
        "machine": machine(),
    }


def time_call(fn: Callable[[], Any], *, warmup: int = 2, repeats: int = 10) -> dict[str, float]:
    """Seconds per call of ``fn`` (which must return something ``block_until_ready`` accepts).

    Blocking on each result keeps JAX's asynchronous dispatch from hiding work in the next call.
    """
    import jax

    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "mean_s": statistics.fmean(times)}


def write_results(
    out: str | Path,
    study: str,
    rows: Sequence[dict[str, Any]],
    *,
    columns: Sequence[str] | None = None,
    extra: dict[str, Any] | None = None,
    notes: Sequence[str] = (),
) -> Path:
    """Writes ``OUT/<study>.json`` and ``OUT/<study>.md``, prints the table, returns the JSON path.

    ``notes`` (assumptions, what a column extrapolates) go under the table and into the JSON, so that a
    number copied from either file keeps what it rests on.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = provenance()
    record = {"study": study, **info, **(extra or {}), "notes": list(notes), "rows": list(rows)}
    path = out / f"{study}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    table = markdown_table(rows, columns)
    m = info["machine"]
    header = (
        f"{study}: {m['device_count']} × {m['device_kind']} ({m['platform']}), {m['cpu_count']} CPUs, "
        f"{info['date']}\n\n`{info['command']}`\n\n"
    )
    text = header + table + "".join(f"\n{note}\n" for note in notes)
    (out / f"{study}.md").write_text(text)
    print(text)
    return path
