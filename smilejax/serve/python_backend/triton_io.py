"""Request handling shared by the Python-backend models: DLPack I/O, merging requests, per-request errors.

Copied next to ``model.py`` in the repository; it imports only numpy and Triton's own module, so the
server's Python needs neither smilejax nor anything beyond what the model runner needs.

``io.json`` beside it describes the model: ``inputs`` / ``outputs`` as ``{name, dtype, dims}`` without
the batch dimension, where a dim is an int or a symbolic name (``elements``) that must take the same
value in every input of a request.
"""

from __future__ import annotations

import ctypes
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

# With numpy 2 the backend's numpy interop (``Tensor(name, array)``, ``as_numpy``) gives empty or wrong
# tensors; DLPack works. The backend renames the capsules it consumes "used_dlpack" rather than the
# standard "used_dltensor", so numpy's capsule destructor would print an error for every output;
# renaming the capsule after the hand-over lets the destructor leave it alone, as the protocol intends.
_USED = b"used_dltensor"
_set_capsule_name = ctypes.pythonapi.PyCapsule_SetName
_set_capsule_name.argtypes = [ctypes.py_object, ctypes.c_char_p]
_set_capsule_name.restype = ctypes.c_int

Run = Callable[[list[np.ndarray]], dict[str, np.ndarray]]


def load_spec(version_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(version_dir) / "io.json").read_text())


def to_triton(name: str, array: np.ndarray) -> pb_utils.Tensor:
    array = np.ascontiguousarray(array)
    if not array.flags.writeable:  # JAX's host buffers are read-only, which DLPack 0.8 cannot say
        array = array.copy()
    capsule = array.__dlpack__()
    tensor = pb_utils.Tensor.from_dlpack(name, capsule)
    _set_capsule_name(capsule, _USED)
    return tensor


def inputs_of(request, spec: dict[str, Any]) -> list[np.ndarray]:
    """The request's inputs in ``spec`` order (Triton has checked names, dtypes and fixed dims)."""
    return [np.from_dlpack(pb_utils.get_input_tensor_by_name(request, t["name"])) for t in spec["inputs"]]


def shape_error(arrays: list[np.ndarray], spec: dict[str, Any]) -> str | None:
    """What Triton cannot check: symbolic dims agreeing across inputs, and one batch size."""
    seen: dict[str, tuple[str, int, int]] = {}
    batch = arrays[0].shape[0]
    first = spec["inputs"][0]["name"]
    for t, a in zip(spec["inputs"], arrays, strict=True):
        if a.shape[0] != batch:
            return f"input {t['name']!r} has batch size {a.shape[0]}, input {first!r} {batch}"
        for axis, dim in enumerate(t["dims"], start=1):
            if isinstance(dim, int):
                continue
            size = a.shape[axis]
            if dim not in seen:
                seen[dim] = (t["name"], axis, size)
            elif seen[dim][2] != size:
                other, other_axis, other_size = seen[dim]
                return (
                    f"input {t['name']!r} has {size} {dim} (axis {axis}) but input {other!r} has "
                    f"{other_size} (axis {other_axis}); they must agree"
                )
    return None


def execute(requests: list, spec: dict[str, Any], run: Run) -> list:
    """One response per request; requests with equal shapes beyond the batch run as one batch."""
    responses: list[Any] = [None] * len(requests)
    groups: dict[tuple, list[tuple[int, list[np.ndarray]]]] = {}
    for i, request in enumerate(requests):
        try:
            arrays = inputs_of(request, spec)
            problem = shape_error(arrays, spec)
        except Exception as err:  # the request is malformed in a way Triton let through
            problem = f"{type(err).__name__}: {err}"
        if problem:
            responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(problem))
            continue
        groups.setdefault(tuple(a.shape[1:] for a in arrays), []).append((i, arrays))
    for members in groups.values():
        sizes = [arrays[0].shape[0] for _, arrays in members]
        merged = [np.concatenate(parts) for parts in zip(*(arrays for _, arrays in members), strict=True)]
        try:
            outputs = run(merged)
            ends = np.cumsum(sizes)
            for (i, _), end, size in zip(members, ends, sizes, strict=True):
                part = slice(end - size, end)
                tensors = [to_triton(t["name"], outputs[t["name"]][part]) for t in spec["outputs"]]
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
        except Exception as err:  # fail these requests, keep the model serving
            error = pb_utils.TritonError(f"{type(err).__name__}: {err}")
            for i, _ in members:
                responses[i] = pb_utils.InferenceResponse(error=error)
    return responses
