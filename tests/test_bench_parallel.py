"""`smilejax bench parallel`: strategies on 8 CPU devices, what their collectives and memory look like, the
scaling model, bad requests, and the same study under srun with two processes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from smilejax import cli
from smilejax.bench import _scaling_model
from smilejax.bench._scaling_model import Network
from smilejax.xla import hlo as hlo_text
from smilejax.xla import hlo_stats as _hlo_stats
from smilejax.xla.hlo_stats import Collective
from tests.conftest import ROOT, cli_env, slurm_env, smilejax_cmd

# A GN2 of a few thousand parameters, fp32 so strategies agree to rounding, jet loss only (a plain mean
# over jets: shard_map's per-device mean equals the global one), a constant rate so the steps move it.
TINY = [
    "model.embed=32",
    "model.ff=64",
    "model.out=16",
    "model.layers=1",
    "model.heads=2",
    "model.init_hidden=[32]",
    "model.head_hidden=[16]",
    "model.max_tracks=8",
    'model.aux_tasks="off"',
    "train.precision=fp32",
    "optimizer.schedule=constant",
    "optimizer.lr=1e-2",
]
SHORT = ["--steps", "2", "--warmup", "1", "--per-device-batch", "4"]


def bench(out, *args: str, overrides: list[str] = TINY) -> int:
    return cli.main(["bench", "parallel", "gn2", *overrides, "--out", str(out), *args])


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("parallel")
    strategies = "dp-jit,dp-shardmap,fsdp,tensor"
    predict = ["--model-batch", "1000", "--mfu", "0.07"]
    rc = bench(out, "--strategies", strategies, "--devices", "1,8", *predict, *SHORT)
    assert rc == 0
    measured = json.loads((out / "parallel.json").read_text())
    model = json.loads((out / "parallel_scaling_model.json").read_text())
    return out, measured, model, {(r["strategy"], r["devices"]): r for r in measured["rows"]}


def test_study_writes_table_json_and_plots(study):
    out, measured, _, cells = study
    assert set(cells) == {
        ("dp-jit", 1),
        ("dp-shardmap", 1),
        ("fsdp", 1),
        ("dp-jit", 8),
        ("dp-shardmap", 8),
        ("fsdp", 8),
        ("tensor", 8),
    }
    assert measured["skipped"] == ["tensor@1"]  # tensor=2 cannot run on one device
    assert measured["machine"]["device_count"] == 8 and measured["steps"] == 2
    assert cells["fsdp", 8]["mesh"] == "data=1 × fsdp=8 × tensor=1"
    assert cells["tensor", 8]["mesh"] == "data=4 × fsdp=1 × tensor=2"
    for (_, n), row in cells.items():
        assert row["global_batch"] == 4 * n and row["processes"] == 1
        assert row["samples_per_s"] == pytest.approx(row["global_batch"] / (row["step_ms"] / 1e3))
        assert row["mem_MiB"] > 0 and row["compile_s"] > 0
    assert cells["dp-jit", 1]["efficiency"] == pytest.approx(1.0)
    assert cells["tensor", 8]["baseline"] == "dp-jit@1"
    table = (out / "parallel.md").read_text()
    assert "| strategy | devices | processes | mesh |" in table
    assert sum(line.startswith("| dp-shardmap |") for line in table.splitlines()) == 2
    for name in ("parallel.png", "parallel_scaling_model.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_strategies_agree_on_the_loss(study):
    _, _, _, cells = study
    for n in (1, 8):
        losses = {s: r["loss"] for (s, d), r in cells.items() if d == n}
        reference = losses["dp-jit"]
        for strategy, loss in losses.items():
            assert loss == pytest.approx(reference, rel=1e-5), (strategy, n, losses)
            assert cells[strategy, n]["loss_rel_diff"] < 1e-5
    assert cells["dp-jit", 8]["loss"] != pytest.approx(
        cells["dp-jit", 8]["loss_first"], rel=1e-4
    )  # it trained


def test_collectives_and_memory_follow_the_strategy(study):
    _, _, _, cells = study
    assert cells["dp-jit", 1]["collectives"] == 0 and cells["dp-jit", 1]["comm_bytes"] == 0
    dp, sm, fsdp, tp = (cells[s, 8] for s in ("dp-jit", "dp-shardmap", "fsdp", "tensor"))
    # Data parallelism all-reduces the fp32 gradients of the trained parameters (here the jet path only:
    # the unused origin / vertex heads get no gradient) plus a few scalars; both forms move the same.
    assert {op["kind"] for op in dp["ops"]} == {"all-reduce"}
    assert 0.5 * 4 * dp["param_count"] < dp["all-reduce/bytes"] < 4 * dp["param_count"]
    assert abs(sm["all-reduce/bytes"] - dp["all-reduce/bytes"]) <= 64
    assert dp["wire_bytes"] == pytest.approx(2 * 7 / 8 * dp["comm_bytes"], rel=1e-6)
    # FSDP gathers parameters and keeps an eighth of parameters and Adam moments per device.
    assert fsdp["all-gather/count"] > 0
    assert fsdp["argument_bytes"] < dp["argument_bytes"] / 2
    # Tensor parallelism talks inside pairs of devices and reduces gradients over the data axis (4).
    assert {(op["group_size"], tuple(op["axes"])) for op in tp["ops"]} >= {(2, ("tensor",)), (4, ("data",))}
    assert {tuple(op["axes"]) for op in dp["ops"]} == {("data",)}
    assert {tuple(op["axes"]) for op in fsdp["ops"]} <= {("fsdp",)}


def test_scaling_model_predicts_every_node_count(study):
    out, _, model, _ = study
    rows = model["rows"]
    assumptions = model["assumptions"]
    assert assumptions["per_gpu_batch"] == 1000 and assumptions["network"]["nic_gbs"] == 25.0
    # CPU: compute time from the step's FLOPs and the stated utilisation, labelled an assumption
    assert "FLOPs per device" in assumptions["t_compute_source"]
    assert "MFU 0.07, both assumed" in assumptions["t_compute_source"]
    notes = (out / "parallel_scaling_model.md").read_text().split("\n|")[-1]  # under the table
    assert "Predicted, not measured" in notes and "MFU 0.07, both assumed" in notes
    assert "Network (assumed): 4 GPUs per node, 25 GB/s NIC per GPU" in notes
    assert "0 of communication hidden" in notes and "collectives of the 8-device cell" in notes
    for strategy in ("dp-jit", "dp-shardmap", "fsdp", "tensor"):
        mine = [r for r in rows if r["strategy"] == strategy]
        assert [r["nodes"] for r in mine] == [1, 2, 4, 8, 16, 32, 64]
        assert mine[0]["eff_vs_1node"] == pytest.approx(1.0)
        effs = [r["eff_vs_1node"] for r in mine]
        assert effs == sorted(effs, reverse=True) and effs[-1] < 1
        for r in mine:
            assert r["samples_per_s"] == pytest.approx(r["gpus"] * 1000 / (r["t_step_ms"] / 1e3))


def test_scaling_model_reruns_on_saved_results_with_other_assumptions(study, tmp_path):
    out, _, _, _ = study
    saved = str(out / "parallel.json")
    assumptions = ["--overlap", "1", "--model-batch", "500", "--nic-gbs", "50", "--mfu", "0.07"]
    flags = ["--from-results", saved, "--collectives-from", saved, "--out", str(tmp_path)]
    assert cli.main(["bench", "parallel", *flags, *assumptions]) == 0
    assert not (tmp_path / "parallel.json").exists()  # nothing measured, nothing overwritten
    model = json.loads((tmp_path / "parallel_scaling_model.json").read_text())
    assert saved in model["assumptions"]["collectives_source"]["fsdp"]
    assert model["assumptions"]["network"]["nic_gbs"] == 50.0 and model["assumptions"]["per_gpu_batch"] == 500
    assert all(r["eff_vs_1node"] == pytest.approx(1.0) for r in model["rows"])  # all communication hidden


def test_scaling_model_takes_a_step_measured_elsewhere_or_states_no_compute(study, tmp_path, capsys):
    out, _, _, _ = study
    saved = str(out / "parallel.json")
    # A CPU study's step says nothing of a GPU's: without a step time or an MFU there is no model.
    assert cli.main(["bench", "parallel", "--from-results", saved, "--out", str(tmp_path)]) == 2
    assert "--step-ms and --step-batch" in capsys.readouterr().err
    assert not (tmp_path / "parallel_scaling_model.json").exists()
    # A GPU step measured elsewhere (here 12.86 ms for 4000 jets), scaled to 1000 jets per GPU.
    given = ["--step-ms", "12.86", "--step-batch", "4000", "--model-batch", "1000"]
    assert cli.main(["bench", "parallel", "--from-results", saved, *given, "--out", str(tmp_path)]) == 0
    model = json.loads((tmp_path / "parallel_scaling_model.json").read_text())
    assert all(r["t_compute_ms"] == pytest.approx(12.86 / 4) for r in model["rows"])
    source = model["assumptions"]["t_compute_source"]
    assert source.startswith("given: 12.86 ms per step at 4000 per GPU") and "proportional" in source
    assert source in (tmp_path / "parallel_scaling_model.md").read_text()
    # The step time and its batch go together.
    assert cli.main(["bench", "parallel", "--from-results", saved, "--step-ms", "12.86"]) == 2
    assert "--step-ms and --step-batch go together" in capsys.readouterr().err


def test_shard_map_mean_of_per_device_masked_means_is_reported(tmp_path, caplog):
    # With GN2's track and vertex losses (means over each device's valid tracks and pairs), shard_map's
    # average of per-device losses is not the global-batch loss: the study must say so and fail.
    overrides = [o for o in TINY if not o.startswith("model.aux_tasks")]
    rc = bench(tmp_path, "--strategies", "dp-jit,dp-shardmap", "--devices", "2", *SHORT, overrides=overrides)
    assert rc == 1
    assert "losses disagree: dp-shardmap on 2 devices" in caplog.text
    assert "per-device counts" in caplog.text
    rows = json.loads((tmp_path / "parallel.json").read_text())["rows"]  # results are still written
    assert rows[1]["loss_rel_diff"] > 1e-4


def test_bad_requests_fail_clearly(tmp_path, capsys):
    assert bench(tmp_path, "--strategies", "dp-jit,pipeline") == 2
    err = capsys.readouterr().err
    assert "unknown strategy 'pipeline'" in err and "dp-jit, dp-shardmap, fsdp, tensor" in err
    assert bench(tmp_path, "--strategies", "dp-jt") == 2
    assert "did you mean 'dp-jit'?" in capsys.readouterr().err
    assert bench(tmp_path, "--devices", "1,16") == 2
    err = capsys.readouterr().err
    assert "asks for 16 devices, but only 8 devices" in err and "xla_force_host_platform_device_count" in err
    assert bench(tmp_path, "--strategies", "tensor", "--devices", "1") == 2
    assert "nothing to measure" in capsys.readouterr().err
    assert bench(tmp_path, "--global-batch", "12", "--devices", "1,8") == 2
    assert "--global-batch 12 does not split over the 8 batch-sharded devices" in capsys.readouterr().err
    assert bench(tmp_path, "--overlap", "1.5") == 2
    assert "--overlap" in capsys.readouterr().err
    assert not (tmp_path / "parallel.json").exists()


def test_unknown_model_key_names_it(tmp_path, capsys):
    assert bench(tmp_path, overrides=["model.layerz=2"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key model.'layerz'" in err and "'layers'" in err


def test_bench_never_imports_grain():
    # GPU benchmark machines have no Grain: config, model, synthetic data and measurement must not need it.
    code = (
        "import sys\n"
        "from smilejax import registry\n"
        "from smilejax.bench import parallel, _parallel_measure, _synthetic, _target\n"
        "cfg = _target.load_config('gn2')\n"
        "_synthetic.batch(registry.model(cfg.model.name), cfg.model, 2, seed=0)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('grain', 'h5py', 'orbax')))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=cli_env(1), cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]"


# ---------------------------------------------------------------- pure parts

HLO = """\
HloModule jit_step, is_scheduled=true, entry_computation_layout={()->()}, num_partitions=8

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %sum = f32[] add(%x, %y)
}

