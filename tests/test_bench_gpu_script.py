"""``launch/bench_gpu.sh`` runs every part end to end (tiny settings, CPU), so the GPU session's one
prepared script does not rot between the rare sessions that have a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from smilejax import metrics
from tests.conftest import ROOT, cli_env

SMALL_GN2 = "model.embed=16 model.init_hidden=[16] model.layers=1 model.heads=2 model.ff=32 model.out=8"


def run_parts(out: Path, env: dict, *parts: str) -> subprocess.CompletedProcess:
    """``launch/bench_gpu.sh OUT PARTS``, asserted to succeed."""
    done = subprocess.run(
        ["bash", "launch/bench_gpu.sh", str(out), *parts],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    return done


def test_bench_gpu_script_runs_every_part(tmp_path):
    """The four parts that time steps, the loop and input (convergence, the slowest on CPUs, is tested
    alone below, each test within the suite's timeout)."""
    env = cli_env(
        1,
        PY=sys.executable,
        TORCH_PY="",  # GN2's PyTorch peer needs torch, which only the particleflow env has
        # head_hidden: the fused vertex kernel's tiles are powers of two >= 16
        GN2_OVERRIDES=f"{SMALL_GN2} model.head_hidden=[16] model.attention_chunk=8",
        GN2_ATTENTION="math,chunked",
        GN2_BUCKETS="6",
        GN2_BATCH="16",
        MLPF_OVERRIDES="model.num_convs=1",
        MLPF_SHAPES="32x4",
        MLPF_ATTENTION="chunked",
        STEPS="2",
        REPEATS="1",
        LOOP_STEPS="4",
        LOOP_THREADS="2",
        LOOP_OVERRIDES="data.batch_size=64 logging.progress=false",
        INPUT_JETS="20000",
        INPUT_THREADS="1",
        INPUT_WORKERS="0",
        INPUT_BATCHES="3",
    )
    out = tmp_path / "bench"
    done = run_parts(out, env, "gn2", "mlpf", "loop", "input")
    for part in ("gn2", "mlpf", "loop", "input"):
        assert f"=== {part}: exit 0" in done.stdout and (out / f"{part}.log").exists()

    gn2 = [r for r in json.loads((out / "gn2" / "train.json").read_text())["rows"] if r["impl"] == "jax"]
    combos = {(a, v, t) for a in ("math", "chunked") for v in ("xla", "pallas") for t in (6, 40)}
    assert {(r["attention"], r["vertex_kernel"], r["tracks"]) for r in gn2} == combos
    # every JAX row's device time is traced and broken down (default PROFILE_STEPS)
    profiles = {p.name for part in ("gn2", "mlpf") for p in (out / part).glob("profile-*.md")}
    gn2_profiles = {f"profile-gn2-{a}-{v}-{t}.md" for a, v, t in combos}
    assert profiles == gn2_profiles | {"profile-mlpf-chunked-32x4.md"}
    mlpf = json.loads((out / "mlpf" / "train.json").read_text())["rows"]
    assert {r["impl"] for r in mlpf if r.get("events_per_s")} == {"jax", "torch-eager", "torch-compile"}
    # the loop trains with the settings of the fastest bucketed row of the gn2 part, bucketed
    fastest = max((r for r in gn2 if r["padding"] == "bucket"), key=lambda r: r["samples_per_s"])
    settings = f"model.attention={fastest['attention']} model.vertex_kernel={fastest['vertex_kernel']}"
    assert f"settings: {settings}" in (out / "loop.log").read_text()
    assert [r["step"] for r in metrics.read(out / "loop" / "metrics.jsonl") if "loss" in r][-1] == 4
    # jets of BUCKET_WINDOW (16) batches sorted by length, in the loop and in the input part
    assert "bucket_window: 16" in (out / "loop" / "config.yaml").read_text()
    assert "data.bucket_window=16" in json.loads((out / "input" / "input.json").read_text())["command"]
    assert json.loads((out / "input" / "input.json").read_text())["rows"][0]["jets_per_s"] > 0


def test_bench_gpu_script_convergence_part(tmp_path):
    env = cli_env(
        1,
        PY=sys.executable,
        GN2_OVERRIDES=SMALL_GN2 + " model.head_hidden=[16] model.aux_tasks=off",
        LOOP_SETTINGS="model.attention=math",  # no gn2 part ran to pick the fastest settings
        LOOP_THREADS="1",
        CONV_JETS="1000",
        CONV_VARIANTS="padded,bucketed",
        CONV_SEEDS="1",
        CONV_STEPS="2",
        CONV_EVAL_EVERY="1",
        CONV_EVAL_BATCHES="1",
        CONV_OVERRIDES="data.batch_size=32",
        CONV_TORCH_MODES="",  # the PyTorch line: tests/test_bench_convergence.py
    )
    out = tmp_path / "bench"
    done = run_parts(out, env, "convergence")
    assert "=== convergence: exit 0" in done.stdout
    assert "settings: model.attention=math" in (out / "convergence.log").read_text()
    # both variants, an evaluation after each step, on the synthetic set the part made first
    conv = json.loads((out / "convergence" / "convergence.json").read_text())
    assert [(p["variant"], p["jets"]) for p in conv["points"]] == [
        (v, j) for v in ("padded", "bucketed") for j in (0, 32, 64)
    ]
    assert (out / "convergence-data" / "train.h5").exists() and conv["mode"] == "reduced, CPU"
    assert "data.bucket_tracks=[16,24]" in " ".join(conv["variants"]["bucketed"])
