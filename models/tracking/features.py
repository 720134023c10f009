"""The tracking family's PyTorch Geometric reference environment: its ``smilejax doctor`` feature
(entry-point group ``smilejax.features``) and what ``smilejax bench train`` hands its peer.

The environment (``bash launch/install_pyg_reference.sh``, default ``.pyg-ref`` at the repository root,
or ``$SMILEJAX_PYG_PYTHON``) runs ``torch_peer.py``: the parity test and the PyG side of ``bench train``.
Probes only look: nothing here imports JAX, torch or torch_geometric.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from smilejax.features import Feature, Missing

ROOT = Path(__file__).resolve().parents[2]
ENV_DIR = ROOT / ".pyg-ref"
ENV_VAR = "SMILEJAX_PYG_PYTHON"
INSTALL = "bash launch/install_pyg_reference.sh"
PEER = Path(__file__).with_name("torch_peer.py")
# the IGN config fields the peer reads (``--model`` JSON)
PEER_FIELDS = (
    "n_features",
    "hidden",
    "n_graph_iters",
    "nb_node_layer",
    "nb_edge_layer",
    "classifier_layers",
    "layernorm",
    "hidden_activation",
    "recurrent",
    "pt_cut",
    "true_weight",
    "max_nodes",
    "max_edges",
)


def python() -> Path:
    """The PyG environment's interpreter; raises Missing naming the install command."""
    where = Path(os.environ.get(ENV_VAR) or ENV_DIR / "bin" / "python")
    if not where.exists():
        raise Missing(f"no PyTorch Geometric environment ({where})", INSTALL)
    return where


def torch_config(model_cfg: Any) -> dict:
    """``Bench.torch_config``: the IGN config as the peer's ``--model`` JSON."""
    fields = dataclasses.asdict(model_cfg)
    return {k: fields[k] for k in PEER_FIELDS if k in fields}


def _reference() -> str:
    py = python()
    env = py.parent.parent
    found = {}
    for dist in ("torch", "torch_geometric"):  # read from the dist-info folders: no import of torch
        info = sorted(env.glob(f"lib/python3*/site-packages/{dist}-*.dist-info"))
        if not info:
            raise Missing(f"{env} has no {dist}", INSTALL)
        found[dist] = info[-1].name.removeprefix(f"{dist}-").removesuffix(".dist-info")
    return f"torch {found['torch']}, torch_geometric {found['torch_geometric']} ({env})"


FEATURES = (
    Feature(
        "pyg-reference", "bench train tracking-... against PyG, tests/test_tracking_parity.py", _reference
    ),
)