%async_rs (p: f32[64,16]) -> f32[8,16] {
  %p = f32[64,16]{1,0} parameter(0)
  ROOT %reduce-scatter.1 = f32[8,16]{1,0} reduce-scatter(%p), channel_id=3, replica_groups={{0,1,2,3,4,5,6,7}}, dimensions={0}, to_apply=%add
}

ENTRY %main (grads: f32[256], bias: bf16[32], shard: f32[4,16], big: f32[64,16]) -> f32[4,16] {
  %grads = f32[256]{0} parameter(0)
  %bias = bf16[32]{0} parameter(1)
  %shard = f32[4,16]{1,0} parameter(2)
  %big = f32[64,16]{1,0} parameter(3)
  %all-reduce.7 = (f32[256]{0}, /*index=1*/bf16[32]{0}) all-reduce(%grads, %bias), channel_id=1, replica_groups=mesh['data'=4,'fsdp'=1,'tensor'=2] {'data'}, use_global_device_ids=true, to_apply=%add
  %all-gather-start = (f32[4,16]{1,0}, f32[8,16]{1,0}) all-gather-start(%shard), channel_id=2, replica_groups=[4,2]<=[8], dimensions={0}
  %all-gather-done = f32[8,16]{1,0} all-gather-done(%all-gather-start)
  %rs-start = ((f32[64,16]{1,0}), f32[8,16]{1,0}) async-start(%big), calls=%async_rs
  %rs-done = f32[8,16]{1,0} async-done(%rs-start)
  ROOT %collective-permute = f32[4,16]{1,0} collective-permute(%shard), channel_id=4, source_target_pairs={{0,1},{1,0}}
}
"""  # noqa: E501


def test_hlo_collectives_count_operand_bytes_once():
    ops = _hlo_stats.collectives(HLO, {"data": 4, "fsdp": 1, "tensor": 2})
    assert [(op.kind, op.operand_bytes, op.group_size, op.axes) for op in ops] == [
        ("reduce-scatter", 64 * 16 * 4, 8, ("data", "tensor")),  # in the async computation, counted once
        ("all-reduce", 256 * 4 + 32 * 2, 4, ("data",)),  # a combined tuple; 'data' is 4 of the 8 devices
        ("all-gather", 4 * 16 * 4, 2, ("tensor",)),  # the -start half; -done is not counted again
        ("collective-permute", 4 * 16 * 4, 2, ("tensor",)),  # partitions 0 -> 1: a tensor pair
    ]
    assert _hlo_stats.collectives(HLO)[1].axes == ()  # no mesh given: axes unknown
    summary = _hlo_stats.summarize(ops)
    assert summary["collectives"] == 4 and summary["all-reduce/count"] == 1
    assert summary["comm_bytes"] == 4096 + 1088 + 256 + 256
    # ring: reduce-scatter 7/8 of 4096, all-reduce 2·3/4 of 1088, all-gather 1/2 of the gathered 512
    assert summary["wire_bytes"] == 3584 + 1632 + 256 + 256


def test_hlo_group_sizes_in_every_spelling():
    assert _hlo_stats.group_size("replica_groups={{0,1,2},{3,4,5}}, x", 8) == 3
    assert _hlo_stats.group_size("replica_groups=[2,4]<=[8], x", 8) == 4
    assert _hlo_stats.group_size("replica_groups=mesh['data'=4,'fsdp'=2] {'data','fsdp'}", 8) == 8
    assert _hlo_stats.group_size("replica_groups={}, to_apply=%add", 8) == 8
    assert _hlo_stats.first_group("replica_groups=[2,4]<=[4,2]T(1,0), x", 8) == [0, 2, 4, 6]
    assert _hlo_stats.first_group("replica_groups=mesh['axis_0'=4,'axis_1'=2] {'axis_1'}", 8) == [0, 1]
    assert hlo_text.shape_bytes("(f32[2,3]{1,0}, bf16[4], pred[8], token[])") == 24 + 8 + 8


def test_scaling_model_closed_form():
    net = Network(efficiency=1.0, alpha_intra_us=0.0, alpha_inter_us=0.0)  # 4 GPUs, NIC 25, NVLink 100 GB/s
    grads = Collective("all-reduce", 10**8, 8)
    intra = 2 * 3 / 4 * 1e8 / 100e9  # ring over the node's 4 GPUs
    assert _scaling_model.comm_time([grads], 1, net) == pytest.approx(intra)
    # 16 nodes: each GPU's NIC carries a quarter of the 2·15/16 · S that crosses between nodes
    assert _scaling_model.comm_time([grads], 16, net) == pytest.approx(intra + 2 * 15 / 16 * 1e8 / (4 * 25e9))
    tensor_op = Collective("all-reduce", 10**8, 2, ("tensor",))  # a tensor pair stays on NVLink
    assert _scaling_model.comm_time([tensor_op], 64, net) == pytest.approx(1e8 / 100e9)
    data_pair = Collective("all-reduce", 10**8, 2, ("data",))  # a data-axis pair spans the nodes
    assert _scaling_model.comm_time([data_pair], 64, net) > 2 * 1e8 / (4 * 25e9)
    latency = Network(alpha_intra_us=2.0, alpha_inter_us=5.0)
    assert _scaling_model.comm_time([Collective("all-reduce", 0, 8)], 16, latency) == pytest.approx(
        (2 * 3 * 2.0 + 2 * 15 * 5.0) * 1e-6
    )
    rows = _scaling_model.predict([grads], t_compute=0.01, per_gpu_batch=100, net=net, nodes=(1, 16))
    assert rows[1]["eff_vs_1node"] == pytest.approx((0.01 + intra) / (0.01 + rows[1]["t_comm_ms"] / 1e3))
    assert rows[1]["samples_per_s"] == pytest.approx(64 * 100 / (rows[1]["t_step_ms"] / 1e3))
    hidden = Network(overlap=1.0)
    assert _scaling_model.predict([grads], t_compute=0.01, per_gpu_batch=1, net=hidden)[-1][
        "eff_vs_1node"
    ] == pytest.approx(1.0)


def test_strategy_overrides_are_mesh_shapes():
    from smilejax.bench._target import load_config
    from smilejax.bench.parallel import strategy_overrides

    assert strategy_overrides("fsdp", 8, 2) == [
        "mesh.data=1",
        "mesh.fsdp=8",
        "mesh.tensor=1",
        "train.parallel=jit",
    ]
    assert strategy_overrides("tensor", 8, 2)[:3] == ["mesh.data=4", "mesh.fsdp=1", "mesh.tensor=2"]
    assert strategy_overrides("tensor", 1, 2) is None
    cfg = load_config("gn2", strategy_overrides("dp-shardmap", 4, 2))  # the config the bench builds
    assert (cfg.mesh.data, cfg.train.parallel) == (4, "shard_map")


# ---------------------------------------------------------------- several processes


@pytest.mark.slurm
def test_srun_two_processes_measure_the_cross_process_path(slurm_conf, tmp_path):
    cmd = [
        "srun",
        "--ntasks=2",
        "--nodes=1",
        "--kill-on-bad-exit=1",
        "--time=8",
        *smilejax_cmd("bench", "parallel", "gn2", *TINY),
        "--strategies",
        "dp-jit,dp-shardmap",
        "--devices",
        "2,4",
        "--out",
        str(tmp_path),
        *SHORT,
    ]
    proc = subprocess.run(
        cmd, env=slurm_env(slurm_conf), cwd=ROOT, capture_output=True, text=True, timeout=480
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    result = json.loads((tmp_path / "parallel.json").read_text())
    assert result["machine"]["process_count"] == 2 and result["machine"]["device_count"] == 4
    assert result["command"].startswith("smilejax bench parallel gn2")
    rows = {(r["strategy"], r["devices"]): r for r in result["rows"]}
    assert set(rows) == {("dp-jit", 2), ("dp-shardmap", 2), ("dp-jit", 4), ("dp-shardmap", 4)}
    assert all(r["processes"] == 2 for r in rows.values())
    # On 2 devices each process owns one: the gradient all-reduce crosses the process boundary.
    assert {op["group_size"] for op in rows["dp-jit", 2]["ops"]} == {2}
    for n in (2, 4):
        assert rows["dp-shardmap", n]["loss"] == pytest.approx(rows["dp-jit", n]["loss"], rel=1e-5)
    assert proc.stdout.count("| strategy | devices |") == 1  # only process 0 writes and prints
