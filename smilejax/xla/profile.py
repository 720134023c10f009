"""Where a training step's device time goes: a profiler trace of a few steps, summed per XLA op.

``profile_steps`` traces ``run`` (a few compiled steps) with ``jax.profiler`` (``smilejax bench train
--profile``; the training loop's ``run.profile_at`` traces its own steps and calls ``write_summary``),
keeps the trace (open it in XProf / TensorBoard's profile plugin), and sums the time of every op of
the step's program, read from the trace's device timelines (GPU kernels; on a CPU, the host threads
that run XLA's ops). Each op is named from the compiled HLO: its kind (``category``), whether it
belongs to the forward pass, the backward pass or the optimizer update (``phase``), and the model's
``jax.named_scope`` it came from (``scope``: ``encoder/attention``, ``vertex_head``, ...). The tables
say which part of the model to make faster; they are fractions of device time, so compare them
between runs, not with wall time.

Kernels that the trace does not tie to an op (library kernels launched outside XLA's annotations, say)
are listed by kernel name, so no time is hidden. On a GPU, XLA replays runs of kernels as CUDA graphs
("command buffers"), which a trace times as one op each: on an H100 a whole training step was one op,
``command_buffer_1``. ``profile_steps`` therefore traces the program compiled without them
(``compile_traceable``), as does the training loop when ``run.profile_at`` asks for a trace.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

from smilejax import plotting, protowire
from smilejax.tables import markdown_table
from smilejax.xla import hlo
from smilejax.xla.hlo import COLLECTIVES, instructions

log = logging.getLogger(__name__)

_OP_NAME = re.compile(r'op_name="([^"]*)"')
_FUSION_KIND = re.compile(r"kind=(k\w+)")
_CONTROL_FLOW = ("while", "conditional", "call")  # their bodies' ops are timed themselves
# name-stack parts of loops and control flow (gradient accumulation's scan, say): not model scopes
_STRUCTURE = {"while", "body", "cond", "eval_jaxpr", "scan", "checkpoint", "remat", "branch"}
# derived timelines that repeat the kernels' time
_DERIVED_LINES = ("XLA Modules", "XLA Ops", "Steps", "Framework", "Source code", "XLA TraceMe", "TensorFlow")


@dataclasses.dataclass(frozen=True)
class Op:
    category: str  # matmul, attention (cuDNN), elementwise, reduction, copy/transpose, collective, ...
    phase: str  # forward, backward, update
    scope: str  # the model's named scopes ("" outside any), e.g. "encoder/attention"
    primitive: str  # the JAX primitive the op came from (a fusion: its root's)


def _split_name_stack(op_name: str) -> list[str]:
    """``jit(f)/transpose(jvp(enc))/layer/dot_general`` -> its components, parentheses respected."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(op_name):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "/" and depth == 0:
            parts.append(op_name[start:i])
            start = i + 1
    parts.append(op_name[start:])
    return [p for p in parts if p]


def parse_op_name(op_name: str) -> tuple[str, str, str]:
    """(phase, scope, primitive) of an HLO op's JAX name stack.

    Transformations wrap the scope they were applied in (``transpose(jvp(vertex_head))``): ``transpose``
    marks the backward pass, ``jvp`` the forward pass; an op under neither is the optimizer update (or
    code outside the differentiated loss); an op without a name stack was made by XLA itself (phase
    ""). ``jit(...)`` components are inner jitted functions and ``a,b->c`` einsum specifications are
    folded into the primitive; neither is a scope (the first ``jit`` is the program itself).
    """
    parts = _split_name_stack(op_name.split(";")[0])  # ops XLA merged list every name, ";"-separated
    if not parts or not parts[0].startswith("jit("):  # none, or an argument's name: XLA made the op
        return "", "", ""
    primitive, phase, scope = parts[-1], "update", []
    for part in parts[1:-1]:
        while "(" in part and part.endswith(")"):
            head, inner = part.split("(", 1)
            if head == "transpose":
                phase = "backward"
            elif head == "jvp" and phase == "update":
                phase = "forward"
            if head == "jit":
                inner = ""
            part = inner[:-1]
        if "->" in part:
            primitive = f"{primitive} {part}"
        elif part and part not in _STRUCTURE:
            scope.append(part)
    if primitive.startswith("jit(") and primitive.endswith(")"):  # an inner jitted function's call
        primitive = primitive[4:-1]
    return phase, "/".join(scope), primitive


