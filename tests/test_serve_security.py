"""Serving security against a real Triton server: the inference key (HTTP and gRPC), the administrative
APIs refused to every client, gRPC over TLS and mutual TLS with a throwaway CA, and loopback binding."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import subprocess
import threading
import urllib.error
import urllib.request

import psutil
import pytest

from smilejax import trained
from tests.conftest import ROOT, cli_env, free_port, run_cli, smilejax_cmd, stand_in_triton, wait_for
from tests.helpers_serve import assert_equal_outputs, model_outputs, pipeline_batch, require_triton

KEY = "s3cret-key"
MODEL = "gn2_onnx"  # onnxruntime in the Python backend: the wheel's server runs it


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _ca(folder, name: str) -> tuple[str, str]:
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
             "-keyout", str(key), "-out", str(cert))  # fmt: skip
    return str(cert), str(key)


def _signed(folder, name: str, ca: tuple[str, str], extensions: str) -> tuple[str, str]:
    """A certificate for ``name`` signed by ``ca`` (``extensions``: openssl x509v3 lines)."""
    cert, key, csr, ext = (folder / f"{name}{s}" for s in (".pem", ".key", ".csr", ".ext"))
    ext.write_text(extensions)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(key),
             "-out", str(csr))  # fmt: skip
    _openssl("x509", "-req", "-in", str(csr), "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial", "-days", "1",
             "-extfile", str(ext), "-out", str(cert))  # fmt: skip
    return str(cert), str(key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, tuple[str, str]]:
    """A CA with a server certificate (localhost, 127.0.0.1) and a client one, and an unrelated CA with a
    client certificate of its own."""
    folder = tmp_path_factory.mktemp("pki")
    ca, other = _ca(folder, "ca"), _ca(folder, "other-ca")
    server_ext = "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
    client_ext = "extendedKeyUsage=clientAuth\n"
    return {
        "ca": ca,
        "other_ca": other,
        "server": _signed(folder, "server", ca, server_ext),
        "client": _signed(folder, "client", ca, client_ext),
        "stranger": _signed(folder, "stranger", other, client_ext),
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_gn2_run):
    repository, _ = require_triton()
    root = tmp_path_factory.mktemp("serve_security")
    options = repository.TritonOptions(kind="cpu")
    repository.build(tiny_gn2_run, root / "repo", formats=("onnx",), options=options, raw=False)
    tm = trained.load(tiny_gn2_run)
    batch = {k: v[:3] for k, v in pipeline_batch(tm, 3).items()}
    return root, batch, model_outputs(tm, batch["tracks"], batch["valid"])


@pytest.fixture(scope="module")
def keyed(exported, pki):
    """``smilejax serve`` with a key file and gRPC over TLS, on its default address; yields
    (the tritonserver process, http port, grpc port)."""
    root, _, _ = exported
    (root / "key").write_text(KEY + "\n")
    (root / "key").chmod(0o600)
    http, grpc = free_port(), free_port()
    args = ["--models", MODEL, "--http-port", str(http), "--grpc-port", str(grpc), "--exit-timeout", "5"]
    args += ["--grpc-tls-cert", pki["server"][0], "--grpc-tls-key", pki["server"][1]]
    args += ["--key-file", str(root / "key")]
    proc = subprocess.Popen(
        smilejax_cmd("serve", str(root / "repo"), *args),
        env=cli_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    try:
        wait_for(lambda: any(line.startswith("ready:") for line in lines), 300, "the server to be ready")
        (triton,) = [p for p in psutil.Process(proc.pid).children() if "tritonserver" in p.name()]
        yield triton, http, grpc
        proc.terminate()  # SIGTERM stops like Ctrl-C
        assert proc.wait(timeout=60) == 0, "".join(lines)[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def _client(port: int, protocol: str, **kwargs):
    from smilejax.serve.client import Client

    return Client(f"127.0.0.1:{port}", MODEL, protocol=protocol, timeout_s=10, **kwargs)


def _other_addresses() -> list[str]:
    """This machine's addresses that are not loopback."""
    found = []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                ip = ipaddress.ip_address(a.address.split("%")[0])
                if not ip.is_loopback and not ip.is_link_local:
                    found.append(str(ip))
    return found


