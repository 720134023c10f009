"""Where the program being traced will run: the choice between GPU-only kernels and portable code.

Three modes, for the code traced inside them: the default (``auto`` settings pick fused GPU kernels on
an NVIDIA GPU), ``portable()`` (``auto`` settings pick portable code; programs that ``vmap`` a model or
are exported) and ``reference()`` (every implementation choice, explicit ones too, becomes the model's
plain jnp computation: the program whose FLOPs are the model's, for MFU).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import jax
import jax.extend

_MODE = contextvars.ContextVar("smilejax_kernel_mode", default="")


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
def _mode(mode: str) -> Iterator[None]:
    token = _MODE.set(mode)
    try:
        yield
    finally:
        _MODE.reset(token)


def portable() -> contextlib.AbstractContextManager[None]:
    """Models traced inside choose portable code for their ``auto`` settings, also on a GPU: for programs
    that ``vmap`` a model (vectorised trials: the fused kernels have no batching rule) and for exported
    artifacts, which run on any device."""
    return _mode("portable")


def reference() -> contextlib.AbstractContextManager[None]:
    """Models traced inside compute with their plain jnp implementations whatever their settings (cuDNN
    or chunked attention as math, the fused pair kernel as jnp): the same function, with every FLOP
    visible to XLA's cost analysis (custom calls count none, a loop body counts once)."""
    return _mode("reference")


def portable_only() -> bool:
    """Inside ``portable()``: GPU-only kernels must not be traced."""
    return _MODE.get() == "portable"


def reference_only() -> bool:
    """Inside ``reference()``: plain jnp implementations only."""
    return _MODE.get() == "reference"


def fused_kernels() -> bool:
    """Whether an ``auto`` setting should pick a GPU-only fused kernel for the program being traced."""
    return nvidia_gpu() and not _MODE.get()
