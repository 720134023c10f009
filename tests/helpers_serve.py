"""What the export and serving tests share: the pipeline's batches and the in-process model's outputs to
compare with, and a real Triton server over an exported run (test_export.py, test_serve*.py)."""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from smilejax.inputs import pipeline

from smilejax import host, registry
from tests.conftest import free_port

SERVE_HINT = host.pip_install(".[serve]")  # jax2onnx, onnx, onnxruntime, tritonclient
TRITON_INSTALL = "bash launch/install_triton.sh"


def pipeline_batch(tm, size: int) -> dict[str, np.ndarray]:
    """``size`` evaluation jets as the input pipeline makes them."""
    source = registry.dataset(tm.cfg.data.format).source(tm.cfg.data, "eval")
    return next(iter(pipeline.batched(source, batch_size=size, seed=0, shuffle=False, read_threads=1)))


def model_outputs(tm, tracks: np.ndarray, valid: np.ndarray) -> dict[str, np.ndarray]:
    return jax.device_get(tm.model(jnp.asarray(tracks), jnp.asarray(valid)))


def eval_file(tm) -> str:
    """The file the run's evaluation split reads (the synthetic set's eval file)."""
    from smilejax.inputs import ftag_h5

    assert tm.cfg.data.path is None and tm.cfg.data.eval_path is None
    from smilejax.models.gn2 import make_synthetic

    return ftag_h5.expand_paths(make_synthetic.default_dataset(split="eval"))[0]


def raw_and_pipeline(tm, size: int, tracks: int) -> tuple[dict, dict]:
    """The first ``size`` evaluation jets read from the file as stored (raw inputs) and as the pipeline
    makes them, both cut or padded to ``tracks`` slots (raw padding: NaN, not valid)."""
    from smilejax.serve.client import raw_batch

    raw = raw_batch(tm.cfg.data, eval_file(tm), size)
    batch = pipeline_batch(tm, size)
    raw = {
        "jets": raw["jets"],
        "tracks": _slots(raw["tracks"], tracks, np.nan),
        "valid": _slots(raw["valid"], tracks, False),
    }
    pipe = {"tracks": _slots(batch["tracks"], tracks, 0.0), "valid": _slots(batch["valid"], tracks, False)}
    return raw, pipe


def _slots(a: np.ndarray, n: int, fill) -> np.ndarray:
    if a.shape[1] >= n:
        return np.ascontiguousarray(a[:, :n])
    pad = np.full((a.shape[0], n - a.shape[1], *a.shape[2:]), fill, a.dtype)
    return np.concatenate([a, pad], axis=1)


def assert_equal_outputs(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for name, ref in expected.items():
        np.testing.assert_allclose(got[name], ref, rtol=1e-5, atol=1e-6, err_msg=name)


# ---------------------------------------------------------------- a Triton server


def require_triton():
    """(smilejax.serve.repository, TritonServer) once the serving packages and the Triton binary are
    there; fails (never skips) naming the install when they are missing."""
    try:
        from smilejax.serve import repository
        from smilejax.serve.server import TritonServer, find_binary

        find_binary()
    except ImportError as err:
        pytest.fail(f"serving tests need the serving packages ({err}): {SERVE_HINT}")
    except FileNotFoundError as err:
        pytest.fail(f"{err} (CI: {TRITON_INSTALL})")
    return repository, TritonServer


@contextlib.contextmanager
def triton_serving(run_dir, root, options):
    """A Triton server on free local ports over a repository exported from ``run_dir``; it must stop
    cleanly. Fails (never skips) when Triton or the serving packages are missing."""
    repository, TritonServer = require_triton()
    repository.build(run_dir, root / "repo", options=options)
    server = TritonServer(
        root / "repo",
        http_port=free_port(),
        grpc_port=free_port(),
        exit_timeout_s=5,
        log_file=root / "triton.log",
    )
    with server:
        yield server
    assert server.process.returncode == 0, (root / "triton.log").read_text()[-3000:]


def client(server, model: str, protocol: str, **kwargs):
    from smilejax.serve.client import Client

    return Client(
        server.http_url if protocol == "http" else server.grpc_url, model, protocol=protocol, **kwargs
    )
