#!/usr/bin/env bash
# Installs what `smilejax bench roofline` needs to compile for an NVIDIA GPU on a machine without one:
# JAX's CUDA plugin for the venv's jaxlib (jax-cuda12-plugin, jax-cuda12-pjrt), ptxas
# (nvidia-cuda-nvcc-cu12) and cuDNN (nvidia-cudnn-cu12, which compiles cuDNN attention), into
# PREFIX/gpu-compiler (default: the venv of PYTHON; about 1.7 GB).
#
#   bash launch/install_gpu_compiler.sh [PYTHON]     # PYTHON defaults to .venv/bin/python
#
# A folder of its own, not site-packages: a CUDA plugin on the path makes every JAX process look for a
# GPU (and complain when there is none); `bench roofline` adds the folder to its own subprocess only.
set -euo pipefail

PYTHON=${1:-.venv/bin/python}
PREFIX=${GPU_COMPILER_PREFIX:-$("$PYTHON" -c 'import sys; print(sys.prefix)')}
JAXLIB=$("$PYTHON" -c 'import jaxlib; print(jaxlib.__version__)')
DEST="$PREFIX/gpu-compiler"
STAMP="$DEST/.installed-$JAXLIB"

if [[ -f "$STAMP" ]]; then
  echo "JAX CUDA plugin $JAXLIB already in $DEST"
  exit 0
fi
rm -rf "$DEST"
# One pip call, so the packages that share the nvidia/ folder land in it together.
"$PYTHON" -m pip install -q --no-deps --only-binary=:all: --target "$DEST" \
  "jax-cuda12-plugin==$JAXLIB" "jax-cuda12-pjrt==$JAXLIB" \
  "nvidia-cuda-nvcc-cu12>=12.6,<13" "nvidia-cudnn-cu12>=9.8,<10"
touch "$STAMP"
echo "JAX CUDA plugin $JAXLIB (compiler only) in $DEST"
