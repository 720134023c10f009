"""A Triton client (``tritonclient``, HTTP or gRPC) that takes the batches the input pipeline makes.

``Client(url, model).infer(batch)`` sends the model's inputs found in ``batch`` (other keys, labels
say, stay home) as they are, and returns ``{output: array}``. What the server rejects (a wrong shape,
dtype, or a missing input) raises ``InferenceError`` with the server's message, which names the input.

Models exported with raw inputs (the default where the data format declares them) take the variables as
the data files store them: ``raw_batch(REPO, FILE, n)`` reads ``n`` examples of a file that way, so
``Client(url, model).infer(raw_batch(REPO, FILE, n))`` scores a file's examples.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from smilejax import host
from smilejax.serve.server import GRPC_HEADER_PREFIX, KEY_HEADER

CLIENT_HINT = host.pip_install(".[serve]")  # tritonclient[http,grpc]
PROTOCOLS = ("http", "grpc")
METADATA = "smilejax_export.json"  # repository.METADATA (not imported: that module imports JAX)


def key_headers(protocol: str, key: str | None) -> dict[str, str] | None:
    """The request headers carrying the inference key: Triton checks it in this header on HTTP, and
    with its gRPC prefix on gRPC."""
    header = KEY_HEADER if protocol == "http" else f"{GRPC_HEADER_PREFIX}{KEY_HEADER}"
    return {header: key} if key else None


def _grpc_channel_args(triton) -> list[tuple[str, int]]:
    """tritonclient's default channel options, and a subchannel of this client's own: gRPC otherwise
    shares one connection per address across clients, so a new client made to retry a lost connection
    inherits that connection's reconnect backoff (1 s, growing by 1.6x) instead of connecting now."""
    keepalive = triton.KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", triton.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", triton.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.use_local_subchannel_pool", 1),
    ]


class InferenceError(RuntimeError):
    """The server refused or failed a request; the message is the server's."""


def _modules(protocol: str):
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    try:
        if protocol == "http":
            import tritonclient.http as triton
        else:
            import tritonclient.grpc as triton
        from tritonclient.utils import InferenceServerException, np_to_triton_dtype
    except ImportError as err:
        raise ImportError(f"the Triton client is not installed ({err}): {CLIENT_HINT}") from err
    return triton, InferenceServerException, np_to_triton_dtype


class Client:
    """One connection to one model. Not for sharing across threads: make one per thread."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        protocol: str = "http",
        key: str | None = None,
        tls_root: str | None = None,  # gRPC over TLS: the CA that signed the server certificate
        tls_cert: str | None = None,  # mutual TLS: this client's certificate and key
        tls_key: str | None = None,
        timeout_s: float = 60.0,
    ):
        self._triton, self._error, self._dtype = _modules(protocol)
        self.model, self.protocol = model, protocol
        self.headers = key_headers(protocol, key)
        for path in (tls_root, tls_cert, tls_key):
            if path and not Path(path).is_file():
                raise FileNotFoundError(f"{path}: no such file")
        if protocol == "grpc":
            self._client = self._triton.InferenceServerClient(  # tritonclient reads the PEM files
                url,
                ssl=tls_root is not None,
                root_certificates=tls_root,
                private_key=tls_key,
                certificate_chain=tls_cert,
                channel_args=_grpc_channel_args(self._triton),
            )
            self._timeout = {"client_timeout": timeout_s}
        else:
            if tls_root:
                raise ValueError("TLS is offered on gRPC only (Triton's HTTP endpoint is plain HTTP)")
            self._client = self._triton.InferenceServerClient(
                url, connection_timeout=timeout_s, network_timeout=timeout_s
            )
            self._timeout = {}
        self._inputs: list[str] | None = None
        self._outputs: list[str] | None = None

    def _call(self, fn, *args, **kwargs) -> Any:
        try:
            return fn(*args, **kwargs)
        except self._error as err:
            raise InferenceError(f"{self.model}: {err.message()}") from err

    def metadata(self) -> dict[str, Any]:
        """The model's inputs and outputs as the server declares them."""
        meta = self._call(self._client.get_model_metadata, self.model, headers=self.headers)
        if self.protocol == "grpc":
            from google.protobuf.json_format import MessageToDict

            meta = MessageToDict(meta, preserving_proto_field_name=True)
        return meta

    def _names(self) -> tuple[list[str], list[str]]:
        if self._inputs is None:
            meta = self.metadata()
            self._inputs = [t["name"] for t in meta["inputs"]]
            self._outputs = [t["name"] for t in meta["outputs"]]
        return self._inputs, self._outputs

    def infer(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model's outputs for the model's inputs present in ``batch``, sent unchanged."""
        input_names, output_names = self._names()
        inputs = []
        for name in input_names:
            if name not in batch:
                continue  # the server answers with the names of the missing inputs
            array = np.ascontiguousarray(batch[name])
            tensor = self._triton.InferInput(name, list(array.shape), self._dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        outputs = [self._triton.InferRequestedOutput(name) for name in output_names]
        result = self._call(
            self._client.infer, self.model, inputs, outputs=outputs, headers=self.headers, **self._timeout
        )
        return {name: result.as_numpy(name) for name in output_names}

    def statistics(self) -> dict[str, int]:
        """Counts since the server started: ``requests`` (successful inference requests), ``inferences``
        (samples), ``executions`` (model runs: fewer than requests when dynamic batching merged some)."""
        stats = self._call(self._client.get_inference_statistics, self.model, headers=self.headers)
        if self.protocol == "grpc":
            from google.protobuf.json_format import MessageToDict

            stats = MessageToDict(stats, preserving_proto_field_name=True)
        model = stats["model_stats"][0]
        return {
            "requests": int(model["inference_stats"]["success"].get("count", 0)),
            "inferences": int(model.get("inference_count", 0)),
            "executions": int(model.get("execution_count", 0)),
        }

    def ready(self) -> bool:
        return bool(self._call(self._client.is_model_ready, self.model, headers=self.headers))

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------- raw examples from files


def raw_batch(data: Any, path: str | os.PathLike, n: int, *, start: int = 0) -> dict[str, np.ndarray]:
    """Examples ``start .. start + n`` of the file ``path`` as stored (fewer at its end): the raw inputs of
    a model exported from the run. ``data``: the run's data config, a model repository (its
    ``smilejax_export.json`` records the config) or a run directory."""
    cfg, raw = _raw_format(data)
    return raw.read(cfg, str(path), int(start), int(n))


def raw_length(data: Any, path: str | os.PathLike) -> int:
    """How many examples the file ``path`` holds (``data`` as for ``raw_batch``)."""
    cfg, raw = _raw_format(data)
    return int(raw.length(cfg, str(path)))


def _raw_format(data: Any):
    """(data config, the format's ``RawInputs``) of ``data`` (see ``raw_batch``)."""
    from smilejax import registry

    if isinstance(data, str | os.PathLike):
        folder = Path(data)
        if (folder / METADATA).is_file():
            section = json.loads((folder / METADATA).read_text())["data"]
            spec = registry.dataset(section["format"])
            data = spec.config(**section)
        elif (folder / "config.yaml").is_file():
            from smilejax import config

            data = config.load(folder / "config.yaml").data
        else:
            raise FileNotFoundError(f"{folder} is neither a model repository ({METADATA}) nor a run folder")
    spec = registry.dataset(data.format)
    if spec.raw is None:
        raise ValueError(
            f"data format {data.format!r} declares no raw inputs (DatasetSpec.raw): its models take the "
            "input pipeline's batches"
        )
    return data, spec.raw
