"""``smilejax doctor``'s report as text for people: sections of aligned lines (``--json`` prints the
report itself)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def text(rep: Mapping[str, Any]) -> str:
    """The report as sections of aligned lines, for people (``--json`` prints ``rep`` itself)."""
    py = rep["python"]
    lines = [f"smilejax doctor on {rep['host']}: Python {py['version']} ({py['executable']})", ""]
    packages = ", ".join(f"{p} {v or 'MISSING'}" for p, v in rep["packages"].items())
    lines += ["packages", _line("", packages), "", "JAX", *_jax_lines(rep["jax"]), ""]
    lines += ["accelerator", *_accelerator_lines(rep["accelerator"]), ""]
    launcher = rep["launcher"]
    lines += ["launcher", _line("", launcher.get("summary") or f"cannot tell: {launcher.get('error')}"), ""]
    lines += ["features"]
    for f in rep["features"]:
        state = "ok" if f["usable"] else "missing"
        lines.append(f"  {state:<8} {f['name']:<15} {f['purpose']}: {f.get('found') or f.get('why')}")
        if f["install"]:
            lines.append(f"  {'':<8} {'':<15} install: {f['install']}")
    return "\n".join(lines) + "\n"


def _line(key: str, value: Any) -> str:
    return f"  {key:<15} {value}".rstrip() if key else f"  {value}"


def _jax_lines(j: Mapping[str, Any]) -> list[str]:
    if j.get("backend") is None:
        return [_line("error", j.get("error"))]
    lines = [
        _line("backend", f"{j['backend']} ({j['platform_version']})"),
        _line("JAX_PLATFORMS", j["jax_platforms"] or "(not set: JAX chooses)"),
        _line(
            "devices",
            f"{j['local_device_count']} here, {j['device_count']} in all, {j['process_count']} process(es)",
        ),
    ]
    groups: dict[tuple, list[int]] = {}
    for d in j["devices"]:
        key = (d["platform"], d["kind"], d["memory_bytes"], d["compute_capability"])
        groups.setdefault(key, []).append(d["id"])
    for (plat, kind, memory, cc), ids in groups.items():
        mem = f"{memory / 2**30:.1f} GiB for JAX" if memory else "memory not reported"
        cap = f", compute capability {cc}" if cc else ""
        lines.append(_line("", f"ids {_ids(ids)}: {plat} {kind}, {mem}{cap}"))
    for platform_, err in j.get("backend_errors", {}).items():
        lines.append(_line(f"{platform_} failed", err))
    return lines


def _ids(ids: list[int]) -> str:
    return f"{ids[0]}-{ids[-1]}" if len(ids) > 2 and ids == list(range(ids[0], ids[-1] + 1)) else str(ids)


def _accelerator_lines(acc: Mapping[str, Any]) -> list[str]:
    from smilejax.doctor import INSTALL_GPU

    plugins = ", ".join(
        f"{p['package']} {p['version']}" + ("" if p["matches_jaxlib"] else " (does NOT match jaxlib)")
        for p in acc["plugins"]
    )
    lines = [_line("GPU plugins", plugins or f"none (CPU only; for GPUs: {INSTALL_GPU})")]
    if cuda := acc.get("cuda"):
        names = {"cuda_runtime": "CUDA", "cuda_built_with": "built with CUDA", "cudnn": "cuDNN"}
        names |= {"cublas": "cuBLAS", "nccl": "NCCL", "error": "error"}
        lines.append(_line("CUDA stack", ", ".join(f"{names[k]} {cuda[k]}" for k in names if k in cuda)))
        if "nccl_library" in cuda:
            lines.append(_line("NCCL from", cuda["nccl_library"]))
        wheels = cuda.get("nvidia_packages", {})
        lines.append(
            _line("NVIDIA wheels", ", ".join(f"{k} {v}" for k, v in sorted(wheels.items())) or "none")
        )
    if rocm := acc.get("rocm"):
        lines.append(_line("ROCm stack", ", ".join(f"{k} {v}" for k, v in rocm.items() if v)))
    hw = acc["hardware"]
    if "error" in hw:
        lines.append(_line("GPUs on node", f"cannot tell: {hw['error']}"))
    else:
        nvidia = "NVIDIA devices present" if hw["nvidia"] else "no NVIDIA device"
        lines.append(_line("GPUs on node", f"{nvidia}, {hw['amd_gpus']} AMD GPU(s)"))
    if acc["visible"]:
        lines.append(_line("visibility", ", ".join(f"{k}={v}" for k, v in acc["visible"].items())))
    return lines
