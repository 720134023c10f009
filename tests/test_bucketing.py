"""Track-multiplicity bucketing of the ATLAS ftag input: same bucket on every process, no lost tracks,
exact resumption, less padding, and a training run over several batch shapes."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
from smilejax.inputs import ftag_h5 as fh
from smilejax.inputs import pipeline

from smilejax import config
from smilejax.config import ConfigError
from tests.helpers_ftag import BATCH, WIDTHS, bucket_cfg, bucket_stream, make_data, train_tiny_gn2

TRACK_KEYS = ("tracks", "valid", "track_origin", "track_vertex")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory)


def test_track_counts_match_the_file_and_are_cached(data):
    cfg = bucket_cfg(data)
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
    cfg = bucket_cfg(data, bucket_window=4)
    src = fh.SPEC.source(cfg, "train")
    counts = src.track_counts()
    one = bucket_stream(src, cfg)
    two = [bucket_stream(src, cfg, p, 2) for p in range(2)]
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
    cfg = bucket_cfg(data)
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
    cfg = bucket_cfg(data)
    assert cfg.bucket_window == 1
    src = fh.SPEC.source(cfg, "train")
    bucketed, plain = bucket_stream(src, cfg), bucket_stream(src, dataclasses.replace(cfg, bucket_tracks=[]))
    for _ in range(6):
        b, p = next(bucketed), next(plain)
        assert b["valid"].shape[1] <= p["valid"].shape[1] == 40
        np.testing.assert_array_equal(b["flavour"], p["flavour"])
        np.testing.assert_array_equal(b["valid"].sum(1), p["valid"].sum(1))
        for k in ("tracks", "track_origin", "track_vertex"):
            np.testing.assert_array_equal(b[k][b["valid"]], p[k][p["valid"]])


def test_resuming_from_a_saved_iterator_state_continues_identically(data):
    cfg = bucket_cfg(data, bucket_window=4)
    src = fh.SPEC.source(cfg, "train")
    it = bucket_stream(src, cfg)
    for _ in range(6):  # into the second window
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # what the checkpoint stores
    expected = [next(it) for _ in range(5)]
    resumed = bucket_stream(fh.SPEC.source(cfg, "train"), cfg)
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])


def test_padding_fraction_drops(data):
    cfg = bucket_cfg(data)
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
    it = bucket_stream(src, dataclasses.replace(cfg, bucket_window=16), seed=0)
    got = [next(it)["valid"] for _ in range(len(src) // BATCH)]
    measured = 1 - sum(v.sum() for v in got) / sum(v.size for v in got)
    assert measured == pytest.approx(sorted_16)


def test_evaluation_batches_are_not_sorted(data):
    cfg = bucket_cfg(data, bucket_window=16)
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


def test_train_runs_over_several_batch_shapes(data, tmp_path):
    run_dir = tmp_path / "run"
    records, _ = train_tiny_gn2(
        data,
        tmp_path,
        "bucketed",
        {"steps": 6, "log_every": 1, "profile_at": 1, "profile_steps": 5},
        {"batch_size": 64, "bucket_tracks": [8, 12], "bucket_window": 4},
    )
    assert [r["step"] for r in records] == list(range(1, 7))
    assert all(np.isfinite(r["loss"]) for r in records)
    # the steps above saw more than one width (the pipeline's plan for the same seed says which)
    src = fh.SPEC.source(bucket_cfg(data, batch_size=64, bucket_tracks=[8, 12], bucket_window=4), "train")
    plan = pipeline.BatchPlan(pipeline._EpochOrder(len(src), 0, True), 64, fh.buckets(src, src.cfg), 0)
    assert len({plan(k)[1] for k in range(6)}) > 1
    # steps 2-6 were profiled: each op of the breakdown names the program (batch shape) it ran in
    traced_widths = {plan(k)[1] for k in range(1, 6)}
    assert len(traced_widths) > 1
    summary = json.loads((run_dir / "profile.json").read_text())
    labels = {r["op"].rsplit(" [", 1)[1].rstrip("]") for r in summary["top_ops"]}
    assert labels <= {f"64x{w}x21" for w in traced_widths} and labels
    assert {"encoder", "vertex_head"} <= {r["scope"] for r in summary["by_scope"]}


def test_evaluation_reads_the_same_jets_whatever_the_training_window(data):
    # a convergence study compares runs of different bucket windows on their first N eval batches: those
    # must be the same jets (only padded differently), so evaluation never sorts a window
    def first_jets(window: int) -> np.ndarray:
        cfg = bucket_cfg(data, bucket_window=window)
        it = bucket_stream(fh.SPEC.source(cfg, "eval"), cfg)
        batches = [next(it) for _ in range(3)]
        # one number per jet, whatever its padded width: the sum of its valid tracks' inputs
        return np.concatenate([np.sort((b["tracks"] * b["valid"][..., None]).sum((1, 2))) for b in batches])

    np.testing.assert_array_equal(first_jets(4), first_jets(1))
