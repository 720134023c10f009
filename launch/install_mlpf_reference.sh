#!/usr/bin/env bash
# Creates the PyTorch reference environment of the MLPF parity test (tests/test_mlpf_parity.py):
# particleflow 3.1.0 (which requires Python 3.11 exactly) with the CPU build of torch, in its own venv
# (default: .mlpf-ref at the repository root). Idempotent: a complete environment is left as it is.
#
#   bash launch/install_mlpf_reference.sh [ENV_DIR]
#
# Only what `mlpf.model.mlpf`, `mlpf.model.losses` and `mlpf.model.PFDataset` import at module load is
# installed (torch, numpy, pydantic, pyyaml, psutil, tensorflow-datasets without TensorFlow); particleflow
# goes in with --no-deps, so none of its heavy dependencies (tensorflow, ray, comet-ml, ...) come along.
# comet_ml, imported at load and never called by the model, is a stub in tests/mlpf_reference/stubs
# that the reference script puts on sys.path.
#
# The environment is exactly launch/locks/mlpf-reference.txt (the resolution of mlpf-reference.in by
# `make lock`), installed with --no-deps (launch/reference_env.sh). torch is the CPU build (2.13.0+cpu):
# where no such wheel is on disk or on an index pip knows (PIP_FIND_LINKS / PIP_EXTRA_INDEX_URL), the
# install fails fast instead of downloading a CUDA build of several GB. Override with MLPF_REF_TORCH=... (e.g. a CUDA build, for `smilejax bench train
# mlpf` on a GPU; it replaces the lock's torch, with its own dependencies) and MLPF_REF_PYTHON=... (a
# Python 3.11).
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/reference_env.sh

ENV_DIR=${1:-.mlpf-ref}

check() {
  PYTHONPATH=tests/mlpf_reference/stubs "$ENV_DIR/bin/python" -c \
    "import os, torch, mlpf.model.mlpf, mlpf.model.losses, mlpf.model.utils, mlpf.model.PFDataset; assert 'MLPF_REF_TORCH' in os.environ or torch.version.cuda is None, torch.version.cuda" \
    2>/dev/null
}

diagnose() { # what is wrong when check fails: particleflow's model without a CPU torch
  PYTHONPATH=tests/mlpf_reference/stubs "$ENV_DIR/bin/python" -c \
    'import torch, mlpf.model.mlpf, mlpf.model.losses, mlpf.model.utils; print("torch", torch.__version__, "cuda", torch.version.cuda)'
}

reference_env install_mlpf_reference "$ENV_DIR" launch/locks/mlpf-reference.txt "${MLPF_REF_PYTHON:-}" \
  "${MLPF_REF_TORCH:-}"
