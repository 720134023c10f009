"""The ATLAS flavour-tagging HDF5 input: synthetic files, atlas-ftag-tools mock files, bad inputs."""

from __future__ import annotations

import logging
import os
import pickle
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from smilejax.inputs import ftag_h5 as fh
from smilejax.inputs import pipeline
from smilejax.models.gn2 import make_synthetic as fs

from tests.conftest import FTAG_JETS
from tests.helpers_ftag import ftag_cfg, jets_and_tracks

pytestmark = pytest.mark.unit  # make test-fast runs it: one device, seconds

N1, N2 = FTAG_JETS
TRUTH_ID_TO_FLAVOUR = {5: 0, 4: 1, 0: 2, 15: 3}


def _first_batch(src, batch_size=64, seed=0, **kw):
    return next(iter(pipeline.batched(src, batch_size=batch_size, seed=seed, **kw)))


def _assert_contract(batch, b, t, f, aux):
    keys = {"tracks", "valid", "flavour"} | ({"track_origin", "track_vertex"} if aux else set())
    assert set(batch) == keys
    assert batch["tracks"].shape == (b, t, f) and batch["tracks"].dtype == np.float32
    assert batch["valid"].shape == (b, t) and batch["valid"].dtype == np.bool_
    assert batch["flavour"].shape == (b,) and batch["flavour"].dtype == np.int32
    assert set(np.unique(batch["flavour"])) <= {0, 1, 2, 3}
    valid = batch["valid"]
    assert np.isfinite(batch["tracks"]).all()
    assert (batch["tracks"][~valid] == 0).all(), "padded slots must be zero"
    if aux:
        for k in ("track_origin", "track_vertex"):
            assert batch[k].shape == (b, t) and batch[k].dtype == np.int32
            assert (batch[k][~valid] == -1).all()
        assert batch["track_origin"][valid].min() >= 0 and batch["track_origin"][valid].max() <= 7


# ---------------------------------------------------------------------------------------------- reading


def test_synthetic_through_pipeline(ftag_files):
    src = fh.SPEC.source(ftag_cfg(ftag_files / "s1.h5"), "train")
    assert len(src) == N1 - round(0.1 * N1)
    batch = _first_batch(src)
    _assert_contract(batch, 64, 40, 21, aux=True)
    valid = batch["valid"]
    n_valid = valid.sum(1)
    prefix = np.arange(40)[None, :] < n_valid[:, None]
    assert (valid != prefix).any(axis=1).any(), "holes in the masks must be kept"


def test_values_match_file(ftag_files, tmp_path):
    norm = fh.compute_norm_dict(str(ftag_files / "s1.h5"), max_jets=2000)
    cfg = ftag_cfg(ftag_files / "s1.h5", norm_dict=str(fh.write_norm_dict(norm, tmp_path / "norm.yaml")))
    src = fh.SPEC.source(cfg, "train")
    rows = np.array([0, 1, 2, 7, 100, 101, 1500, 2600])
    batch = src.read(rows)
    jets, tracks = jets_and_tracks(ftag_files / "s1.h5")
    jets, tracks = jets[rows], tracks[rows]
    np.testing.assert_array_equal(batch["valid"], tracks["valid"])
    np.testing.assert_array_equal(batch["flavour"], jets["flavour_label"])
    np.testing.assert_array_equal(
        batch["flavour"], [TRUTH_ID_TO_FLAVOUR[x] for x in jets["HadronConeExclTruthLabelID"]]
    )
    v = tracks["valid"]
    np.testing.assert_array_equal(batch["track_origin"][v], tracks["ftagTruthOriginLabel"][v])
    np.testing.assert_array_equal(batch["track_vertex"][v], tracks["ftagTruthVertexIndex"][v])
    for i, name in enumerate(cfg.track_vars):
        m, s = norm["tracks"][name]["mean"], norm["tracks"][name]["std"]
        expect = (tracks[name][v] - m) / s
        np.testing.assert_allclose(batch["tracks"][..., i][v], expect, rtol=1e-5, atol=1e-5)
    for k, name in enumerate(cfg.jet_vars):
        m, s = norm["jets"][name]["mean"], norm["jets"][name]["std"]
        expect = np.broadcast_to(((jets[name] - m) / s)[:, None], v.shape)
        np.testing.assert_allclose(batch["tracks"][..., 19 + k][v], expect[v], rtol=1e-5, atol=1e-5)
    # unsorted indices: same rows, the caller's order
    shuffled = rows[::-1].copy()
    np.testing.assert_array_equal(src.read(shuffled)["tracks"], batch["tracks"][::-1])


