"""A Triton model repository from a run directory: artifacts, ``config.pbtxt`` files and metadata.

Layout for a model exported as NAME (``REPO/smilejax_export.json`` records what is where)::

    REPO/NAME/             ONNX on Triton's ONNX Runtime backend (production; NGC containers)
    REPO/NAME_jax/         the StableHLO artifact run by JAX in Triton's Python backend
    REPO/NAME_onnx/        the ONNX model run by onnxruntime in Triton's Python backend, for servers
                           without the ONNX Runtime backend (the one in the nvidia-pytriton wheel)

Every model takes a leading batch dimension (``max_batch_size``), batches concurrent requests
dynamically, and runs ``instances`` copies of itself (``kind``: auto, cpu, gpu). Where the data format
declares raw inputs, the models take the variables as the data files store them and apply the masks
and normalisation inside (``smilejax_export.json``'s ``raw`` says how); ``client.raw_batch`` reads them.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from smilejax import host
from smilejax.serve.export import ELEMENTS, FORMATS, Tensor

log = logging.getLogger(__name__)

METADATA = "smilejax_export.json"
PYTHON_BACKEND_DIR = Path(__file__).parent / "python_backend"
# model-name suffix -> (artifact format, Triton backend, what runs it)
VARIANTS = {
    "": ("onnx", "onnxruntime", "ONNX Runtime backend"),
    "_jax": ("stablehlo", "python", "JAX in the Python backend"),
    "_onnx": ("onnx", "python", "onnxruntime in the Python backend"),
}
TRITON_TYPES = {
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "int8": "TYPE_INT8",
    "int16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "bfloat16": "TYPE_BF16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
}
KINDS = {"auto": "KIND_AUTO", "cpu": "KIND_CPU", "gpu": "KIND_GPU"}


@dataclasses.dataclass(frozen=True)
class TritonOptions:
    """Scheduling options written into every ``config.pbtxt``."""

    max_batch_size: int = 64
    dynamic_batching: bool = True
    max_queue_delay_us: int = 500  # how long a request may wait for others to batch with
    preferred_batch_sizes: tuple[int, ...] = ()
    instances: int = 1  # model copies per device
    kind: str = "auto"  # auto: GPU where the server has one
    warmup: bool = True  # the JAX model compiles its batch sizes when it loads, not on first requests

    def __post_init__(self):
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {self.max_batch_size}")
        if self.instances < 1:
            raise ValueError(f"instances must be at least 1, got {self.instances}")
        if self.max_queue_delay_us < 0:
            raise ValueError(f"max_queue_delay_us must be >= 0, got {self.max_queue_delay_us}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        bad = [b for b in self.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if bad:
            raise ValueError(
                f"preferred batch sizes {bad} are outside 1..max_batch_size={self.max_batch_size}"
            )


# ---------------------------------------------------------------- config.pbtxt


def config_pbtxt(
    name: str, backend: str, inputs: Sequence[Tensor], outputs: Sequence[Tensor], opts: TritonOptions
) -> str:
    """Triton's model configuration (protobuf text format); symbolic dimensions become -1."""

    def tensors(items: Sequence[Tensor]) -> str:
        blocks = []
        for t in items:
            if t.dtype not in TRITON_TYPES:
                raise ValueError(f"tensor {t.name!r} has dtype {t.dtype}, which Triton cannot carry")
            dims = ", ".join(str(d) if isinstance(d, int) else "-1" for d in t.dims)
            body = f'name: "{t.name}"\n    data_type: {TRITON_TYPES[t.dtype]}\n    dims: [ {dims} ]'
            blocks.append(f"  {{\n    {body}\n  }}")
        return ",\n".join(blocks)

    lines = [
        f'name: "{name}"',
        f'backend: "{backend}"',
        f"max_batch_size: {opts.max_batch_size}",
        f"input [\n{tensors(inputs)}\n]",
        f"output [\n{tensors(outputs)}\n]",
    ]
    if opts.dynamic_batching:
        batching = [f"  max_queue_delay_microseconds: {opts.max_queue_delay_us}"]
        if opts.preferred_batch_sizes:
            batching.append(f"  preferred_batch_size: [ {', '.join(map(str, opts.preferred_batch_sizes))} ]")
        lines.append("dynamic_batching {\n" + "\n".join(batching) + "\n}")
    lines.append(
        f"instance_group [\n  {{\n    count: {opts.instances}\n    kind: {KINDS[opts.kind]}\n  }}\n]"
    )
    return "\n".join(lines) + "\n"


