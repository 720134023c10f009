"""MLPF's optional features for ``smilejax doctor`` (entry-point group ``smilejax.features``).

Probes only look: nothing here imports JAX, fastjet or torch.
"""

from __future__ import annotations

import os

from smilejax import host
from smilejax.features import Feature, Missing


def _jets() -> str:
    from . import jets

    if why := jets.missing():
        raise Missing(why.partition(" (")[0], jets.INSTALL_HINT)
    version = host.package_version("fastjet")
    return f"fastjet {version}" if version else "fastjet"


def _reference() -> str:
    from . import peer

    try:
        return str(peer.python(None))
    except SystemExit:
        where = os.environ.get(peer.ENV_VAR) or peer.ENV_DIR
        raise Missing(f"no particleflow environment ({where})", f"`{peer.INSTALL})") from None


FEATURES = (
    Feature("jets", "MLPF evaluation's jet metrics", _jets),
    Feature("mlpf-reference", "bench train mlpf, the MLPF parity test", _reference),
)
