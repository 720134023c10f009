"""Facts about the host this process runs on, without importing JAX (the CLI's parsers use them)."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """The CPU cores this process may run on: its affinity (a Slurm task's share, not the whole node)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
