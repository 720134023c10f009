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
# What goes in is launch/locks/mlpf-reference.in, at the versions of launch/locks/mlpf-reference.txt (made
# together by `make lock`). torch is the CPU build (2.13.0+cpu): where no such wheel is on disk or on an
# index pip knows (PIP_FIND_LINKS / PIP_EXTRA_INDEX_URL), the install fails fast instead of downloading a
# CUDA build of several GB. Override with MLPF_REF_TORCH=... (e.g. a CUDA build, for `smilejax bench train
# mlpf` on a GPU; the lock's torch pin is then left out) and MLPF_REF_PYTHON=... (a Python 3.11).
set -euo pipefail
cd "$(dirname "$0")/.."

ENV_DIR=${1:-.mlpf-ref}
WANTS=launch/locks/mlpf-reference.in
LOCK=launch/locks/mlpf-reference.txt
STAMP="$ENV_DIR/.installed"
# Lines of the .in file without comments; those marked "# no-deps" go in without their dependencies.
resolved=$(grep -v '# no-deps' "$WANTS" | sed 's/#.*//' | xargs)
no_deps=$(grep '# no-deps' "$WANTS" | sed 's/#.*//' | xargs)
constraints=$LOCK
if [[ -n ${MLPF_REF_TORCH:-} ]]; then
  resolved=$(printf '%s\n' $resolved | grep -v '^torch' | xargs)" $MLPF_REF_TORCH"
  constraints=$(mktemp)
  grep -v '^torch==' "$LOCK" >"$constraints"
fi
WANT="$(cat "$LOCK" "$WANTS" | md5sum | cut -c1-12) ${MLPF_REF_TORCH:-}"

check() {
  PYTHONPATH=tests/mlpf_reference/stubs "$ENV_DIR/bin/python" -c \
    "import os, torch, mlpf.model.mlpf, mlpf.model.losses, mlpf.model.utils, mlpf.model.PFDataset; assert 'MLPF_REF_TORCH' in os.environ or torch.version.cuda is None, torch.version.cuda" \
    2>/dev/null
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && check; then
  echo "install_mlpf_reference: $ENV_DIR is ready"
  exit 0
fi

# A Python 3.11: MLPF_REF_PYTHON, else pyenv's newest 3.11 (the Makefile selects 3.12 for pyenv's
# shims), else python3.11 on PATH.
PY311=${MLPF_REF_PYTHON:-}
if [ -z "$PY311" ] && command -v pyenv >/dev/null 2>&1; then
  v=$(pyenv versions --bare 2>/dev/null | grep -E '^3\.11\.[0-9]+$' | tail -n1 || true)
  [ -n "$v" ] && PY311="$(pyenv root)/versions/$v/bin/python3.11"
fi
PY311=${PY311:-python3.11}
if ! "$PY311" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null; then
  echo "install_mlpf_reference: particleflow 3.1.0 needs Python 3.11; '$PY311' is not one" \
    "(set MLPF_REF_PYTHON to a Python 3.11 interpreter)" >&2
  exit 1
fi

[ -x "$ENV_DIR/bin/python" ] || "$PY311" -m venv "$ENV_DIR"
echo '*' >"$ENV_DIR/.gitignore"  # never committed, wherever it lives
pip=("$ENV_DIR/bin/python" -m pip install -q --disable-pip-version-check -c "$constraints")
"${pip[@]}" pip
# shellcheck disable=SC2086
"${pip[@]}" $resolved
# shellcheck disable=SC2086
"${pip[@]}" --no-deps $no_deps

if ! check; then
  echo "install_mlpf_reference: $ENV_DIR cannot import particleflow's model with a CPU torch:" >&2
  PYTHONPATH=tests/mlpf_reference/stubs "$ENV_DIR/bin/python" -c \
    'import torch, mlpf.model.mlpf, mlpf.model.losses, mlpf.model.utils; print("torch", torch.__version__, "cuda", torch.version.cuda)' >&2 || true
  exit 1
fi
echo "$WANT" >"$STAMP"
echo "install_mlpf_reference: $ENV_DIR ready ($("$ENV_DIR/bin/python" -c 'import torch; print("torch", torch.__version__)'), $no_deps)"
