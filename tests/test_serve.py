"""A real Triton Inference Server serves the exported GN2: jets read from the HDF5 file as stored get the
in-process model's scores over HTTP and gRPC (JAX and ONNX, any track count), dynamic batching, clear errors
for bad requests, a concurrent load without failures, TLS + a required key, and Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import urllib.request

import numpy as np
import pytest

from smilejax import trained
from tests.conftest import ROOT, cli_env, free_port, run_cli, sigint_ignored, smilejax_cmd, wait_for
from tests.helpers_serve import (
    assert_equal_outputs,
    client,
    eval_file,
    model_outputs,
    pipeline_batch,
    raw_and_pipeline,
    triton_serving,
)


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_gn2_run):
    from smilejax.serve import repository

    root = tmp_path_factory.mktemp("serve")
    # A long queue delay so that concurrent single-jet requests surely meet in the dynamic batcher.
    options = repository.TritonOptions(max_batch_size=32, max_queue_delay_us=20_000, kind="cpu")
    with triton_serving(tiny_gn2_run, root, options) as server:
        yield server, trained.load(tiny_gn2_run), root


def raw_jets(tm, size: int) -> dict[str, np.ndarray]:
    """``size`` evaluation jets read from the HDF5 file as stored (what the served models take)."""
    from smilejax.serve.client import raw_batch

    return raw_batch(tm.cfg.data, eval_file(tm), size)


def test_server_loads_the_models_its_backends_run(served):
    server, _, _ = served
    assert server.models == ["gn2_jax", "gn2_onnx"]
    assert "onnxruntime" in server.skipped["gn2"]  # the wheel's server has the Python backend only
    assert "--http-address=127.0.0.1" in server.command() and "--grpc-address=127.0.0.1" in server.command()
    with client(server, "gn2_jax", "grpc") as c:
        assert c.ready()
        meta = c.metadata()
    assert [(t["name"], t["datatype"]) for t in meta["inputs"]] == [
        ("jets", "FP32"),
        ("tracks", "FP32"),
        ("valid", "BOOL"),
    ]


def test_jets_read_from_the_file_get_the_in_process_scores(served):
    """The issue's use: a file's jets as stored, sent to the service, scored as the trained model scores
    the pipeline's normalised batch of the same jets."""
    from smilejax.serve.client import raw_batch

    server, tm, root = served
    jets = raw_batch(root / "repo", eval_file(tm), 24)  # the repository's metadata names the variables
    want = pipeline_batch(tm, 24)
    with client(server, "gn2_onnx", "grpc") as c:
        got = c.infer(jets)
    assert_equal_outputs(got, model_outputs(tm, want["tracks"], want["valid"]))
    p_b = np.exp(got["jet_logits"][:, 0]) / np.exp(got["jet_logits"]).sum(-1)
    assert np.isfinite(p_b).all()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("model", ["gn2_jax", "gn2_onnx"])
def test_served_outputs_equal_the_in_process_model(served, model, protocol):
    server, tm, _ = served
    with client(server, model, protocol) as c:
        for size, tracks in [(1, 40), (5, 40), (16, 40), (3, 17), (2, 9), (2, 63)]:
            raw, pipe = raw_and_pipeline(tm, size, tracks)
            got = c.infer({**raw, "flavour": np.zeros(size)})  # keys the model does not take stay home
            assert got["origin_logits"].shape == (size, tracks, 8)
            assert_equal_outputs(got, model_outputs(tm, pipe["tracks"], pipe["valid"]))


def test_dynamic_batching_merges_concurrent_requests(served):
    from smilejax.serve import load

    server, tm, _ = served
    one = raw_jets(tm, 1)
    with client(server, "gn2_jax", "grpc") as c:
        before = c.statistics()
        result = load.run(
            lambda: client(server, "gn2_jax", "grpc"), one, concurrency=8, requests=48, warmup=0
        )
        after = c.statistics()
    assert result.failures == 0 and result.requests == 48, result.errors
    requests = after["requests"] - before["requests"]
    executions = after["executions"] - before["executions"]
    assert requests == 48 and after["inferences"] - before["inferences"] == 48
    assert 0 < executions < requests  # several requests ran as one batch


def test_bad_requests_name_the_input_and_the_server_keeps_serving(served):
    from smilejax.serve.client import InferenceError

    server, tm, _ = served
    raw, pipe = raw_and_pipeline(tm, 4, 40)
    j, x, v = raw["jets"], raw["tracks"], raw["valid"]
    bad = [
        (
            {"jets": j, "tracks": x.astype(np.float64), "valid": v},
            r"'tracks' data-type is 'FP64'.*expects 'FP32'",
        ),
        ({"jets": j, "tracks": x[:, :, :18], "valid": v}, r"unexpected shape for input 'tracks'"),
        ({"jets": j, "tracks": x}, r"missing required input\(s\) \['valid'\]"),
        ({"tracks": x, "valid": v}, r"missing required input\(s\) \['jets'\]"),
        # normalised pipeline batches do not fit: 21 features where the file has 19 variables
        ({"jets": j, "tracks": pipe["tracks"], "valid": v}, r"unexpected shape for input 'tracks'"),
    ]
    expected = model_outputs(tm, pipe["tracks"], pipe["valid"])
    for model, protocol in (("gn2_jax", "http"), ("gn2_jax", "grpc"), ("gn2_onnx", "http")):
        with client(server, model, protocol) as c:
            for request, message in bad:
                with pytest.raises(InferenceError, match=message):
                    c.infer(request)
            assert_equal_outputs(c.infer(raw), expected)
    with client(server, "gn2_jax", "grpc") as c:  # the track counts must agree (checked by the backend)
        with pytest.raises(InferenceError, match=r"input 'valid' has 30 elements .* input 'tracks' has 40"):
            c.infer({"jets": j, "tracks": x, "valid": v[:, :30]})
        assert_equal_outputs(c.infer(raw), expected)


