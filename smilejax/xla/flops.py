"""FLOPs of a step, for MFU: XLA's cost analysis of the lowered program, or the same count read from its
HLO text where the backend does not analyse lowered programs.

``count`` follows XLA's ``HloCostAnalysis`` (xla/service/hlo_cost_analysis.cc) op by op, so that a
GPU, whose PJRT plugin does not implement ``Lowered.cost_analysis`` (jax-ml/jax#22713), gets the count
a CPU or TPU gets from XLA itself, without JAX's private modules: elementwise ops one FLOP per element
(transcendental ones none: XLA counts them apart), matrix products and convolutions two per
multiply-add, reductions their reducer's FLOPs per combined element, a loop's body once whatever its
trip count, a conditional its costliest branch, and a custom call -1 (XLA's mark for "unknown").
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable

import numpy as np

from smilejax.xla import hlo

log = logging.getLogger(__name__)

_TRANSCENDENTAL = {
    "acosh", "atan2", "cbrt", "cosine", "erf", "exponential", "exponential-minus-one", "log",
    "log-plus-one", "logistic", "power", "rsqrt", "sine", "sqrt", "tan", "tanh",
}  # fmt: skip
_ELEMENTWISE = {
    "abs", "add", "and", "bitcast-convert", "ceil", "clamp", "compare", "complex", "convert",
    "count-leading-zeros", "divide", "floor", "imag", "is-finite", "maximum", "minimum", "multiply",
    "negate", "not", "or", "popcnt", "real", "reduce-precision", "remainder", "round-nearest-afz",
    "round-nearest-even", "select", "shift-left", "shift-right-arithmetic", "shift-right-logical", "sign",
    "stochastic-convert", "subtract", "xor",
}  # fmt: skip
# HLO's "lhs_contracting_dims={1}" and a library call's JSON "lhs_contracting_dimensions":["1"]
_LHS_CONTRACTING = re.compile(r'lhs_contracting_dim(?:s|ensions)"?[=:]\s*[\[{]?([^\]}]*)')
_WINDOW = re.compile(r"window=\{([^}]*)\}")
_DIM_LABELS = re.compile(r"dim_labels=(\w+)_(\w+)->(\w+)")
_GROUPS = re.compile(r"(feature|batch)_group_count=(\d+)")
_SUBCOMPUTATION = re.compile(r"\b(to_apply|calls|body|condition|select|scatter)=%?([\w.\-]+)")
_CONTROL = re.compile(r"control-predecessors=\{([^}]*)\}")
_BRANCHES = re.compile(r"(?:branch_computations=\{([^}]*)\}|(?:true|false)_computation=%?([\w.\-]+))")


def elements(shape: str) -> int:
    """Elements of the first array of an HLO shape string (a scalar has 1)."""
    return math.prod(hlo.dims(shape))


def dot_flops(call: str, result: str, shapes: dict[str, str]) -> float:
    """2 x result elements x contracted elements of a ``dot`` (or a matrix-product library call)."""
    texts, attrs = hlo.operands(call)
    lhs = hlo.dims(shapes.get(hlo.operand_name(texts[0]) or "", "")) if texts else []
    found = _LHS_CONTRACTING.search(attrs)
    contracting = [int(d) for d in re.findall(r"\d+", found.group(1))] if found else []
    if not lhs or any(d >= len(lhs) for d in contracting):
        return 0.0
    return 2.0 * elements(result) * math.prod(lhs[d] for d in contracting)


def _window(attrs: str) -> list[dict[str, list[int]]]:
    """One dict per window dimension: size, stride, pad (low, high), lhs_dilate, rhs_dilate."""
    found = _WINDOW.search(attrs)
    fields = dict(part.split("=", 1) for part in found.group(1).split()) if found else {}
    rank = len(fields.get("size", "").split("x")) if "size" in fields else 0
    dims: list[dict[str, list[int]]] = [{} for _ in range(rank)]
    defaults = {"size": "1", "stride": "1", "pad": "0_0", "lhs_dilate": "1", "rhs_dilate": "1"}
    for key, default in defaults.items():
        values = fields.get(key, "x".join([default] * rank)).split("x")
        for dim, value in zip(dims, values, strict=True):
            dim[key] = [int(v) for v in value.split("_")]
    return dims


def _valid_positions(inputs: int, kernel: int, outputs: int, w: dict[str, list[int]]) -> int:
    """Kernel-output position pairs that land on an input element (XLA's GetConvolutionFlops)."""
    stride, low, base, dilation = w["stride"][0], w["pad"][0], w["lhs_dilate"][0], w["rhs_dilate"][0]
    count = 0
    for k in range(kernel):
        for o in range(outputs):
            index = o * stride - low + k * dilation
            if index % base == 0 and 0 <= index // base < inputs:
                count += 1
    return count


def _convolution_flops(call: str, result: str, shapes: dict[str, str]) -> float:
    texts, attrs = hlo.operands(call)
    lhs, rhs = (hlo.dims(shapes.get(hlo.operand_name(t) or "", "")) for t in texts[:2])
    out = hlo.dims(result)
    labels = _DIM_LABELS.search(attrs)
    if not labels or not lhs or not rhs:
        return 0.0
    lhs_l, rhs_l, out_l = labels.groups()
    groups = {kind: int(n) for kind, n in _GROUPS.findall(attrs)}
    positions = 1
    for i, w in enumerate(_window(attrs)):
        spatial = str(i)
        positions *= _valid_positions(
            lhs[lhs_l.index(spatial)], rhs[rhs_l.index(spatial)], out[out_l.index(spatial)], w
        )
    fma = (
        lhs[lhs_l.index("f")] // groups.get("feature", 1)
        * out[out_l.index("f")]
        * (lhs[lhs_l.index("b")] // groups.get("batch", 1))
        * positions
    )  # fmt: skip
    return 2.0 * fma


def _reduce_window_count(call: str, result: str, shapes: dict[str, str]) -> int:
    """Reducer applications of a reduce-window, with XLA's special case of a reduce broadcast back."""
    window = _window(hlo.operands(call)[1])
    out = hlo.dims(result)
    count = (math.prod(w["size"][0] for w in window) - 1) * math.prod(out)
    reducing = [i for i, w in enumerate(window) if w["size"][0] != 1]
    padded = [i for i, w in enumerate(window) if w["pad"] != [0, 0]]
    if len(reducing) == 1 and len(padded) == 1 and not result.startswith("("):
        i = reducing[0]
        low, high = window[i]["pad"]
        if low and low == high and window[i]["size"][0] == 2 * low + 1 and low == out[i] - 1:
            count = math.prod(out) // out[i] + out[i] - 1
    return count


def _f32(value: float) -> float:
    """``value`` rounded to float32: XLA keeps its counts in floats, so sums match only so."""
    return float(np.float32(value))


def _times(flops: float, count: int) -> float:
    """A subcomputation's FLOPs times a count, multiplied in float32 as XLA does."""
    return float(np.float32(flops) * np.float32(count))


def _visit_order(body: list[hlo.Instruction], root: str | None) -> list[int]:
    """Indices of ``body`` in the order XLA's cost analysis visits them (and sums in float32): a
    post-order walk (operands in order, then control predecessors) from each instruction nothing uses,
    the root last."""
    index = {name: i for i, (name, *_) in enumerate(body)}
    children: list[list[int]] = []
    for _, _, _, call in body:
        texts, attrs = hlo.operands(call)
        names = [hlo.operand_name(t) for t in texts]
        control = _CONTROL.search(attrs)
        names += re.findall(r"[\w.\-]+", control.group(1)) if control else []
        children.append([index[n] for n in names if n in index])
    used = {c for kids in children for c in kids}
    last = index.get(root or "", len(body) - 1)
    starts = [i for i in range(len(body)) if i not in used and i != last] + [last]
    order: list[int] = []
    state: dict[int, bool] = {}  # False: its operands are being visited; True: visited
    for start in starts:
        stack = [start]
        while stack:
            i = stack[-1]
            if i in state:
                stack.pop()
                if not state[i]:
                    state[i] = True
                    order.append(i)
                continue
            state[i] = False
            stack.extend(reversed([c for c in children[i] if c not in state]))
    return order


class _Counter:
    def __init__(self, text: str):
        self.entry, self.comps = hlo.computations(text)
        self.roots = hlo.roots(text)
        self.memo: dict[str, float] = {}

    def computation(self, name: str) -> float:
        if name not in self.memo:
            body = self.comps.get(name, [])
            shapes = {n: shape for n, shape, _, _ in body}
            total = np.float32(0.0)
            for i in _visit_order(body, self.roots.get(name)) if body else []:
                _, shape, op, call = body[i]
                total += np.float32(self.instruction(shape, op, call, shapes))
            self.memo[name] = float(total)
        return self.memo[name]

    def called(self, call: str) -> dict[str, float]:
        """{attribute: FLOPs of the computation it names} (to_apply, calls, body, condition, ...)."""
        return {key: self.computation(name) for key, name in _SUBCOMPUTATION.findall(hlo.operands(call)[1])}

    def instruction(self, shape: str, op: str, call: str, shapes: dict[str, str]) -> float:
        handler = _HANDLERS.get(op)
        if handler is not None:
            return handler(self, shape, call, shapes)
        if op in _ELEMENTWISE:
            return float(elements(shape))
        return 0.0  # data movement, transcendental ops, random bits, collectives but all-reduce


def _operand_shape(call: str, shapes: dict[str, str], i: int) -> str:
    texts = hlo.operands(call)[0]
    return shapes.get(hlo.operand_name(texts[i]) or "", "") if i < len(texts) else ""


def _reduce(c: _Counter, shape: str, call: str, shapes: dict[str, str]) -> float:
    combined = elements(_operand_shape(call, shapes, 0)) - elements(shape)
    return _times(c.called(call).get("to_apply", 0.0), combined)


def _scatter(c: _Counter, shape: str, call: str, shapes: dict[str, str]) -> float:
    inputs = (len(hlo.operands(call)[0]) - 1) // 2  # operands..., indices, updates...
    return _times(c.called(call).get("to_apply", 0.0), elements(_operand_shape(call, shapes, inputs + 1)))


def _select_and_scatter(c: _Counter, shape: str, call: str, shapes: dict[str, str]) -> float:
    called = c.called(call)
    source = elements(_operand_shape(call, shapes, 1))
    window = math.prod(w["size"][0] for w in _window(hlo.operands(call)[1]))
    select = _times(called.get("select", 0.0), source * (window - 1))
    return _f32(select + _times(called.get("scatter", 0.0), source))


def _conditional(c: _Counter, shape: str, call: str, shapes: dict[str, str]) -> float:
    found = _BRANCHES.findall(hlo.operands(call)[1])
    names = [n.strip().lstrip("%") for many, one in found for n in (many.split(",") if many else [one])]
    return max((c.computation(n) for n in names if n), default=0.0)


def _all_reduce(c: _Counter, shape: str, call: str, shapes: dict[str, str]) -> float:
    arrays = re.findall(r"\b(?:pred|[a-z]+\d+[a-z0-9]*)\[([\d,]*)\]", shape)
    return float(sum(math.prod(int(d) for d in dims.split(",") if d) for dims in arrays))


def _sort(c: _Counter, shape: str, call: str, shapes: dict[str, str]) -> float:
    n = elements(_operand_shape(call, shapes, 0))
    return float(n * math.ceil(math.log2(n))) if n > 1 else 0.0


_Handler = Callable[[_Counter, str, str, dict[str, str]], float]
_HANDLERS: dict[str, _Handler] = {
    "dot": lambda c, shape, call, shapes: dot_flops(call, shape, shapes),
    "convolution": lambda c, shape, call, shapes: _convolution_flops(call, shape, shapes),
    "reduce": _reduce,
    "reduce-window": lambda c, shape, call, shapes: (
        c.called(call).get("to_apply", 0.0) * _reduce_window_count(call, shape, shapes)
    ),
    "map": lambda c, shape, call, shapes: c.called(call).get("to_apply", 0.0) * elements(shape),
    "scatter": _scatter,
    "select-and-scatter": _select_and_scatter,
    "sort": _sort,
    "all-reduce": _all_reduce,
    "all-reduce-start": _all_reduce,
    "custom-call": lambda c, shape, call, shapes: -1.0,
    "while": lambda c, shape, call, shapes: _f32(sum(c.called(call).values())),  # body and condition once
    "call": lambda c, shape, call, shapes: c.called(call).get("to_apply", 0.0),
    "fusion": lambda c, shape, call, shapes: c.called(call).get("calls", 0.0),
    "async-start": lambda c, shape, call, shapes: c.called(call).get("calls", 0.0),
    "conditional": _conditional,
}


def count(text: str) -> float:
    """FLOPs of one run of an HLO module (its text), as XLA's ``HloCostAnalysis`` counts them."""
    counter = _Counter(text)
    if counter.entry not in counter.comps:
        raise ValueError("no ENTRY computation in the HLO text")
    return counter.computation(counter.entry)


def lowered_flops(lowered) -> float | None:
    """FLOPs of a lowered (not yet optimised) program: the backend's cost analysis, else ``count`` of
    its HLO text (GPU plugins analyse only compiled programs); None where neither has a positive
    count."""
    cost = None
    try:
        cost = lowered.cost_analysis()  # None where the backend does not implement it
    except Exception:  # some backends raise instead
        cost = None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    value = (cost or {}).get("flops")
    if not value or value <= 0:
        try:
            value = count(lowered.as_text(dialect="hlo"))
        except Exception as err:  # a program this reader cannot follow: no MFU
            log.warning("no FLOP count of the step: %s", err)
            return None
    return float(value) if value > 0 else None


def step_flops(lowered, *, devices: int = 1, repeats: int = 1) -> float | None:
    """FLOPs per device of one step: the cost of the *lowered* (not yet optimised) program, times
    ``repeats``, divided by the ``devices`` that share its work.

    Not the compiled program's count: XLA's GPU backend turns matrix products into cuBLAS calls that
    its cost analysis then misses (jax-ml/jax#22249; an H100 transformer step counted 0.6 of its 2.8
    TFLOP). A jit-sharded step lowers as the global program (``devices`` = mesh size); a step that is
    one ``shard_map`` lowers as one device's body (``devices`` = 1). A loop body counts once whatever
    its trip count, so gradient accumulation passes ``repeats``. Fused kernels behind custom calls
    (cuDNN attention, Pallas) count nothing, and other loops (chunked attention's query blocks) count
    once: ``steps.Program.step_flops`` therefore passes the step as the model's plain jnp
    implementations compute it (``models.kernel_mode.reference``), with all three set.
    """
    flops = lowered_flops(lowered)
    return flops * repeats / devices if flops else None
