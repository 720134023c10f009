"""Slurm's compact formats, expanded: hostlists (``nid[001-003]``) and tasks per node (``2(x3),1``).

Pure string parsing for :mod:`smilejax.runtime`'s cluster detection, kept apart so it is tested alone.
"""

from __future__ import annotations

import re


def expand_hostlist(hostlist: str) -> list[str]:
    """Expand a Slurm hostlist: ``"nid[001-003,007],login5"`` → nid001, nid002, nid003, nid007, login5.

    Zero padding of range bounds is kept; several bracket groups in one name expand as a product.
    """
    hosts: list[str] = []
    # Split on commas outside brackets.
    for item in re.findall(r"(?:[^,\[]|\[[^\]]*\])+", hostlist):
        expanded = [""]
        for literal, ranges in re.findall(r"([^\[]*)(?:\[([^\]]*)\])?", item):
            choices = [literal]
            if ranges:
                choices = [literal + n for n in _expand_ranges(ranges, hostlist)]
            expanded = [head + c for head in expanded for c in choices]
        hosts.extend(h for h in expanded if h)
    return hosts


def _expand_ranges(ranges: str, hostlist: str) -> list[str]:
    out: list[str] = []
    for part in ranges.split(","):
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise ValueError(f"bad Slurm hostlist {hostlist!r}: range {part!r}")
        if not hi:
            out.append(lo)
            continue
        width = len(lo) if lo.startswith("0") else 0
        out.extend(str(n).zfill(width) for n in range(int(lo), int(hi) + 1))
    return out


def parse_tasks_per_node(spec: str) -> list[int]:
    """Expand Slurm's tasks-per-node format: ``"2(x3),1"`` → [2, 2, 2, 1]."""
    counts: list[int] = []
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if not m:
            raise ValueError(f"bad Slurm tasks-per-node value {spec!r}")
        counts.extend([int(m[1])] * int(m[2] or 1))
    return counts
