"""Triton Python-backend model that runs a ``jax.export`` StableHLO artifact with JAX.

Copied into the repository as ``NAME_jax/1/model.py`` next to ``model.jaxexport``, ``io.json`` and
``triton_io.py``. The server's Python needs jax (with CUDA for GPU instances) and numpy, not smilejax.

Merged batches are padded to the next power of two, so a handful of compiled programs serve every
batch size the dynamic batcher makes; padded rows are cut from the outputs. With ``warmup`` in
``io.json`` those programs are compiled at load time (for the element count given there), so the
first requests do not wait for the compiler.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import triton_io


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.spec = triton_io.load_spec(version_dir)
        if args["model_instance_kind"] == "GPU":  # one stub process per instance: give it its GPU
            os.environ["CUDA_VISIBLE_DEVICES"] = args["model_instance_device_id"]
        else:
            os.environ["JAX_PLATFORMS"] = "cpu"
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # instances share a GPU
        import jax

        exported = jax.export.deserialize(bytearray((version_dir / self.spec["artifact"]).read_bytes()))
        self.call = jax.jit(exported.call)
        self.max_batch = int(self.spec["max_batch_size"])
        elements = self.spec.get("warmup_elements")
        if self.spec.get("warmup"):
            size = 1
            while True:
                self._run([np.zeros(_shape(t, size, elements), t["dtype"]) for t in self.spec["inputs"]])
                if size >= self.max_batch:
                    break
                size = min(2 * size, self.max_batch)

    def execute(self, requests: list) -> list:
        return triton_io.execute(requests, self.spec, self._run)

    def _run(self, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        n = arrays[0].shape[0]
        size = max(n, min(self.max_batch, 1 << (n - 1).bit_length()))
        if size > n:
            arrays = [np.concatenate([a, np.zeros((size - n, *a.shape[1:]), a.dtype)]) for a in arrays]
        outputs = self.call(*arrays)
        return {name: np.asarray(value)[:n] for name, value in outputs.items()}


def _shape(tensor: dict, batch: int, elements: int | None) -> tuple[int, ...]:
    return (batch, *(d if isinstance(d, int) else elements or 1 for d in tensor["dims"]))
