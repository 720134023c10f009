"""``smilejax bench train`` and ``smilejax bench input`` end to end on CPU at tiny sizes (no torch)."""

from __future__ import annotations

import json

import pytest
from smilejax.models import gn2

from smilejax import host
from tests.conftest import run_cli

SMALL_GN2 = [
    "model.embed=16",
    "model.init_hidden=[16]",
    "model.layers=1",
    "model.heads=2",
    "model.ff=32",
    "model.out=8",
    "model.head_hidden=[8]",
]
PNG = b"\x89PNG\r\n\x1a\n"


def test_bench_train_small_gn2_padded_and_bucketed(tmp_path):
    out = tmp_path / "bench"
    args = [
        "--batch", "16", "--tracks", "10", "--bucket", "6", "--steps", "2", "--repeats", "1", "--profile", "2"
    ]  # fmt: skip
    done = run_cli("bench", "train", "gn2", *SMALL_GN2, *args, "--out", str(out), devices=2)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((out / "train.json").read_text())
    assert record["study"] == "train" and record["model"] == "gn2" and record["batch"] == 16
    assert record["command"].startswith("smilejax bench train gn2")
    assert record["machine"]["device_count"] == 2 and record["params"] > 0
    jax_rows = {r["tracks"]: r for r in record["rows"] if r["impl"] == "jax"}
    assert sorted(jax_rows) == [6, 10]
    assert jax_rows[10]["padding"] == "padded" and jax_rows[6]["padding"] == "bucket"
    for r in jax_rows.values():
        assert r["ms_per_step"] > 0
        assert r["samples_per_s"] == pytest.approx(16 / (r["ms_per_step"] / 1e3))
        assert r["vs_torch_eager"] is None and r["mfu"] is None  # no torch; CPUs have no peak
    assert jax_rows[10]["vs_padded"] == 1.0
    speedup = jax_rows[6]["samples_per_s"] / jax_rows[10]["samples_per_s"]
    assert jax_rows[6]["vs_padded"] == pytest.approx(speedup)
    torch_rows = [r for r in record["rows"] if r["impl"] == "torch"]
    assert [r["mode"] for r in torch_rows] == ["eager", "compile"]
    assert all(r["note"] == "skipped: no --torch-python" for r in torch_rows)
    table = (out / "train.md").read_text()
    assert "| impl | mode | attention | tracks |" in table and "skipped: no --torch-python" in table
    assert (out / "train.png").read_bytes()[:8] == PNG
    # --profile: where each row's device time goes, by the model's named scopes, and the trace itself
    for tracks in (6, 10):
        summary = json.loads((out / f"profile-gn2-math-{tracks}.json").read_text())
        assert summary["devices"] == 2  # times are per device: both ran the step
        scopes = {(r["scope"], r["phase"]) for r in summary["by_scope"]}
        expected = {"init_net", "encoder", "encoder/attention", "encoder/feed_forward", "vertex_head", "loss"}
        assert {(s, p) for s in expected for p in ("forward", "backward")} <= scopes
        assert ("optimizer", "update") in scopes
        assert sum(r["share"] for r in summary["by_category"]) == pytest.approx(1.0)
        assert summary["by_category"][0]["ms_per_step"] > 0 and "matmul" in {
            r["category"] for r in summary["by_category"]
        }
        assert "## By model scope" in (out / f"profile-gn2-math-{tracks}.md").read_text()
        assert (out / f"profile-gn2-math-{tracks}.png").read_bytes()[:8] == PNG
        assert list((out / f"profile-gn2-math-{tracks}").rglob("*.xplane.pb"))


def test_bench_train_rejects_bad_lengths_and_interpreters(tmp_path):
    done = run_cli("bench", "train", "gn2", *SMALL_GN2, "--tracks", "10", "--bucket", "12", devices=1)
    assert done.returncode != 0 and "--bucket [12]" in done.stderr and "1..10" in done.stderr
    missing = tmp_path / "no-python"
    done = run_cli(
        "bench", "train", "gn2", *SMALL_GN2, "--batch", "4", "--tracks", "4", "--steps", "1",
        "--repeats", "1", "--torch-python", str(missing), "--out", str(tmp_path), devices=1,
    )  # fmt: skip
    assert done.returncode != 0 and f"--torch-python {missing}: no such interpreter" in done.stderr


def test_torch_peer_gets_every_gn2_hyperparameter_it_needs():
    peer = gn2.SPEC.bench
    assert peer.torch_peer.exists() and peer.length_field == "max_tracks"
    sent = peer.torch_config(gn2.GN2Config(embed=64, layers=2))
    assert sent["embed"] == 64 and sent["layers"] == 2 and sent["head_hidden"] == [128, 64, 32]
    source = peer.torch_peer.read_text()
    assert all(f'c["{key}"]' in source for key in sent), "the peer reads every key it is sent"


