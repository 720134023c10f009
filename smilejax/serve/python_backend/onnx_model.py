"""Triton Python-backend model that runs an ONNX file with onnxruntime.

For servers without Triton's ONNX Runtime backend (the one in the nvidia-pytriton wheel has only the
Python backend): the same ``model.onnx`` the production ``NAME`` model serves goes through a real
server here. Copied into the repository as ``NAME_onnx/1/model.py`` next to ``io.json`` and
``triton_io.py``; the server's Python needs onnxruntime (onnxruntime-gpu for GPU instances).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import triton_io


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        import onnxruntime

        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.spec = triton_io.load_spec(version_dir)
        providers: list = ["CPUExecutionProvider"]
        if (
            args["model_instance_kind"] == "GPU"
            and "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        ):
            providers.insert(
                0, ("CUDAExecutionProvider", {"device_id": int(args["model_instance_device_id"])})
            )
        self.session = onnxruntime.InferenceSession(
            str(version_dir / self.spec["artifact"]), providers=providers
        )
        self.input_names = [t["name"] for t in self.spec["inputs"]]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def execute(self, requests: list) -> list:
        return triton_io.execute(requests, self.spec, self._run)

    def _run(self, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(None, dict(zip(self.input_names, arrays, strict=True)))
        return dict(zip(self.output_names, values, strict=True))