def _is_matmul_fusion(call: str) -> bool:
    """A GEMM fusion, by its own attributes: its computation's name or its backend config's kind (not
    its operands or control predecessors, which may name a GEMM fusion that feeds it)."""
    kind = hlo.backend_kind(call)
    return "gemm" in (hlo.callee(call) or "") or "gemm" in kind or kind in ("__cublas", "__ynn_fusion")


def _category(op: str, call: str) -> str:
    if op == "custom-call":
        target = hlo.custom_call_target(call)
        lowered = target.lower()
        if "fmha" in lowered or "attention" in lowered or "flash" in lowered:
            return "attention (fused)"
        if hlo.is_matmul_call(call):
            return "matmul"
        return f"custom-call {target}"
    if op in ("dot", "convolution"):
        return "matmul"
    if op.removesuffix("-start").removesuffix("-done") in COLLECTIVES:
        return "collective"
    if op in ("copy", "transpose", "copy-start", "copy-done", "dynamic-update-slice", "bitcast"):
        return "copy/transpose"
    if op == "fusion":
        if _is_matmul_fusion(call):
            return "matmul"
        kind = (_FUSION_KIND.search(call) or [None, ""])[1]
        return {"kLoop": "elementwise", "kInput": "reduction", "kOutput": "matmul"}.get(kind, "fusion")
    if op in ("reduce", "reduce-window", "scatter", "select-and-scatter"):
        return "reduction"
    return op


def hlo_ops(text: str) -> tuple[str, dict[str, Op]]:
    """(module name, {instruction name: Op}) of a compiled program's HLO text."""
    module = text.split(",", 1)[0].removeprefix("HloModule").strip()
    ops: dict[str, Op] = {}
    for name, _, opcode, call in instructions(text):
        if opcode in ("parameter", "constant", "get-tuple-element", "tuple"):
            continue
        op_name = (_OP_NAME.search(call) or [None, ""])[1]
        phase, scope, primitive = parse_op_name(op_name)
        category = "control flow" if opcode in _CONTROL_FLOW else _category(opcode, call)
        ops[name] = Op(category, phase, scope, primitive or opcode)
    return module, ops


def _device_lines(profile) -> list[tuple[str | None, Any]]:
    """(device, timeline) of the timelines that hold ops: GPU/TPU streams (the device is the plane),
    or (no device plane: a CPU run) XLA's host threads (None: each op names its device)."""
    planes = list(profile.planes)
    lines = [
        (p.name, line)
        for p in planes
        if p.name.startswith("/device:")
        for line in p.lines
        if not line.name.startswith(_DERIVED_LINES) and line.name != "CUPTI overhead"
    ]
    if any(True for _, line in lines for _ in line.events):
        return lines
    host = [p for p in planes if p.name.startswith("/host:")]
    return [(None, line) for p in host for line in p.lines if "XLA" in line.name]


def program_id(compiled) -> int | None:
    """XLA's id of a compiled program: the ``program_id`` its ops carry in a trace (None: unknown)."""
    try:
        proto = compiled.runtime_executable().hlo_modules()[0].as_serialized_hlo_module_proto()
        return protowire.varint_field(proto, 5)  # HloModuleProto.id
    except Exception:  # another runtime: programs are then told apart by module name only
        return None


Times = dict[tuple[str, int | None], dict[str, float]]


