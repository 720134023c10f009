#!/usr/bin/env bash
# Creates the PyTorch reference environment of the LFI benchmark (`smilejax bench train npe-...`,
# models/lfi/bench_study.py, and tests/test_lfi_bench.py): the `sbi` package 0.27.0 (its NPE, trained on
# the same simulations as smilejax's) with the CPU build of torch, in its own Python 3.11 venv (default:
# .sbi-ref at the repository root). Idempotent: a complete environment is left as it is.
#
#   bash launch/install_sbi_reference.sh [ENV_DIR]
#
# The environment is exactly launch/locks/sbi-reference.txt (the resolution of sbi-reference.in by
# `make lock`), installed with --no-deps (launch/reference_env.sh). torch is the CPU build (2.13.0+cpu):
# where no such wheel is on disk or on an index pip knows (PIP_FIND_LINKS / PIP_EXTRA_INDEX_URL), the
# install fails fast instead of downloading a CUDA build of several GB. Override with SBI_REF_TORCH=...
# (e.g. a CUDA build, for the benchmark on a GPU; it replaces the lock's torch, with its own dependencies)
# and SBI_REF_PYTHON=... (a Python 3.11).
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/reference_env.sh

ENV_DIR=${1:-.sbi-ref}

check() {
  "$ENV_DIR/bin/python" -c \
    "import os, torch, sbi, sbi.inference; assert 'SBI_REF_TORCH' in os.environ or torch.version.cuda is None, torch.version.cuda" \
    2>/dev/null
}

diagnose() { # what is wrong when check fails: sbi without a CPU torch
  "$ENV_DIR/bin/python" -c 'import torch, sbi.inference; print("torch", torch.__version__, "cuda", torch.version.cuda)'
}

reference_env install_sbi_reference "$ENV_DIR" launch/locks/sbi-reference.txt "${SBI_REF_PYTHON:-}" \
  "${SBI_REF_TORCH:-}"
