"""The exported MLPF served by a real Triton server: events read from the TFDS files as stored (``X`` only;
the mask is made inside) get the in-process model's outputs, at several event sizes in both the JAX and
the ONNX artifact."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smilejax import trained
from tests.helpers_serve import assert_equal_outputs, client, triton_serving


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_mlpf_run):
    from smilejax.serve import repository

    options = repository.TritonOptions(max_batch_size=8, kind="cpu")
    with triton_serving(tiny_mlpf_run, tmp_path_factory.mktemp("serve_mlpf"), options) as server:
        yield server, trained.load(tiny_mlpf_run)


def _events(tm, size: int, elements: int) -> dict[str, np.ndarray]:
    """``size`` evaluation events of the run's own data, cut or padded to ``elements`` slots."""
    from smilejax.inputs import mlpf_tfds

    src = mlpf_tfds.source(tm.cfg.data, "eval")
    order = np.argsort(src.lengths, kind="stable")[:size]  # the smallest events fit any width here
    batch = src.read(np.sort(order), width=max(elements, int(src.lengths[order].max())))
    return {"X": batch["X"][:, :elements], "mask": batch["mask"][:, :elements]}


def test_raw_events_read_from_the_files_are_the_pipelines_x(served):
    from smilejax.inputs import mlpf_tfds
    from smilejax.models.mlpf import make_synthetic

    from smilejax.serve.client import raw_batch, raw_length

    _, tm = served
    data_dir = make_synthetic.default_dataset()  # the run's data (data.path null)
    src = mlpf_tfds.source(tm.cfg.data, "eval")
    assert raw_length(tm.run_dir, data_dir) == len(src)
    raw = raw_batch(tm.run_dir, data_dir, 4, start=2)["X"]
    want = src.read(np.arange(2, 6))
    assert raw.shape == want["X"].shape  # padded to the longest of the 4 events
    np.testing.assert_array_equal(raw, want["X"])


@pytest.mark.parametrize("model", ["mlpf_jax", "mlpf_onnx"])
def test_served_mlpf_equals_the_in_process_model(served, model):
    server, tm = served
    with client(server, model, "grpc") as c:
        meta = c.metadata()
        assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
            ("X", "FP32", ["-1", "-1", "17"])
        ]
        for size, elements in [(1, 64), (3, 128), (2, 512), (2, 700)]:
            events = _events(tm, size, elements)
            assert events["mask"].any(axis=1).all()
            got = c.infer(events)  # the mask stays home: the served model makes it from X
            assert got["pid_logits"].shape == (size, elements, 6)
            want = jax.device_get(tm.model(jnp.asarray(events["X"]), jnp.asarray(events["mask"])))
            if model == "mlpf_onnx":  # ONNX Runtime's own kernels: float32 rounding, not a different function
                assert set(got) == set(want)
                for name, ref in want.items():
                    np.testing.assert_allclose(got[name], ref, rtol=1e-4, atol=1e-5, err_msg=name)
            else:
                assert_equal_outputs(got, want)