def test_normalisation_zero_mean_unit_std(ftag_files):
    src = fh.SPEC.source(ftag_cfg(ftag_files / "s1.h5"), "train")
    batch = src.read(np.arange(len(src)))
    x, v = batch["tracks"], batch["valid"]
    trk = x[v][:, :19].astype(np.float64)
    np.testing.assert_allclose(trk.mean(0), 0, atol=1e-3)
    np.testing.assert_allclose(trk.std(0), 1, atol=1e-3)
    first_valid = np.argmax(v, axis=1)
    jet = x[np.arange(len(x)), first_valid, 19:].astype(np.float64)
    np.testing.assert_allclose(jet.mean(0), 0, atol=1e-3)
    np.testing.assert_allclose(jet.std(0), 1, atol=1e-3)


def test_mock_file_from_atlas_ftag_tools(ftag_mock, caplog):
    with caplog.at_level(logging.INFO, logger=fh.__name__):
        src = fh.SPEC.source(ftag_cfg(ftag_mock, eval_fraction=0.0), "train")
    assert "track truth labels absent" in caplog.text
    assert len(src) == 1500
    batch = _first_batch(src, batch_size=100)
    _assert_contract(batch, 100, 40, 21, aux=False)
    assert "track_origin" not in batch and "track_vertex" not in batch
    jets, tracks = jets_and_tracks(ftag_mock)
    rows = np.arange(0, 1500, 7)
    got = src.read(rows)
    np.testing.assert_array_equal(
        got["flavour"], [TRUTH_ID_TO_FLAVOUR[x] for x in jets["HadronConeExclTruthLabelID"][rows]]
    )
    np.testing.assert_array_equal(got["valid"], tracks["valid"][rows])
    # the mock's hit counts are all 0 (std 0): shifted, not divided by zero
    assert np.isfinite(src.read(np.arange(1500))["tracks"]).all()

    with pytest.raises(ValueError, match="aux_labels=on") as err:
        fh.SPEC.source(ftag_cfg(ftag_mock, aux_labels="on"), "train")
    assert ftag_mock in str(err.value) and "ftagTruthOriginLabel" in str(err.value)


def test_aux_labels_off_and_on(ftag_files):
    off = fh.SPEC.source(ftag_cfg(ftag_files / "s1.h5", aux_labels="off"), "train")
    assert set(off.read(np.arange(4))) == {"tracks", "valid", "flavour"}
    on = fh.SPEC.source(ftag_cfg(ftag_files / "s1.h5", aux_labels="on"), "train")
    assert "track_origin" in on.read(np.arange(4))


