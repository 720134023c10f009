"""The ONNX artifact (``jax2onnx``) of a ``export.Forward``, checked with onnxruntime against the model.

Symbolic batch and element count where onnxruntime reproduces the model with them, else the training
config's element count. jax2onnx 0.17 traces ``jnp.concatenate`` with a shape rule that gives a
concatenation along a symbolic axis the first operand's size (``elements`` instead of ``elements + 1``
where a model appends a token to a set, e.g. a register token): conversion runs with that rule
corrected (``_concat_shape_rule``).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from smilejax.serve.export import (
    BATCH,
    ELEMENTS,
    ONNX_HINT,
    Checker,
    ExportError,
    Forward,
    Tensor,
    fix_elements,
    input_shapes,
)

log = logging.getLogger(__name__)


def to_onnx(fwd: Forward, checker: Checker | None = None, *, opset: int = 21) -> tuple[Any, dict[str, Any]]:
    """The ONNX model (``onnx.ModelProto``) and its check report; raises ExportError when it disagrees."""
    checker = checker or Checker(fwd)
    try:
        import jax2onnx
        import onnxruntime
    except ImportError as err:
        raise ExportError(f"ONNX export needs jax2onnx and onnxruntime ({err}): {ONNX_HINT}") from err

    def convert(symbolic_elements: bool):
        # jax2onnx names symbolic dimensions by strings
        shapes = input_shapes(fwd, BATCH, ELEMENTS if symbolic_elements else fwd.element_size)
        # jax2onnx 0.17 cannot lower the nested jit calls that jnp functions make under JAX 0.12
        # (ClosedJaxpr is gone); tracing with jit disabled inlines them.
        # onnx_ir warns about untyped shape constants it leaves out, jax2onnx about Flax's deprecated
        # ``.value``: neither is ours to act on.
        logging.getLogger("onnx_ir").setLevel(logging.ERROR)
        with jax.disable_jit(), warnings.catch_warnings(), _concat_shape_rule():
            warnings.simplefilter("ignore", DeprecationWarning)
            return jax2onnx.to_onnx(
                fwd.fn,
                shapes,
                model_name="smilejax",
                opset=opset,
                input_names=[t.name for t in fwd.inputs],
                output_names=[t.name for t in fwd.outputs],
            )

    def check(proto, symbolic_elements: bool) -> float:
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 4  # a failed symbolic attempt is reported by the ExportError
        session = onnxruntime.InferenceSession(
            proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        names = [o.name for o in session.get_outputs()]

        def run(xs: list[np.ndarray]) -> dict[str, Any]:
            feed = {t.name: x for t, x in zip(fwd.inputs, xs, strict=True)}
            return dict(zip(names, session.run(None, feed), strict=True))

        return checker.check(run, "ONNX", elements=symbolic_elements)

    report: dict[str, Any] = {"opset": opset, "jax2onnx": importlib.metadata.version("jax2onnx")}
    if fwd.element_size is not None:
        try:
            proto = convert(True)
            report["max_abs_diff"] = check(proto, True)
            report["elements"] = "symbolic"
            return proto, report
        except Exception as err:
            reason = str(err).splitlines()[0][:300]
            log.info(
                "ONNX with a symbolic element count failed (%s); fixing it at %d", reason, fwd.element_size
            )
            report["elements"] = f"fixed at {fwd.element_size}: symbolic failed ({reason})"
    proto = convert(False)
    report["max_abs_diff"] = check(proto, False)
    return proto, report


@contextlib.contextmanager
def _concat_shape_rule() -> Iterator[None]:
    """jax2onnx (0.17) with a correct shape rule for its ``jnp.concatenate`` primitive while it converts.

    Its rule gives a concatenation along a symbolic axis the first operand's size (``elements`` for
    ``concat([tracks, register])``, not ``elements + 1``); the shapes traced after it are then wrong
    and onnxruntime fails at the Concat node, or reshapes to the wrong size. The corrected rule sums
    the operands' sizes, as ``lax.concatenate`` does. Where jax2onnx no longer has that plugin, nothing
    changes (the ONNX check still guards the result).
    """
    try:
        from jax2onnx.plugins.jax.numpy import concatenate as plugin
        from jax2onnx.plugins.jax.numpy.concatenate import JnpConcatenatePlugin as cls
    except ImportError:
        yield
        return
    original = cls.__dict__.get("abstract_eval")
    if not isinstance(original, staticmethod):
        yield
        return

    def abstract_eval(*arrays: Any, dimension: int = 0, axis: int | None = None) -> Any:
        out = original.__func__(*arrays, dimension=dimension, axis=axis)
        at = (dimension if axis is None else axis) % len(out.shape)
        shape = list(out.shape)
        shape[at] = sum(a.shape[at] for a in arrays)
        return out.update(shape=tuple(shape))

    cls.abstract_eval = staticmethod(abstract_eval)
    plugin._CONCAT_PRIM.def_abstract_eval(abstract_eval)
    try:
        yield
    finally:
        cls.abstract_eval = original
        plugin._CONCAT_PRIM.def_abstract_eval(original.__func__)


def onnx_inputs(fwd: Forward, report: dict[str, Any]) -> tuple[Tensor, ...]:
    """The ONNX model's inputs: the forward's, with the element count fixed unless it stayed symbolic."""
    if report.get("elements") == "symbolic" or fwd.element_size is None:
        return fwd.inputs
    return tuple(fix_elements(t, fwd.element_size) for t in fwd.inputs)


def onnx_outputs(fwd: Forward, report: dict[str, Any]) -> tuple[Tensor, ...]:
    if report.get("elements") == "symbolic" or fwd.element_size is None:
        return fwd.outputs
    return tuple(fix_elements(t, fwd.element_size) for t in fwd.outputs)