def test_the_server_listens_on_loopback_only_by_default(keyed):
    triton, http, grpc = keyed
    listening = [c.laddr for c in triton.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert {a.port for a in listening} == {http, grpc}  # no metrics endpoint either
    for address in listening:
        ip = ipaddress.ip_address(address.ip)
        assert (getattr(ip, "ipv4_mapped", None) or ip).is_loopback, listening
    for ip in _other_addresses():  # the ports are closed on the machine's other addresses
        for port in (http, grpc):
            family = socket.AF_INET6 if ":" in ip else socket.AF_INET
            with socket.socket(family) as s, pytest.raises(OSError):
                s.settimeout(2)
                s.connect((ip, port))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_inference_without_the_key_or_with_a_wrong_one_is_refused(keyed, exported, pki, protocol):
    from smilejax.serve.client import InferenceError
    from smilejax.serve.server import KEY_HEADER

    _, http, grpc = keyed
    _, batch, expected = exported
    port, tls = (http, {}) if protocol == "http" else (grpc, {"tls_root": pki["ca"][0]})
    for key in (None, "wrong-key", KEY + "x"):
        with _client(port, protocol, key=key, **tls) as c, pytest.raises(InferenceError, match=KEY_HEADER):
            c.infer(batch)
        with _client(port, protocol, key=key, **tls) as c, pytest.raises(InferenceError, match=KEY_HEADER):
            c.metadata()  # what the model takes is not told either
    with _client(port, protocol, key=KEY, **tls) as c:
        assert_equal_outputs(c.infer(batch), expected)
        assert c.statistics()["requests"] >= 1


def _http(port: int, path: str, data: bytes | None = None, **headers: str) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_health_is_open_and_model_control_is_refused_even_with_the_key(keyed, pki):
    import tritonclient.grpc as grpc_client
    from tritonclient.utils import InferenceServerException

    from smilejax.serve.server import ADMIN_HEADER, GRPC_HEADER_PREFIX, KEY_HEADER

    _, http, grpc = keyed
    assert _http(http, "/v2/health/ready")[0] == 200
    for path, body in (
        (f"/v2/repository/models/{MODEL}/unload", b"{}"),
        (f"/v2/repository/models/{MODEL}/load", json.dumps({"parameters": {}}).encode()),
        ("/v2/repository/index", b"{}"),
        ("/v2/logging", b"{}"),
        ("/v2/systemsharedmemory/region/x/register", b'{"key": "/x", "offset": 0, "byte_size": 8}'),
    ):
        status, text = _http(http, path, body, **{KEY_HEADER: KEY})
        assert status == 403 and ADMIN_HEADER in text, (path, status, text)
    admin = grpc_client.InferenceServerClient(f"localhost:{grpc}", ssl=True, root_certificates=pki["ca"][0])
    with pytest.raises(InferenceServerException, match=ADMIN_HEADER):
        admin.unload_model(MODEL, headers={f"{GRPC_HEADER_PREFIX}{KEY_HEADER}": KEY}, client_timeout=10)
    admin.close()
    assert _http(http, f"/v2/models/{MODEL}/ready", **{KEY_HEADER: KEY})[0] == 200  # still loaded


def test_grpc_tls_needs_the_ca_that_signed_the_server_certificate(keyed, exported, pki):
    from smilejax.serve.client import InferenceError

    _, _, grpc = keyed
    _, batch, expected = exported
    with _client(grpc, "grpc", key=KEY, tls_root=pki["ca"][0]) as c:
        assert_equal_outputs(c.infer(batch), expected)
    for tls in ({}, {"tls_root": pki["other_ca"][0]}):  # plain text, or a CA that did not sign it
        with _client(grpc, "grpc", key=KEY, **tls) as c, pytest.raises(InferenceError):
            c.infer(batch)


@contextlib.contextmanager
def _mutual_tls_server(root, pki):
    from smilejax.serve.server import Security, TritonServer

    security = Security(tls_cert=pki["server"][0], tls_key=pki["server"][1], tls_root=pki["ca"][0])
    server = TritonServer(
        root / "repo",
        http_port=free_port(),
        grpc_port=free_port(),
        models=[MODEL],
        security=security,
        exit_timeout_s=5,
        log_file=root / "mtls.log",
    )
    with server:
        yield server
    assert server.process.returncode == 0, (root / "mtls.log").read_text()[-3000:]


def test_mutual_tls_refuses_a_client_without_a_certificate_of_the_ca(exported, pki):
    from smilejax.serve.client import InferenceError

    root, batch, expected = exported
    ca = pki["ca"][0]
    with _mutual_tls_server(root, pki) as server:
        certified = {"tls_cert": pki["client"][0], "tls_key": pki["client"][1]}
        with _client(server.grpc_port, "grpc", tls_root=ca, **certified) as c:
            assert_equal_outputs(c.infer(batch), expected)
        stranger = {"tls_cert": pki["stranger"][0], "tls_key": pki["stranger"][1]}
        for refused in ({}, stranger):  # no certificate, or one another CA signed
            port = server.grpc_port
            with _client(port, "grpc", tls_root=ca, **refused) as c, pytest.raises(InferenceError):
                c.infer(batch)


def test_serving_beyond_loopback_without_a_key_warns(tmp_path):
    """A stand-in tritonserver that exits at once: the warning comes before it starts."""
    repo, binary = stand_in_triton(tmp_path, "#!/bin/sh\nexit 3\n")
    ports = ["--http-port", str(free_port()), "--grpc-port", str(free_port())]
    wide = run_cli("serve", str(repo), "--triton", str(binary), "--host", "0.0.0.0", *ports)
    assert "warning: serving on 0.0.0.0 without --key-file" in wide.stderr, wide.stderr[-2000:]
    local = run_cli("serve", str(repo), "--triton", str(binary), *ports)
    assert "warning" not in local.stderr, local.stderr[-2000:]
