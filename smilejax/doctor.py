"""What a run would find here: the report of ``smilejax doctor`` and the preflight check of batch jobs.

``report()`` collects, without starting ``jax.distributed``: the versions of the platform's packages,
JAX's backend and this process's devices (kind, memory), the accelerator stack (CUDA, cuDNN and NCCL or
ROCm versions; the JAX GPU plugins and whether they match jaxlib), the launcher and process layout that
``smilejax.runtime`` detects, and the optional features (``smilejax.features``). Every probe is guarded:
what is missing or broken is reported, never raised.

``problem()`` checks a demand (GPUs, a device count) against a report and returns the one line that
names what is wrong. Job scripts of ``smilejax launch`` run ``smilejax doctor --expect gpu`` on their
first node before training, so that a job whose JAX sees only a CPU fails at once instead of training
on the CPU for the whole allocation.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import glob
import importlib
import importlib.metadata
import importlib.util
import os
import platform
import socket
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from smilejax import host
from smilejax.doctor_text import text  # noqa: F401  (the report as text: doctor.text)

if TYPE_CHECKING:
    import jax

# JAX's GPU plugins (each with a PJRT part of the same version), by the runtime they bring.
PLUGINS = {
    "cuda": ("jax-cuda12-plugin", "jax-cuda12-pjrt", "jax-cuda13-plugin", "jax-cuda13-pjrt"),
    "rocm": ("jax-rocm7-plugin", "jax-rocm7-pjrt"),
}
# What installs each runtime's plugin: with the lock, the plugin is the one built for the locked jaxlib.
INSTALL_PLUGIN = {"cuda": host.pip_install(".[cuda12]"), "rocm": host.pip_install(".[rocm]")}
INSTALL_GPU = f"{INSTALL_PLUGIN['cuda']} (NVIDIA) or {INSTALL_PLUGIN['rocm']} (AMD)"
VISIBILITY_VARS = (
    "CUDA_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "SLURM_STEP_GPUS",
    "SLURM_GPUS_ON_NODE",
)
GPU_PLATFORMS = ("gpu", "cuda", "rocm")
PLATFORM_ALIASES = {"gpu": ("cuda", "rocm")}  # what JAX_PLATFORMS=gpu asks for
BUILTIN_PLATFORMS = {"cpu", "tpu"}  # backends JAX registers without a plugin
NCCL_SONAME = "libnccl.so.2"
KFD_NODES = "/sys/class/kfd/kfd/topology/nodes"  # the ROCm kernel driver's CPU and GPU nodes
PROC_MAPS = Path("/proc/self/maps")  # the files mapped into this process (Linux)


def _guarded(probe: Callable[..., Any], *args: Any) -> Any:
    """``probe(*args)``, or ``{"error": ...}`` when it fails: one broken probe never ends the report."""
    try:
        return probe(*args)
    except Exception as err:
        return {"error": f"{type(err).__name__}: {err}"}


# ---------------------------------------------------------------- JAX and its devices


def _jax() -> dict[str, Any]:
    import jax
    import jax.extend.backend

    out: dict[str, Any] = {"version": jax.__version__, "jax_platforms": os.environ.get("JAX_PLATFORMS")}
    try:
        devices = jax.local_devices()
    except Exception as err:  # e.g. JAX_PLATFORMS=cuda on a node whose GPUs cannot be used
        why = (
            _no_backend(jax.config.jax_platforms or "")
            or str(err)
            or f"{type(err).__name__} while starting the backends JAX_PLATFORMS names"
        )
        return {**out, "backend": None, "error": why, "backend_errors": _backend_errors()}
    backend = jax.extend.backend.get_backend()
    out.update(
        backend=jax.default_backend(),
        platform_version=backend.platform_version,
        devices=[_device(d) for d in devices],
        local_device_count=len(devices),
        device_count=jax.device_count(),
        process_count=jax.process_count(),
        backend_errors=_backend_errors(),
    )
    return out


def _no_backend(platforms: str) -> str | None:
    """The platforms of ``platforms`` (JAX_PLATFORMS) that JAX has no backend for here, and why. JAX skips
    cuda where it sees no NVIDIA GPU, before looking for the plugin: with nothing left it fails on a bare
    AssertionError."""
    reasons = []
    entries = [e.strip() for e in platforms.split(",") if e.strip()]
    have = BUILTIN_PLATFORMS | _plugin_platforms()
    for name in dict.fromkeys(p for e in entries for p in PLATFORM_ALIASES.get(e, (e,))):
        if name not in have:
            runtime = {"cuda": "CUDA", "rocm": "ROCm"}.get(name)
            plugin = f" (no {runtime} plugin installed: {INSTALL_PLUGIN[name]})" if runtime else ""
            reasons.append(f"JAX has no {name} backend here{plugin}")
        elif name == "cuda" and not _has_nvidia_gpu():
            reasons.append("JAX skips its cuda backend: this process sees no NVIDIA GPU")
    return f"JAX_PLATFORMS={platforms}: {'; '.join(reasons)}" if reasons else None


def _plugin_platforms() -> set[str]:
    """The platforms of the installed PJRT plugins (the ``jax_plugins`` entry points JAX loads), by the
    runtime their name carries (``xla_cuda12`` -> cuda)."""
    names = [e.name for e in importlib.metadata.entry_points(group="jax_plugins")]
    return {rt for name in names for rt in PLUGINS if rt in name.lower()}


def _has_nvidia_gpu() -> bool:
    """Whether this process sees an NVIDIA GPU as JAX decides it: a device node of the driver (or WSL's)."""
    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/dev/dxg")


def _amd_gpus() -> int:
    """AMD GPUs the ROCm kernel driver (KFD) lists: topology nodes with SIMD units (CPU nodes have none)."""
    count = 0
    for props in glob.glob(f"{KFD_NODES}/*/properties"):
        with contextlib.suppress(OSError, ValueError):
            fields = dict(line.split(None, 1) for line in Path(props).read_text().splitlines() if " " in line)
            count += int(fields.get("simd_count", "0")) > 0
    return count


def _device(d: jax.Device) -> dict[str, Any]:
    stats = None
    with contextlib.suppress(Exception):  # not every backend keeps statistics (the CPU has none)
        stats = d.memory_stats()
    return {
        "id": d.id,
        "platform": d.platform,
        "kind": d.device_kind,
        "memory_bytes": (stats or {}).get("bytes_limit"),
        "compute_capability": getattr(d, "compute_capability", None),
    }


def _backend_errors() -> dict[str, str]:
    """GPU backends that failed quietly (JAX then falls back to the CPU and only logs why): JAX's own
    message when asked for the devices of a GPU platform it tried, that is one JAX_PLATFORMS allows, with
    its plugin installed and its GPUs present."""
    import jax

    allowed = {
        p
        for e in (jax.config.jax_platforms or "cuda,rocm").split(",")
        for p in PLATFORM_ALIASES.get(e.strip(), (e.strip(),))
    }
    present = {"cuda": _has_nvidia_gpu, "rocm": lambda: _amd_gpus() > 0}
    errors = {}
    for name in sorted(_plugin_platforms() & allowed):
        if not present[name]():
            continue
        try:
            jax.devices(name)
        except Exception as err:  # JAX's RuntimeError: "Backend 'cuda' failed to initialize: ..."
            errors[name] = " ".join(str(err).split()) or type(err).__name__
    return errors


# ---------------------------------------------------------------- accelerator stack


def _accelerator(environ: Mapping[str, str]) -> dict[str, Any]:
    jaxlib = host.package_version("jaxlib")
    plugins = [
        {"package": p, "runtime": rt, "version": v, "matches_jaxlib": v == jaxlib}
        for rt, names in PLUGINS.items()
        for p in names
        if (v := host.package_version(p))
    ]
    out: dict[str, Any] = {
        "plugins": plugins,
        "visible": {v: environ[v] for v in VISIBILITY_VARS if v in environ},
        "hardware": _guarded(_hardware),
    }
    if any(p["runtime"] == "cuda" for p in plugins):
        out["cuda"] = _guarded(_cuda)
    if any(p["runtime"] == "rocm" for p in plugins):
        out["rocm"] = _guarded(_rocm, environ)
    return out


def _hardware() -> dict[str, Any]:
    """GPUs the node's drivers expose, whether or not JAX can use them (the checks JAX makes)."""
    return {"nvidia": _has_nvidia_gpu(), "amd_gpus": _amd_gpus()}


def _cuda() -> dict[str, Any]:
    cuda_versions = _cuda_versions()
    out: dict[str, Any] = {}
    if cuda_versions is not None:
        for name, get, fmt in (
            ("cuda_runtime", "cuda_runtime_get_version", _cuda_runtime),
            ("cuda_built_with", "cuda_runtime_build_version", _cuda_runtime),
            ("cudnn", "cudnn_get_version", _dotted),
            ("cublas", "cublas_get_version", _dotted),
        ):
            with contextlib.suppress(Exception):  # a library the plugin cannot load reads as absent
                out[name] = fmt(getattr(cuda_versions, get)())
    for library in _nccl_libraries():
        if nccl := _nccl_version(library):
            out.update(nccl=nccl, nccl_library=library)
            break
    out["nvidia_packages"] = {
        d.metadata["Name"]: d.version
        for d in importlib.metadata.distributions()
        if (d.metadata["Name"] or "").lower().startswith("nvidia-")
    }
    return out


def _cuda_versions() -> ModuleType | None:
    """The CUDA plugin's version helpers (what JAX reads to check the CUDA libraries); None without one."""
    for package in ("jax_cuda13_plugin", "jax_cuda12_plugin"):
        with contextlib.suppress(ImportError):
            return importlib.import_module(f"{package}._versions")
    return None


def _rocm(environ: Mapping[str, str]) -> dict[str, Any]:
    root = Path(environ.get("ROCM_PATH") or "/opt/rocm")
    info = root / ".info" / "version"
    return {
        "rocm_path": str(root),
        "rocm": info.read_text().strip() if info.is_file() else None,
        "rccl": _nccl_version("librccl.so.1"),
    }


def _cuda_runtime(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}"  # 12080 -> 12.8


def _dotted(v: int) -> str:
    return f"{v // 10000}.{v % 10000 // 100}.{v % 100}"  # cuDNN 90800 -> 9.8.0, cuBLAS 120804 -> 12.8.4


def _nccl_libraries() -> list[str]:
    """Where to ask NCCL its version, likeliest to be JAX's first: a libnccl this process has loaded
    already, the nvidia-nccl-cu12 wheel's (which the CUDA plugin loads), then the soname, which may find
    another NCCL first on LD_LIBRARY_PATH (Perlmutter's `module load nccl`)."""
    loaded = []
    with contextlib.suppress(OSError):
        for line in PROC_MAPS.read_text().splitlines():
            path = line.split(maxsplit=5)[5:]  # address, perms, offset, device, inode, path
            if path and Path(path[0]).name.startswith("libnccl.so"):
                loaded.append(path[0])
    spec = importlib.util.find_spec("nvidia")  # the namespace package of NVIDIA's wheels
    folders = (spec.submodule_search_locations or []) if spec else []
    wheels = [str(f) for p in folders if (f := Path(p) / "nccl" / "lib" / NCCL_SONAME).is_file()]
    return list(dict.fromkeys([*loaded, *wheels, NCCL_SONAME]))


def _nccl_version(library: str) -> str | None:
    """NCCL's (or RCCL's) own version, from ``library`` (a path or a soname)."""
    try:
        lib = ctypes.CDLL(library)
        v = ctypes.c_int()
        if lib.ncclGetVersion(ctypes.byref(v)) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return _dotted(v.value)  # 22703 -> 2.27.3


# ---------------------------------------------------------------- launcher


def _launcher(environ: Mapping[str, str]) -> dict[str, Any]:
    from smilejax import runtime

    try:
        env = runtime.detect(environ)
    except ValueError as err:  # a launcher variable that makes no sense: what the run would fail on
        return {"error": str(err)}
    return {
        **dataclasses.asdict(env),
        "summary": runtime.describe(env),
        "visible_gpus": runtime.visible_gpu_count(environ),
    }


# ---------------------------------------------------------------- the report


def report(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Everything above as one JSON-able mapping (see the module doc)."""
    from smilejax import features

    environ = os.environ if environ is None else environ
    return {
        "host": socket.gethostname(),
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "packages": {p: host.package_version(p) for p in host.PLATFORM_PACKAGES},
        "jax": _guarded(_jax),
        "accelerator": _accelerator(environ),
        "launcher": _guarded(_launcher, environ),
        "features": features.check_all(),
    }


def is_gpu(rep: Mapping[str, Any]) -> bool:
    return rep["jax"].get("backend") in GPU_PLATFORMS


def problem(
    rep: Mapping[str, Any], expect: str | None = None, devices: int | None = None, source: str | None = None
) -> str | None:
    """What keeps ``rep`` from meeting the demand (``expect`` "gpu" or "cpu"; at least ``devices``
    local devices; ``source`` says who demands it), in one line; None when it is met."""
    jax_ = rep["jax"]
    seen = f"JAX {jax_.get('version') or '(not importable)'}"
    if jax_.get("backend") is None:
        return f"{seen} cannot start: {jax_.get('error')}" + (
            f"; {why_no_gpu(rep)}" if expect == "gpu" else ""
        )
    count = jax_["local_device_count"]
    kinds = ", ".join(sorted({d["kind"] for d in jax_["devices"]}))
    if expect == "gpu" and not is_gpu(rep):
        wanted = (f"{devices} GPUs" if devices else "GPUs") + (f" ({source})" if source else "")
        return (
            f"expected {wanted} but {seen} sees only {count} {jax_['backend']} device(s): {why_no_gpu(rep)}"
        )
    if expect == "cpu" and is_gpu(rep):
        return f"expected CPU devices only but {seen} uses {count} GPU(s) ({kinds}); set JAX_PLATFORMS=cpu"
    if devices is not None and count < devices:
        what = "GPUs" if expect == "gpu" else "devices"
        visible = rep["accelerator"]["visible"]
        hint = f" ({', '.join(f'{k}={v}' for k, v in visible.items())})" if visible else ""
        wanted = f"at least {devices} {what} on this node" + (f" ({source})" if source else "")
        return f"expected {wanted} but {seen} sees {count} ({kinds}){hint}"
    return None


def why_no_gpu(rep: Mapping[str, Any]) -> str:
    """Why a GPU node's JAX fell back to the CPU, likeliest first, with what to do about it."""
    jax_, acc = rep["jax"], rep["accelerator"]
    jaxlib = rep["packages"].get("jaxlib")
    reasons = []
    stale = [f"{p['package']} {p['version']}" for p in acc["plugins"] if not p["matches_jaxlib"]]
    if not acc["plugins"]:
        reasons.append(f"jaxlib {jaxlib} has no CUDA or ROCm plugin; install the matching one: {INSTALL_GPU}")
    elif stale:
        reasons.append(f"{', '.join(stale)} does not match jaxlib {jaxlib}; reinstall with {INSTALL_GPU}")
    platforms = jax_.get("jax_platforms")
    if platforms and not any(p.strip() in GPU_PLATFORMS for p in platforms.split(",")):
        reasons.append(f"JAX_PLATFORMS={platforms} leaves the GPUs out; unset it")
    reasons += [f"the {k} backend failed: {v}" for k, v in jax_.get("backend_errors", {}).items()]
    if isinstance(rep["launcher"], dict) and rep["launcher"].get("visible_gpus") == 0:
        shown = ", ".join(f"{k}={v!r}" for k, v in acc["visible"].items())
        reasons.append(f"{shown} leaves this process no GPU; ask the scheduler for GPUs (--gpus-per-node)")
    hardware = acc["hardware"]
    if "error" not in hardware and not hardware["nvidia"] and not hardware["amd_gpus"]:
        reasons.append(
            "the node shows no GPU (no /dev/nvidia*, no AMD KFD node): is it a GPU node of the job?"
        )
    if not reasons and (cuda_error := _cuda_check_error()):
        reasons.append(f"the CUDA plugin refused this node's CUDA libraries: {cuda_error}")
    return (
        "; ".join(reasons) or "a GPU plugin is installed and a GPU is present, but JAX started no GPU backend"
    )


def _cuda_check_error() -> str | None:
    """The CUDA plugin's own version check, whose failure it only logs before leaving the GPU out."""
    for name in ("xla_cuda13", "xla_cuda12"):
        try:
            plugin = importlib.import_module(f"jax_plugins.{name}")
        except ImportError:
            continue
        try:
            plugin._check_cuda_versions(raise_on_first_error=True)
        except Exception as err:  # the check's own message: which library, which version, which minimum
            return " ".join(str(err).split())[:400] or None
    return None
