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
no GPU (``smilejax bench roofline`` compiles for one of ``devices.TARGETS``). Real steps take longer:
launch gaps, small kernels far from peak, caches. On an H100 a measured transformer step took 1.4-1.7x
its bound (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import dataclasses
import logging
import re

from smilejax.xla import hlo
from smilejax.xla.devices import TARGETS as TARGETS  # the compile targets, re-exported
from smilejax.xla.devices import Device
from smilejax.xla.flops import dot_flops

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


@dataclasses.dataclass(frozen=True)
class Kernel:
    name: str  # the instruction (profile.hlo_ops names its category, pass and scope)
    bytes: int  # read and written per launch
    flops: float  # of its matrix products, per launch
    launches: int  # per step: 1, or a loop's trip count

    def seconds(self, target: Device, peak: float) -> float:
        """The roofline bound of all its launches in a step."""
        return self.launches * max(self.bytes / target.memory_bandwidth, self.flops / peak)


def _flops(name: str, comps: dict[str, list[hlo.Instruction]]) -> float:
    """FLOPs of the matrix products in computation ``name`` and the fusions it calls."""
    body = comps.get(name, [])
    shapes = {n: shape for n, shape, _, _ in body}
    total = 0.0
    for _, shape, opcode, call in body:
        if opcode == "dot":
            total += dot_flops(call, shape, shapes)
        elif opcode == "fusion" and (callee := hlo.callee(call)):
            total += _flops(callee, comps)
    return total


def _launch(name: str, shape: str, opcode: str, call: str, shapes: dict[str, str], comps) -> Kernel:
    texts, _ = hlo.operands(call)
    inputs = {hlo.operand_name(t) for t in texts} - {None}
    moved = hlo.shape_bytes(shape) + sum(hlo.shape_bytes(shapes.get(n, "")) for n in inputs)
    if opcode == "fusion" and (callee := hlo.callee(call)):
        flops = _flops(callee, comps)
    elif opcode == "dot" or (opcode == "custom-call" and hlo.is_matmul_call(call)):
        flops = dot_flops(call, shape, shapes)  # a library call's result is (out, workspace): dims of out
    else:
        flops = 0.0
    return Kernel(name, moved, flops, 1)


def kernels(text: str) -> list[Kernel]:
    """Every kernel one execution of the compiled program launches (see the module doc)."""
    entry, comps = hlo.computations(text)
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
            elif opcode == "call" and (callee := hlo.callee(call)):
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


def bound(found: list[Kernel], target: Device, precision: str) -> dict[str, float]:
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


def kernel_times(found: list[Kernel], target: Device, precision: str) -> dict[str, float]:
    """{kernel: its bound in ns per step}, as ``profile.summarise`` takes traced times."""
    peak = target.peak(precision)
    times: dict[str, float] = {}
    for k in found:
        times[k.name] = times.get(k.name, 0.0) + 1e9 * k.seconds(target, peak)
    return times
