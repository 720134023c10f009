"""Optional features: whether each is usable here, and if not, the command that installs it.

``smilejax doctor`` lists them: the framework's own (``FEATURES``) and those that installed packages
declare under the entry-point group ``smilejax.features`` (a model family's reference environment, a
generator), which build theirs from ``Feature`` and ``Missing``. A probe only looks (module lookups,
files on disk; it starts nothing and imports no optional package), so the list is fast; a probe that
breaks reports its feature unusable with the error instead of stopping the report. Install commands
come from the modules that need the feature, so the doctor and the feature's own error name the same
command.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
from collections.abc import Callable
from typing import Any

from smilejax import host


class Missing(Exception):
    """What a feature lacks (``str``) and the command that installs it (``install``)."""

    def __init__(self, why: str, install: str):
        super().__init__(why)
        self.install = install


@dataclasses.dataclass(frozen=True)
class Feature:
    name: str
    purpose: str  # which command or option needs it
    probe: Callable[[], str]  # what was found (versions, a path); raises Missing


def _version(dist: str) -> str:
    version = host.package_version(dist)
    return f"{dist} {version}" if version else dist


def _modules(modules: dict[str, str], install: str) -> str:
    """``modules`` maps import names to distributions; all must be importable."""
    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    if absent:
        raise Missing(f"{', '.join(absent)} not installed", install)
    return ", ".join(dict.fromkeys(_version(d) for d in modules.values()))


def _packages(modules: dict[str, str]) -> str:
    """``_modules`` whose install command is the distributions' own, at the lock's versions."""
    return _modules(modules, host.pip_install(*dict.fromkeys(modules.values())))


def _onnx() -> str:
    from smilejax.serve.export import ONNX_HINT

    return _modules({"jax2onnx": "jax2onnx", "onnx": "onnx", "onnxruntime": "onnxruntime"}, ONNX_HINT)


def _triton_client() -> str:
    from smilejax.serve.client import CLIENT_HINT

    # tritonclient's http and grpc parts need their extras' packages.
    modules = {"tritonclient": "tritonclient", "geventhttpclient": "geventhttpclient", "grpc": "grpcio"}
    return _modules(modules, CLIENT_HINT)


def _triton_server() -> str:
    from smilejax.serve import server

    try:
        return str(server.find_binary())
    except FileNotFoundError:
        raise Missing(
            "no tritonserver binary (SMILEJAX_TRITONSERVER, this venv's triton/, PATH, /opt/tritonserver)",
            "make triton  (or NVIDIA's tritonserver container: smilejax serve --help)",
        ) from None


def _gpu_compiler() -> str:
    from smilejax.bench import roofline

    try:
        return str(roofline.compiler_dir())
    except SystemExit:
        raise Missing(
            f"no JAX CUDA plugin in this venv's gpu-compiler/ (or ${roofline.COMPILER_ENV})",
            "make gpu-compiler",
        ) from None


SLURM_BINARIES = ("sbatch", "srun", "slurmctld", "slurmd", "munged")


def _slurm() -> str:
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin"])
    found = {b: shutil.which(b, path=path) for b in SLURM_BINARIES}
    absent = [b for b, where in found.items() if where is None]
    if absent:
        raise Missing(f"{', '.join(absent)} not found", "make system  (as root: Debian's Slurm and munge)")
    return os.path.dirname(found["sbatch"] or "")


FEATURES = (
    Feature("onnx", "export: ONNX artifacts", _onnx),
    Feature("triton-client", "serve.client, bench serve", _triton_client),
    Feature("triton-server", "serve", _triton_server),
    Feature("wandb", "logging.wandb", lambda: _packages({"wandb": "wandb"})),
    Feature("tensorboard", "logging.tensorboard", lambda: _packages({"tensorboardX": "tensorboardX"})),
    Feature("optuna", "tune --backend optuna", lambda: _packages({"optuna": "optuna", "cmaes": "cmaes"})),
    Feature(
        "keras-tuner",
        "tune --backend keras-tuner",
        lambda: _packages({"keras_tuner": "keras-tuner", "sklearn": "scikit-learn", "six": "six"}),
    ),
    Feature("gpu-compiler", "bench roofline", _gpu_compiler),
    Feature("slurm", "launch on Slurm, the local Slurm test cluster", _slurm),
)


def check(feature: Feature) -> dict[str, Any]:
    """``{name, purpose, usable, found | why, install}``; ``install`` only for an unusable feature."""
    row: dict[str, Any] = {"name": feature.name, "purpose": feature.purpose}
    try:
        return {**row, "usable": True, "found": feature.probe(), "install": None}
    except Missing as err:
        return {**row, "usable": False, "why": str(err), "install": err.install}
    except Exception as err:  # a broken package or probe: reported, never raised
        return {**row, "usable": False, "why": f"probe failed: {type(err).__name__}: {err}", "install": None}


def all_features() -> list[Feature]:
    """The framework's features, then those installed packages declare (entry-point group
    ``smilejax.features``: model families, generators)."""
    from smilejax import registry

    return [*FEATURES, *registry.features()]


def check_all() -> list[dict[str, Any]]:
    """Every feature's row; a package whose features do not load is one unusable row naming it."""
    try:
        features = all_features()
    except KeyError as err:
        features = [*FEATURES, Feature("plug-ins", "features of installed packages", _raising(err))]
    return [check(f) for f in features]


def _raising(err: Exception) -> Callable[[], str]:
    def probe() -> str:
        raise err

    return probe
