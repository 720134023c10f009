#!/usr/bin/env bash
# Creates the PyTorch Geometric reference environment of the tracking family: the peer of its Interaction
# GNN (models/tracking/torch_peer.py), run by tests/test_tracking_parity.py and by `smilejax bench train`
# on the same graphs. torch_geometric 2.8.1 (pure Python: its scatter is torch's own scatter_reduce, no
# torch-scatter / torch-sparse builds) with the CPU build of torch, in its own Python 3.11 venv (default:
# .pyg-ref at the repository root). Idempotent: a complete environment is left as it is.
#
#   bash launch/install_pyg_reference.sh [ENV_DIR]
#
# The environment is exactly launch/locks/pyg-reference.txt (the resolution of pyg-reference.in by
# `make lock`), installed with --no-deps (launch/reference_env.sh). torch is the CPU build (2.13.0+cpu):
# where no such wheel is on disk or on an index pip knows (PIP_FIND_LINKS / PIP_EXTRA_INDEX_URL), the
# install fails fast instead of downloading a CUDA build of several GB. Override with PYG_REF_TORCH=...
# (e.g. a CUDA build, for `smilejax bench train tracking-...` on a GPU; it replaces the lock's torch, with
# its own dependencies) and PYG_REF_PYTHON=... (a Python 3.11).
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/reference_env.sh

ENV_DIR=${1:-.pyg-ref}

check() {
  "$ENV_DIR/bin/python" -c \
    "import os, torch, torch_geometric, torch_geometric.nn; assert 'PYG_REF_TORCH' in os.environ or torch.version.cuda is None, torch.version.cuda" \
    2>/dev/null
}

diagnose() { # what is wrong when check fails: torch_geometric without a CPU torch
  "$ENV_DIR/bin/python" -c 'import torch, torch_geometric.nn; print("torch", torch.__version__, "cuda", torch.version.cuda)'
}

reference_env install_pyg_reference "$ENV_DIR" launch/locks/pyg-reference.txt "${PYG_REF_PYTHON:-}" \
  "${PYG_REF_TORCH:-}"
