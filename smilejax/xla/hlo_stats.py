"""What a compiled step communicates and how much memory it needs, read from XLA's own output.

Collectives come from the optimized HLO text (``compiled.as_text()``), so they are the ops the
device really runs after XLA's partitioner and combiners, not what the Python code asked for.
For every ``all-reduce``, ``all-gather``, ``reduce-scatter``, ``all-to-all``, ``collective-permute``
and ``collective-broadcast`` (synchronous, or the ``*-start`` half of an asynchronous pair; the
``*-done`` half is not counted again) it records:

- ``operand_bytes``: the bytes of the op's inputs on one device (its payload);
- ``group_size``: how many devices take part (from ``replica_groups`` in any of XLA's three
  spellings; a collective-permute is point to point and counts as a group of 2);
- ``axes``: the mesh axes its first group spans, found by placing the group's partition ids on the
  program's mesh (partition i is ``mesh.devices.flat[i]``), e.g. ``("data",)`` for a gradient
  all-reduce or ``("tensor",)`` inside a tensor-parallel pair; empty when no mesh is given;
- ``full_bytes``: the size of the whole buffer the collective works on (the gathered result of an
  all-gather, the input of the others), which does not shrink as devices are added;
- ``wire_bytes``: what one device sends with the bandwidth-optimal ring algorithm:
  all-reduce ``2(p-1)/p · full``, all-gather / reduce-scatter / all-to-all ``(p-1)/p · full``,
  collective-permute and broadcast its operand.

An op is counted once where it appears in the program text: a collective inside a loop body
(``train.grad_accum`` > 1 scans, for instance) runs once per iteration but is counted once.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from smilejax.xla.hlo import COLLECTIVES, instructions, operand_name, operands, shape_bytes

_NUM_PARTITIONS = re.compile(r"num_partitions=(\d+)")


@dataclasses.dataclass(frozen=True)
class Collective:
    kind: str
    operand_bytes: int
    group_size: int
    axes: tuple[str, ...] = ()

    @property
    def full_bytes(self) -> int:
        return self.operand_bytes * self.group_size if self.kind == "all-gather" else self.operand_bytes

    @property
    def wire_bytes(self) -> float:
        p = self.group_size
        if self.kind == "all-reduce":
            return 2 * (p - 1) / p * self.full_bytes
        if self.kind in ("all-gather", "reduce-scatter", "all-to-all"):
            return (p - 1) / p * self.full_bytes
        return float(self.operand_bytes)


def first_group(attrs: str, num_partitions: int) -> list[int]:
    """Partition ids of the first group in ``replica_groups`` (``{{0,1},{2,3}}``, ``[2,2]<=[4]T(1,0)``
    or ``mesh['data'=4,'tensor'=2] {'data'}``) or of the first ``source_target_pairs`` pair; empty or
    absent groups mean all partitions."""
    pair = re.search(r"source_target_pairs=\{\{(\d+),(\d+)\}", attrs)
    if pair:
        return [int(pair.group(1)), int(pair.group(2))]
    mesh = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", attrs)
    if mesh:
        axes = re.findall(r"'([^']+)'=(\d+)", mesh.group(1))
        chosen = re.findall(r"'([^']+)'(?::\(\d+\)(\d+))?", mesh.group(2))
        if any(sub for _, sub in chosen):  # sub-axes: the size is known, the members are not
            return list(range(math.prod(int(sub or 1) for _, sub in chosen)))
        ids = np.arange(math.prod(int(size) for _, size in axes)).reshape([int(size) for _, size in axes])
        names = {name for name, _ in chosen}
        return ids[tuple(slice(None) if name in names else 0 for name, _ in axes)].ravel().tolist()
    iota = re.search(r"replica_groups=\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", attrs)
    if iota:
        dims = [int(d) for d in iota.group(3).split(",")]
        ids = np.arange(math.prod(dims)).reshape(dims)
        if iota.group(4):
            ids = ids.transpose([int(p) for p in iota.group(4).split(",")])
        return ids.reshape(int(iota.group(1)), int(iota.group(2)))[0].tolist()
    listed = re.search(r"replica_groups=\{\{([^}]*)\}", attrs)
    if listed:
        return [int(d) for d in listed.group(1).split(",") if d.strip()]
    return list(range(num_partitions))


def group_size(attrs: str, num_partitions: int) -> int:
    return max(len(first_group(attrs, num_partitions)), 1)


def spanned_axes(members: list[int], mesh_shape: Mapping[str, int]) -> tuple[str, ...]:
    """The mesh axes along which the partition ids ``members`` differ."""
    coords = np.array(np.unravel_index(members, tuple(mesh_shape.values())))
    return tuple(name for name, row in zip(mesh_shape, coords, strict=True) if len(set(row.tolist())) > 1)


def collectives(hlo_text: str, mesh_shape: Mapping[str, int] | None = None) -> list[Collective]:
    """Every collective of an optimized HLO module (see the module doc for what is counted);
    ``mesh_shape`` (axis sizes in mesh order) names the axes each op spans."""
    first = hlo_text.split("\n", 1)[0]
    found = _NUM_PARTITIONS.search(first)
    num_partitions = int(found.group(1)) if found else 1
    shapes: dict[str, str] = {}
    pending: list[tuple[str, list[str], str]] = []
    for name, shape, opcode, call in instructions(hlo_text):
        shapes[name] = shape
        kind = opcode.removesuffix("-start")
        if kind in COLLECTIVES and not opcode.endswith("-done"):
            texts, attrs = operands(call)
            pending.append((kind, texts, attrs))
    out = []
    for kind, texts, attrs in pending:
        operand_bytes = 0
        for text in texts:
            # Older XLA prints "f32[4] %name": an inline shape wins.
            inline = shape_bytes(text)
            operand_bytes += inline or shape_bytes(shapes.get(operand_name(text) or "", ""))
        members = first_group(attrs, num_partitions)
        size = 2 if kind == "collective-permute" else max(len(members), 1)
        fits = (
            mesh_shape
            and members
            and math.prod(mesh_shape.values()) == num_partitions
            and max(members) < num_partitions
        )
        axes = spanned_axes(members, mesh_shape) if fits else ()
        out.append(Collective(kind, operand_bytes, size, axes))
    return out


def summarize(ops: Iterable[Collective]) -> dict[str, Any]:
    """Per-kind op counts and payload bytes, plus totals (``comm_bytes``, ``wire_bytes``, ``collectives``)."""
    ops = list(ops)
    out: dict[str, Any] = {"collectives": len(ops)}
    for kind in COLLECTIVES:
        of_kind = [op for op in ops if op.kind == kind]
        if of_kind:
            out[f"{kind}/count"] = len(of_kind)
            out[f"{kind}/bytes"] = sum(op.operand_bytes for op in of_kind)
    out["comm_bytes"] = sum(op.operand_bytes for op in ops)
    out["wire_bytes"] = round(sum(op.wire_bytes for op in ops))
    return out


def memory(compiled) -> dict[str, int]:
    """Per-device memory of a compiled program (bytes): arguments, outputs, temporaries, and their
    total ``arguments + outputs - aliased (donated) + temporaries``; empty when the backend has none."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # some backends do not implement it
        return {}
    if stats is None:
        return {}
    arg, out = stats.argument_size_in_bytes, stats.output_size_in_bytes
    alias, temp = stats.alias_size_in_bytes, stats.temp_size_in_bytes
    return {
        "argument_bytes": arg,
        "output_bytes": out,
        "temp_bytes": temp,
        "total_bytes": arg + out - alias + temp,
    }
