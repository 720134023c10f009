#!/usr/bin/env bash
# Installs NVIDIA Triton Inference Server (binary + Python backend) from the nvidia-pytriton wheel into
# PREFIX/triton (default: the venv of PYTHON), where `smilejax serve` finds it.
#
#   bash launch/install_triton.sh [PYTHON]          # PYTHON defaults to .venv/bin/python
#
# The wheel pins numpy<2, which JAX cannot live with, so it is never pip-installed: it is downloaded
# with --no-deps and only the server binary, its backends and its bundled libraries are unpacked.
# The Python backend stub matching PYTHON's version goes where Triton looks for it. The stub links
# that interpreter's libpython; `smilejax serve` puts sysconfig's LIBDIR on LD_LIBRARY_PATH.
#
# On HPC systems use NVIDIA's container instead (it has the ONNX Runtime backend too), see
# `smilejax serve --help`.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${1:-.venv/bin/python}
# The wheel's version is the lock's (launch/locks/venv.txt); PYTRITON_VERSION overrides it.
LOCKED=$(sed -n 's/^nvidia-pytriton==\([^ ]*\).*/\1/p' "${SMILEJAX_LOCK:-launch/locks/venv.txt}")
VERSION=${PYTRITON_VERSION:-$LOCKED}
if [[ -z $VERSION ]]; then
  echo "install_triton: the lock pins no nvidia-pytriton (run make lock)" >&2
  exit 1
fi
PREFIX=${TRITON_PREFIX:-$("$PYTHON" -c 'import sys; print(sys.prefix)')}
DEST="$PREFIX/triton"
STAMP="$DEST/.installed-$VERSION"

if [[ -f "$STAMP" ]]; then
  echo "Triton from nvidia-pytriton $VERSION already in $DEST"
  exit 0
fi

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: -d "$TMP" "nvidia-pytriton==$VERSION"

rm -rf "$DEST"
mkdir -p "$DEST"
"$PYTHON" - "$TMP" "$DEST" <<'EOF'
import glob, os, shutil, stat, sys, zipfile

tmp, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(tmp, "nvidia_pytriton-*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    # The layout is kept: the binary finds its libraries through RPATH $ORIGIN/../../../nvidia_pytriton.libs.
    members = [n for n in z.namelist() if n.startswith(("pytriton/tritonserver/", "nvidia_pytriton.libs/"))]
    z.extractall(dest, members)
server = os.path.join(dest, "pytriton", "tritonserver")
version = f"{sys.version_info.major}.{sys.version_info.minor}"
stub = os.path.join(server, "python_backend_stubs", version, "triton_python_backend_stub")
if not os.path.exists(stub):
    sys.exit(f"nvidia-pytriton has no Python backend stub for Python {version}")
shutil.copy(stub, os.path.join(server, "backends", "python", "triton_python_backend_stub"))
shutil.rmtree(os.path.join(server, "python_backend_stubs"))
for path in glob.glob(os.path.join(dest, "**", "*"), recursive=True):  # zip files carry no modes
    if os.path.isfile(path):
        os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IRUSR | stat.S_IXGRP | stat.S_IRGRP)
EOF

# Smoke test: the binary loads its libraries and answers (its --help exits 1).
usage=$("$DEST/pytriton/tritonserver/bin/tritonserver" --help 2>&1 || true)
if [[ "$usage" != *"Usage: tritonserver"* ]]; then
  echo "the Triton binary in $DEST does not run" >&2
  exit 1
fi
touch "$STAMP"
echo "Triton Inference Server (nvidia-pytriton $VERSION) installed in $DEST"