def _write_model(
    repo: Path,
    name: str,
    suffix: str,
    artifact: bytes,
    inputs: Sequence[Tensor],
    outputs: Sequence[Tensor],
    opts: TritonOptions,
    element_size: int | None = None,
) -> None:
    fmt, backend, _ = VARIANTS[suffix]
    model_dir = repo / f"{name}{suffix}"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    version = model_dir / "1"
    version.mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(config_pbtxt(model_dir.name, backend, inputs, outputs, opts))
    artifact_name = "model.jaxexport" if fmt == "stablehlo" else "model.onnx"
    (version / artifact_name).write_bytes(artifact)
    if backend == "python":
        runner = "jax_model.py" if fmt == "stablehlo" else "onnx_model.py"
        shutil.copy(PYTHON_BACKEND_DIR / runner, version / "model.py")
        shutil.copy(PYTHON_BACKEND_DIR / "triton_io.py", version / "triton_io.py")
        io = {
            "artifact": artifact_name,
            "inputs": [t.to_json() for t in inputs],
            "outputs": [t.to_json() for t in outputs],
            "max_batch_size": opts.max_batch_size,
            "warmup": opts.warmup,
            "warmup_elements": element_size,
        }
        (version / "io.json").write_text(json.dumps(io, indent=2) + "\n")


# ---------------------------------------------------------------- building from a run


def model_name(cfg_name: str) -> str:
    """A Triton model name from ``model.name`` (a family's name; ``pkg.module:SPEC`` -> ``module``)."""
    base = cfg_name.partition(":")[0].rsplit(".", 1)[-1] if ":" in cfg_name else cfg_name
    return re.sub(r"[^a-z0-9_]+", "_", base.lower()).strip("_") or "model"


