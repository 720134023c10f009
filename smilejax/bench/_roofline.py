"""A compiled step's device time, bounded from its optimized HLO: each kernel takes at least its bytes
over the memory bandwidth and its FLOPs over the peak (the roofline model).

``kernels`` walks the entry computation of ``compiled.as_text()`` and records every kernel XLA
launches: a fusion, a library or custom call, a copy, a collective. Loop bodies count times their known
trip counts (a loop without one counts once, with a warning; loop conditions are not counted). A
kernel's bytes are its operands' and results' (what it must read and write at least once; an in-place
update is counted whole, so those are over-estimates), its FLOPs those of the matrix products inside
it. Custom kernels (cuDNN attention, Pallas/Triton) count their bytes only: their FLOPs are not in the
HLO.

The bound says where a step's memory traffic goes and how a change moves it, on a machine that has
no GPU (``smilejax bench roofline`` compiles for one). Real steps take longer: launch gaps, small
kernels far from peak, caches. On an H100 the measured GN2 step took 1.4-1.7x its bound
(docs/PERFORMANCE.md).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re

from smilejax import hlo_text

log = logging.getLogger(__name__)

# Instructions that launch nothing: views, bookkeeping, and the second half of asynchronous pairs.
_FREE = {
    "parameter",
    "constant",
    "get-tuple-element",
    "tuple",
    "bitcast",
    "after-all",
    "partition-id",
    "replica-id",
    "opt-barrier",
    "add-dependency",
    "domain",
}
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_BODY = re.compile(r"body=%?([\w.\-]+)")
_BRANCHES = re.compile(r"(?:branch_computations=\{([^}]*)\}|(?:true|false)_computation=%?([\w.\-]+))")
# HLO's "lhs_contracting_dims={1}" and a library call's JSON "lhs_contracting_dimensions":["1"]
_LHS_CONTRACTING = re.compile(r'lhs_contracting_dim(?:s|ensions)"?[=:]\s*[\[{]?([^\]}]*)')


@dataclasses.dataclass(frozen=True)
class Target:
    """An NVIDIA GPU as XLA's compiler sees it (``gpu_device_info``) and its roofline."""

    description: str  # the device kind JAX reports
    compute_capability: tuple[int, int]
    sms: int
    clock_ghz: float
    memory_bandwidth: float  # bytes/s (HBM)
    l2_bytes: int
    memory_bytes: int
    shared_memory_per_sm: int
    shared_memory_per_block_optin: int
    peak_bf16: float  # dense FLOP/s
    peak_tf32: float  # float32 matrix products: JAX's default precision runs them as TF32 on NVIDIA GPUs

    def peak(self, precision: str) -> float:
        return self.peak_bf16 if precision == "bf16" else self.peak_tf32

    def target_config(self) -> str:
        """XLA's ``GpuTargetConfig`` text proto (what ``--xla_gpu_target_config_filename`` reads)."""
        major, minor = self.compute_capability
        return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {self.shared_memory_per_sm}
  threads_per_core_limit: 2048
  core_count: {self.sms}
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(self.memory_bandwidth)}
  l2_cache_size: {self.l2_bytes}
  clock_rate_ghz: {self.clock_ghz}
  device_memory_size: {self.memory_bytes}
  shared_memory_per_block_optin: {self.shared_memory_per_block_optin}
  cuda_compute_capability {{ major: {major} minor: {minor} }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 }}
