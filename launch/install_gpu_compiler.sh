#!/usr/bin/env bash
# Installs what `smilejax bench roofline` needs to compile for an NVIDIA GPU on a machine without one:
# JAX's CUDA plugin for the venv's jaxlib (jax-cuda12-plugin, jax-cuda12-pjrt), ptxas
# (nvidia-cuda-nvcc-cu12) and cuDNN (nvidia-cudnn-cu12, which compiles cuDNN attention), into
# PREFIX/gpu-compiler (default: the venv of PYTHON; about 1.7 GB).
#
#   bash launch/install_gpu_compiler.sh [PYTHON]     # PYTHON defaults to .venv/bin/python
#
# The versions are the lock's (launch/locks/venv.txt, or $SMILEJAX_LOCK): the plugin must be the installed
# jaxlib's own version, and the lock says so or the install stops, naming both (never a guess).
# A folder of its own, not site-packages: a CUDA plugin on the path makes every JAX process look for a
# GPU (and complain when there is none); `bench roofline` adds the folder to its own subprocess only.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${1:-.venv/bin/python}
LOCK=${SMILEJAX_LOCK:-launch/locks/venv.txt}
PREFIX=${GPU_COMPILER_PREFIX:-$("$PYTHON" -c 'import sys; print(sys.prefix)')}
JAXLIB=$("$PYTHON" -c 'import jaxlib; print(jaxlib.__version__)')
DEST="$PREFIX/gpu-compiler"

pin() { # the locked version of package $1
  sed -n "s/^$1==\([^ ]*\).*/\1/p" "$LOCK"
}
PACKAGES=(jax-cuda12-plugin jax-cuda12-pjrt nvidia-cuda-nvcc-cu12 nvidia-cudnn-cu12)
for p in "${PACKAGES[@]}"; do
  if [[ -z $(pin "$p") ]]; then
    echo "install_gpu_compiler: $LOCK pins no $p (run make lock)" >&2
    exit 1
  fi
done
if [[ $(pin jax-cuda12-plugin) != "$JAXLIB" ]]; then
  echo "install_gpu_compiler: $LOCK pins jax-cuda12-plugin $(pin jax-cuda12-plugin) but the venv has" \
    "jaxlib $JAXLIB: reinstall the venv from the lock (make install) or re-run make lock" >&2
  exit 1
fi
WANT=$(for p in "${PACKAGES[@]}"; do printf '%s==%s ' "$p" "$(pin "$p")"; done)
STAMP="$DEST/.installed"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
  echo "JAX CUDA plugin $JAXLIB already in $DEST"
  exit 0
fi
rm -rf "$DEST"
# One pip call, so the packages that share the nvidia/ folder land in it together.
# shellcheck disable=SC2086
"$PYTHON" -m pip install -q --no-deps --only-binary=:all: --target "$DEST" $WANT
echo "$WANT" >"$STAMP"
echo "JAX CUDA plugin $JAXLIB (compiler only: $WANT) in $DEST"