def build(
    run_dir: str | Path,
    out: str | Path,
    *,
    formats: Sequence[str] = FORMATS,
    name: str | None = None,
    options: TritonOptions = TritonOptions(),
    step: int | None = None,
    symbolic_elements: bool = True,
    raw: bool | None = None,
) -> dict[str, Any]:
    """Exports ``run_dir``'s model in ``formats`` into the repository ``out``; returns its metadata.

    raw: the models take the data files' variables and normalise and mask inside (None: where the data
    format declares them, ``DatasetSpec.raw``; False: the model's own inputs, as the pipeline makes them).
    """
    from smilejax import trained
    from smilejax.serve import export

    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"unknown export format(s) {unknown or formats}; choose from {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / METADATA).exists():
        raise ValueError(f"{out} exists and is not a smilejax model repository (no {METADATA})")
    if name is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"model name {name!r} may hold only letters, digits, '_', '-' and '.'")

    tm = trained.load(run_dir, step=step)
    name = name or model_name(tm.cfg.model.name)
    fwd = export.forward(tm, symbolic_elements=symbolic_elements, raw=raw)
    checker = export.Checker(fwd)
    out.mkdir(parents=True, exist_ok=True)
    models: dict[str, dict[str, Any]] = {}
    reports: dict[str, Any] = {}

    def record(suffix: str, inputs: Sequence[Tensor], outputs: Sequence[Tensor]) -> None:
        fmt, backend, runs = VARIANTS[suffix]
        models[f"{name}{suffix}"] = {
            "format": fmt,
            "backend": backend,
            "runs_with": runs,
            "inputs": [t.to_json() for t in inputs],
            "outputs": [t.to_json() for t in outputs],
        }

    if "stablehlo" in formats:
        exported, reports["stablehlo"] = export.to_stablehlo(fwd, checker)
        _write_model(
            out, name, "_jax", exported.serialize(), fwd.inputs, fwd.outputs, options, fwd.element_size
        )
        record("_jax", fwd.inputs, fwd.outputs)
    if "onnx" in formats:
        from smilejax.serve import onnx_export

        proto, reports["onnx"] = onnx_export.to_onnx(fwd, checker)
        inputs = onnx_export.onnx_inputs(fwd, reports["onnx"])
        outputs = onnx_export.onnx_outputs(fwd, reports["onnx"])
        blob = proto.SerializeToString()
        for suffix in ("", "_onnx"):
            _write_model(out, name, suffix, blob, inputs, outputs, options)
            record(suffix, inputs, outputs)

    metadata = {
        "name": name,
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "source_run": {"dir": str(Path(run_dir).resolve()), "step": tm.step, "model": tm.cfg.model.name},
        # what a client sends: the raw variables (see "raw"), else the model's own inputs
        "inputs": [t.to_json() for t in fwd.inputs],
        "outputs": [t.to_json() for t in fwd.outputs],
        "model_inputs": [t.to_json() for t in (fwd.model_inputs or fwd.inputs)],
        # the raw inputs' variables, masks and normalisation; None: the inputs are the model's own
        "raw": fwd.raw,
        # {input: axis} of the symbolic element count, or None when it is fixed
        "symbolic_dims": {"batch": "axis 0", ELEMENTS: export.element_dims(fwd) or None},
        "element_size": fwd.element_size,
        "data": _data_section(tm.cfg),
        "normalisation": normalisation(tm.cfg),
        "versions": _versions(),
        "exports": reports,
        "triton": dataclasses.asdict(options),
        "models": models,
    }
    previous = read_metadata(out) if (out / METADATA).exists() else {}
    for stale in set(previous.get("models", {})) - set(models):  # a re-export with fewer formats
        shutil.rmtree(out / stale, ignore_errors=True)
    (out / METADATA).write_text(json.dumps(metadata, indent=2) + "\n")
    log.info("wrote %s: %s", out, ", ".join(models))
    return read_metadata(out)


def read_metadata(repo: str | Path) -> dict[str, Any]:
    path = Path(repo) / METADATA
    if not path.exists():
        raise FileNotFoundError(
            f"{repo} is not a smilejax model repository (no {METADATA}; see smilejax export)"
        )
    return json.loads(path.read_text())


def _versions() -> dict[str, str]:
    return host.package_versions((*host.PLATFORM_PACKAGES, "jax2onnx", "onnx"))


def _data_section(cfg) -> dict[str, Any]:
    """The data options that shape the inputs (variables, their order, the norm dict named)."""
    from smilejax import config

    data = config.to_dict(cfg)["data"]
    skip = {"batch_size", "shuffle", "read_threads", "prefetch", "workers"}
    return {k: v for k, v in data.items() if k not in skip}


def normalisation(cfg) -> dict[str, Any] | None:
    """The input normalisation the run trained with, as ``{source, groups: {group: {var: {mean, std}}}}``.

    Taken from the training split's source, so a cached norm dict is found as training found it. None
    (with a warning) when the data is not reachable from here: the export itself does not need it.
    """
    from smilejax import registry

    try:
        source = registry.dataset(cfg.data.format).source(cfg.data, "train")
    except Exception as err:
        log.warning("normalisation not recorded: the training data is not readable here (%s)", err)
        return None
    try:
        return _norm_of(source, cfg)
    finally:
        getattr(source, "close", lambda: None)()


def _norm_of(source: Any, cfg) -> dict[str, Any] | None:
    norm = getattr(source, "norm", None)  # formats that normalise expose {group: {var: {mean, std}}}
    if norm is None:
        return None
    return {"source": getattr(source, "norm_source", getattr(cfg.data, "norm_dict", None)), "groups": norm}