def test_glob_and_comma_list_of_two_files(ftag_files):
    glob_src = fh.SPEC.source(ftag_cfg(ftag_files / "s*.h5", eval_fraction=0.0), "train")
    assert len(glob_src) == N1 + N2
    comma = f"{ftag_files / 's1.h5'},{ftag_files / 's2.h5'}"
    comma_src = fh.SPEC.source(ftag_cfg(comma, eval_fraction=0.0), "train")
    assert len(comma_src) == N1 + N2
    rows = np.array([0, N1 - 1, N1, N1 + N2 - 1])
    a, b = glob_src.read(rows), comma_src.read(rows)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    _, t2 = jets_and_tracks(ftag_files / "s2.h5")
    np.testing.assert_array_equal(a["valid"][2:], t2["valid"][[0, N2 - 1]])
    # held-out tail of every file for eval; train and eval partition the files
    train = fh.SPEC.source(ftag_cfg(ftag_files / "s*.h5"), "train")
    ev = fh.SPEC.source(ftag_cfg(ftag_files / "s*.h5"), "eval")
    assert len(ev) == round(0.1 * N1) + round(0.1 * N2)
    assert len(train) + len(ev) == N1 + N2
    assert [s[1:] for s in ev.segments] == [(N1 - 300, N1), (N2 - 200, N2)]
    # an explicit eval_path: the whole training files train
    explicit = ftag_cfg(ftag_files / "s1.h5", eval_path=str(ftag_files / "s2.h5"))
    assert len(fh.SPEC.source(explicit, "train")) == N1
    assert len(fh.SPEC.source(explicit, "eval")) == N2


def test_same_global_batches_for_one_and_two_processes(ftag_files):
    src = fh.SPEC.source(ftag_cfg(ftag_files / "s*.h5"), "train")
    one = iter(pipeline.batched(src, batch_size=128, seed=7))
    parts = [
        iter(pipeline.batched(src, batch_size=128, seed=7, process_index=p, process_count=2))
        for p in range(2)
    ]
    for _ in range(3):
        whole = next(one)
        halves = [next(it) for it in parts]
        for k in whole:
            np.testing.assert_array_equal(whole[k], np.concatenate([h[k] for h in halves]))


def test_source_pickles_without_handles(ftag_files):
    src = fh.SPEC.source(ftag_cfg(ftag_files / "s1.h5"), "train")
    rows = np.arange(10, 50)
    before = src.read(rows)
    clone = pickle.loads(pickle.dumps(src))
    after = clone.read(rows)
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])


def test_max_tracks_cut_and_pad(ftag_files, tmp_path):
    norm = str(fh.write_norm_dict(fh.compute_norm_dict(str(ftag_files / "s1.h5")), tmp_path / "n.yaml"))

    def read(max_tracks):
        cfg = ftag_cfg(ftag_files / "s1.h5", max_tracks=max_tracks, norm_dict=norm)
        return fh.SPEC.source(cfg, "train").read(np.arange(8))

    short, full, long = read(20), read(40), read(48)
    np.testing.assert_array_equal(short["tracks"], full["tracks"][:, :20])
    np.testing.assert_array_equal(short["track_origin"], full["track_origin"][:, :20])
    assert long["tracks"].shape == (8, 48, 21) and not long["valid"][:, 40:].any()
    np.testing.assert_array_equal(long["tracks"][:, :40], full["tracks"])


def test_explicit_flavour_field(ftag_files):
    auto = fh.SPEC.source(ftag_cfg(ftag_files / "s1.h5"), "train").read(np.arange(200))
    pdg = fh.SPEC.source(ftag_cfg(ftag_files / "s1.h5", flavour_label="HadronConeExclTruthLabelID"), "train")
    np.testing.assert_array_equal(pdg.read(np.arange(200))["flavour"], auto["flavour"])


# ---------------------------------------------------------------------------------- synthetic maker


def test_default_dataset_made_once(tmp_path, monkeypatch):
    t0 = time.perf_counter()
    train = fs.default_dataset(tmp_path)
    assert time.perf_counter() - t0 < 10
    ev = fs.default_dataset(tmp_path, split="eval")
    mtime = os.path.getmtime(train)
    assert fs.default_dataset(tmp_path) == train and os.path.getmtime(train) == mtime
    assert len(fh.SPEC.source(ftag_cfg(train, eval_fraction=0.0), "train")) == 20_000
    monkeypatch.setenv("SMILEJAX_CACHE", str(tmp_path))
    cfg = fh.FtagConfig()  # path None: the default set, its own eval file
    assert len(fh.SPEC.source(cfg, "train")) == 20_000
    assert len(fh.SPEC.source(cfg, "eval")) == 5_000
    assert os.path.getmtime(train) == mtime and os.path.exists(ev)


