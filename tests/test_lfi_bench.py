"""The LFI benchmark's `sbi` side (its own environment, ``make reference``) and the study end to end.

The sbi environment is required: CI installs it with ``make reference``
(launch/install_sbi_reference.sh); without it these tests fail naming that command.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import yaml
from smilejax.models.lfi import bench_draws, bench_options, bench_study, sbi_peer, tasks

from smilejax.bench import _target
from tests.conftest import ROOT, run_cli


def _interpreter():
    try:
        return sbi_peer.python(None)
    except SystemExit as err:
        pytest.fail(f"{err} (tests/test_lfi_bench.py needs it: `make reference`)")


def test_sbi_peer_trains_on_1000_simulations_and_samples_each_observation(tmp_path):
    task = tasks.get("two_moons")
    theta, x = bench_study.simulate(task, 1000)
    assert theta.shape == (1000, 2) and x.shape == (1000, 2)
    again, _ = bench_study.simulate(task, 1000)
    np.testing.assert_array_equal(theta, again)  # one fixed set per task and budget
    observed = np.stack([task.observation(i) for i in (1, 2)])
    settings = sbi_peer.Settings(
        density_estimator="maf",
        hidden_features=20,
        num_transforms=2,
        max_num_epochs=15,
        num_samples=300,
        threads=1,
    )
    jobs = [sbi_peer.Job("two_moons-1000", 0, theta, x, observed)]
    result = sbi_peer.run(_interpreter(), jobs, settings, tmp_path, timeout=600)
    assert result.info["sbi"] == "0.27.0" and result.info["torch"].endswith("+cpu")
    row = result.rows[("two_moons-1000", 0)]
    assert row["train_s"] > 0 and 1 <= row["epochs"] <= 16 and np.isfinite(row["best_validation_loss"])
    draws = result.samples[("two_moons-1000", 0)]
    assert draws.shape == (2, 300, 2) and np.isfinite(draws).all()
    kept = bench_study.keep_in_support(task, draws, 200)
    assert kept.shape == (2, 200, 2)
    # a trained posterior sits near the reference's, far from the prior's spread (uniform on [-1, 1]^2)
    reference = task.reference_samples(1)
    assert np.abs(kept[0].mean(0) - reference.mean(0)).max() < 0.25


def test_sbi_peer_reports_a_failing_run(tmp_path):
    jobs = [sbi_peer.Job("bad-10", 0, np.zeros((10, 2)), np.zeros((10, 3)), np.zeros((1, 3)))]
    settings = sbi_peer.Settings(density_estimator="no-such-flow", max_num_epochs=1, num_samples=5)
    with pytest.raises(RuntimeError, match="sbi reference failed"):
        sbi_peer.run(_interpreter(), jobs, settings, tmp_path, timeout=300)


@pytest.mark.timeout(900)
def test_bench_train_npe_against_sbi_writes_the_table_and_plot(tmp_path):
    _interpreter()
    out = tmp_path / "bench"
    result = run_cli(
        "bench",
        "train",
        "npe-two-moons",
        "--tasks",
        "two_moons",
        "--budgets",
        "1000",
        "--seeds",
        "1",
        "--epochs",
        "5",
        "--posterior-samples",
        "200",
        "--observations",
        "1",
        "--sbi-max-epochs",
        "20",
        "--torch-threads",
        "1",
        "--out",
        str(out),
        timeout=900,
        SMILEJAX_SBI_REF=str(ROOT / sbi_peer.ENV_DIR),
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    record = json.loads((out / "lfi.json").read_text())
    impls = {r["impl"] for r in record["rows"]}
    assert impls == {"smilejax", "sbi"}
    for row in record["rows"]:
        assert row["task"] == "two_moons" and row["budget"] == 1000 and row["seeds"] == 1
        assert 0.4 <= row["c2st"] <= 1.0 and row["train_s"] > 0
    assert record["sbi"]["sbi"] == "0.27.0" and record["flow"]["kind"] == "nsf"
    runs = json.loads((out / "lfi-runs.json").read_text())["rows"]
    assert {r["impl"] for r in runs} == {"smilejax", "sbi"} and all(
        len(r["c2st_per_observation"]) == 1 for r in runs
    )
    assert (out / "lfi.png").stat().st_size > 1000 and "| two_moons | 1000 |" in (out / "lfi.md").read_text()


def test_bench_train_refuses_what_the_study_cannot_do():
    result = run_cli("bench", "train", "npe-two-moons", "--budgets", "5", "--no-sbi")
    assert result.returncode != 0 and "--budgets 5" in result.stderr
    result = run_cli("bench", "train", "npe-two-moons", "--tasks", "hep_resonance", "--tracks", "3")
    assert result.returncode != 0 and "--tracks" in result.stderr


@pytest.mark.parametrize(
    ("budget", "held", "steps"), [(1000, 128, 1), (10_000, 1024, 4), (100_000, 9984, 39)]
)
def test_validation_split_holds_out_a_tenth_each_example_equally(tmp_path, budget, held, steps):
    """smilejax's early-stopping split: ~10% held out (a multiple of a quarter batch), disjoint from the
    training part, repeated to whole evaluation batches with every held-out example equally often."""
    theta = np.arange(budget, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
    path = tmp_path / "sims.npz"
    np.savez(path, theta=theta, x=theta[:, :1] + 0.5)
    train, valid, eval_steps = bench_study.split_validation(path, 256, seed=3, tmp=tmp_path)
    assert eval_steps == steps
    with np.load(train) as t, np.load(valid) as v:
        t_ids, v_ids = t["theta"][:, 0].astype(int), v["theta"][:, 0].astype(int)
        np.testing.assert_array_equal(v["x"][:, 0], v["theta"][:, 0] + 0.5)  # pairs stay pairs
    assert len(v_ids) == steps * 256 and len(set(v_ids)) == held and len(t_ids) == budget - held
    assert not set(v_ids) & set(t_ids)
    assert len(set(np.bincount(v_ids, minlength=budget)[list(set(v_ids))])) == 1
    (tmp_path / "again").mkdir()
    again = bench_study.split_validation(path, 256, seed=3, tmp=tmp_path / "again")[1]
    with np.load(again) as a:
        np.testing.assert_array_equal(a["theta"][:, 0].astype(int), v_ids)  # fixed by the seed


def test_added_runs_join_the_table(tmp_path):
    rows = [
        {"task": "two_moons", "budget": 1000, "impl": "sbi", "seed": s, "c2st": c, "train_s": 10.0 + s}
        for s, c in ((0, 0.6), (1, 0.7))
    ]
    path = tmp_path / "lfi-runs.json"
    path.write_text(json.dumps({"rows": rows}))
    (table,) = bench_study.summarise(bench_study.added_rows(str(path)))
    assert table["seeds"] == 2 and abs(table["c2st"] - 0.65) < 1e-9
    assert abs(table["c2st_seed_std"] - 0.05) < 1e-9
    with pytest.raises(SystemExit, match=r"not an lfi-runs\.json"):
        bench_study.added_rows(str(tmp_path / "missing.json"))


def test_the_table_lists_per_seed_values_and_keeps_labelled_variants_apart():
    """Per seed, in seed order whatever order the rows came in: C2ST and epochs ("?" for an older row
    without them); a labelled smilejax variant (--label) is its own row, never pooled with smilejax."""
    rows = [
        {
            "task": "slcp",
            "budget": 10,
            "impl": "smilejax",
            "seed": 1,
            "c2st": 0.7,
            "train_s": 2.0,
            "epochs": 30.5,
        },
        {"task": "slcp", "budget": 10, "impl": "smilejax", "seed": 0, "c2st": 0.6, "train_s": 1.0},
        {
            "task": "slcp",
            "budget": 10,
            "impl": "smilejax",
            "variant": "maf",
            "seed": 0,
            "c2st": 0.9,
            "train_s": 3.0,
        },
    ]
    plain, labelled = bench_study.summarise(rows)
    assert plain["impl"] == "smilejax" and plain["seeds"] == 2 and abs(plain["c2st"] - 0.65) < 1e-9
    assert plain["c2st_per_seed"] == "0.600, 0.700" and plain["epochs_per_seed"] == "?, 30"
    assert labelled["impl"] == "smilejax (maf)" and labelled["seeds"] == 1 and labelled["c2st"] == 0.9
    (one,) = bench_study.per_observation([{**rows[0], "c2st_per_observation": [0.61, 0.7894]}])
    assert one["per_observation"] == "0.610, 0.789"


def test_config_for_trains_a_task_with_its_own_config_on_both_sides(tmp_path, monkeypatch):
    """--config-for TASK=CONFIG: that task's config (with the run's overrides) on smilejax's side, and
    sbi's flow built from it: one sbi subprocess per distinct flow."""
    tree = yaml.safe_load((ROOT / "models/lfi/configs/npe-two-moons.yaml").read_text())
    tree["model"]["flow"]["hidden"] = [32, 32]
    own = tmp_path / "wide.yaml"
    own.write_text(yaml.safe_dump(tree))
    cfg = _target.load_config("npe-two-moons", ["optimizer.lr=2e-3"])
    args = argparse.Namespace(config_for=f"gaussian_linear={own}", overrides=["optimizer.lr=2e-3"])
    cfgs = bench_options.task_configs(cfg, args, ["two_moons", "gaussian_linear"])
    assert cfgs["two_moons"] is cfg and cfgs["gaussian_linear"].model.flow.hidden == [32, 32]
    assert cfgs["gaussian_linear"].optimizer.lr == 2e-3  # the run's overrides apply to it too
    for bad, match in (("slcp=" + str(own), "not among --tasks"), ("gaussian_linear", "TASK=CONFIG")):
        with pytest.raises(SystemExit, match=match):
            bench_options.task_configs(cfg, argparse.Namespace(config_for=bad), ["gaussian_linear"])

    calls = []

    def fake_run(interpreter, jobs, settings, tmp):
        calls.append((settings.hidden_features, sorted(j.key for j in jobs)))
        dims = {j.key: tasks.get(j.key.rsplit("-", 1)[0]).reference_samples(1).shape[1] for j in jobs}
        draws = {(j.key, j.seed): np.zeros((1, 20, dims[j.key]), np.float32) for j in jobs}
        rows = {k: {"train_s": 1.0, "epochs": 3} for k in draws}
        return sbi_peer.Result(info={"sbi": "fake"}, rows=rows, samples=draws)

    monkeypatch.setattr(sbi_peer, "run", fake_run)
    monkeypatch.setattr(sbi_peer, "python", lambda explicit: "python")
    monkeypatch.setattr(bench_draws, "score", lambda task, draws, observation: 0.5)
    run_args = argparse.Namespace(torch_python=None, posterior_samples=10, batch=None, torch_threads=1)
    run_args.out = tmp_path / "out"
    run_args.sbi_max_epochs, run_args.patience = 0, 20
    names = ("two_moons-10", "gaussian_linear-10", "two_moons-20")
    jobs = [sbi_peer.Job(k, 0, None, None, None) for k in names]
    chosen = {n: tasks.get(n) for n in ("two_moons", "gaussian_linear")}
    rows = []
    info = bench_study.sbi_rows(cfgs, run_args, jobs, chosen, {n: [1] for n in chosen}, tmp_path, rows)
    assert calls == [(64, ["two_moons-10", "two_moons-20"]), (32, ["gaussian_linear-10"])]
    assert info == {"sbi": "fake"} and [(r["task"], r["budget"], r["epochs"]) for r in rows] == [
        ("two_moons", 10, 3),
        ("two_moons", 20, 3),
        ("gaussian_linear", 10, 3),
    ]


