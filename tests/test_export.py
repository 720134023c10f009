"""Export: StableHLO and ONNX artifacts of a trained GN2 take the HDF5 file's variables (raw) and equal the
in-process model on the pipeline's batches of the same jets, at any track count; the Triton repository;
a format from outside declaring raw inputs; formats without them keep the model's own inputs."""

from __future__ import annotations

import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from smilejax.inputs.spec import DatasetSpec, RawInputs, RawSignature, RawTensor

from smilejax import config, registry, trained, trainer
from tests import toy
from tests.conftest import run_cli
from tests.helpers_serve import (
    SERVE_HINT,
    assert_equal_outputs,
    eval_file,
    model_outputs,
    raw_and_pipeline,
)

try:
    import onnxruntime
except ImportError:
    onnxruntime = None


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_gn2_run):
    if onnxruntime is None:
        pytest.fail(f"export tests need onnxruntime and jax2onnx: {SERVE_HINT}")
    from smilejax.serve import repository

    root = tmp_path_factory.mktemp("export")
    options = repository.TritonOptions(max_batch_size=16, max_queue_delay_us=1000, instances=2, kind="cpu")
    meta = repository.build(tiny_gn2_run, root / "repo", options=options)
    return trained.load(tiny_gn2_run), root / "repo", meta


def test_repository_layout_config_and_metadata(exported):
    _, repo, meta = exported
    assert set(meta["models"]) == {"gn2", "gn2_jax", "gn2_onnx"}
    assert (repo / "gn2" / "1" / "model.onnx").stat().st_size > 1000
    assert (repo / "gn2_onnx" / "1" / "model.onnx").read_bytes() == (
        repo / "gn2" / "1" / "model.onnx"
    ).read_bytes()
    assert {p.name for p in (repo / "gn2_jax" / "1").iterdir()} >= {
        "model.py",
        "triton_io.py",
        "io.json",
        "model.jaxexport",
    }

    production = (repo / "gn2" / "config.pbtxt").read_text()
    assert 'backend: "onnxruntime"' in production and "max_batch_size: 16" in production
    assert "max_queue_delay_microseconds: 1000" in production
    assert "count: 2" in production and "kind: KIND_CPU" in production
    # raw inputs, any track count in ONNX too
    assert 'name: "jets"\n    data_type: TYPE_FP32\n    dims: [ 2 ]' in production
    assert 'name: "tracks"\n    data_type: TYPE_FP32\n    dims: [ -1, 19 ]' in production
    assert 'name: "valid"\n    data_type: TYPE_BOOL\n    dims: [ -1 ]' in production
    jax_cfg = (repo / "gn2_jax" / "config.pbtxt").read_text()
    assert 'backend: "python"' in jax_cfg
    assert 'name: "tracks"\n    data_type: TYPE_FP32\n    dims: [ -1, 19 ]' in jax_cfg  # symbolic tracks
    assert 'name: "vertex_logits"\n    data_type: TYPE_FP32\n    dims: [ -1, -1 ]' in jax_cfg

    on_disk = json.loads((repo / "smilejax_export.json").read_text())
    assert on_disk == meta
    assert [(t["name"], t["dtype"]) for t in meta["inputs"]] == [
        ("jets", "float32"),
        ("tracks", "float32"),
        ("valid", "bool"),
    ]
    assert meta["model_inputs"] == [
        {"name": "tracks", "dtype": "float32", "dims": ["elements", 21]},
        {"name": "valid", "dtype": "bool", "dims": ["elements"]},
    ]
    raw = {t["name"]: t for t in meta["raw"]["inputs"]}
    assert raw["jets"]["variables"] == ["pt_btagJes", "eta_btagJes"]
    assert raw["tracks"]["variables"] == meta["data"]["track_vars"] and raw["tracks"]["dims"] == [
        "elements",
        19,
    ]
    assert "valid" in meta["raw"]["mask"] and meta["raw"]["norm_source"] == meta["normalisation"]["source"]
    assert meta["source_run"]["step"] == 20 and meta["source_run"]["dir"].endswith("run")
    assert meta["versions"]["jax"] == jax.__version__
    assert meta["element_size"] == 40 and meta["data"]["track_vars"][0] == "d0"
    assert meta["symbolic_dims"] == {"batch": "axis 0", "elements": {"tracks": 1, "valid": 1}}
    norm = meta["normalisation"]["groups"]
    assert set(norm) == {"tracks", "jets"} and norm["tracks"]["d0"]["std"] > 0
    assert set(norm["jets"]) == {"pt_btagJes", "eta_btagJes"}  # the gn2 recipe's jet inputs
    assert meta["exports"]["stablehlo"]["platforms"] == ["cpu", "cuda"]
    assert meta["exports"]["onnx"]["elements"] == "symbolic"


