# Set-up and everyday commands. `make demo` and `make test` work on a fresh machine.

VENV ?= .venv
# JAX 0.11+ needs Python 3.12; under pyenv, select a 3.12 interpreter when one is installed.
export PYENV_VERSION ?= $(shell pyenv versions --bare 2>/dev/null | grep -E '^3\.12\.[0-9]+$$' | tail -n1)
# (make 4.3's $(shell) does not see exported variables: pass PYENV_VERSION on explicitly.)
PYTHON ?= $(shell PYENV_VERSION=$(PYENV_VERSION) python3.12 -c 'print("python3.12")' 2>/dev/null || echo python3)
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Every install takes its versions from the lock (launch/locks/, made by `make lock`): versions that were
# tested together, whatever has been released since; the build backend of the editable install too.
LOCK := launch/locks/venv.txt
PIP_LOCKED := $(PY) -m pip install -q -c $(LOCK)

.PHONY: install demo test test-fast lint lock system reference triton gpu-compiler clean

$(STAMP): pyproject.toml $(LOCK)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' || { echo "make: the lock \
	($(LOCK)) is for Python 3.12 (JAX 0.12 needs it) and $(PYTHON) is $$($(PYTHON) --version 2>&1); \
	name a Python 3.12 with make PYTHON=/path/to/python3.12 (or PYENV_VERSION=3.12.x under pyenv)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP_LOCKED) pip
	$(PIP_LOCKED) --build-constraint $(LOCK) -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Trains GN2 (full size) on a small synthetic ATLAS-format dataset that is made once and cached;
# the batch and precision are sized so that this also finishes in minutes on a laptop CPU.
DEMO_ARGS ?= run.steps=200 run.log_every=10 run.eval_every=100 run.checkpoint_every=100 \
	data.batch_size=100 train.precision=fp32 run.dir=runs/gn2-demo
demo: $(STAMP)
	$(VENV)/bin/smilejax train gn2 $(DEMO_ARGS)

# Re-resolves launch/locks/ to the newest versions that fit (jaxlib and JAX's CUDA/ROCm plugins at the
# newest version they share). Then run `make test` on a fresh clone and commit the lock only if it passes.
lock:
	$(PYTHON) launch/lock.py

# Debian packages the tests need (a real local Slurm cluster); installed only where missing.
system:
	bash launch/install_system_deps.sh

# The PyTorch references, each in its own Python 3.11 env from its lock: particleflow 3.1.0
# (tests/test_mlpf_parity.py), salt 0.13.0 (tests/test_import_salt.py), sbi 0.27.0 (the LFI benchmark,
# tests/test_lfi_bench.py) and torch_geometric 2.8.1 (the tracking GNN's peer, tests/test_tracking_parity.py)
reference:
	bash launch/install_mlpf_reference.sh
	bash launch/install_salt_reference.sh
	bash launch/install_sbi_reference.sh
	bash launch/install_pyg_reference.sh

# NVIDIA Triton from the nvidia-pytriton wheel, unpacked into the venv without its numpy<2 pin
triton: $(STAMP)
	bash launch/install_triton.sh $(PY)

# JAX's CUDA plugin, ptxas and cuDNN, off the venv's path: `smilejax bench roofline` compiles for a GPU
gpu-compiler: $(STAMP)
	bash launch/install_gpu_compiler.sh $(PY)

# The whole suite on 8 simulated CPU devices (what CI runs).
test: $(STAMP) system reference triton gpu-compiler
	$(PY) -m pytest -q tests

# The inner loop: the unit tests (marked `unit`) on one CPU device, in a few minutes, nothing to install
# beyond the venv.
test-fast: $(STAMP)
	SMILEJAX_TEST_DEVICES=1 $(PY) -m pytest -q -m unit tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs .mlpf-ref .salt-ref .sbi-ref .pyg-ref