def _auc(sig, bkg):
    x = np.concatenate([sig, bkg])
    ranks = np.argsort(np.argsort(x, kind="stable"), kind="stable") + 1.0
    return (ranks[: sig.size].sum() - sig.size * (sig.size + 1) / 2) / (sig.size * bkg.size)


def test_synthetic_physics(ftag_files):
    jets, tracks = jets_and_tracks(ftag_files / "s1.h5")
    flav, valid = jets["flavour_label"], tracks["valid"]
    sd0 = np.where(valid, tracks["IP3D_signed_d0_significance"], -np.inf)
    auc = _auc(sd0.max(1)[flav == 0], sd0.max(1)[flav == 2])
    assert 0.7 < auc < 0.95, auc  # informative, but far from perfect
    n_disp = (sd0 > 3).sum(1)
    n_b, n_c, n_light = (n_disp[flav == k].mean() for k in range(3))
    assert n_b > 2 * n_c and n_c > 2 * n_light, (n_b, n_c, n_light)  # displaced tracks: b >> c >> light
    origin = np.where(valid, tracks["ftagTruthOriginLabel"], -1)
    from_b = ((origin == 3) | (origin == 4)).any(1)
    assert from_b[flav == 0].mean() > 0.8 and not from_b[flav != 0].any()
    assert not (origin == 5).any(1)[flav != 1].any()
    n_tau = (origin == 6).sum(1)[flav == 3]
    assert set(np.unique(n_tau)) <= {0, 1, 2, 3} and n_tau.mean() > 1
    assert (valid.sum(1) >= 1).all()
    assert np.isnan(tracks["d0"][~valid]).all()  # padding as the dumper writes it


# ------------------------------------------------------------------------- compressed files, block order


def test_block_order_is_a_permutation_of_blocks():
    order = pipeline.BlockOrder(n=1050, block=100, seed=3)
    rows = order.rows(epoch=0, lo=0, hi=1000)
    offset = rows.min()
    assert 0 <= offset <= 50 and np.array_equal(np.sort(rows), np.arange(offset, offset + 1000))
    runs = rows.reshape(10, 100)
    assert (np.diff(runs, axis=1) == 1).all() and ((runs[:, 0] - offset) % 100 == 0).all()
    assert not np.array_equal(order.rows(1, 0, 1000), rows), "each epoch has its own order"
    np.testing.assert_array_equal(pipeline.BlockOrder(1050, 100, 3).rows(0, 300, 400), rows[300:400])


