"""``smilejax infer``: a data file streamed through a real Triton server (a raw-input export: the file's
variables as stored); its scores equal the in-process model's row by row; transient failures are retried,
a bad request fails at once with the server's message."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import threading
import time

import h5py
import numpy as np
import pytest

from smilejax import registry, trained
from tests.conftest import free_port, run_cli
from tests.helpers_serve import assert_equal_outputs, model_outputs, require_triton

MODEL = "gn2_onnx"  # onnxruntime in the Python backend: the wheel's server runs it
ROWS = 300


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_gn2_run):
    """(server, repository, a small HDF5 file, the in-process outputs on its rows)."""
    repository, TritonServer = require_triton()
    from smilejax.models.gn2 import make_synthetic

    root = tmp_path_factory.mktemp("infer")
    options = repository.TritonOptions(max_batch_size=64, kind="cpu")
    repository.build(tiny_gn2_run, root / "repo", formats=("onnx",), options=options)
    path = root / "jets.h5"
    make_synthetic.make(path, ROWS, 11)
    # The rows as training reads them: the run's normalisation (its training files), this file as eval.
    tm = trained.load(tiny_gn2_run)
    train = make_synthetic.default_dataset(split="train")
    cfg = dataclasses.replace(tm.cfg.data, path=train, eval_path=str(path))
    source = registry.dataset(cfg.format).source(cfg, "eval")
    rows = source.read(np.arange(ROWS))
    expected = model_outputs(tm, rows["tracks"], rows["valid"])
    server = TritonServer(
        root / "repo",
        http_port=free_port(),
        grpc_port=free_port(),
        models=[MODEL],
        exit_timeout_s=5,
        log_file=root / "triton.log",
    )
    with server:
        yield server, root / "repo", path, expected
    assert server.process.returncode == 0, (root / "triton.log").read_text()[-3000:]


def _scores(path) -> dict[str, np.ndarray]:
    with h5py.File(path) as f:
        return {k: f[k][:] for k in f}


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_infer_writes_scores_row_by_row_equal_to_the_in_process_model(served, tmp_path, protocol):
    server, repo, path, expected = served
    url = server.grpc_url if protocol == "grpc" else server.http_url
    out = tmp_path / f"{protocol}.scores.h5"
    done = run_cli(
        "infer", str(path), "--server", url, "--model", MODEL, "--repo", str(repo), "--protocol", protocol,
        "--batch-size", "48", "--max-in-flight", "3", "--out", str(out), "--no-progress",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"-> {out}: {ROWS} rows" in done.stdout and "7 requests, 0 retries" in done.stdout, done.stdout
    got = _scores(out)  # 7 batches, the last one short, written as they came back
    assert_equal_outputs(got, expected)
    with h5py.File(out) as f:
        assert f.attrs["input"] == str(path.resolve()) and f.attrs["model"] == MODEL


def test_in_process_scoring_of_the_same_batches_gives_the_same_scores(served, tmp_path):
    _, repo, path, expected = served
    out = tmp_path / "local.h5"
    done = run_cli(
        "infer", str(path), "--in-process", "--repo", str(repo), "--batch-size", "64", "--out", str(out),
        "--no-progress",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{ROWS} rows" in done.stdout and "rows/s" in done.stdout, done.stdout
    assert_equal_outputs(_scores(out), expected)
    # an export of the model's own inputs: the file is read through the run's data format
    meta = json.loads((repo / "smilejax_export.json").read_text())
    assert meta["raw"] and [t["name"] for t in meta["inputs"]] == ["jets", "tracks", "valid"]
    (tmp_path / "pipeline.json").write_text(json.dumps({**meta, "raw": None}))
    done = run_cli(
        "infer", str(path), "--in-process", "--repo", str(tmp_path / "pipeline.json"), "--out",
        str(tmp_path / "pipeline.h5"), "--no-progress",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert_equal_outputs(_scores(tmp_path / "pipeline.h5"), expected)
    both = run_cli(
        "infer", str(path), "--in-process", "--server", "127.0.0.1:1", "--model", MODEL, "--repo", str(repo)
    )
    assert both.returncode == 2 and "or --in-process" in both.stderr, both.stderr[-2000:]


class FlakyProxy:
    """A TCP relay to ``target`` on ``port`` that starts listening only after ``delay_s`` (a server that
    comes up after the client began) and then drops its first ``drop`` connections at once."""

    def __init__(self, port: int, target: tuple[str, int], *, delay_s: float, drop: int):
        self.port, self.target, self.delay_s, self.drop = port, target, delay_s, drop
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FlakyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _serve(self) -> None:
        if self._stop.wait(self.delay_s):
            return
        with socket.socket() as listener:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen()
            listener.settimeout(0.2)
            while not self._stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                self.accepted += 1
                if self.accepted <= self.drop:
                    conn.close()
                    continue
                upstream = socket.create_connection(self.target)
                for a, b in ((conn, upstream), (upstream, conn)):
                    threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_transient_failures_are_retried(served, tmp_path, protocol):
    from smilejax.serve import repository, stream

    server, repo, path, expected = served
    port = free_port()
    connection = stream.Connection(f"127.0.0.1:{port}", MODEL, protocol=protocol, timeout_s=10)
    target = ("127.0.0.1", server.grpc_port if protocol == "grpc" else server.http_port)
    retry = stream.Retry(retries=8, backoff_s=0.2, max_backoff_s=1.0)
    with FlakyProxy(port, target, delay_s=1.0, drop=2) as proxy:
        out, stats = stream.infer_file(
            path, connection, repository.read_metadata(repo), out=tmp_path / "s.h5", batch_size=64,
            max_in_flight=2, retry=retry, progress=False,
        )  # fmt: skip
    assert proxy.accepted >= 3 and stats.retries >= 2, (proxy.accepted, stats)
    assert (stats.rows, stats.requests) == (ROWS, 5)
    assert_equal_outputs(_scores(out), expected)


def test_a_bad_request_fails_at_once_with_the_servers_message(served, tmp_path):
    server, repo, path, _ = served
    common = ["--server", server.grpc_url, "--repo", str(repo), "--no-progress", "--retries", "5"]
    cases = (
        (["--model", MODEL, "--batch-size", "100"], "inference request batch-size must be <= 64"),
        (["--model", "no_such_model"], "no_such_model"),
    )
    for options, message in cases:
        t0 = time.monotonic()
        done = run_cli("infer", str(path), *common, *options, "--out", str(tmp_path / "bad.h5"))
        assert done.returncode == 1, done.stderr[-3000:]
        assert message in done.stderr and "retries" not in done.stderr, done.stderr[-3000:]
        assert "transient" not in done.stderr  # no retry was logged
        assert time.monotonic() - t0 < 60
        assert list(tmp_path.iterdir()) == []  # no scores, not even partial ones


def test_nothing_listening_fails_after_the_retries(served, tmp_path):
    _, repo, path, _ = served
    done = run_cli(
        "infer", str(path), "--server", f"127.0.0.1:{free_port()}", "--model", MODEL, "--repo", str(repo),
        "--retries", "1", "--timeout", "5", "--no-progress", "--out", str(tmp_path / "s.h5"),
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]
    assert "(after 1 retries)" in done.stderr and "transient failure" in done.stderr, done.stderr[-3000:]
    assert list(tmp_path.iterdir()) == []


def test_transient_errors_are_told_from_bad_requests():
    from tritonclient.utils import InferenceServerException

    from smilejax.serve.client import InferenceError
    from smilejax.serve.stream import scores_path, transient

    def failed(status: str) -> InferenceError:
        err = InferenceError("x")
        err.__cause__ = InferenceServerException("x", status=status)
        return err

    assert transient(failed("StatusCode.UNAVAILABLE")) and transient(failed("503"))
    assert not transient(failed("StatusCode.INVALID_ARGUMENT")) and not transient(failed("400"))
    assert transient(ConnectionRefusedError()) and transient(TimeoutError())
    assert not transient(FileNotFoundError("ca.pem")) and not transient(ValueError())
    assert scores_path("/data/jets.h5").as_posix() == "/data/jets.scores.h5"


def test_the_in_process_baseline_compiles_every_batch_size_before_the_clock_starts():
    """A stand-in for ``InProcess`` that compiles (sleeps) on a batch size it has not run: ``stream``
    warms every size it sends, the short last batch's too, so no compilation lands in the timed part."""
    from smilejax.serve.stream import batch_shapes, stream

    compile_s = 2.0

    class Rows:
        def __len__(self) -> int:
            return ROWS

        def read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
            return {"x": np.asarray(indices, np.float32)[:, None]}

    class Compiling:
        model, url = "toy", "in-process"

        def __init__(self):
            self.compiled: set[int] = set()
            self.warmed: list[int] = []

        def client(self):
            return self

        def warm(self, batch):
            self.warmed.append(len(batch["x"]))
            self.infer(batch)

        def infer(self, batch):
            if len(batch["x"]) not in self.compiled:
                time.sleep(compile_s)
                self.compiled.add(len(batch["x"]))
            return {"y": 2 * batch["x"]}

        def close(self):
            pass

    model, scores = Compiling(), {}
    stats = stream(
        Rows(), model, lambda first, out: scores.update({first: out["y"]}), batch_size=64, max_in_flight=2,
        progress=False,
    )  # fmt: skip
    assert model.warmed == [64, ROWS % 64] and (stats.rows, stats.requests) == (ROWS, 5)
    assert stats.wall_s < compile_s, stats.wall_s  # nothing compiled once the clock ran
    got = np.concatenate([scores[k] for k in sorted(scores)])[:, 0]
    np.testing.assert_array_equal(got, 2 * np.arange(ROWS))
    assert [len(i) for i in batch_shapes(128, 64)] == [64] and [len(i) for i in batch_shapes(5, 64)] == [5]
    assert batch_shapes(0, 64) == [] and list(batch_shapes(130, 64)[1]) == [128, 129]