def test_synthetic_batches_need_the_family_label_hook():
    import dataclasses

    from smilejax.bench import _synthetic
    from smilejax.config import ConfigError

    cfg = gn2.GN2Config(max_tracks=5)
    batch = _synthetic.batch(gn2.SPEC, cfg, 4, seed=1)
    assert batch["valid"].shape == (4, 5) and batch["valid"][:, 0].all()  # at least one valid track
    assert (batch["track_origin"][~batch["valid"]] == -1).all()  # the family's labels
    again = _synthetic.batch(gn2.SPEC, cfg, 4, seed=1)
    assert all((batch[k] == again[k]).all() for k in batch)
    bare = dataclasses.replace(gn2.SPEC, synthetic_labels=None)
    with pytest.raises(ConfigError, match="synthetic_labels"):
        _synthetic.batch(bare, cfg, 4, seed=1)


def test_family_study_options_come_from_the_model_argument(tmp_path):
    """The CLI's second stage adds the options of the family's own study, for MODEL after generic
    options too; a generic family, an unknown model and ``--help`` add nothing and fail nothing."""
    import argparse

    from smilejax.bench import _target, train_step

    sub = argparse.ArgumentParser(prog="smilejax bench").add_subparsers()
    train_step.register(sub)
    parser = sub.choices["train"]
    before = {a.dest for a in parser._actions}
    for argv in (["gn2"], ["no-such-model"], ["--help"], [str(tmp_path / "none.yaml")], []):
        _target.extend_with_study(parser, argv)
    assert {a.dest for a in parser._actions} == before
    study = _target.study("mlpf")
    assert study is not None and hasattr(study, "add_arguments") and hasattr(study, "run")
    _target.extend_with_study(parser, ["--batch", "8", "--torch-python", "py", "mlpf", "--help"])
    assert {a.dest for a in parser._actions} > before
    assert _target.study("gn2") is None


def test_bench_input_synthetic_set_bucketed(tmp_path):
    out = tmp_path / "bench"
    args = ["--jets", "2000", "--threads", "1,4", "--workers", "0", "--batches", "3", "--out", str(out)]
    overrides = ["data.batch_size=200", "data.bucket_tracks=[8,16]", "data.bucket_window=4"]
    done = run_cli("bench", "input", "gn2", *overrides, *args, devices=2)
    assert done.returncode == 0, done.stderr[-3000:]
    maker = gn2.SPEC.bench.maker  # the family's synthetic maker made the set once
    assert (out / "data" / f"{maker}-2000").exists()
    record = json.loads((out / "input.json").read_text())
    assert record["study"] == "input" and record["synthetic_jets"] == 2000
    assert record["global_batch"] == 200 and record["bucket_tracks"] == [8, 16]
    rows = record["rows"]
    # more threads than the process may run on count the cores it has (2 on CI), not the threads
    cores = min(4, host.usable_cpus())
    assert [(r["threads"], r["workers"], r["cores"]) for r in rows] == [(1, 0, 1), (4, 0, cores)]
    for r in rows:
        assert r["jets_per_s"] > 0 and r["batches"] == 3 and r["processes"] == 1
        assert r["jets_per_s_per_core"] == pytest.approx(r["jets_per_s"] / r["cores"])
        assert r["est_16_cores"] == pytest.approx(16 * r["jets_per_cpu_s"])
        assert r["jets_per_cpu_s"] == pytest.approx(r["jets_per_s"] / r["cpu_util"])
        assert r["tracks_mean"] < 40 and 0 < r["padding"] < 0.75  # bucketed: below the 79% of 40 slots
    assert rows[0]["vs_first"] == 1.0
    assert (out / "input.png").read_bytes()[:8] == PNG
    assert "| threads | workers | cores |" in (out / "input.md").read_text()


def test_bench_input_names_missing_files(tmp_path):
    done = run_cli("bench", "input", "gn2", "--files", str(tmp_path / "none.h5"), devices=1)
    assert done.returncode != 0 and "none.h5: no such file" in done.stderr


def test_bench_train_gn2_sweeps_attention_implementations(tmp_path):
    out = tmp_path / "bench"
    args = ["--batch", "8", "--tracks", "6", "--steps", "1", "--repeats", "1", "--out", str(out)]
    sweep = ["model.attention_chunk=4", "--attention", "math,chunked"]
    done = run_cli("bench", "train", "gn2", *SMALL_GN2, *sweep, *args, devices=1)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [r for r in json.loads((out / "train.json").read_text())["rows"] if r["impl"] == "jax"]
    assert [(r["attention"], r["tracks"]) for r in rows] == [("math", 6), ("chunked", 6)]
    assert all(r["vs_padded"] == 1.0 and r["samples_per_s"] > 0 for r in rows)  # each its own base
    assert "| jax | jit | chunked | 6 | padded |" in (out / "train.md").read_text()

    done = run_cli("bench", "train", "gn2", *SMALL_GN2, "--attention", "flash", *args, devices=1)
    assert done.returncode != 0 and "model.attention=flash: model: attention: unknown" in done.stderr

    # cuDNN on a CPU fails; its row says why, the other implementation is still timed, the exit is 1
    done = run_cli("bench", "train", "gn2", *SMALL_GN2, "--attention", "math,cudnn", *args, devices=1)
    assert done.returncode == 1, done.stderr[-3000:]
    rows = [r for r in json.loads((out / "train.json").read_text())["rows"] if r["impl"] == "jax"]
    assert rows[0]["attention"] == "math" and rows[0]["samples_per_s"] > 0
    assert rows[1]["attention"] == "cudnn" and "needs an NVIDIA GPU" in rows[1]["note"]