def test_raw_inputs_read_from_the_file_are_what_the_pipeline_normalises(exported):
    from smilejax.serve.client import raw_batch, raw_length

    tm, repo, _ = exported
    path = eval_file(tm)
    assert (
        raw_length(repo, path)
        == raw_length(tm.cfg.data, path)
        == len(registry.dataset("ftag_h5").source(tm.cfg.data, "eval"))
    )
    raw = raw_batch(repo, path, 5, start=3)  # the repository's metadata gives the data config
    assert {k: v.shape for k, v in raw.items()} == {"jets": (5, 2), "tracks": (5, 40, 19), "valid": (5, 40)}
    assert np.isnan(raw["tracks"][~raw["valid"]]).any()  # the file pads with NaN: the mask handles it
    pt = raw["jets"][:, 0]
    assert pt.min() > 1000  # MeV, as stored
    tail = raw_batch(tm.cfg.data, path, 10, start=raw_length(repo, path) - 4)
    assert len(tail["jets"]) == 4
    with pytest.raises(ValueError, match="outside its"):
        raw_batch(repo, path, 1, start=10**7)

    from smilejax.serve import export

    fixed = export.forward(tm, symbolic_elements=False, raw=None)  # --fixed-elements: the config's 40
    assert [t.dims for t in fixed.inputs] == [(2,), (40, 19), (40,)] and fixed.element_size is None
    assert [t.dims for t in fixed.model_inputs] == [(40, 21), (40,)]


def test_stablehlo_equals_model_at_several_batch_and_track_counts(exported):
    tm, repo, _ = exported
    artifact = jax.export.deserialize(bytearray((repo / "gn2_jax" / "1" / "model.jaxexport").read_bytes()))
    assert [str(a.shape) for a in artifact.in_avals] == [
        "(batch, 2)",
        "(batch, elements, 19)",
        "(batch, elements)",
    ]
    for size, tracks in ((1, 40), (17, 40), (3, 17), (2, 63)):
        raw, pipe = raw_and_pipeline(tm, size, tracks)
        got = jax.device_get(artifact.call(raw["jets"], raw["tracks"], raw["valid"]))
        assert got["vertex_logits"].shape == (size, tracks, tracks)
        assert_equal_outputs(got, model_outputs(tm, pipe["tracks"], pipe["valid"]))


