"""``smilejax bench roofline``: kernels read from optimized HLO, and GN2 / MLPF steps compiled for an H100
on this machine, which has no GPU (JAX's CUDA plugin from ``make gpu-compiler``)."""

from __future__ import annotations

import argparse
import json

import h5py
import numpy as np
import pytest
from smilejax.inputs import packing

from smilejax import registry
from smilejax.bench import _packed_cases
from smilejax.bench._target import load_config
from smilejax.config import ConfigError
from smilejax.xla import roofline as _roofline
from tests.conftest import run_cli

# The shape of XLA's GPU output: a fused matmul, a loop with a known trip count, a library GEMM,
# an asynchronous collective pair, a conditional and instructions that launch nothing.
HLO = """HloModule jit_step, entry_computation_layout={()->f32[]}

%fused_dot (p0: bf16[64,32], p1: bf16[32,16]) -> bf16[64,16] {
  %p0 = bf16[64,32]{1,0} parameter(0)
  %p1 = bf16[32,16]{1,0} parameter(1)
  ROOT %dot.1 = bf16[64,16]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_add (q0: f32[128]) -> f32[128] {
  %q0 = f32[128]{0} parameter(0)
  ROOT %add.1 = f32[128]{0} add(%q0, %q0)
}

%body (b0: (s32[], f32[128])) -> (s32[], f32[128]) {
  %b0 = (s32[], f32[128]{0}) parameter(0)
  %i = s32[] get-tuple-element(%b0), index=0
  %x = f32[128]{0} get-tuple-element(%b0), index=1
  %f = f32[128]{0} fusion(%x), kind=kLoop, calls=%fused_add
  ROOT %t = (s32[], f32[128]{0}) tuple(%i, %f)
}

%cond (c0: (s32[], f32[128])) -> pred[] {
  %c0 = (s32[], f32[128]{0}) parameter(0)
  ROOT %lt = pred[] constant(true)
}

%small (s0: f32[128]) -> f32[128] {
  %s0 = f32[128]{0} parameter(0)
  ROOT %s1 = f32[128]{0} negate(%s0)
}

%outlined (o0: f32[128]) -> f32[128] {
  %o0 = f32[128]{0} parameter(0)
  ROOT %of = f32[128]{0} fusion(%o0), kind=kLoop, calls=%fused_add
}

%big (g0: f32[128]) -> f32[128] {
  %g0 = f32[128]{0} parameter(0)
  %g1 = f32[1024]{0} broadcast(%g0), dimensions={}
  ROOT %g2 = f32[128]{0} slice(%g1), slice={[0:128]}
}

ENTRY %main (a: bf16[64,32], w: bf16[32,16], v: f32[128], k: pred[]) -> f32[] {
  %a = bf16[64,32]{1,0} parameter(0)
  %w = bf16[32,16]{1,0} parameter(1)
  %v = f32[128]{0} parameter(2)
  %k = pred[] parameter(3)
  %mm = bf16[64,16]{1,0} fusion(%a, %w), kind=kCustom, calls=%fused_dot
  %gemm = (bf16[64,16], s8[1024]) custom-call(%a, %w), custom_call_target="__cublas$gemm", backend_config=GEMM
  %zero = s32[] constant(0)
  %init = (s32[], f32[128]{0}) tuple(%zero, %v)
  %loop = (s32[], f32[128]{0}) while(%init), condition=%cond, body=%body, backend_config=TRIPS
  %ar = f32[128]{0} all-reduce-start(%v), replica_groups={}, to_apply=%fused_add
  %ard = f32[128]{0} all-reduce-done(%ar)
  %br = f32[128]{0} conditional(%k, %v, %v), true_computation=%small, false_computation=%big
  %idx = s32[] constant(1)
  %sw = f32[128]{0} conditional(%idx, %v, %v), branch_computations={%small, %big}
  %cl = f32[128]{0} call(%v), to_apply=%outlined, control-predecessors={%mm}
  %w2 = (s32[], f32[128]{0}) while(%init), condition=%cond, body=%body
  ROOT %r = f32[] constant(0)
}
"""
GEMM = '{"gemm_backend_config":{"dot_dimension_numbers":{"lhs_contracting_dimensions":["1"],'
GEMM += '"rhs_contracting_dimensions":["0"]}}}'
HLO = HLO.replace("GEMM", GEMM).replace("TRIPS", '{"known_trip_count":{"n":"4"}}')