def test_compressed_chunked_files(ftag_files, tmp_path):
    lzf = fs.make(tmp_path / "s1_lzf.h5", N1, seed=1, compression="lzf", chunk_jets=100)
    norm = str(fh.write_norm_dict(fh.compute_norm_dict(str(ftag_files / "s1.h5")), tmp_path / "n.yaml"))
    plain_src = fh.SPEC.source(ftag_cfg(ftag_files / "s1.h5", norm_dict=norm), "train")
    cfg = ftag_cfg(lzf, norm_dict=norm, batch_size=200)
    src = fh.SPEC.source(cfg, "train")
    assert src.files[0].chunk_rows == 100 and plain_src.files[0].chunk_rows == 0
    rows = np.array([1, 2, 3, 250, 1999, 2500])
    for k, v in src.read(rows).items():
        np.testing.assert_array_equal(v, plain_src.read(rows)[k])
    assert fh.shuffle_block(src, cfg) == 100 and fh.shuffle_block(plain_src, cfg) == 1
    assert fh.shuffle_block(src, ftag_cfg(lzf, shuffle_block=1)) == 1

    # block order through the spec's pipeline: same global batches for 1 and 2 processes
    one = iter(fh.SPEC.pipeline(src, cfg, seed=5, process_index=0, process_count=1))
    two = [iter(fh.SPEC.pipeline(src, cfg, seed=5, process_index=p, process_count=2)) for p in range(2)]
    seen = []
    for _ in range(len(src) // 200):
        whole, halves = next(one), [next(it) for it in two]
        for k in whole:
            np.testing.assert_array_equal(whole[k], np.concatenate([h[k] for h in halves]))
        seen.append(whole["tracks"].reshape(len(whole["tracks"]), -1))
    seen = np.concatenate(seen)
    assert len(np.unique(seen, axis=0)) == len(seen), "an epoch reads every jet at most once"


def test_lz4_file_as_atlas_ftag_tools_writes_it(ftag_files, tmp_path):
    import hdf5plugin

    jets, tracks = jets_and_tracks(ftag_files / "s1.h5")
    path = tmp_path / "lz4.h5"
    with h5py.File(path, "w", locking=False) as f:
        f.create_dataset("jets", data=jets, chunks=True, **hdf5plugin.LZ4())
        f.create_dataset("tracks", data=tracks, chunks=(100, 40), **hdf5plugin.LZ4())
    norm = str(fh.write_norm_dict(fh.compute_norm_dict(str(ftag_files / "s1.h5")), tmp_path / "n.yaml"))
    src = fh.SPEC.source(ftag_cfg(path, norm_dict=norm, eval_fraction=0.0), "train")
    ref = fh.SPEC.source(ftag_cfg(ftag_files / "s1.h5", norm_dict=norm, eval_fraction=0.0), "train")
    assert src.files[0].chunk_rows == 100
    rows = np.sort(np.random.default_rng(0).choice(N1, 300, replace=False))
    for k, v in src.read(rows).items():
        np.testing.assert_array_equal(v, ref.read(rows)[k])


def test_uncompressed_files_are_read_through_a_memory_map(ftag_files, ftag_mock, tmp_path, monkeypatch):
    # Other writers' layouts: float16 and big-endian fields, as well as atlas-ftag-tools' mock file.
    jets, tracks = jets_and_tracks(ftag_files / "s1.h5")
    kinds = {"d0": ">f4", "z0SinTheta": "f2", "numberOfPixelHits": ">i2"}
    odd = tmp_path / "odd.h5"
    with h5py.File(odd, "w", locking=False) as f:
        f.create_dataset("jets", data=jets)
        f.create_dataset(
            "tracks", data=tracks.astype([(n, kinds.get(n, tracks.dtype[n])) for n in tracks.dtype.names])
        )
    lzf = fs.make(tmp_path / "lzf.h5", 500, seed=3, compression="lzf", chunk_jets=100)
    for path, mapped in ((ftag_files / "s1.h5", True), (odd, True), (ftag_mock, True), (lzf, False)):
        with fh.open_h5(str(path)) as f:
            assert (fh.hdf5._mapped(f["tracks"]) is not None) == mapped, path
        cfg = ftag_cfg(path, eval_fraction=0.0, norm_dict=str(tmp_path / f"{Path(path).stem}-norm.yaml"))
        fh.write_norm_dict(fh.compute_norm_dict(str(path)), cfg.norm_dict)
        rows = np.sort(np.random.default_rng(1).choice(len(fh.SPEC.source(cfg, "train")), 300, replace=False))
        got = fh.SPEC.source(cfg, "train").read(rows, width=40)
        with monkeypatch.context() as m:
            m.setattr(fh.hdf5, "_mapped", lambda ds: None)  # HDF5's own reading
            want = fh.SPEC.source(cfg, "train").read(rows, width=40)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"{path}: {k}")
    # the maps a process keeps are bounded (each holds a file descriptor): the oldest goes
    monkeypatch.setattr(fh.hdf5, "_MAPPED", {})
    monkeypatch.setattr(fh.hdf5, "_MAPPED_MAX", 1)
    for path in (ftag_files / "s1.h5", odd):
        with fh.open_h5(str(path)) as f:
            assert fh.hdf5._mapped(f["tracks"])[:5].tobytes() == f["tracks"][:5].tobytes()  # padding is NaN
        assert [key[1] for key in fh.hdf5._MAPPED] == [str(path)]