def test_early_stopped_runs_keep_the_peak_learning_rate():
    """With early stopping the run's length is unknown, so smilejax trains at a constant learning rate
    (sbi's Adam at a fixed rate): a cosine over the --epochs cap barely decays before the stop. Without
    it, the config's schedule stands."""
    from smilejax import config, optim

    cfg = config.load("npe-two-moons")
    assert cfg.optimizer.schedule == "cosine" and cfg.optimizer.warmup > 0
    stopped = bench_study._optimizer(cfg, patience=20)
    _, lr = optim.make(stopped, total_steps=3000)
    assert [float(lr(s)) for s in (0, 10, 2999)] == [cfg.optimizer.lr] * 3
    assert stopped.clip_norm == cfg.optimizer.clip_norm == 5.0  # sbi's clip_max_norm
    assert bench_study._optimizer(cfg, patience=0) is cfg.optimizer
    # the spline covers +-3 of the standardised theta, as sbi's tail bound; past it, linear tails
    assert cfg.model.flow.bound == 3.0
    assert cfg.model.embedding.kind == "none"  # the flow sees the standardised x, as sbi's does


@pytest.mark.unit
def test_a_run_stopped_while_scoring_is_finished_from_its_saved_draws(tmp_path, monkeypatch):
    """Draws are saved before the C2ST and each score as it ends; --rescore OUT scores only what is
    missing (here observation 2, after a stop during it) and writes the tables, training nothing."""
    task = tasks.get("two_moons")
    draws = np.stack([task.reference_samples(i)[:40] for i in (1, 2)])
    meta = {"task": "two_moons", "budget": 10, "impl": "smilejax", "variant": "a b", "seed": 0}
    meta["train_s"] = 2.0
    record = bench_draws.save(tmp_path, meta, draws, [1, 2])
    assert record.name == "smilejax-a_b-two_moons-10-0.json"
    scored = []

    def stopped_at_the_second(task, draws, observation):
        if scored:
            raise KeyboardInterrupt
        scored.append(observation)
        return 0.61

    monkeypatch.setattr(bench_draws, "score", stopped_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        bench_draws.finish(record)
    kept = json.loads((tmp_path / "draws" / "smilejax-a_b-two_moons-10-0.o1.c2st").read_text())
    assert kept["c2st"] == 0.61  # the first score kept
    (alone,) = bench_draws.rescored(tmp_path, "1")  # --observations 1: that one, already scored
    assert alone["c2st_per_observation"] == [0.61] and alone["c2st"] == 0.61
    monkeypatch.undo()
    args = argparse.Namespace(rescore=str(tmp_path), out=str(tmp_path / "table"), batch=None, overrides=[])
    assert bench_study.run(_target.load_config("npe-two-moons", []), args) == 0
    (row,) = json.loads((tmp_path / "table" / "lfi-runs.json").read_text())["rows"]
    # observation 1 kept its saved score; observation 2 scored now, by the benchmark's C2ST on the
    # reference's own samples (near 0.5: their first 40 against the first 40)
    assert row["c2st_per_observation"][0] == 0.61 and 0.3 <= row["c2st_per_observation"][1] <= 0.7
    assert row["c2st"] == pytest.approx(np.mean(row["c2st_per_observation"])) and row["variant"] == "a b"
    assert "| two_moons | 10 | smilejax (a b) |" in (tmp_path / "table" / "lfi.md").read_text()
    with pytest.raises(SystemExit, match="no saved draws"):
        bench_draws.rescored(tmp_path / "table")


@pytest.mark.unit
def test_a_later_run_under_the_same_name_is_scored_afresh(tmp_path, monkeypatch):
    """Scores are kept with the draws they scored: new draws saved under the same name (a rerun into the
    same --out) are scored again, not given the earlier run's C2ST; draws that disagree with their record
    are refused."""
    task = tasks.get("two_moons")
    meta = {"task": "two_moons", "budget": 10, "impl": "sbi", "seed": 0, "train_s": 1.0}
    calls = []
    monkeypatch.setattr(bench_draws, "score", lambda task, draws, i: calls.append(i) or 0.5 + len(calls) / 10)
    first = bench_draws.save(tmp_path, meta, task.reference_samples(1)[None, :30], [1])
    assert bench_draws.finish(first)["c2st"] == pytest.approx(0.6)
    assert bench_draws.finish(first)["c2st"] == pytest.approx(0.6) and calls == [1]  # kept, not rescored
    second = bench_draws.save(tmp_path, meta, task.reference_samples(1)[None, 30:60], [1])
    assert second == first
    assert bench_draws.finish(second)["c2st"] == pytest.approx(0.7) and calls == [1, 1]
    np.save(second.with_suffix(".npy"), np.zeros((1, 30, 2), np.float32))  # half of an interrupted save
    with pytest.raises(SystemExit, match="not the ones it records"):
        bench_draws.finish(second)


@pytest.mark.unit
def test_a_table_of_added_runs_alone_simulates_nothing(tmp_path, monkeypatch):
    """--no-sbi --no-smilejax --add-runs: the join of earlier runs, without drawing the simulation sets."""
    row = {"task": "two_moons", "budget": 10, "impl": "sbi", "seed": 0, "train_s": 3.0, "c2st": 0.6}
    (tmp_path / "runs.json").write_text(json.dumps({"rows": [row]}))
    monkeypatch.setattr(bench_study, "simulate", lambda task, budget: pytest.fail("simulated"))
    args = argparse.Namespace(no_sbi=True, no_smilejax=True, add_runs=str(tmp_path / "runs.json"))
    args.tasks, args.out, args.batch, args.overrides = "two_moons", str(tmp_path / "t"), None, []
    assert bench_study.run(_target.load_config("npe-two-moons", []), args) == 0
    (table,) = json.loads((tmp_path / "t" / "lfi.json").read_text())["rows"]
    assert (table["impl"], table["c2st"], table["seeds"]) == ("sbi", 0.6, 1)
