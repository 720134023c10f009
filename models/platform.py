"""Where the program being traced will run: the choice between GPU-only kernels and portable code."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import jax
import jax.extend

_PORTABLE = contextvars.ContextVar("smilejax_portable_kernels", default=False)


def nvidia_gpu() -> bool:
    """True when tracing for an NVIDIA GPU: the default backend is CUDA's (ROCm's is also named "gpu"),
    or the abstract mesh in use names one (``smilejax bench roofline`` compiles for a GPU on a machine
    without one)."""
    device = jax.sharding.get_abstract_mesh().abstract_device
    if device is not None:
        return device.platform in ("gpu", "cuda")
    if jax.default_backend() != "gpu":
        return False
    return "rocm" not in jax.extend.backend.get_backend().platform_version.lower()


@contextlib.contextmanager
def portable() -> Iterator[None]:
    """Models traced inside choose portable code for their ``auto`` settings, also on a GPU: for programs
    that ``vmap`` a model (vectorised trials: the fused kernels have no batching rule) and for exported
    artifacts, which run on any device."""
    token = _PORTABLE.set(True)
    try:
        yield
    finally:
        _PORTABLE.reset(token)


def portable_only() -> bool:
    """Inside ``portable()``: GPU-only kernels must not be traced."""
    return _PORTABLE.get()


def fused_kernels() -> bool:
    """Whether an ``auto`` setting should pick a GPU-only fused kernel for the program being traced."""
    return nvidia_gpu() and not portable_only()