def test_many_concurrent_clients_complete_without_failures(served):
    from smilejax.serve import load

    server, tm, _ = served
    batch = raw_jets(tm, 4)
    for model, protocol in (("gn2_onnx", "http"), ("gn2_jax", "grpc")):

        def make(model=model, protocol=protocol):
            return client(server, model, protocol)

        result = load.run(make, batch, concurrency=16, requests=96)
        assert (result.failures, result.requests) == (0, 96), result.errors
        summary = result.summary()
        assert summary["inferences_per_s"] > 0 and summary["p50_ms"] <= summary["p99_ms"]


def _certificate(folder) -> tuple[str, str]:
    cert, key = folder / "server.pem", folder / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return str(cert), str(key)


def test_serve_cli_with_grpc_tls_and_a_required_key_stops_on_ctrl_c(served, tmp_path):
    from smilejax.serve.client import InferenceError
    from smilejax.serve.server import KEY_HEADER

    _, tm, root = served
    cert, key = _certificate(tmp_path)
    (tmp_path / "key").write_text("s3cret-key\n")
    http, grpc = free_port(), free_port()
    args = ["--models", "gn2_onnx", "--http-port", str(http), "--grpc-port", str(grpc), "--exit-timeout", "5"]
    args += ["--grpc-tls-cert", cert, "--grpc-tls-key", key, "--key-file", str(tmp_path / "key")]
    proc = subprocess.Popen(  # SIGINT ignored at start, as in CI's one failure (see test_serve_stop)
        sigint_ignored(smilejax_cmd("serve", str(root / "repo"), *args)),
        env=cli_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any(line.startswith("ready:") for line in lines), 300, "the server to be ready")
        ready = next(line for line in lines if line.startswith("ready:"))
        assert f"grpc (TLS) 127.0.0.1:{grpc}" in ready and KEY_HEADER in ready
        batch, pipe = raw_and_pipeline(tm, 2, 40)
        expected = model_outputs(tm, pipe["tracks"], pipe["valid"])

        from smilejax.serve.client import Client

        url = f"127.0.0.1:{grpc}"
        with Client(url, "gn2_onnx", protocol="grpc", tls_root=cert, key="s3cret-key") as c:
            assert_equal_outputs(c.infer(batch), expected)
        no_key = Client(url, "gn2_onnx", protocol="grpc", tls_root=cert)
        with no_key, pytest.raises(InferenceError, match=KEY_HEADER):
            no_key.infer(batch)
        plain = Client(url, "gn2_onnx", protocol="grpc", key="s3cret-key", timeout_s=5)
        with plain, pytest.raises(InferenceError):  # plain text to a TLS port
            plain.infer(batch)
        wrong_key = Client(f"127.0.0.1:{http}", "gn2_onnx", key="wrong")
        with wrong_key, pytest.raises(InferenceError, match=KEY_HEADER):
            wrong_key.infer(batch)
        with Client(f"127.0.0.1:{http}", "gn2_onnx", key="s3cret-key") as c:
            assert_equal_outputs(c.infer(batch), expected)
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=5) as r:
            assert r.status == 200  # health stays open: only inference needs the key

        proc.send_signal(signal.SIGINT)
        try:  # serve kills Triton at the latest 5 + 15 + 5 s after SIGINT (exit timeout, graces)
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            printed = "".join(lines)[-3000:]
            pytest.fail(f"smilejax serve did not exit within 60 s of Ctrl-C; it printed:\n{printed}")
        assert code == 0, "".join(lines)[-3000:]
        reader.join(timeout=10)
        printed = "".join(lines)
        assert "stopping Triton (SIGINT; if it still runs, SIGTERM after 20 s and SIGKILL after 25 s)" in (
            printed
        )
        # Triton ended on SIGINT itself: nothing was escalated
        assert "stopped (Triton exit code 0)" in printed and "process group" not in printed, printed[-3000:]
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/live", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_bench_serve_reports_served_and_in_process_speeds(served, tmp_path):
    _, tm, root = served
    done = run_cli(
        "bench", "serve", str(tm.run_dir), "--repo", str(root / "repo"), "--models", "gn2_onnx",
        "--protocols", "http", "--concurrency", "1,2", "--requests", "6", "--duration", "120",
        "--batch-size", "4", "--out", str(tmp_path),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "serve.json").read_text())["rows"]
    assert [(r["target"], r["concurrency"]) for r in rows] == [
        ("in-process JAX", 1),
        ("in-process JAX", 2),
        ("gn2_onnx", 1),
        ("gn2_onnx", 2),
    ]
    assert all(r["failures"] == 0 and r["requests"] == 6 and r["inferences_per_s"] > 0 for r in rows)
    served_1, in_process_1 = rows[2]["inferences_per_s"], rows[0]["inferences_per_s"]
    assert rows[2]["vs_in_process"] == pytest.approx(served_1 / in_process_1)
    assert all(r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] for r in rows)
    assert "| gn2_onnx | http | 2 | 4 | 6 | 0 |" in (tmp_path / "serve.md").read_text()
    assert (tmp_path / "serve.png").stat().st_size > 10_000
