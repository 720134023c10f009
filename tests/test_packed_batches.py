"""Packed GN2 batches (``data.pack_tracks``): every jet once across processes, bitwise the plan of every
slice, exact resumption, unpacked evaluation, clear config errors, and a training run on packed rows."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from smilejax.inputs import ftag_h5 as fh
from smilejax.inputs import packing, pipeline

from smilejax import config, trainer
from smilejax.config import ConfigError
from tests.helpers_ftag import BATCH, bucket_cfg, bucket_stream, make_data, train_tiny_gn2


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory)


PACK = dict(bucket_tracks=[], pack_tracks=48, pack_jets=8, pack_row_multiple=4)


def _packed_plan(src, cfg, processes: int, seed: int = 5) -> pipeline.BatchPlan:
    order = pipeline._EpochOrder(len(src), seed, True)
    return pipeline.BatchPlan(order, BATCH, None, seed, packed=fh.packed(src, cfg), process_count=processes)


def test_packed_batches_hold_the_unpacked_jets_once_across_processes(data):
    cfg = bucket_cfg(data, **PACK)
    plain_cfg = dataclasses.replace(cfg, pack_tracks=0)
    src = fh.SPEC.source(cfg, "train")
    plain = [bucket_stream(src, plain_cfg, p, 2) for p in range(2)]
    packed = [bucket_stream(src, cfg, p, 2) for p in range(2)]
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
    one = bucket_stream(src, cfg)
    first = next(one)
    assert first["jet_valid"].sum() == BATCH and first["valid"].shape[0] % 4 == 0


def test_packed_padding_fraction_and_resumption(data):
    cfg = bucket_cfg(data, **PACK)
    src = fh.SPEC.source(cfg, "train")
    counts = src.track_counts()
    packed = _packed_plan(src, cfg, 1, seed=0).padding_fraction()
    assert packed < 0.35 < 1 - counts.mean() / cfg.max_tracks, packed
    it = bucket_stream(src, cfg, seed=0)
    got = [next(it)["valid"] for _ in range(len(src) // BATCH)]
    assert 1 - sum(v.sum() for v in got) / sum(v.size for v in got) == pytest.approx(packed)
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it) for _ in range(3)]
    resumed = bucket_stream(fh.SPEC.source(cfg, "train"), cfg, seed=0)
    resumed.set_state(state)
    for want in expected:
        got_batch = next(resumed)
        for k in want:
            np.testing.assert_array_equal(got_batch[k], want[k])


def _all_slices_reference(
    src, packed: pipeline.Packed, rows: np.ndarray, p: int, processes: int
) -> tuple[dict, int, int]:
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
    cfg = bucket_cfg(data, **{**PACK, "pack_row_multiple": processes})
    src = fh.SPEC.source(cfg, "train")
    packed, plan = fh.packed(src, cfg), _packed_plan(src, cfg, processes)
    steps = plan.per_epoch + 2
    others_set_it = 0
    for p in range(processes):
        it = bucket_stream(src, cfg, p, processes)
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
            it = bucket_stream(src, cfg, p, processes)
            for _ in range(3):
                next(it)
            state = json.loads(json.dumps(it.get_state()))
            resumed = bucket_stream(fh.SPEC.source(cfg, "train"), cfg, p, processes)
            resumed.set_state(state)
            for step in range(3, 6):
                got = next(resumed)
                want = _all_slices_reference(src, packed, plan(step)[0], p, processes)[0]
                for k in want:
                    np.testing.assert_array_equal(got[k], want[k])
    assert others_set_it, "no step where another process's slice needed more rows: the check is vacuous"


def test_packed_plan_of_one_process_equals_its_share_of_all(data):
    cfg = bucket_cfg(data, **{**PACK, "pack_row_multiple": 8})
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
    cfg = bucket_cfg(data, **PACK)
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

    cfg = bucket_cfg(data, **PACK)
    batches = Batches(
        bucket_stream(fh.SPEC.source(cfg, "train"), cfg), jax.sharding.SingleDeviceSharding(jax.devices()[0])
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
    records, cfg_path = train_tiny_gn2(
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
