"""Stopping the server is bounded: Triton gets SIGINT, then SIGTERM and SIGKILL to its process group
(stubs included) when it outlives the grace periods, each escalation logged; ``smilejax serve`` stops on
Ctrl-C even when it was started with SIGINT ignored (a background job of a non-interactive shell, as
CI's ``nohup ... &`` starts the tests); a SIGKILLed ``smilejax serve`` takes Triton with it (Linux).
Stand-in tritonservers, so seconds."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading

import psutil
import pytest

from smilejax.serve import server as server_module
from smilejax.serve.parent_death import LAUNCH_FAILED, MARKER, with_parent_death
from smilejax.serve.server import TritonServer
from tests.conftest import ROOT, cli_env, free_port, sigint_ignored, smilejax_cmd, stand_in_triton, wait_for

pytestmark = pytest.mark.unit  # make test-fast runs it: one device, seconds

# A stand-in tritonserver: answers Triton's readiness probe on --http-port, notes the signals it gets in
# the file `events` beside it and exits on the first; with STUBBORN set, it ignores them and starts a
# child that ignores them too (as a hung Python-backend stub would), which writes its pid in `child`.
FAKE = """\
import http.server, os, signal, subprocess, sys, threading
from pathlib import Path

here = Path(sys.argv[0]).parent
def note(signum, frame):
    with open(here / "events", "a") as f:
        f.write(signal.Signals(signum).name + "\\n")
    if not os.environ.get("STUBBORN"):
        os._exit(0)
for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, note)
CHILD = (
    "import os, signal, sys, time\\n"
    "for s in (signal.SIGINT, signal.SIGTERM):\\n"
    "    signal.signal(s, signal.SIG_IGN)\\n"
    "open(sys.argv[1] + '.tmp', 'w').write(str(os.getpid()))\\n"
    "os.rename(sys.argv[1] + '.tmp', sys.argv[1])\\n"
    "time.sleep(600)\\n"
)
if os.environ.get("STUBBORN"):
    subprocess.Popen([sys.executable, "-c", CHILD, str(here / "child")])

class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass

port = int(next(a for a in sys.argv if a.startswith("--http-port=")).split("=")[1])
server = http.server.HTTPServer(("127.0.0.1", port), Ready)
threading.Thread(target=server.serve_forever, daemon=True).start()
(here / "started").touch()
while True:
    signal.pause()
