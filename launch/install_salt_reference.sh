#!/usr/bin/env bash
# Creates the PyTorch reference environment of the salt import test (tests/test_import_salt.py): salt's
# GN2 (the `salt-ml` 0.13.0 wheel) with the CPU build of torch, in its own Python 3.11 venv (default:
# .salt-ref at the repository root). Idempotent: a complete environment is left as it is.
#
#   bash launch/install_salt_reference.sh [ENV_DIR]
#
# Every package is pinned in launch/locks/salt-reference.txt (the resolution of salt-reference.in, `make
# lock`; first a `pip freeze` of a working env) and installed with --no-deps, the lock being the whole
# environment. salt-ml's own requirements (lightning, comet_ml, onnx, puma-hep, umami-preprocessing,
# torch==2.12, ...) are for training and plotting; building SaltModel and running it needs only what the
# lock holds (torch, numpy, pyyaml, h5py, scipy, atlas-ftag-tools, py-lap-solver).
#
# torch is the CPU build (2.13.0+cpu in the lock): where no such wheel is on disk or on an index pip knows
# (PIP_FIND_LINKS / PIP_EXTRA_INDEX_URL), the install fails fast instead of downloading a CUDA build of
# several GB. SALT_REF_PYTHON=... names a Python 3.11.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/reference_env.sh

ENV_DIR=${1:-.salt-ref}

check() {
  "$ENV_DIR/bin/python" -c \
    "import torch, salt.models, salt.models.transformer; assert torch.version.cuda is None, torch.version.cuda" \
    2>/dev/null
}

diagnose() { # what is wrong when check fails: salt's model without a CPU torch
  "$ENV_DIR/bin/python" -c 'import torch, salt.models; print("torch", torch.__version__, "cuda", torch.version.cuda)'
}

reference_env install_salt_reference "$ENV_DIR" launch/locks/salt-reference.txt "${SALT_REF_PYTHON:-}"