def test_bench_train_gn2_varies_config_fields(tmp_path):
    """``--vary``: every combination with ``--attention``, a column per field, ratios within each."""
    out = tmp_path / "bench"
    args = [
        "--batch",
        "8",
        "--tracks",
        "6",
        "--bucket",
        "4",
        "--steps",
        "1",
        "--repeats",
        "1",
        "--out",
        str(out),
    ]
    small = [*SMALL_GN2, "model.head_hidden=[16]"]  # the fused kernel's tiles: powers of two >= 16
    vary = ["--attention", "math", "--vary", "model.vertex_kernel=xla,pallas"]
    done = run_cli("bench", "train", "gn2", *small, *vary, *args, devices=1)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [r for r in json.loads((out / "train.json").read_text())["rows"] if r["impl"] == "jax"]
    assert [(r["attention"], r["vertex_kernel"], r["tracks"]) for r in rows] == [
        ("math", "xla", 4), ("math", "xla", 6), ("math", "pallas", 4), ("math", "pallas", 6)
    ]  # fmt: skip
    assert [r["vs_padded"] for r in rows if r["tracks"] == 6] == [1.0, 1.0]  # each against its own padded row
    assert "| impl | mode | attention | vertex_kernel | tracks |" in (out / "train.md").read_text()
    assert "| jax | jit | math | pallas | 6 | padded |" in (out / "train.md").read_text()

    done = run_cli(
        "bench", "train", "gn2", *SMALL_GN2, "--vary", "model.vertex_kernel=pallas", *args, devices=1
    )
    assert done.returncode != 0 and "model.vertex_kernel=pallas" in done.stderr
    assert "powers of two" in done.stderr  # head_hidden=[8]: named before anything is compiled
    done = run_cli("bench", "train", "gn2", *SMALL_GN2, "--vary", "model.remat", *args, devices=1)
    assert done.returncode != 0 and "expected KEY=VALUE1,VALUE2" in done.stderr
    precision = ["--vary", "train.precision=fp32,bf16"]
    done = run_cli("bench", "train", "gn2", *SMALL_GN2, *precision, *args, devices=1)
    assert done.returncode != 0 and "train.precision: the study sets it from --precision" in done.stderr


def test_only_the_first_attention_program_reports_the_device_peak(monkeypatch):
    import argparse

    from smilejax.bench import _train_jax
    from smilejax.bench._target import load_config

    monkeypatch.setattr(_train_jax, "_peak_memory_gb", lambda: 1.5)  # CPUs report none
    cfg = load_config("gn2", [*SMALL_GN2, "model.attention_chunk=4"])
    args = argparse.Namespace(
        batch=8,
        tracks=6,
        bucket=[],
        steps=1,
        repeats=1,
        precision="fp32",
        attention="math,chunked",
        vary=None,
        profile=0,
    )
    measured, failed = _train_jax.measure_variants(cfg, args)
    assert not failed
    # the device's peak is a running maximum: a later program would show the largest so far
    assert [(r["attention"], r["peak_mem_gb"]) for m in measured for r in m.rows] == [
        ("math", 1.5),
        ("chunked", None),
    ]


def test_vary_values_keep_commas_inside_brackets():
    import argparse

    from smilejax.bench import _train_jax
    from smilejax.bench._target import load_config

    cfg = load_config("gn2", SMALL_GN2)
    vary = ["model.head_hidden=[16,16],[32]", "model.remat=false,true"]
    args = argparse.Namespace(attention=None, vary=vary)
    combos = _train_jax.variants(cfg, args)
    assert [labels for _, labels in combos] == [
        {"head_hidden": [16, 16], "remat": False},
        {"head_hidden": [16, 16], "remat": True},
        {"head_hidden": [32], "remat": False},
        {"head_hidden": [32], "remat": True},
    ]
    assert combos[2][0].model.head_hidden == [32]
    assert _train_jax.varied_columns(args) == ["head_hidden", "remat"]
    assert _train_jax.row_label(combos[1][0], combos[1][1], 24) == "gn2-math-[16, 16]-True-24"