def test_kernels_bytes_flops_and_launches_from_hlo(caplog):
    found = _roofline.kernels(HLO)
    # the costlier branch of each conditional; a call's body (to_apply=); both loops' bodies
    assert sorted(k.name for k in found) == sorted(
        ["mm", "gemm", "f", "f", "ar", "g1", "g2", "g1", "g2", "of"]
    )
    by_name = {k.name: k for k in found if k.name != "f"}
    mm = by_name["mm"]
    assert mm.flops == 2 * 64 * 16 * 32 and mm.launches == 1
    assert mm.bytes == 2 * (64 * 32 + 32 * 16 + 64 * 16)  # operands read, result written
    assert by_name["gemm"].flops == mm.flops  # a library call's (out, workspace) result: dims of out
    assert by_name["gemm"].bytes == mm.bytes + 1024  # its workspace is written too
    loops = sorted((k.launches, k.bytes) for k in found if k.name == "f")
    assert loops == [(1, 2 * 128 * 4), (4, 2 * 128 * 4)]  # 4 known trips; an unknown count: once, warned
    assert "loop w2 has no known trip count" in caplog.text
    assert by_name["ar"].bytes == 2 * 128 * 4 and by_name["ar"].flops == 0  # -done is not counted again
    assert by_name["of"].bytes == 2 * 128 * 4  # control-predecessors are no operands

    h100 = _roofline.TARGETS["h100"]
    totals = _roofline.bound(found, h100, "bf16")
    assert totals["kernels"] == 13  # 9 launches + 4 loop trips
    moved = sum(k.bytes * k.launches for k in found)
    assert totals["gb_per_step"] == pytest.approx(moved / 1e9)
    assert totals["bound_ms"] == pytest.approx(1e3 * moved / h100.memory_bandwidth)  # all memory-bound
    assert totals["memory_bound"] == 1.0
    times = _roofline.kernel_times(found, h100, "bf16")
    assert times["f"] == pytest.approx(5e9 * 2 * 128 * 4 / h100.memory_bandwidth)  # summed per kernel name
    with pytest.raises(ValueError, match="ENTRY"):
        _roofline.kernels("HloModule empty\n")


SMALL_GN2 = [
    "model.embed=32",
    "model.init_hidden=[32]",
    "model.layers=1",
    "model.heads=2",
    "model.ff=64",
    "model.out=16",
    "model.head_hidden=[16]",  # the fused vertex kernel's tiles: powers of two >= 16
]


