"""The dependency lock (launch/locks/, made by launch/lock.py): what it pins, and that the venv follows it."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.unit

LOCKS = ROOT / "launch" / "locks"


def _lock_module():
    spec = importlib.util.spec_from_file_location("smilejax_lock", ROOT / "launch" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _pins(name: str) -> dict[str, str]:
    pins = {}
    for line in (LOCKS / f"{name}.txt").read_text().splitlines():
        spec = line.split("#", 1)[0].strip()
        if spec:
            package, version = spec.split("==")
            pins[_normal(package)] = version
    return pins


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_platform_pieces_share_one_version():
    pins = _pins("venv")
    lock = _lock_module()
    versions = {piece: pins[piece] for piece in lock.PLATFORM_PIECES}
    assert len(set(versions.values())) == 1, versions
    assert pins["jax"] == pins["jaxlib"]
    # The GPU compiler of `bench roofline` and the Triton install read these pins.
    for name in ("nvidia-cuda-nvcc-cu12", "nvidia-cudnn-cu12", "nvidia-pytriton", "pip"):
        assert name in pins


def test_venv_is_installed_from_the_lock():
    """Every package of this venv that the lock names has the locked version."""
    pins = _pins("venv")
    drifted = {}
    for dist in importlib.metadata.distributions():
        name = _normal(dist.metadata["Name"])
        if name in pins and pins[name] != dist.version:
            drifted[name] = (dist.version, pins[name])
    assert not drifted, f"installed (version, locked): {drifted}; run make install"
    assert importlib.metadata.version("jax") == pins["jax"]


def test_newest_shared_platform_version(monkeypatch):
    lock = _lock_module()
    index = {
        "jaxlib": ["0.12.1", "0.12.0.1", "0.12.0", "0.11.2"],
        "jax-cuda12-plugin": ["0.12.0.1", "0.12.0", "0.11.2"],
        "jax-cuda12-pjrt": ["0.12.0.1", "0.12.0", "0.11.2"],
        "jax-rocm7-plugin": ["0.12.0", "0.11.2"],
        "jax-rocm7-pjrt": ["0.12.0", "0.11.2"],
    }
    monkeypatch.setattr(lock, "versions", lambda python, package: index[package])
    assert lock.platform_version("python") == "0.12.0"
    index["jax-rocm7-pjrt"] = ["0.11.1"]
    with pytest.raises(SystemExit, match="no version is shared"):
        lock.platform_version("python")
    # Two pieces with nothing in common stop at once: the next piece's list never stands in for theirs.
    index.update({"jaxlib": ["0.12.1"], "jax-rocm7-pjrt": ["0.12.0", "0.11.2"]})
    with pytest.raises(SystemExit, match="no version is shared"):
        lock.platform_version("python")


def test_reference_environments_are_locked():
    lock = _lock_module()
    envs = {env.name: env for env in lock.environments()}
    assert {"venv", "mlpf-reference"} <= set(envs)
    resolved, no_deps = lock.read_in("mlpf-reference")
    assert "particleflow==3.1.0" in no_deps and not any(r.startswith("particleflow") for r in resolved)
    pins = _pins("mlpf-reference")
    assert pins["torch"].endswith("+cpu") and pins["particleflow"] == "3.1.0"
