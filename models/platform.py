"""Where the program being traced will run: the choice between GPU-only kernels and portable code."""

from __future__ import annotations

import jax


def nvidia_gpu() -> bool:
    """True when tracing for an NVIDIA GPU: the default backend is one, or the abstract mesh in use names
    one (``smilejax bench roofline`` compiles for a GPU on a machine without one)."""
    device = jax.sharding.get_abstract_mesh().abstract_device
    return jax.default_backend() == "gpu" or (device is not None and device.platform in ("gpu", "cuda"))