def test_gn2_bounds_for_an_h100_without_a_gpu(tmp_path):
    out = tmp_path / "roofline"
    args = ["--batch", "64", "--tracks", "16", "--bucket", "8", "--out", str(out)]
    variants = ["--attention", "cudnn", "--vary", "model.vertex_kernel=xla,pallas"]
    done = run_cli("bench", "roofline", "gn2", *SMALL_GN2, *variants, *args, devices=1, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((out / "roofline.json").read_text())
    assert record["target"]["description"] == "NVIDIA H100 80GB HBM3"
    assert record["command"].startswith("smilejax bench roofline gn2")
    rows = {(r["attention"], r["vertex_kernel"], r["tracks"]): r for r in record["rows"]}
    assert len(rows) == 4 and all(r["bound_ms"] > 0 and r["kernels"] > 10 for r in rows.values())
    for tracks in (8, 16):
        xla, fused = rows[("cudnn", "xla", tracks)], rows[("cudnn", "pallas", tracks)]
        # the fused pair kernel never stores the [B, T, T, width] activations
        assert fused["gb_per_step"] < xla["gb_per_step"]
        assert fused["vs_first"] == pytest.approx(xla["bound_ms"] / fused["bound_ms"])
    for kernel in ("xla", "pallas"):  # a bucket moves less than the padded length
        assert rows[("cudnn", kernel, 8)]["bound_ms"] < rows[("cudnn", kernel, 16)]["bound_ms"]
    first = rows[("cudnn", "xla", 16)]
    assert first["vs_first"] == 1.0 and first["model_tflop"] > 0
    assert first["samples_per_s_bound"] == pytest.approx(64 / (first["bound_ms"] / 1e3))
    assert "| target | attention | vertex_kernel | tracks |" in (out / "roofline.md").read_text()
    assert (out / "roofline.png").read_bytes()[:4] == b"\x89PNG"

    # GPU-only kernels compiled for the H100: cuDNN's fused attention, the Pallas/Triton pair kernel
    cudnn = json.loads((out / "roofline-gn2-cudnn-pallas-16.json").read_text())
    categories = {r["category"] for r in cudnn["by_category"]}
    assert "attention (fused)" in categories and any("triton" in c for c in categories)
    scopes = {(r["scope"], r["phase"]) for r in cudnn["by_scope"]}
    assert {("encoder/attention", "forward"), ("vertex_head", "backward"), ("optimizer", "update")} <= scopes
    assert "## By model scope" in (out / "roofline-gn2-cudnn-pallas-16.md").read_text()


def test_mlpf_bound_and_a_missing_compiler(tmp_path):
    out = tmp_path / "roofline"
    args = ["--shape", "64x4", "--attention", "chunked", "--out", str(out)]
    done = run_cli("bench", "roofline", "mlpf", "model.num_convs=1", *args, devices=1, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    [row] = json.loads((out / "roofline.json").read_text())["rows"]
    assert (row["elements"], row["events"], row["attention"]) == (64, 4, "chunked")
    assert row["gb_per_step"] > 0 and row["samples_per_s_bound"] == pytest.approx(4 / (row["bound_ms"] / 1e3))

    done = run_cli(
        "bench", "roofline", "gn2", "--out", str(out), devices=1, SMILEJAX_GPU_COMPILER=str(tmp_path / "none")
    )
    assert (
        done.returncode != 0 and "no JAX CUDA plugin in" in done.stderr and "make gpu-compiler" in done.stderr
    )


# Track counts of a tiny ftag_h5 file: 40 jets, the longest 11 tracks (8-track buckets cannot hold it).
FILE_LENGTHS = [11, 0, 1, 2, 3, 4, 5, 6, 7, 8] * 4


def ftag_lengths_file(path, lengths=FILE_LENGTHS, field="valid"):
    """An ftag_h5-shaped file whose jets hold ``lengths`` valid tracks (only what the bench reads)."""
    tracks = np.zeros((len(lengths), 40), dtype=[(field, bool), ("d0", "f4")])
    tracks[field] = np.arange(40) < np.asarray(lengths)[:, None]
    with h5py.File(path, "w") as f:
        f.create_dataset("tracks", data=tracks)
    return str(path)


def test_packed_cases_hold_the_same_jets_as_the_padded_and_bucket_rows(tmp_path):
    path = ftag_lengths_file(tmp_path / "jets.h5")
    cfg = load_config("gn2", [*SMALL_GN2, "model.max_tracks=16"])
    spec = registry.model("gn2")
    args = argparse.Namespace(
        model="gn2", overrides=[], tracks=None, bucket=[8, 12], pack=[(12, 4), (16, 2)], lengths_from=path
    )
    padded_cfg, cases = _packed_cases.cases(cfg, spec, args, 30)
    assert padded_cfg.model.max_tracks == 16
    columns = [c for c, _ in cases]
    assert [(c["tracks"], c["padding"]) for c in columns] == [
        (12, "bucket"),  # the smallest bucket that holds the drawn longest jet (11)
        (16, "padded"),
        (12, "packed"),
        (16, "packed"),
    ]
    assert columns[1]["note"] == "30 jets of jets.h5, the longest 11 tracks"
    bucket, padded, packed, packed2 = (h for _, h in cases)
    drawn = padded["valid"].sum(1)
    # 30 of the file's 40 jets, drawn without replacement: each count at most as often as in the file
    assert len(drawn) == 30 and all((drawn == n).sum() <= FILE_LENGTHS.count(n) for n in set(drawn))
    np.testing.assert_array_equal(bucket["valid"].sum(1), drawn)
    assert (padded["track_origin"][~padded["valid"]] == -1).all()  # labels follow the masks
    assert padded["tracks"].shape == (30, 16, 21) and bucket["tracks"].shape == (30, 12, 21)
    # packed: every drawn track in a slot, 30 jets, rows a multiple of 8, the model's keys
    assert set(packed) == {*padded, "segment", "jet_valid"}
    assert packed["tracks"].shape[1:] == (12, 21) and len(packed["tracks"]) % 8 == 0  # gn2's ftag_h5: 8
    assert packed["jet_valid"].shape[1] == 4 and packed2["jet_valid"].shape[1] == 2
    assert packing.examples(packed) == packing.examples(packed2) == 30
    assert packed["valid"].sum() == packed2["valid"].sum() == drawn.sum()
    fraction = _packed_cases.padding_columns(packed)
    assert fraction["rows"] == len(packed["valid"])
    assert fraction["pad_fraction"] == 1 - drawn.sum() / packed["valid"].size
    assert _packed_cases.padding_columns(padded)["pad_fraction"] == 1 - drawn.sum() / (30 * 16)

    # the same draw every time; data.pack_row_multiple read from the config with the overrides
    again = _packed_cases.cases(cfg, spec, args, 30)[1][1][1]
    np.testing.assert_array_equal(again["valid"], padded["valid"])
    thirds = argparse.Namespace(**{**vars(args), "overrides": ["data.pack_row_multiple=3"]})
    rows = len(_packed_cases.cases(cfg, spec, thirds, 30)[1][2][1]["valid"])
    assert rows == -(-packing.plan_rows(drawn, 12, 4).rows // 3) * 3 and rows % 8 != 0
    overrides = ["data.pack_row_multiple=3", "data.batch_size=8", "model.x=1", "data=1"]
    assert _packed_cases.own_data_overrides(overrides) == ["data.pack_row_multiple=3"]
    nope = argparse.Namespace(**{**vars(args), "overrides": ["data.pack_row_multiple=0"]})
    with pytest.raises(SystemExit, match=r"data\.pack_row_multiple=0: row_multiple must be at least 1"):
        _packed_cases.cases(cfg, spec, nope, 30)
    with pytest.raises(ConfigError, match="pack_row_multipl"):  # checked against gn2's own format, ftag_h5
        _packed_cases.data_config("gn2", ["data.pack_row_multipl=3"])
    # clear errors
    too_small = argparse.Namespace(**{**vars(args), "pack": [(10, 4)]})
    with pytest.raises(SystemExit, match="longest jet has 11 tracks, more than 10 slots"):
        _packed_cases.cases(cfg, spec, too_small, 30)
    with pytest.raises(SystemExit, match="more jets than --lengths-from"):
        _packed_cases.cases(cfg, spec, args, 41)
    short = argparse.Namespace(**{**vars(args), "tracks": 8, "bucket": []})
    with pytest.raises(SystemExit, match="more than the padded length 8"):
        _packed_cases.cases(cfg, spec, short, 30)
    no_valid = ftag_lengths_file(tmp_path / "other.h5", field="mask")
    with pytest.raises(SystemExit, match="not an ftag_h5 file"):
        _packed_cases.cases(cfg, spec, argparse.Namespace(**{**vars(args), "lengths_from": no_valid}), 30)
    with pytest.raises(argparse.ArgumentTypeError, match="SLOTS:JETS"):
        _packed_cases.pack_sizes("64x16")
    assert _packed_cases.pack_sizes("48:12, 64:16") == [(48, 12), (64, 16)]


def test_a_packed_row_of_a_files_jets_bound_for_an_h100(tmp_path):
    out = tmp_path / "roofline"
    path = ftag_lengths_file(tmp_path / "jets.h5")
    args = ["model.max_tracks=16", "data.pack_row_multiple=3", "--batch", "32", "--lengths-from", path]
    args += ["--pack", "16:4"]
    args += ["--attention", "math", "--out", str(out)]
    done = run_cli("bench", "roofline", "gn2", *SMALL_GN2, *args, devices=1, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    padded, packed = json.loads((out / "roofline.json").read_text())["rows"]
    assert (padded["padding"], padded["tracks"], packed["padding"], packed["tracks"]) == (
        "padded",
        16,
        "packed",
        16,
    )
    # the same 32 jets: jets/s count jets, not the packed rows (a multiple of the override's 3)
    drawn = _packed_cases.draw(np.array(FILE_LENGTHS), 32, path)
    assert packed["rows"] == packing.plan_rows(drawn, 16, 4, 3).rows and packed["rows"] % 3 == 0
    assert packed["rows"] < 32 and packed["jets_per_row"] == 4
    for row in (padded, packed):
        assert row["samples_per_s_bound"] == pytest.approx(32 / (row["bound_ms"] / 1e3))
    assert packed["pad_fraction"] < padded["pad_fraction"] and packed["gb_per_step"] < padded["gb_per_step"]
    assert padded["note"] == "32 jets of jets.h5, the longest 11 tracks"
    assert "| jets_per_row | rows | pad_fraction |" in (out / "roofline.md").read_text()
    assert (out / "roofline-gn2-math-packed16x4.md").exists()
