"""Generator processes for the dataset makers: spawn K workers, show one progress bar, fail loudly.

A worker is ``work(*args, messages)``; it reports on ``messages`` ``("progress", k, n)`` for every n
examples made, ``("done", k, (events, cpu_seconds))`` at the end, or ``("error", k, traceback)``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import queue
from collections.abc import Callable

from smilejax import host


def shares(n: int, workers: int) -> list[int]:
    """``n`` examples split as evenly as possible over ``workers``, in worker order."""
    return [n // workers + (k < n % workers) for k in range(workers)]


def run(
    work: Callable,
    args: dict[int, tuple],
    total: int,
    *,
    unit: str,
    desc: str,
    progress: bool,
    name: str,
) -> tuple[int, float]:
    """Run ``work(*args[k], messages)`` for every worker k; returns (events generated, CPU seconds)."""
    from tqdm import tqdm

    ctx = mp.get_context("spawn")  # never fork a parent that may hold JAX, HDF5 or TFDS threads
    messages = ctx.Queue()
    procs = {k: ctx.Process(target=work, args=(*a, messages), daemon=True) for k, a in args.items()}
    for proc in procs.values():
        proc.start()
    events, cpu, pending = 0, 0.0, set(procs)
    bar = tqdm(total=total, unit=unit, desc=desc, disable=not progress, smoothing=0.1)
    try:
        while pending:
            try:
                kind, worker, value = messages.get(timeout=1.0)
            except queue.Empty:
                dead = [k for k in pending if not procs[k].is_alive() and procs[k].exitcode not in (None, 0)]
                if dead:
                    code = procs[dead[0]].exitcode
                    raise RuntimeError(f"{name} worker {dead[0]} died (exit code {code})") from None
                continue
            if kind == "progress":
                bar.update(value)
            elif kind == "done":
                events += value[0]
                cpu += value[1]
                pending.discard(worker)
            else:
                raise RuntimeError(f"{name} worker {worker} failed:\n{value}")
    finally:
        bar.close()
        for proc in procs.values():
            if proc.is_alive():
                proc.terminate()
            proc.join(timeout=30)
    return events, cpu


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--workers`` and ``--no-progress``: the options of a maker whose generator runs through ``run``."""
    parser.add_argument(
        "--workers",
        type=int,
        default=host.usable_cpus(),
        metavar="K",
        help="generator processes (default: the CPUs this process may use, %(default)s here)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
