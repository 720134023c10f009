"""A trained model's forward pass as deployable artifacts, each checked against the model before it is kept.

- StableHLO (``jax.export``): the canonical artifact. The batch dimension is symbolic, and so is the
  element count (the size of a set: constituents, hits; the spec's ``element_axes``, else axis 1 where
  the inputs agree on it) when the model has one and traces with it symbolic. Lowered for CPU and CUDA,
  so a repository made on a laptop serves on a GPU node.
- ONNX (``jax2onnx``): for Triton's ONNX Runtime backend and experiment software (Athena, CMSSW).
  Symbolic batch and element count where onnxruntime reproduces the model with them, else the training
  config's element count (``onnx_export``).

Inputs: with ``raw``, the variables as the data files store them (the format's ``DatasetSpec.raw``),
turned into the model's inputs (masks, normalisation with the run's numbers) inside the program;
without, the model's own inputs, as the input pipeline makes them.

Parameters are constants inside both artifacts (host copies, so the program is single-device), and
the model is called with its ``input_spec`` names as keyword arguments; outputs are the model's dict
(a bare array becomes ``{"output": ...}``). Export runs in float32: the trained model comes back in
float32 whatever precision it trained with (a bfloat16 cast inside makes onnxruntime refuse the graph).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from smilejax import host
from smilejax.inputs.spec import ELEMENTS, RawSignature
from smilejax.models import kernel_mode
from smilejax.trained import TrainedModel

log = logging.getLogger(__name__)

FORMATS = ("stablehlo", "onnx")
BATCH = "batch"
PLATFORMS = ("cpu", "cuda")
# Export-time agreement with the in-process model (float32 on both sides).
RTOL, ATOL = 1e-5, 1e-5
ONNX_HINT = host.pip_install(".[serve]")  # jax2onnx, onnx, onnxruntime


class ExportError(ValueError):
    """An artifact that could not be made, or that disagrees with the model; the message says which."""


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One input or output, without its batch dimension; ``dims`` holds ints and symbolic names."""

    name: str
    dtype: str  # numpy's name: float32, bool, int32, ...
    dims: tuple[int | str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "dims": list(self.dims)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Tensor:
        return cls(d["name"], d["dtype"], tuple(d["dims"]))


@dataclasses.dataclass(frozen=True)
class Forward:
    """The model as a pure function of positional arrays (in ``inputs`` order) -> ``{output: array}``."""

    fn: Callable[..., dict[str, jax.Array]]
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    element_size: int | None  # the training config's element count when it is symbolic, else None
    model_inputs: tuple[Tensor, ...] = ()  # with raw inputs: what the model itself takes
    raw: dict[str, Any] | None = None  # with raw inputs: their record (variables, masks, normalisation)


def forward(tm: TrainedModel, *, symbolic_elements: bool = True, raw: bool | None = False) -> Forward:
    """``tm``'s forward pass with its shapes: symbolic batch, and symbolic elements where the model allows.

    raw: False, the model's own inputs; True, the data files' variables (the format's ``raw`` hook;
    ExportError without one); None, raw where the format has the hook.
    """
    graphdef, state = nnx.split(tm.model)
    state = jax.device_get(state)  # host copies: constants of a single-device program
    specs = tm.spec.input_spec(tm.cfg.model, 1)
    names = tuple(specs)

    def fn(*args: jax.Array) -> dict[str, jax.Array]:
        with kernel_mode.portable():  # an artifact runs on any device: no GPU-only kernels, even on a GPU
            out = nnx.merge(graphdef, state)(**dict(zip(names, args, strict=True)))
        return out if isinstance(out, dict) else {"output": out}

    axes = element_axes(specs, tm.spec.element_axes)
    size = next((specs[n].shape[a] for n, a in axes.items()), None)
    templates = [_template(n, s, axes.get(n)) for n, s in specs.items()]
    model = _shaped(fn, templates, size, symbolic_elements)
    sig = raw_signature(tm, raw)
    if sig is None:
        return model
    return with_raw(model, sig, size, symbolic_elements)


def raw_signature(tm: TrainedModel, raw: bool | None) -> RawSignature | None:
    """The run's raw signature (see ``forward``'s ``raw``), or None for the model's own inputs."""
    if raw is False:
        return None
    from smilejax import registry

    name = tm.cfg.data.format
    hook = registry.dataset(name).raw
    if hook is None:
        if raw:
            raise ExportError(f"data format {name!r} declares no raw inputs (DatasetSpec.raw)")
        log.info("data format %s declares no raw inputs: the export takes the model's own inputs", name)
        return None
    try:
        return hook.signature(tm.cfg.data)
    except Exception as err:  # the run's normalisation is not readable from here, say
        raise ExportError(
            f"the raw inputs of data format {name!r} could not be made ({type(err).__name__}: {err}); "
            "export the model's own inputs instead (smilejax export --pipeline-inputs)"
        ) from err


def with_raw(model: Forward, sig: RawSignature, size: int | None, symbolic_elements: bool) -> Forward:
    """``model`` behind ``sig.prepare``: a forward pass of the raw inputs. ``size``: the config's element
    count, which the raw set axis takes when it cannot stay symbolic."""
    names = [t.name for t in model.inputs]
    raw_names = [t.name for t in sig.inputs]
    if any(ELEMENTS in t.dims for t in sig.inputs) and size is None:
        raise ExportError(f"raw inputs {raw_names} have a set axis, but the model's inputs have none")

    def fn(*args: jax.Array) -> dict[str, jax.Array]:
        prepared = sig.prepare(**dict(zip(raw_names, args, strict=True)))
        missing = [n for n in names if n not in prepared]
        if missing:
            raise ExportError(f"the raw inputs' prepare gives {sorted(prepared)}, not the model's {missing}")
        return model.fn(*(prepared[n] for n in names))

    templates = [Tensor(t.name, t.dtype, tuple(t.dims)) for t in sig.inputs]
    composed = _shaped(fn, templates, size, symbolic_elements and model.element_size is not None)
    fixed = {t.name: t for t in composed.inputs}
    record = {
        "inputs": [
            {**fixed[t.name].to_json(), "variables": list(t.variables), "about": t.about} for t in sig.inputs
        ],
        **sig.about,
    }
    return dataclasses.replace(composed, model_inputs=model.inputs, raw=record)


def _template(name: str, spec: jax.ShapeDtypeStruct, axis: int | None) -> Tensor:
    """``spec`` without its batch axis, its element axis (if any) named ``ELEMENTS``."""
    dims: list[int | str] = list(spec.shape[1:])
    if axis is not None:
        dims[axis - 1] = ELEMENTS
    return Tensor(name, np.dtype(spec.dtype).name, tuple(dims))


def _shaped(fn: Callable, templates: list[Tensor], size: int | None, symbolic: bool) -> Forward:
    """``fn`` with its inputs' shapes: the element count symbolic where ``fn`` traces so, else ``size``."""
    if symbolic and any(ELEMENTS in t.dims for t in templates):
        try:
            out = jax.eval_shape(fn, *_abstract(templates))
            return _forward(fn, templates, out, size)
        except ExportError:
            raise
        except Exception as err:  # the model fixes the element count (a dense layer over it, say)
            log.info("the element count stays fixed at %s: tracing it symbolic failed (%s)", size, err)
    fixed = [fix_elements(t, size) for t in templates]
    return _forward(fn, fixed, jax.eval_shape(fn, *_abstract(fixed)), None)


def _forward(fn: Callable, inputs: list[Tensor], out: dict[str, Any], size: int | None) -> Forward:
    outputs = tuple(_tensor(n, s.shape, s.dtype) for n, s in out.items())
    return Forward(fn=fn, inputs=tuple(inputs), outputs=outputs, element_size=size)


def element_axes(
    specs: dict[str, jax.ShapeDtypeStruct], declared: Mapping[str, int] | None
) -> dict[str, int]:
    """{input: axis} of the element count: the model's ``declared`` axes (ValueError when the inputs
    disagree on its size), else axis 1 where it reads as one: some input has per-element features
    (rank >= 3) and every input of rank >= 2 agrees on axis 1 (a set [B, N, F] with its mask [B, N])."""
    if declared is not None:
        unknown = sorted(set(declared) - set(specs))
        if unknown:
            raise ValueError(f"element_axes names input(s) {unknown} the model does not take ({list(specs)})")
        bad = {n: a for n, a in declared.items() if not 1 <= a < len(specs[n].shape)}
        if bad:
            raise ValueError(f"element_axes {bad}: an axis must be past the batch axis and within the input")
        sizes = {n: specs[n].shape[a] for n, a in declared.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"element_axes: the inputs disagree on the element count: {sizes}")
        return dict(declared)
    if not any(len(s.shape) >= 3 for s in specs.values()):
        return {}
    ranked = {n: s for n, s in specs.items() if len(s.shape) >= 2}
    return {n: 1 for n in ranked} if len({s.shape[1] for s in ranked.values()}) == 1 else {}


def _abstract(tensors: Sequence[Tensor]) -> list[jax.ShapeDtypeStruct]:
    """Shapes with a symbolic batch and ``ELEMENTS`` dims symbolic."""
    batch, elements = jax.export.symbolic_shape(f"{BATCH}, {ELEMENTS}")
    return [
        jax.ShapeDtypeStruct((batch, *(elements if d == ELEMENTS else d for d in t.dims)), np.dtype(t.dtype))
        for t in tensors
    ]


def _tensor(name: str, shape: Sequence[Any], dtype: Any) -> Tensor:
    dims = tuple(d if isinstance(d, int) else str(d) for d in shape[1:])
    return Tensor(name, np.dtype(dtype).name, dims)


def input_shapes(fwd: Forward, batch: Any, elements: Any) -> list[jax.ShapeDtypeStruct]:
    """The inputs' shapes with ``batch`` and ``elements`` (ints, symbolic dims or names) filled in."""
    return [
        jax.ShapeDtypeStruct((batch, *(elements if d == ELEMENTS else d for d in t.dims)), np.dtype(t.dtype))
        for t in fwd.inputs
    ]


# ---------------------------------------------------------------- example inputs and checks


def example_inputs(fwd: Forward, batch: int, elements: int | None = None, seed: int = 0) -> list[np.ndarray]:
    """Random inputs of the forward's shapes; masks keep at least their first element valid."""
    rng = np.random.default_rng(seed)
    arrays = []
    for t, s in zip(fwd.inputs, input_shapes(fwd, batch, elements or fwd.element_size), strict=True):
        if s.dtype == np.bool_:
            a = rng.random(s.shape) < 0.8
            if a.ndim >= 2:
                a[(slice(None),) * _element_axis(t) + (0,)] = True
        elif s.dtype.kind == "f":
            a = rng.normal(size=s.shape).astype(s.dtype)
        else:
            a = np.zeros(s.shape, s.dtype)
        arrays.append(a)
    return arrays


def _element_axis(t: Tensor) -> int:
    """The axis of ``t``'s element count (batch included), else 1."""
    return t.dims.index(ELEMENTS) + 1 if ELEMENTS in t.dims else 1


def element_dims(fwd: Forward) -> dict[str, int]:
    """{input: axis, batch included} of the symbolic element count (empty when it is fixed)."""
    return {t.name: _element_axis(t) for t in fwd.inputs if ELEMENTS in t.dims}


def compare(expected: dict[str, Any], got: dict[str, Any], what: str) -> float:
    """The largest absolute difference; raises ExportError naming the first output that disagrees."""
    worst = 0.0
    for name, ref in expected.items():
        if name not in got:
            raise ExportError(f"{what}: output {name!r} is missing (got {sorted(got)})")
        ref, out = np.asarray(ref), np.asarray(got[name])
        if ref.shape != out.shape:
            raise ExportError(f"{what}: output {name!r} has shape {out.shape}, the model gives {ref.shape}")
        if not np.allclose(out, ref, rtol=RTOL, atol=ATOL):
            err = float(np.max(np.abs(out - ref)))
            raise ExportError(f"{what}: output {name!r} differs from the model by up to {err:.3g}")
        worst = max(worst, float(np.max(np.abs(out - ref))) if ref.size else 0.0)
    return worst


class Checker:
    """The in-process model's outputs on example inputs, computed once, to hold each artifact against.

    Points are (batch, elements): batch 1 and 3 at the config's element count, and batch 2 at half of
    it when the element count is symbolic.
    """

    def __init__(self, fwd: Forward):
        points: list[tuple[int, int | None]] = [(1, None), (3, None)]
        if fwd.element_size and fwd.element_size > 1:
            points.append((2, max(1, fwd.element_size // 2)))
        reference = jax.jit(fwd.fn)
        self.cases = []
        for batch, elements in points:
            xs = example_inputs(fwd, batch, elements, seed=batch)
            self.cases.append((batch, elements, xs, jax.device_get(reference(*xs))))

    def check(self, run: Callable[[list[np.ndarray]], dict[str, Any]], what: str, *, elements: bool) -> float:
        """The largest absolute difference of ``run`` over the points (those with another element count
        only when ``elements``); raises ExportError at the first disagreement."""
        worst = 0.0
        for batch, n, xs, expected in self.cases:
            if n is None or elements:
                worst = max(worst, compare(expected, run(xs), f"{what} at batch {batch}"))
        return worst


# ---------------------------------------------------------------- StableHLO


def to_stablehlo(fwd: Forward, checker: Checker | None = None) -> tuple[jax.export.Exported, dict[str, Any]]:
    """The ``jax.export`` artifact and its check report; raises ExportError when it disagrees."""
    checker = checker or Checker(fwd)
    jitted = jax.jit(fwd.fn)
    args = input_shapes(fwd, *jax.export.symbolic_shape(f"{BATCH}, {ELEMENTS}"))
    try:
        exported = jax.export.export(jitted, platforms=PLATFORMS)(*args)
    except Exception as err:  # a primitive without a CUDA lowering in this jaxlib: keep this platform
        log.warning(
            "lowering for %s failed (%s); exporting for %s only", PLATFORMS, err, jax.default_backend()
        )
        exported = jax.export.export(jitted)(*args)
    restored = jax.export.deserialize(exported.serialize())
    worst = checker.check(lambda xs: restored.call(*xs), "StableHLO", elements=True)
    return exported, {"platforms": list(exported.platforms), "max_abs_diff": worst}


def fix_elements(t: Tensor, size: int) -> Tensor:
    """``t`` with its symbolic element count fixed at ``size``."""
    return dataclasses.replace(t, dims=tuple(size if d == ELEMENTS else d for d in t.dims))
