"""The LFI family's optional features for ``smilejax doctor`` (entry-point group ``smilejax.features``).

Probes only look: nothing here imports JAX, sbibm-jax or torch.
"""

from __future__ import annotations

import os

from smilejax import host
from smilejax.features import Feature, Missing


def _benchmark() -> str:
    version = host.package_version("sbibm-jax")
    if version is None:
        raise Missing("no sbibm-jax (the benchmark's tasks)", host.pip_install(".[lfi]"))
    return f"sbibm-jax {version}"


def _reference() -> str:
    from . import sbi_peer

    try:
        return str(sbi_peer.python(None))
    except SystemExit:
        where = os.environ.get(sbi_peer.ENV_VAR) or sbi_peer.ENV_DIR
        raise Missing(f"no sbi environment ({where})", f"`{sbi_peer.INSTALL})") from None


FEATURES = (
    Feature("sbibm-jax", "the LFI benchmark tasks (model.task=two_moons, ...)", _benchmark),
    Feature("sbi-reference", "bench train npe-... against sbi, tests/test_lfi_bench.py", _reference),
)
