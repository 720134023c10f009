"""XLA's HLO text (``compiled.as_text()``), one instruction per line: what the device really runs.

Shared by the communication study (``bench/_hlo_stats``) and the device-time breakdown (``profiling``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

COLLECTIVES = (
    "all-reduce",
    "all-gather",
    "reduce-scatter",
    "all-to-all",
    "collective-permute",
    "collective-broadcast",
)

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")


def _split_shape(rhs: str) -> tuple[str, str]:
    """``"(f32[2], f32[]) all-reduce(...)"`` -> (shape, rest); tuples are matched by parentheses."""
    if not rhs.startswith("("):
        shape, _, rest = rhs.partition(" ")
        return shape, rest
    depth = 0
    for i, ch in enumerate(rhs):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            return rhs[: i + 1], rhs[i + 1 :].lstrip()
    return rhs, ""


def instructions(hlo_text: str) -> Iterator[tuple[str, str, str, str]]:
    """(name, result shape, opcode, the call with its attributes) of every instruction."""
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        name, rhs = match.groups()
        shape, call = _split_shape(rhs)
        yield name, shape, call.split("(", 1)[0].strip(), call
