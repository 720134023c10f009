"""XLA's HLO text, one instruction per line: ``compiled.as_text()`` (what the device really runs) or
``lowered.as_text(dialect="hlo")`` (the program before XLA optimises it).

Shared by the FLOP count (``flops``), the collectives and memory of a step (``hlo_stats``), the
device-time breakdown (``profile``) and the roofline bound (``roofline``).
"""

from __future__ import annotations

import math
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
# a computation's header: "%name (params) -> shape {", or "name {" in a lowered (unoptimized) module
_COMPUTATION = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*(?:\(.*)?\{\s*$")
_ARRAY = re.compile(r"\b(pred|[a-z]+\d+[a-z0-9]*)\[([\d,]*)\]")

_CALLEE = re.compile(r"\b(?:calls|to_apply)=%?([\w.\-]+)")
_BACKEND_KIND = re.compile(r'"kind":"([^"]+)"')
_TARGET = re.compile(r'custom_call_target="([^"]*)"')

Instruction = tuple[str, str, str, str]  # name, result shape, opcode, the call with its attributes


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


def _parse(line: str) -> Instruction | None:
    match = _INSTRUCTION.match(line)
    if not match:
        return None
    name, rhs = match.groups()
    shape, call = _split_shape(rhs)
    return name, shape, call.split("(", 1)[0].strip(), call


def instructions(hlo_text: str) -> Iterator[Instruction]:
    """(name, result shape, opcode, the call with its attributes) of every instruction."""
    for line in hlo_text.splitlines():
        parsed = _parse(line)
        if parsed:
            yield parsed


def computations(hlo_text: str) -> tuple[str, dict[str, list[Instruction]]]:
    """(the entry computation's name, {computation: its instructions in order})."""
    entry, found, current = "", {}, None
    for line in hlo_text.splitlines():
        header = _COMPUTATION.match(line) if not line.startswith(" ") else None
        if header:
            current = found.setdefault(header.group(2), [])
            entry = header.group(2) if header.group(1) else entry
        elif line.startswith("}"):
            current = None
        elif current is not None and (parsed := _parse(line)):
            current.append(parsed)
    return entry, found


def roots(hlo_text: str) -> dict[str, str]:
    """{computation: the name of its ROOT instruction}."""
    found, current = {}, None
    for line in hlo_text.splitlines():
        header = _COMPUTATION.match(line) if not line.startswith(" ") else None
        if header:
            current = header.group(2)
        elif line.startswith("}"):
            current = None
        elif current is not None and line.lstrip().startswith("ROOT ") and (parsed := _parse(line)):
            found[current] = parsed[0]
    return found


def _element_bytes(dtype: str) -> float:
    if dtype == "pred":
        return 1.0
    bits = re.match(r"[a-z]+(\d+)", dtype)
    return int(bits.group(1)) / 8 if bits else 0.0


def shape_bytes(shape: str) -> int:
    """Bytes of every array in an HLO shape string (a tuple sums its elements; ``token[]`` is 0)."""
    total = 0.0
    for dtype, dims in _ARRAY.findall(shape):
        if dtype == "token":
            continue
        total += _element_bytes(dtype) * math.prod(int(d) for d in dims.split(",") if d)
    return int(total)


def dims(shape: str) -> list[int]:
    """The dimensions of the first array in an HLO shape string."""
    found = _ARRAY.search(shape)
    return [int(d) for d in found.group(2).split(",") if d] if found else []


def operands(call: str) -> tuple[list[str], str]:
    """``"op(%a, %b), attrs"`` -> (operand texts, attrs)."""
    start = call.index("(")
    depth = 0
    for i in range(start, len(call)):
        depth += {"(": 1, ")": -1, "{": 1, "}": -1}.get(call[i], 0)
        if depth == 0:
            inner, attrs = call[start + 1 : i], call[i + 1 :]
            break
    else:
        inner, attrs = call[start + 1 :], ""
    return split_top_level(inner), attrs


def split_top_level(text: str) -> list[str]:
    """``text`` split at the commas outside brackets, stripped, empty parts dropped
    (``"a, f(b, c), [1,2]"`` -> ``["a", "f(b, c)", "[1,2]"]``)."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += {"(": 1, ")": -1, "{": 1, "}": -1, "[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [p.strip() for p in [*parts, current] if p.strip()]


def operand_name(text: str) -> str | None:
    """The instruction an operand text refers to (``"%a"``, ``"a"``, or older XLA's ``"f32[4] %a"``)."""
    refs = re.findall(r"%([\w.\-]+)", text)
    if refs:
        return refs[-1]
    bare = text.strip().split()
    return bare[-1] if bare and re.fullmatch(r"[\w.\-]+", bare[-1]) else None


def callee(call: str) -> str | None:
    """The computation a fusion (``calls=``) or a ``call`` (``to_apply=``) runs."""
    found = _CALLEE.search(operands(call)[1])
    return found.group(1) if found else None


def backend_kind(call: str) -> str:
    """A fusion's kind in its backend config (``__triton_gemm``, ``__cublas_gemm``, ...), else ""."""
    found = _BACKEND_KIND.search(operands(call)[1])
    return found.group(1) if found else ""


def custom_call_target(call: str) -> str:
    found = _TARGET.search(call)
    return found.group(1) if found else ""


def is_matmul_call(call: str) -> bool:
    """A custom call into a matrix-product library (cuBLAS, cuBLASLt, a GEMM), by its target."""
    target = custom_call_target(call).lower()
    return any(word in target for word in ("gemm", "matmul", "cublas"))