runtime_version {{ major: 12 minor: 8 }}
device_description_str: "{self.description}"
"""


# Vendor data sheets (SXM parts); the peaks are dense tensor-core bf16 and TF32.
_HOPPER = dict(compute_capability=(9, 0), sms=132, clock_ghz=1.98, l2_bytes=50 * 2**20)
_HOPPER_SMEM = dict(shared_memory_per_sm=233472, shared_memory_per_block_optin=232448)
TARGETS = {
    "h100": Target(
        "NVIDIA H100 80GB HBM3", **_HOPPER, **_HOPPER_SMEM, memory_bandwidth=3.35e12,
        memory_bytes=80 * 2**30, peak_bf16=989e12, peak_tf32=494e12,
    ),
    "h200": Target(
        "NVIDIA H200", **_HOPPER, **_HOPPER_SMEM, memory_bandwidth=4.8e12,
        memory_bytes=141 * 10**9, peak_bf16=989e12, peak_tf32=494e12,
    ),
    "a100": Target(
        "NVIDIA A100-SXM4-80GB", compute_capability=(8, 0), sms=108, clock_ghz=1.41, l2_bytes=40 * 2**20,
        shared_memory_per_sm=167936, shared_memory_per_block_optin=166912, memory_bandwidth=2.04e12,
        memory_bytes=80 * 2**30, peak_bf16=312e12, peak_tf32=156e12,
    ),
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Kernel:
    name: str  # the instruction (profiling.hlo_ops names its category, pass and scope)
    bytes: int  # read and written per launch
    flops: float  # of its matrix products, per launch
    launches: int  # per step: 1, or a loop's trip count

    def seconds(self, target: Target, peak: float) -> float:
        """The roofline bound of all its launches in a step."""
        return self.launches * max(self.bytes / target.memory_bandwidth, self.flops / peak)


def _dot_flops(call: str, result: str, shapes: dict[str, str]) -> float:
    texts, attrs = hlo_text.operands(call)
    lhs = hlo_text.dims(shapes.get(hlo_text.operand_name(texts[0]) or "", "")) if texts else []
    found = _LHS_CONTRACTING.search(attrs)
    contracting = [int(d) for d in re.findall(r"\d+", found.group(1))] if found else []
    if not lhs or any(d >= len(lhs) for d in contracting):
        return 0.0
    return 2.0 * math.prod(hlo_text.dims(result)) * math.prod(lhs[d] for d in contracting)


def _flops(name: str, comps: dict[str, list[hlo_text.Instruction]]) -> float:
    """FLOPs of the matrix products in computation ``name`` and the fusions it calls."""
    body = comps.get(name, [])
    shapes = {n: shape for n, shape, _, _ in body}
    total = 0.0
    for _, shape, opcode, call in body:
        if opcode == "dot":
            total += _dot_flops(call, shape, shapes)
        elif opcode == "fusion" and (callee := hlo_text.callee(call)):
            total += _flops(callee, comps)
    return total


def _launch(name: str, shape: str, opcode: str, call: str, shapes: dict[str, str], comps) -> Kernel:
    texts, _ = hlo_text.operands(call)
    inputs = {hlo_text.operand_name(t) for t in texts} - {None}
    moved = hlo_text.shape_bytes(shape) + sum(hlo_text.shape_bytes(shapes.get(n, "")) for n in inputs)
    if opcode == "fusion" and (callee := hlo_text.callee(call)):
        flops = _flops(callee, comps)
    elif opcode == "dot" or (opcode == "custom-call" and hlo_text.is_matmul_call(call)):
        flops = _dot_flops(call, shape, shapes)  # a library call's result is (out, workspace): dims of out
    else:
        flops = 0.0
    return Kernel(name, moved, flops, 1)


def kernels(text: str) -> list[Kernel]:
    """Every kernel one execution of the compiled program launches (see the module doc)."""
    entry, comps = hlo_text.computations(text)
    if entry not in comps:
        raise ValueError("no ENTRY computation in the HLO text")
    out: list[Kernel] = []

    def walk(comp: str, launches: int) -> None:
        body = comps.get(comp, [])
        shapes = {n: shape for n, shape, _, _ in body}
        for name, shape, opcode, call in body:
            if opcode in _FREE or opcode.endswith("-done"):
                continue
            if opcode == "while":
                trips = _TRIP_COUNT.search(call)
                if not trips:
                    log.warning("roofline: loop %s has no known trip count; its body is counted once", name)
                walk(_BODY.search(call).group(1), launches * (int(trips.group(1)) if trips else 1))
            elif opcode == "call" and (callee := hlo_text.callee(call)):
                walk(callee, launches)
            elif opcode == "conditional":
                # One branch runs: the costliest bounds it.
                found = _BRANCHES.findall(call)
                names = [
                    n.strip().lstrip("%") for many, one in found for n in (many.split(",") if many else [one])
                ]
                costs = {b: sum(k.bytes for k in kernels_of(b)) for b in names if b}
                if costs:
                    walk(max(costs, key=costs.get), launches)
            else:
                kernel = _launch(name, shape, opcode, call, shapes, comps)
                out.append(dataclasses.replace(kernel, launches=launches))

    def kernels_of(comp: str) -> list[Kernel]:
        body = comps.get(comp, [])
        shapes = {n: shape for n, shape, _, _ in body}
        return [_launch(n, s, o, c, shapes, comps) for n, s, o, c in body if o not in _FREE]

    walk(entry, 1)
    return out


def bound(found: list[Kernel], target: Target, precision: str) -> dict[str, float]:
    """Totals of a step: kernels, bytes, FLOPs, the roofline time and its memory-bound share."""
    peak = target.peak(precision)
    times = [k.seconds(target, peak) for k in found]
    memory = sum(
        t for k, t in zip(found, times, strict=True) if k.bytes / target.memory_bandwidth >= k.flops / peak
    )
    total = sum(times)
    return {
        "kernels": sum(k.launches for k in found),
        "gb_per_step": sum(k.bytes * k.launches for k in found) / 1e9,
        "hlo_tflop": sum(k.flops * k.launches for k in found) / 1e12,
        "bound_ms": 1e3 * total,
        "memory_bound": memory / total if total else None,
    }


def kernel_times(found: list[Kernel], target: Target, precision: str) -> dict[str, float]:
    """{kernel: its bound in ns per step}, as ``profiling.summarise`` takes traced times."""
    peak = target.peak(precision)
    times: dict[str, float] = {}
    for k in found:
        times[k.name] = times.get(k.name, 0.0) + 1e9 * k.seconds(target, peak)
    return times
