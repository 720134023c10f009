"""Track-multiplicity bucketing of the ATLAS ftag input: same bucket on every process, no lost tracks,
exact resumption, less padding, and a training run over several batch shapes."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from smilejax.inputs import ftag_h5 as fh
from smilejax.inputs import packing, pipeline
from smilejax.models.gn2 import make_synthetic as fs

from smilejax import config, trainer
from smilejax.config import ConfigError
from tests.conftest import run_cli

N_JETS, BATCH = 3000, 100
WIDTHS = [8, 12, 16]
TRACK_KEYS = ("tracks", "valid", "track_origin", "track_vertex")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("bucket")
    path = fs.make(d / "s.h5", N_JETS, seed=1)
    norm = fh.write_norm_dict(fh.compute_norm_dict(str(path)), d / "norm.yaml")
    return path, norm


def _cfg(data, **kw) -> fh.FtagConfig:
    path, norm = data
    base = dict(path=str(path), norm_dict=str(norm), batch_size=BATCH, bucket_tracks=WIDTHS, read_threads=2)
    return fh.FtagConfig(**{**base, **kw})


def _stream(src, cfg, process_index=0, process_count=1, seed=5):
    build = fh.SPEC.pipeline
    return iter(build(src, cfg, seed=seed, process_index=process_index, process_count=process_count))


def test_track_counts_match_the_file_and_are_cached(data):
    cfg = _cfg(data)
    src = fh.SPEC.source(cfg, "train")
    counts = src.track_counts()
    with fh.open_h5(str(data[0])) as f:
        valid = f["tracks"].fields("valid")[:]
    np.testing.assert_array_equal(counts, valid.sum(1)[: len(src)])
    cache = fh.counts_cache_path(src.files[0], cfg)
    assert cache.exists()
    mtime = os.path.getmtime(cache)
    again = fh.SPEC.source(cfg, "train").track_counts()  # read back, not recomputed
    np.testing.assert_array_equal(again, counts)
    assert os.path.getmtime(cache) == mtime
    held_out = fh.SPEC.source(cfg, "eval").track_counts()  # the tail of the same file
    np.testing.assert_array_equal(held_out, valid.sum(1)[len(src) :])


def test_counts_and_norm_dict_read_in_several_chunks(data, tmp_path, monkeypatch):
    whole = fh.compute_norm_dict(str(data[0]), max_jets=2800)
    monkeypatch.setattr(fh.hdf5, "CHECK_CHUNK", 700)  # big files are read 50k jets at a time
    chunked = fh.compute_norm_dict(str(data[0]), max_jets=2800)
    for group in whole:
        for var, stats in whole[group].items():
            assert chunked[group][var] == pytest.approx(stats, rel=1e-6)
    copy = tmp_path / "copy.h5"
    copy.write_bytes(data[0].read_bytes())  # its own (not yet cached) track counts
    info = fh.inspect_file(str(copy), fh.FtagConfig())
    with fh.open_h5(str(copy)) as f:
        expected = f["tracks"].fields("valid")[:].sum(1)
    np.testing.assert_array_equal(fh.file_track_counts(info, fh.FtagConfig()), expected)


def test_every_process_gets_the_same_bucket_and_the_same_global_batch(data):
    cfg = _cfg(data, bucket_window=4)
    src = fh.SPEC.source(cfg, "train")
    counts = src.track_counts()
    one = _stream(src, cfg)
    two = [_stream(src, cfg, p, 2) for p in range(2)]
    widths = []
    for _ in range(len(src) // BATCH):
        whole, halves = next(one), [next(it) for it in two]
        width = whole["valid"].shape[1]
        widths.append(width)
        assert [h["valid"].shape[1] for h in halves] == [width, width]
        for k in whole:
            np.testing.assert_array_equal(whole[k], np.concatenate([h[k] for h in halves]))
        n_valid = whole["valid"].sum(1)
        assert width == min(w for w in [*WIDTHS, 40] if w >= n_valid.max()), "smallest bucket that fits"
    assert len(set(widths)) > 1 and set(widths) <= {*WIDTHS, 40}
    # sorting by multiplicity still reads every jet of an epoch exactly once
    plan = pipeline.BatchPlan(pipeline._EpochOrder(len(src), 5, True), BATCH, fh.buckets(src, cfg), 5)
    rows = np.concatenate([plan(k)[0] for k in range(plan.per_epoch)])
    assert len(np.unique(rows)) == rows.size == plan.per_epoch * BATCH
    assert [plan(k)[1] for k in range(plan.per_epoch)] == widths
    assert all(counts[plan(k)[0]].max() <= plan(k)[1] for k in range(plan.per_epoch))


def test_jets_keep_every_valid_track_in_order(data):
    cfg = _cfg(data)
    src = fh.SPEC.source(cfg, "train")
    rows = np.arange(0, 600, 3)
    full = src.read(rows)  # the file's slots, holes kept
    assert (full["valid"] != np.sort(full["valid"], axis=1)[:, ::-1]).any(), "the file has holes"
    n_max = int(full["valid"].sum(1).max())
    compact = src.read(rows, width=n_max)
    n_valid = full["valid"].sum(1)
    np.testing.assert_array_equal(compact["valid"], np.arange(n_max)[None, :] < n_valid[:, None])
    for k in TRACK_KEYS[:1] + TRACK_KEYS[2:]:  # row-major valid entries: same tracks, same order
        np.testing.assert_array_equal(compact[k][compact["valid"]], full[k][full["valid"]])
        assert (compact[k][~compact["valid"]] == (0 if k == "tracks" else -1)).all()
    np.testing.assert_array_equal(compact["flavour"], full["flavour"])
    with pytest.raises(ValueError, match=r"valid tracks, more than the bucket width") as err:
        src.read(rows, width=n_max - 1)
    assert str(data[0]) in str(err.value)


def test_default_window_keeps_the_unbucketed_batches(data):
    cfg = _cfg(data)
    assert cfg.bucket_window == 1
    src = fh.SPEC.source(cfg, "train")
    bucketed, plain = _stream(src, cfg), _stream(src, dataclasses.replace(cfg, bucket_tracks=[]))
    for _ in range(6):
        b, p = next(bucketed), next(plain)
        assert b["valid"].shape[1] <= p["valid"].shape[1] == 40
        np.testing.assert_array_equal(b["flavour"], p["flavour"])
        np.testing.assert_array_equal(b["valid"].sum(1), p["valid"].sum(1))
        for k in ("tracks", "track_origin", "track_vertex"):
            np.testing.assert_array_equal(b[k][b["valid"]], p[k][p["valid"]])


def test_resuming_from_a_saved_iterator_state_continues_identically(data):
    cfg = _cfg(data, bucket_window=4)
    src = fh.SPEC.source(cfg, "train")
    it = _stream(src, cfg)
    for _ in range(6):  # into the second window
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # what the checkpoint stores
    expected = [next(it) for _ in range(5)]
    resumed = _stream(fh.SPEC.source(cfg, "train"), cfg)
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])


def test_padding_fraction_drops(data):
    cfg = _cfg(data)
    src = fh.SPEC.source(cfg, "train")
    counts = src.track_counts()
    widths = pipeline.bucket_widths(WIDTHS, cfg.max_tracks)
    assert widths == (8, 12, 16, 40)

    def padding(window: int) -> float:
        buckets = pipeline.Buckets(widths, counts, window)
        plan = pipeline.BatchPlan(pipeline._EpochOrder(len(src), 0, True), BATCH, buckets, 0)
        return plan.padding_fraction()

    padded = 1 - counts.mean() / cfg.max_tracks  # every batch at 40 slots
    per_batch, sorted_4, sorted_16 = padding(1), padding(4), padding(16)
    assert padded > 0.7
    assert padded >= per_batch > sorted_4 > sorted_16
    assert sorted_16 < 0.5 * padded, (padded, per_batch, sorted_4, sorted_16)
    # what the pipeline yields agrees with the plan
    it = _stream(src, dataclasses.replace(cfg, bucket_window=16), seed=0)
    got = [next(it)["valid"] for _ in range(len(src) // BATCH)]
    measured = 1 - sum(v.sum() for v in got) / sum(v.size for v in got)
    assert measured == pytest.approx(sorted_16)


def test_evaluation_batches_are_not_sorted(data):
    cfg = _cfg(data, bucket_window=16)
    src = fh.SPEC.source(cfg, "eval")
    first = next(iter(fh.SPEC.pipeline(src, cfg, seed=1, process_index=0, process_count=1, shuffle=False)))
    plain = src.read(np.arange(BATCH))
    np.testing.assert_array_equal(first["flavour"], plain["flavour"])  # file order, bucketed width
    assert first["valid"].shape[1] == min(w for w in [*WIDTHS, 40] if w >= plain["valid"].sum(1).max())


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[24,16]", "bucket_tracks must be increasing"),
        ("[16,50]", r"1\.\.max_tracks \(40\)"),
    ],
)
def test_bad_bucket_config_names_the_key(value, message):
    def tree():
        return {"model": {"name": "gn2"}, "data": {"format": "ftag_h5"}}

    with pytest.raises(ConfigError, match=message) as err:
        config.load(tree(), [f"data.bucket_tracks={value}"])
    assert str(err.value).startswith("data: ")
    with pytest.raises(ConfigError, match="bucket_window must be at least 1"):
        config.load(tree(), ["data.bucket_window=0"])


def _train_tiny_gn2(data, tmp_path, name: str, run: dict, data_options: dict) -> tuple[list[dict], Path]:
    """``smilejax train`` of a tiny GN2 on ``data`` (2 devices): its metrics records and its config file."""
    path, norm = data
    run_dir = tmp_path / "run"
    cfg = {
        "run": {"checkpoint_every": 0, "dir": str(run_dir), **run},
        "data": {"format": "ftag_h5", "path": str(path), "norm_dict": str(norm), "read_threads": 1}
        | data_options,
        "model": {
            "name": "gn2",
            **dict(embed=16, init_hidden=[16], layers=1, heads=2, ff=32, out=8, head_hidden=[8]),
        },
        "optimizer": {"lr": 1e-3},
        "logging": {"wandb": "off", "tensorboard": False, "progress": False},
    }
    cfg_path = tmp_path / f"gn2-{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    done = run_cli("train", str(cfg_path), devices=2)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return records, cfg_path


def test_train_runs_over_several_batch_shapes(data, tmp_path):
    run_dir = tmp_path / "run"
    records, _ = _train_tiny_gn2(
        data,
        tmp_path,
        "bucketed",
        {"steps": 6, "log_every": 1, "profile_at": 1, "profile_steps": 5},
        {"batch_size": 64, "bucket_tracks": [8, 12], "bucket_window": 4},
    )
    assert [r["step"] for r in records] == list(range(1, 7))
    assert all(np.isfinite(r["loss"]) for r in records)
    # the steps above saw more than one width (the pipeline's plan for the same seed says which)
    src = fh.SPEC.source(_cfg(data, batch_size=64, bucket_tracks=[8, 12], bucket_window=4), "train")
    plan = pipeline.BatchPlan(pipeline._EpochOrder(len(src), 0, True), 64, fh.buckets(src, src.cfg), 0)
    assert len({plan(k)[1] for k in range(6)}) > 1
    # steps 2-6 were profiled: each op of the breakdown names the program (batch shape) it ran in
    traced_widths = {plan(k)[1] for k in range(1, 6)}
    assert len(traced_widths) > 1
    summary = json.loads((run_dir / "profile.json").read_text())
    labels = {r["op"].rsplit(" [", 1)[1].rstrip("]") for r in summary["top_ops"]}
    assert labels <= {f"64x{w}x21" for w in traced_widths} and labels
    assert {"encoder", "vertex_head"} <= {r["scope"] for r in summary["by_scope"]}


# ---------------------------------------------------------------- packed sets (data.pack_tracks)

PACK = dict(bucket_tracks=[], pack_tracks=48, pack_jets=8, pack_row_multiple=4)


def _packed_plan(src, cfg, processes: int, seed: int = 5) -> pipeline.BatchPlan:
    order = pipeline._EpochOrder(len(src), seed, True)
    return pipeline.BatchPlan(order, BATCH, None, seed, packed=fh.packed(src, cfg), process_count=processes)


def test_packed_batches_hold_the_unpacked_jets_once_across_processes(data):
    cfg = _cfg(data, **PACK)
    plain_cfg = dataclasses.replace(cfg, pack_tracks=0)
    src = fh.SPEC.source(cfg, "train")
    plain = [_stream(src, plain_cfg, p, 2) for p in range(2)]
    packed = [_stream(src, cfg, p, 2) for p in range(2)]
    plan = _packed_plan(src, cfg, 2)
    rows = set()
    for step in range(8):
        packings = plan.packings(step)
        for p in range(2):
            want, got, packing = next(plain[p]), next(packed[p]), packings[p]
            assert set(got) == {*want, "segment", "jet_valid"}
            r = got["valid"].shape[0]
            rows.add(r)
            assert r == packing.rows and r % 2 == 0, "each process feeds half of a multiple of 4 rows"
            assert got["tracks"].shape == (r, 48, 21) and got["flavour"].shape == got["jet_valid"].shape == (
                r,
                8,
            )
            # every jet of this process's unpacked slice, once, with its values and its tracks in order
            assert got["jet_valid"].sum() == len(want["flavour"]) == BATCH // 2
            np.testing.assert_array_equal(got["flavour"][packing.row, packing.slot], want["flavour"])
            assert got["valid"].sum() == want["valid"].sum()
            for n in range(BATCH // 2):
                mine = got["segment"][packing.row[n]] == packing.slot[n]
                for k in ("tracks", "track_origin", "track_vertex"):
                    np.testing.assert_array_equal(got[k][packing.row[n]][mine], want[k][n][want["valid"][n]])
    assert len(rows) <= 3, f"row counts {sorted(rows)}: a few shapes"
    # one process: the same jets as the two together, in rows of the same multiple
    one = _stream(src, cfg)
    first = next(one)
    assert first["jet_valid"].sum() == BATCH and first["valid"].shape[0] % 4 == 0


def test_packed_padding_fraction_and_resumption(data):
    cfg = _cfg(data, **PACK)
    src = fh.SPEC.source(cfg, "train")
    counts = src.track_counts()
    packed = _packed_plan(src, cfg, 1, seed=0).padding_fraction()
    assert packed < 0.35 < 1 - counts.mean() / cfg.max_tracks, packed
    it = _stream(src, cfg, seed=0)
    got = [next(it)["valid"] for _ in range(len(src) // BATCH)]
    assert 1 - sum(v.sum() for v in got) / sum(v.size for v in got) == pytest.approx(packed)
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it) for _ in range(3)]
    resumed = _stream(fh.SPEC.source(cfg, "train"), cfg, seed=0)
    resumed.set_state(state)
    for want in expected:
        got_batch = next(resumed)
        for k in want:
            np.testing.assert_array_equal(got_batch[k], want[k])


def _all_slices_reference(src, packed: pipeline.Packed, rows: np.ndarray, p: int, processes: int) -> dict:
    """Process ``p``'s packed batch as the pipeline made it before ``packing.count_rows``: every slice
    placed by ``plan_rows``, rows per process the fullest slice's rounded up to the multiple's share."""
    slices = rows.reshape(processes, -1)
    plans = [packing.plan_rows(packed.lengths[s], packed.slots, packed.jets_per_row) for s in slices]
    per = packed.row_multiple // processes
    n = -(-max(max(q.used_rows for q in plans), 1) // per) * per
    batch = pipeline._read(src, slices[p], max(int(packed.lengths[slices[p]].max()), 1))
    track_keys = [k for k in packed.track_keys if k in batch and k != "valid"]
    jet_keys = [k for k in batch if k != "valid" and k not in track_keys]
    mine = dataclasses.replace(plans[p], rows=n)
    return packing.pack(batch, mine, track_keys=track_keys, jet_keys=jet_keys), plans[p].used_rows, n


@pytest.mark.parametrize("processes", [2, 4])
def test_packed_batches_equal_the_every_slice_plan_bitwise(data, processes):
    """Each process places only its own jets and counts the others' rows (``count_rows``): its batches
    are bitwise those of placing every slice, including steps where another slice sets the row count,
    across an epoch boundary, and after resuming mid-epoch."""
    # one row per process per multiple, so that the fullest slice's own count matters
    cfg = _cfg(data, **{**PACK, "pack_row_multiple": processes})
    src = fh.SPEC.source(cfg, "train")
    packed, plan = fh.packed(src, cfg), _packed_plan(src, cfg, processes)
    steps = plan.per_epoch + 2
    others_set_it = 0
    for p in range(processes):
        it = _stream(src, cfg, p, processes)
        for step in range(steps):
            got = next(it)
            want, own_rows, n = _all_slices_reference(src, packed, plan(step)[0], p, processes)
            per = cfg.pack_row_multiple // processes
            others_set_it += n > -(-max(own_rows, 1) // per) * per
            assert got.keys() == want.keys()
            for k in want:
                assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
                np.testing.assert_array_equal(got[k], want[k], err_msg=f"{k} at step {step}, process {p}")
        if p == processes - 1:  # resume the last process mid-epoch
            it = _stream(src, cfg, p, processes)
            for _ in range(3):
                next(it)
            state = json.loads(json.dumps(it.get_state()))
            resumed = _stream(fh.SPEC.source(cfg, "train"), cfg, p, processes)
            resumed.set_state(state)
            for step in range(3, 6):
                got = next(resumed)
                want = _all_slices_reference(src, packed, plan(step)[0], p, processes)[0]
                for k in want:
                    np.testing.assert_array_equal(got[k], want[k])
    assert others_set_it, "no step where another process's slice needed more rows: the check is vacuous"


def test_packed_plan_of_one_process_equals_its_share_of_all(data):
    cfg = _cfg(data, **{**PACK, "pack_row_multiple": 8})
    src = fh.SPEC.source(cfg, "train")
    plan = _packed_plan(src, cfg, 4)
    for step in range(6):
        every = plan.packings(step)
        assert plan.packed.row_count(plan(step)[0], 4) == every[0].rows
        for p in range(4):
            mine = plan.packing(step, p)
            assert mine.rows == every[p].rows
            for f in ("row", "offset", "slot", "lengths"):
                np.testing.assert_array_equal(getattr(mine, f), getattr(every[p], f))
    with pytest.raises(ValueError, match="row multiple 8 does not divide over 3 processes"):
        plan.packed.plan(plan(0)[0][:99], 0, 3)


def test_evaluation_batches_are_not_packed(data):
    cfg = _cfg(data, **PACK)
    src = fh.SPEC.source(cfg, "eval")
    batch = next(iter(fh.SPEC.pipeline(src, cfg, seed=1, process_index=0, process_count=1, shuffle=True)))
    assert "segment" not in batch and batch["valid"].shape == (BATCH, 40)
    assert batch["flavour"].shape == (BATCH,)
    # predictions over the training split read it in order (shuffle=False): unpacked too
    src = fh.SPEC.source(cfg, "train")
    batch = next(iter(fh.SPEC.pipeline(src, cfg, seed=1, process_index=0, process_count=1, shuffle=False)))
    assert "segment" not in batch and batch["valid"].shape == (BATCH, 40)


def test_loop_counts_the_jets_of_packed_batches(data):
    import jax

    from smilejax.loop import Batches

    cfg = _cfg(data, **PACK)
    batches = Batches(
        _stream(fh.SPEC.source(cfg, "train"), cfg), jax.sharding.SingleDeviceSharding(jax.devices()[0])
    )
    batch = batches.next()
    assert batch["valid"].shape[0] < BATCH and batches.rows(batch) == BATCH


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["data.pack_tracks=32"],
            r"pack_tracks=32 track slots per packed row cannot hold a jet of .*max_tracks=40",
        ),
        (["data.pack_tracks=-1"], "pack_tracks must be >= 0"),
        (["data.pack_tracks=48", "data.pack_jets=0"], "pack_jets .* must be >= 1, got 0"),
        (["data.pack_tracks=48", "data.pack_row_multiple=0"], "pack_row_multiple must be at least 1"),
        (["data.pack_tracks=48", "data.bucket_tracks=[16]"], "use one"),
        (["data.pack_tracks=48", "data.bucket_window=4"], "use one"),
    ],
)
def test_bad_packing_config_names_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        config.load({"model": {"name": "gn2"}, "data": {"format": "ftag_h5"}}, overrides)


def test_packed_row_multiple_is_checked_as_a_batch_size():
    cfg = fh.FtagConfig(batch_size=64, pack_tracks=48, pack_row_multiple=6)
    assert cfg.global_batch_sizes() == [6, 64]
    with pytest.raises(ConfigError, match=r"pack_row_multiple .*=6 must be divisible by the batch-sharded"):
        config.check_batch_sizes(cfg, processes=2, divisor=4, devices="")
    with pytest.raises(ConfigError, match=r"pack_row_multiple .*=6 is not divisible by the 4 processes"):
        config.check_batch_sizes(cfg, processes=4, divisor=1, devices="")
    assert fh.FtagConfig(batch_size=64).global_batch_sizes() == [64]


def test_train_runs_on_packed_batches(data, tmp_path):
    """``smilejax train`` of a tiny GN2 on packed batches (2 devices): finite losses, jets counted."""
    records, cfg_path = _train_tiny_gn2(
        data,
        tmp_path,
        "packed",
        {"steps": 4, "log_every": 1, "eval_every": 2, "eval_steps": 1},
        {"batch_size": 64, "pack_tracks": 48, "pack_jets": 8, "pack_row_multiple": 8},
    )
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == list(range(1, 5))
    assert all(np.isfinite(r["loss"]) for r in train)
    for r in train:  # the examples counted per step are the batch's 64 jets, not its rows
        assert r["samples_per_s"] * r["step_time_s"] == pytest.approx(64)
    evals = [r for r in records if "eval/loss" in r]  # the unpacked evaluation stream
    assert evals and all(np.isfinite(r["eval/loss"]) for r in evals)
    # the inputs this config gives the trainer are packed rows: 64 jets of ~8 tracks in 16 rows of 48
    # slots (one shape, one compile); its evaluation inputs stay unpacked
    loaded = config.load(str(cfg_path))
    train_batches = iter(trainer.make_inputs(loaded, "train"))
    for _ in range(4):
        batch = next(train_batches)
        assert batch["valid"].shape == (16, 48) and batch["flavour"].shape == (16, 8)
        assert int(batch["jet_valid"].sum()) == 64
    assert "segment" not in next(iter(trainer.make_inputs(loaded, "eval")))


def test_packing_refuses_gradient_accumulation():
    with pytest.raises(ConfigError, match=r"train.grad_accum=2: data.pack_tracks: .* use train.grad_accum=1"):
        config.load(
            {"model": {"name": "gn2"}, "data": {"format": "ftag_h5", "pack_tracks": 48}},
            ["train.grad_accum=2"],
        )


def test_evaluation_reads_the_same_jets_whatever_the_training_window(data):
    # a convergence study compares runs of different bucket windows on their first N eval batches: those
    # must be the same jets (only padded differently), so evaluation never sorts a window
    def first_jets(window: int) -> np.ndarray:
        cfg = _cfg(data, bucket_window=window)
        it = _stream(fh.SPEC.source(cfg, "eval"), cfg)
        batches = [next(it) for _ in range(3)]
        # one number per jet, whatever its padded width: the sum of its valid tracks' inputs
        return np.concatenate([np.sort((b["tracks"] * b["valid"][..., None]).sum((1, 2))) for b in batches])

    np.testing.assert_array_equal(first_jets(4), first_jets(1))
