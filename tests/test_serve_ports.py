"""A port the server needs that is taken is named before Triton starts, with the option that moves it."""

from __future__ import annotations

import socket

import pytest

from smilejax.serve.server import PortBusy, TritonServer, check_port
from tests.conftest import free_port, run_cli, stand_in_triton

pytestmark = pytest.mark.unit  # make test-fast runs it: one device, seconds


@pytest.fixture
def taken():
    """A port another process listens on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


@pytest.fixture
def fake_triton(tmp_path):
    """A model repository and a stand-in tritonserver that records whether it was ever started."""
    repo, binary = stand_in_triton(tmp_path, f"#!/bin/sh\ntouch {tmp_path / 'started'}\n")
    return repo, binary, tmp_path / "started"


def test_check_port_names_a_taken_port(taken):
    with pytest.raises(
        PortBusy, match=rf"cannot serve GRPC on 127\.0\.0\.1:{taken}: the port is in use"
    ) as err:
        check_port("grpc", "127.0.0.1", taken)
    assert (err.value.endpoint, err.value.port) == ("grpc", taken)
    check_port("http", "127.0.0.1", free_port())  # a free port passes


def test_server_refuses_to_start_on_a_taken_port(fake_triton, taken):
    repo, binary, started = fake_triton
    server = TritonServer(
        repo, http_port=free_port(), grpc_port=free_port(), metrics_port=taken, binary=binary
    )
    with pytest.raises(PortBusy, match=f"METRICS on 127.0.0.1:{taken}"):
        server.start()
    assert server.process is None and not started.exists()


def test_serve_cli_names_the_busy_port_and_the_option(fake_triton, taken):
    repo, binary, started = fake_triton
    proc = run_cli("serve", str(repo), "--triton", str(binary), "--http-port", str(taken), timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert (
        f"smilejax: error: cannot serve HTTP on 127.0.0.1:{taken}: the port is in use; "
        "choose another with --http-port" in proc.stderr
    )
    assert "Traceback" not in proc.stderr and not started.exists()  # Triton never started


def test_missing_run_dir_or_repository_is_one_line_and_exit_2(tmp_path):
    missing = tmp_path / "nowhere"
    for argv, what in (
        (["eval", str(missing)], "run directory"),
        (["export", str(missing), "--out", str(tmp_path / "repo")], "run directory"),
        (["serve", str(missing)], "model repository"),
        (["bench", "serve", str(missing), "--out", str(tmp_path / "bench")], "run directory"),
    ):
        proc = run_cli(*argv, timeout=120)
        assert proc.returncode == 2, (argv, proc.stderr[-2000:])
        assert proc.stderr.strip() == f"smilejax: error: {missing}: no such {what}", argv
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written