def op_times(trace_dir: Path) -> tuple[Times, dict[str, float], int]:
    """({(module, program id): {op name: ns}}, {kernel name: ns} for device kernels tied to no op,
    the number of devices that ran ops), summed over the newest trace under ``trace_dir``."""
    from jax.profiler import ProfileData

    files = sorted(Path(trace_dir).rglob("*.xplane.pb"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no *.xplane.pb trace under {trace_dir}")
    profile = ProfileData.from_file(str(files[-1]))
    by_program: Times = defaultdict(lambda: defaultdict(float))
    unattributed: dict[str, float] = defaultdict(float)
    devices: set = set()
    for device, line in _device_lines(profile):
        for event in line.events:
            with warnings.catch_warnings():  # jaxlib's stats type warns on first use (harmless)
                warnings.simplefilter("ignore", DeprecationWarning)
                stats = dict(event.stats)
            op = stats.get("hlo_op")
            if op is None:
                if line.name.startswith("Stream"):
                    unattributed[event.name] += event.duration_ns
                continue
            module = str(stats.get("hlo_module", "")).split("(")[0]
            pid = stats.get("program_id")
            by_program[(module, None if pid is None else int(pid))][str(op)] += event.duration_ns
            devices.add(device if device is not None else stats.get("device_ordinal"))
    return {k: dict(v) for k, v in by_program.items()}, dict(unattributed), max(len(devices), 1)


def _program_times(times: Times, module: str, pid: int | None, alone: bool) -> dict[str, float]:
    """The op times of one traced program: by its id, else (the only program asked for) by its module
    name, else the busiest program in the trace."""
    if (module, pid) in times:
        return times[(module, pid)]
    if not alone:
        raise RuntimeError(f"the trace does not tell program {pid} of {module} apart from the others")
    named = [t for (m, _), t in times.items() if m == module]
    if not named and times:  # named differently in the trace
        named = [max(times.values(), key=lambda t: sum(t.values()))]
        log.warning("no op of %s in the trace; using its busiest program", module)
    merged: dict[str, float] = defaultdict(float)
    for t in named:
        for op, ns in t.items():
            merged[op] += ns
    return dict(merged)


def summarise(
    times: dict[str, float], unattributed: dict[str, float], ops: dict[str, Op], steps: int, top: int = 15
) -> dict[str, list[dict]]:
    """Tables of ms per step and share of the traced device time: by category, by scope and phase, and
    the ``top`` costliest ops."""
    unknown = Op("unknown", "", "", "")
    timed = {name: ns for name, ns in times.items() if ops.get(name, unknown).category != "control flow"}
    total = sum(timed.values()) + sum(unattributed.values())
    if total <= 0:
        raise RuntimeError("the trace holds no timed op of the step's program")

    def table(groups: dict[tuple, float], keys: tuple[str, ...]) -> list[dict]:
        rows = [
            {**dict(zip(keys, key, strict=True)), "ms_per_step": ns / steps / 1e6, "share": ns / total}
            for key, ns in groups.items()
        ]
        return sorted(rows, key=lambda r: -r["ms_per_step"])

    by_category: dict[tuple, float] = defaultdict(float)
    by_scope: dict[tuple, float] = defaultdict(float)
    for name, ns in timed.items():
        op = ops.get(name, unknown)
        by_category[(op.category,)] += ns
        by_scope[(op.scope or ("(made by XLA)" if not op.phase else "(no scope)"), op.phase)] += ns
    for ns in unattributed.values():
        by_category[("kernels outside XLA ops",)] += ns
        by_scope[("(kernels outside XLA ops)", "")] += ns
    top_ops = {(name, *dataclasses.astuple(ops.get(name, unknown))): ns for name, ns in timed.items()}
    top_ops.update({(name, "kernel outside XLA ops", "", "", ""): ns for name, ns in unattributed.items()})
    return {
        "by_category": table(by_category, ("category",)),
        "by_scope": table(by_scope, ("scope", "phase")),
        "top_ops": table(top_ops, ("op", "category", "phase", "scope", "primitive"))[:top],
    }


def summary_markdown(title: str, intro: str, summary: dict[str, list[dict]]) -> str:
    """``summarise``'s tables as a markdown page: by kind of op, by model scope and pass, costliest ops."""
    text = [f"# {title}\n\n{intro}\n"]
    for key, heading in (
        ("by_category", "By kind of op"),
        ("by_scope", "By model scope"),
        ("top_ops", "Costliest ops"),
    ):
        text += [f"\n## {heading}\n\n", markdown_table(summary[key])]
    return "".join(text)


# Compiler options of a program compiled to be traced: no command buffers (CUDA graphs), so that the
# trace ties every kernel to its op. Other backends ignore GPU options.
TRACEABLE = {"xla_gpu_enable_command_buffer": ""}


def compile_traceable(lowered, compiled):
    """``lowered`` compiled with ``TRACEABLE`` on a GPU; elsewhere (no command buffers) ``compiled``."""
    if jax.default_backend() != "gpu":
        return compiled
    return lowered.compile(compiler_options=TRACEABLE)


def profile_steps(
    run: Callable[[Any], Any], lowered, compiled, steps: int, out: Path, label: str
) -> dict[str, Any] | None:
    """Traces ``run(program)`` (``steps`` steps of ``program``: ``compiled``, or ``lowered`` compiled
    without command buffers where ``compiled`` has them) into ``out/profile-<label>/`` and writes the
    breakdown next to it (``write_summary``)."""
    program = compile_traceable(lowered, compiled)
    trace_dir = Path(out) / f"profile-{label}"
    shutil.rmtree(trace_dir, ignore_errors=True)
    jax.block_until_ready(run(program))  # warm: nothing but the steps in the trace
    with jax.profiler.trace(str(trace_dir)):
        jax.block_until_ready(run(program))
    return write_summary(trace_dir, {label: program}, steps, label)


def write_summary(trace_dir: Path, programs: dict[str, Any], steps: int, title: str) -> dict[str, Any] | None:
    """Breaks the newest trace under ``trace_dir`` (``steps`` steps of the compiled ``programs``, keyed
    by a label such as the batch shape) down and writes ``<trace_dir>.json`` / ``.md`` / ``.png``;
    returns the summary. With several programs (bucketed batches, one program per width) each op is
    named with its program's label.

    A trace that cannot be broken down (a backend whose trace names no ops, say) costs the caller
    nothing: the ``.md`` says why, and None is returned; the trace is kept."""
    trace_dir = Path(trace_dir)
    written = {suffix: Path(f"{trace_dir}{suffix}") for suffix in (".json", ".md", ".png")}
    try:
        traced, unattributed, devices = op_times(trace_dir)
        times: dict[str, float] = {}
        ops: dict[str, Op] = {}
        for label, compiled in programs.items():
            module, program_ops = hlo_ops(compiled.as_text())
            own = _program_times(traced, module, program_id(compiled), alone=len(programs) == 1)
            suffix = f" [{label}]" if len(programs) > 1 else ""
            times.update({f"{op}{suffix}": ns for op, ns in own.items()})
            ops.update({f"{op}{suffix}": info for op, info in program_ops.items()})
        summary = summarise(times, unattributed, ops, steps * devices)  # per step and device
    except Exception as err:  # the timed steps matter more than their breakdown
        log.warning("profile %s: no breakdown of the trace in %s: %s", title, trace_dir, err)
        written[".md"].write_text(f"# Device time of one step: {title}\n\nNo breakdown: {err}\n")
        return None
    summary["traced_ms_per_step"] = sum(r["ms_per_step"] for r in summary["by_category"])
    summary["devices"] = devices
    written[".json"].write_text(json.dumps({"label": title, **summary}, indent=2) + "\n")
    intro = f"Trace: `{trace_dir}` ({steps} steps; times per device, the mean of {devices})."
    graphs = sorted({op.split(" [")[0] for op in times if op.startswith("command_buffer")})
    if graphs:  # a program compiled with command buffers: their kernels are timed as one op each
        note = f"CUDA graphs timed as one op each ({', '.join(graphs)}): compile with profiling.TRACEABLE"
        log.warning("profile %s: %s", title, note)
        intro += f"\n\n{note} to see their kernels."
    written[".md"].write_text(summary_markdown(f"Device time of one step: {title}", intro, summary))
    _plot(summary, written[".png"], title)
    log.info(
        "profile %s: %s (%s)",
        title,
        ", ".join(f"{r['category']} {r['share']:.0%}" for r in summary["by_category"][:4]),
        written[".md"],
    )
    return summary


def _plot(summary: dict, path: Path, label: str) -> None:
    plt = plotting.pyplot(path)
    if plt is None:
        return

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, name in ((axes[0], "by_category", "category"), (axes[1], "by_scope", None)):
        rows = summary[key][:12][::-1]
        labels = [
            r[name] if name else f"{r['scope']} ({r['phase']})" if r["phase"] else r["scope"] for r in rows
        ]
        ax.barh(labels, [100 * r["share"] for r in rows], color="tab:blue")
        ax.set_xlabel("% of traced device time")
        ax.tick_params(axis="y", labelsize=8)
    axes[0].set_title("by kind of op")
    axes[1].set_title("by model scope and pass")
    fig.suptitle(f"{label}: {summary.get('traced_ms_per_step', 0):.3g} ms of device time per step")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