"""


@pytest.fixture
def fake_triton(tmp_path):
    """A model repository and the stand-in tritonserver; returns (repo, binary, its folder)."""
    repo, binary = stand_in_triton(tmp_path, f"#!{sys.executable}\n{FAKE}")
    return repo, binary, binary.parent


def _events(folder) -> list[str]:
    path = folder / "events"
    return path.read_text().split() if path.exists() else []


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # dead, not yet reaped by init
    except psutil.NoSuchProcess:
        return True


def test_a_server_that_ends_on_sigint_gets_nothing_else(fake_triton, caplog):
    repo, binary, folder = fake_triton
    server = TritonServer(repo, http_port=free_port(), grpc_port=free_port(), binary=binary, exit_timeout_s=1)
    with caplog.at_level(logging.WARNING, logger="smilejax.serve.server"), server:  # waits for readiness
        pass
    assert server.process.returncode == 0 and _events(folder) == ["SIGINT"]
    assert caplog.records == []


def test_a_server_ignoring_sigint_and_sigterm_is_killed_with_its_children(fake_triton, caplog, monkeypatch):
    repo, binary, folder = fake_triton
    monkeypatch.setenv("STUBBORN", "1")
    server = TritonServer(
        repo, http_port=free_port(), grpc_port=free_port(), binary=binary,
        exit_timeout_s=0, stop_grace_s=0.5, kill_grace_s=0.5,
    )  # fmt: skip
    server.start()
    try:
        wait_for(lambda: (folder / "child").exists() and (folder / "started").exists(), 60, "the stand-in")
        child = int((folder / "child").read_text())
        with caplog.at_level(logging.WARNING, logger="smilejax.serve.server"):
            assert server.stop() == -signal.SIGKILL
    finally:
        if server.process.poll() is None:
            server.process.kill()
    assert _events(folder) == ["SIGINT", "SIGTERM"]  # SIGTERM went to the group, SIGKILL ended it
    messages = [r.getMessage() for r in caplog.records]
    pid = server.process.pid
    assert messages == [
        f"Triton (pid {pid}) did not stop within 0.5 s of SIGINT; sending SIGTERM to its process group",
        f"Triton (pid {pid}) did not stop within 0.5 s of SIGTERM; sending SIGKILL to its process group",
    ]
    wait_for(lambda: _gone(child), 30, "the stand-in's child to be killed with it")


def test_serve_stops_on_ctrl_c_even_when_started_with_sigint_ignored(fake_triton):
    repo, binary, folder = fake_triton
    http = free_port()
    args = ["--triton", str(binary), "--http-port", str(http), "--grpc-port", str(free_port())]
    proc = subprocess.Popen(
        sigint_ignored(smilejax_cmd("serve", str(repo), *args, "--exit-timeout", "1")),
        env=cli_env(1), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any(line.startswith("ready:") for line in lines), 120, "serve to be ready", proc)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, "".join(lines)[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    reader.join(timeout=10)
    printed = "".join(lines)
    assert "stopping Triton (SIGINT; if it still runs, SIGTERM after 16 s and SIGKILL after 21 s)" in printed
    assert "stopped (Triton exit code 0)" in printed and _events(folder) == ["SIGINT"]


def test_a_killed_serve_takes_triton_with_it(fake_triton):
    """``smilejax serve`` SIGKILLed (a cancelled job, the OOM killer) has no chance to stop Triton: the
    kernel sends Triton SIGTERM (prctl PR_SET_PDEATHSIG), so it does not keep the GPU and the ports."""
    repo, binary, folder = fake_triton
    args = ["--triton", str(binary), "--http-port", str(free_port()), "--grpc-port", str(free_port())]
    proc = subprocess.Popen(
        smilejax_cmd("serve", str(repo), *args), env=cli_env(1), cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    triton = None
    try:
        wait_for(lambda: any(line.startswith("ready:") for line in lines), 120, "serve to be ready", proc)
        (triton,) = psutil.Process(proc.pid).children()
        assert triton.cmdline()[1] == str(binary)  # the launcher exec'd the stand-in, keeping its pid
        proc.kill()
        proc.wait(timeout=30)
        wait_for(lambda: _gone(triton.pid), 10, "the stand-in to exit after serve was killed")
    finally:
        if proc.poll() is None:
            proc.kill()
        if triton is not None and not _gone(triton.pid):
            triton.kill()
    assert _events(folder) == ["SIGTERM"]


def test_the_launcher_sets_the_death_signal_and_refuses_an_orphan(tmp_path):
    # PR_GET_PDEATHSIG (2) in the exec'd program: the signal survived exec.
    get = "import ctypes; s = ctypes.c_int(); ctypes.CDLL(None).prctl(2, ctypes.byref(s)); print(s.value)"
    shown = subprocess.run(with_parent_death([sys.executable, "-c", get]), capture_output=True, text=True)
    assert shown.returncode == 0 and int(shown.stdout) == signal.SIGTERM, shown.stderr
    # The parent died between fork and prctl: the launcher's parent is no longer the pid it was given.
    marker = tmp_path / "ran"
    launcher = with_parent_death(["/usr/bin/touch", str(marker)])
    orphan = subprocess.run([*launcher[:4], "1", *launcher[5:]], capture_output=True, text=True)
    assert orphan.returncode == LAUNCH_FAILED and "exited before /usr/bin/touch started" in orphan.stderr
    assert not marker.exists()
    assert subprocess.run(launcher).returncode == 0 and marker.exists()


@pytest.mark.parametrize("logged", [True, False])
def test_a_launcher_that_does_not_start_triton_names_its_reason_first(
    fake_triton, tmp_path, monkeypatch, capfd, logged
):
    """The launcher refuses (its parent's pid is one that has exited, as when the parent dies before
    prctl): the error starts with the launcher's reason, not with "Triton exited with code 1"."""
    repo, binary, folder = fake_triton
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that no longer runs
    real = server_module.with_parent_death
    monkeypatch.setattr(server_module, "with_parent_death", lambda cmd: [*real(cmd)[:4], str(gone.pid), *cmd])
    log_file = tmp_path / "triton.log" if logged else None
    ports = dict(http_port=free_port(), grpc_port=free_port())
    server = TritonServer(repo, **ports, binary=binary, log_file=log_file)
    with pytest.raises(RuntimeError) as err, server:
        pass
    if logged:
        reason = f"parent {gone.pid} exited before {binary} started; not starting it"
    else:  # the launcher's line went to our stderr
        reason = "the parent-death launcher failed; its reason went to stderr"
        assert f"{MARKER}parent {gone.pid} exited before {binary} started" in capfd.readouterr().err
    assert str(err.value).startswith(f"Triton was not started: {reason} (launcher exit code {LAUNCH_FAILED})")
    assert server.process.returncode == LAUNCH_FAILED and _events(folder) == []  # the stand-in never ran


def test_a_child_started_from_another_thread_is_not_tied_to_it():
    """PDEATHSIG fires when the forking *thread* ends: a thread-started Triton would die with its thread."""
    box = {}
    thread = threading.Thread(target=lambda: box.update(cmd=with_parent_death(["tritonserver", "-x"])))
    thread.start()
    thread.join()
    assert box["cmd"] == ["tritonserver", "-x"]
    assert with_parent_death(["tritonserver"])[-2:] == [str(os.getpid()), "tritonserver"]