def test_onnxruntime_equals_model_at_any_track_count(exported):
    tm, repo, meta = exported
    session = onnxruntime.InferenceSession(
        str(repo / "gn2" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    assert [i.name for i in session.get_inputs()] == ["jets", "tracks", "valid"]
    assert [i.shape for i in session.get_inputs()] == [
        ["batch", 2],
        ["batch", "elements", 19],
        ["batch", "elements"],
    ]
    names = [o.name for o in session.get_outputs()]
    for size, tracks in ((1, 40), (8, 40), (17, 40), (3, 7), (5, 63)):
        raw, pipe = raw_and_pipeline(tm, size, tracks)
        got = dict(zip(names, session.run(None, raw), strict=True))
        assert got["origin_logits"].shape == (size, tracks, 8)
        assert_equal_outputs(got, model_outputs(tm, pipe["tracks"], pipe["valid"]))
    assert meta["exports"]["onnx"]["max_abs_diff"] < 1e-4


def test_model_without_element_axis_exports_with_symbolic_batch_only(tmp_path):
    from smilejax.serve import export, repository

    cfg = config.load(toy.config(run={"dir": str(tmp_path / "run"), "steps": 2, "checkpoint_every": 2}))
    trainer.train(cfg)
    meta = repository.build(tmp_path / "run", tmp_path / "repo", formats=["stablehlo"], name="toy")
    assert set(meta["models"]) == {"toy_jax"} and meta["element_size"] is None
    assert meta["symbolic_dims"] == {"batch": "axis 0", "elements": None}
    assert meta["inputs"] == [{"name": "x", "dtype": "float32", "dims": [8]}]
    assert meta["outputs"] == [{"name": "output", "dtype": "float32", "dims": []}]
    artifact = jax.export.deserialize(
        bytearray((tmp_path / "repo" / "toy_jax" / "1" / "model.jaxexport").read_bytes())
    )
    tm = trained.load(tmp_path / "run")
    x = np.random.default_rng(0).normal(size=(6, 8)).astype(np.float32)
    np.testing.assert_allclose(artifact.call(x)["output"], jax.device_get(tm.model(x)), rtol=1e-5, atol=1e-6)
    assert meta["normalisation"] is None  # the toy source has none

    with pytest.raises(ValueError, match=r"unknown export format.*'tflite'"):
        repository.build(tmp_path / "run", tmp_path / "other", formats=["tflite"])
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="busy exists and is not a smilejax model repository"):
        repository.build(tmp_path / "run", tmp_path / "busy")
    with pytest.raises(FileNotFoundError, match="not a smilejax run directory"):
        repository.build(tmp_path, tmp_path / "repo2")
    assert export.forward(tm).element_size is None
    assert meta["raw"] is None and meta["model_inputs"] == meta["inputs"]  # the toy format has no raw inputs
    with pytest.raises(export.ExportError, match="declares no raw inputs"):
        export.forward(tm, raw=True)


# ---------------------------------------------------------------- a format from outside with raw inputs


class MillimetreSource:
    """Files store ``x_mm`` (millimetres, centred on 5); the model trains on ``x = (x_mm - 5) / 10``."""

    def __init__(self, cfg, split: str):
        with np.load(cfg.path) as f:
            self.x_mm, self.y = f["x_mm"], f["y"]

    def __len__(self) -> int:
        return len(self.y)

    def read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        return {"x": (self.x_mm[indices] - 5) / 10, "y": self.y[indices]}


def _mm_signature(cfg) -> RawSignature:
    names = tuple(f"x{i}" for i in range(cfg.features))
    return RawSignature(
        inputs=(RawTensor("x_mm", "float32", (cfg.features,), names, "millimetres"),),
        prepare=lambda x_mm: {"x": (x_mm - 5) / 10},
        about={"normalisation": "(x_mm - 5) / 10"},
    )


def _mm_read(cfg, path: str, start: int, n: int) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {"x_mm": f["x_mm"][start : start + n]}


def _mm_length(cfg, path: str) -> int:
    with np.load(path) as f:
        return len(f["y"])


MILLIMETRES = DatasetSpec(
    name="tests.test_export:MILLIMETRES",
    config=toy.ToyDataConfig,
    source=MillimetreSource,
    raw=RawInputs(signature=_mm_signature, read=_mm_read, length=_mm_length),
)


def test_a_format_from_outside_declares_raw_inputs_that_every_artifact_takes(tmp_path):
    from smilejax.serve import repository
    from smilejax.serve.client import raw_batch, raw_length

    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "mm.npz",
        x_mm=(5 + 10 * rng.normal(size=(64, 8))).astype(np.float32),
        y=rng.normal(size=64).astype(np.float32),
    )
    data = {"format": "tests.test_export:MILLIMETRES", "path": str(tmp_path / "mm.npz")}
    trainer.train(
        config.load(
            toy.config(data=data, run={"dir": str(tmp_path / "run"), "steps": 2, "checkpoint_every": 2})
        )
    )
    meta = repository.build(tmp_path / "run", tmp_path / "repo", name="toy")
    assert meta["inputs"] == [{"name": "x_mm", "dtype": "float32", "dims": [8]}]
    assert meta["model_inputs"] == [{"name": "x", "dtype": "float32", "dims": [8]}]
    assert meta["raw"]["inputs"][0]["variables"][:2] == ["x0", "x1"] and meta["raw"]["normalisation"]
    assert raw_length(tmp_path / "repo", tmp_path / "mm.npz") == 64
    raw = raw_batch(tmp_path / "repo", tmp_path / "mm.npz", 6, start=10)["x_mm"]
    tm = trained.load(tmp_path / "run")
    want = jax.device_get(tm.model((raw - 5) / 10))
    artifact = jax.export.deserialize(
        bytearray((tmp_path / "repo" / "toy_jax" / "1" / "model.jaxexport").read_bytes())
    )
    np.testing.assert_allclose(artifact.call(raw)["output"], want, rtol=1e-5, atol=1e-6)
    session = onnxruntime.InferenceSession(
        str(tmp_path / "repo" / "toy" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    np.testing.assert_allclose(session.run(None, {"x_mm": raw})[0], want, rtol=1e-5, atol=1e-6)


def test_export_cli_writes_the_chosen_format_and_names_bad_options(exported, tmp_path):
    meta = exported[2]
    run_dir = meta["source_run"]["dir"]
    out = tmp_path / "cli-repo"
    done = run_cli(
        "export", run_dir, "--out", str(out), "--format", "stablehlo", "--max-batch-size", "8", "--no-warmup"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "gn2_jax: stablehlo on JAX in the Python backend" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["gn2_jax", "smilejax_export.json"]
    assert "max_batch_size: 8" in (out / "gn2_jax" / "config.pbtxt").read_text()
    assert json.loads((out / "gn2_jax" / "1" / "io.json").read_text())["warmup"] is False

    assert (
        "inputs (the data files' variables): jets float32[batch, 2]; tracks float32[batch, elements, 19]"
        in done.stdout
    )

    # the model's own inputs (the pipeline's normalised batch), with the track count fixed
    done = run_cli(
        "export",
        run_dir,
        "--out",
        str(tmp_path / "own"),
        "--format",
        "stablehlo",
        "--pipeline-inputs",
        "--fixed-elements",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "inputs (the model's own): tracks float32[batch, 40, 21]; valid bool[batch, 40]" in done.stdout
    own = json.loads((tmp_path / "own" / "smilejax_export.json").read_text())
    assert own["raw"] is None and own["symbolic_dims"]["elements"] is None
    assert (
        'name: "tracks"\n    data_type: TYPE_FP32\n    dims: [ 40, 21 ]'
        in (tmp_path / "own" / "gn2_jax" / "config.pbtxt").read_text()
    )

    bad = run_cli("export", run_dir, "--out", str(tmp_path / "x"), "--format", "stablehlo,tflite")
    assert bad.returncode == 2 and "unknown ['tflite']; choose from stablehlo, onnx" in bad.stderr
    bad = run_cli("export", run_dir, "--out", str(tmp_path / "x"), "--max-batch-size", "0")
    assert bad.returncode == 2 and "max_batch_size must be at least 1" in bad.stderr


class _SetSum(nnx.Module):
    """A set model whose elements are the last axis of ``hits`` [B, F, N] (``mask`` [B, N])."""

    def __init__(self, rngs: nnx.Rngs):
        self.proj = nnx.Linear(3, 4, rngs=rngs)

    def __call__(self, hits: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
        per_element = self.proj(jnp.swapaxes(hits, 1, 2))  # [B, N, 4]
        return {"summed": jnp.sum(per_element * mask[..., None], axis=1)}


def test_declared_element_axes_become_symbolic_where_the_family_says():
    from smilejax.serve import export

    specs = lambda cfg, b: {  # noqa: E731
        "hits": jax.ShapeDtypeStruct((b, 3, 12), jnp.float32),
        "mask": jax.ShapeDtypeStruct((b, 12), jnp.bool_),
    }
    spec = types.SimpleNamespace(input_spec=specs, element_axes={"hits": 2, "mask": 1})
    tm = types.SimpleNamespace(model=_SetSum(nnx.Rngs(0)), spec=spec, cfg=types.SimpleNamespace(model=None))
    fwd = export.forward(tm)
    assert fwd.element_size == 12 and export.element_dims(fwd) == {"hits": 2, "mask": 1}
    assert [t.dims for t in fwd.inputs] == [(3, "elements"), ("elements",)]
    exported, report = export.to_stablehlo(fwd)  # checked at 12 and 6 elements
    assert [str(a.shape) for a in exported.in_avals] == ["(batch, 3, elements)", "(batch, elements)"]
    assert report["max_abs_diff"] < 1e-5
    # inferred, axis 1 would not do: the inputs disagree on it, so only the batch is symbolic
    assert export.element_axes(specs(None, 1), None) == {}
    with pytest.raises(ValueError, match=r"disagree on the element count: \{'hits': 3, 'mask': 12\}"):
        export.element_axes(specs(None, 1), {"hits": 1, "mask": 1})
    with pytest.raises(ValueError, match="past the batch axis"):
        export.element_axes(specs(None, 1), {"mask": 0})
    with pytest.raises(ValueError, match=r"names input\(s\) \['tracks'\]"):
        export.element_axes(specs(None, 1), {"tracks": 1})
