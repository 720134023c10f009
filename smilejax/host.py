"""Facts about the host this process runs on, without importing JAX (the CLI's parsers use them)."""

from __future__ import annotations

import importlib.metadata
import os

# The packages a run's results depend on: run.json, the doctor's report and exports record them.
PLATFORM_PACKAGES = ("smilejax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy")
# The versions tested together (make lock); every install command the project prints takes it.
LOCK = "launch/locks/venv.txt"


def usable_cpus() -> int:
    """The CPU cores this process may run on: its affinity (a Slurm task's share, not the whole node)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def package_version(dist: str) -> str | None:
    """The installed version of distribution ``dist``, or None when it is not installed."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def package_versions(dists: tuple[str, ...] = PLATFORM_PACKAGES) -> dict[str, str]:
    """{distribution: version} of those of ``dists`` that are installed."""
    return {d: v for d in dists if (v := package_version(d))}


def pip_install(*targets: str) -> str:
    """The command, run in a checkout, that installs ``targets`` at the lock's versions: ``.[extra]``
    installs this checkout (editable) with an extra of pyproject.toml, other targets are package names."""
    args = (f"-e '{t}'" if t.startswith(".") else t for t in targets)
    return f"pip install -c {LOCK} {' '.join(args)}"
