"""The Pythia tt̄ maker: file layout, reading through the ftag_h5 pipeline, physics, truth labels, parallel
determinism; pile-up and fake tracks, GN2's track selection. Small files (~50 events per worker, and 40
events with and without pile-up) are shared by the tests."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from smilejax.inputs import ftag_h5 as fh
from smilejax.inputs import pipeline
from smilejax.models.gn2 import make_pythia as fp
from smilejax.models.gn2 import make_synthetic as fs
from smilejax.models.gn2 import multiplicity, pileup, tracker

N_JETS, WORKERS, SEED = 240, 2, 3
PU_EVENTS, MU = 30, 60.0  # the pile-up pair: the same tt̄ events with mu = 0 and MU
B, C, LIGHT, TAU = range(4)


@pytest.fixture(scope="module")
def tt(tmp_path_factory):
    path = fp.make(
        tmp_path_factory.mktemp("pythia") / "tt.h5", N_JETS, SEED, workers=WORKERS, pileup=0, progress=False
    )
    with h5py.File(path, "r", locking=False) as f:
        return path, f["jets"][:], f["tracks"][:], dict(f.attrs)


def test_file_layout_matches_the_synthetic_format(tt):
    path, jets, tracks, attrs = tt
    assert jets.dtype == fs.JET_DTYPE and tracks.dtype == fs.TRACK_DTYPE
    assert jets.shape == (N_JETS,) and tracks.shape == (N_JETS, fs.MAX_TRACKS)
    assert attrs["n_jets"] == N_JETS and attrs["workers"] == WORKERS and attrs["seed"] == SEED
    assert attrs["n_events"] >= 2 * fp.BATCH_EVENTS and "pythia8mc" in attrs["generator"]
    with h5py.File(path, "r", locking=False) as f:
        assert list(f["jets"].attrs["flavour_label"]) == list(fs.FLAVOUR_NAMES)
        assert f["tracks"].chunks is None, "merged file is contiguous (fast random reads)"

    valid = tracks["valid"]
    n = valid.sum(1)
    assert (jets["n_tracks"] == n).all() and n.max() <= fs.MAX_TRACKS
    assert (valid == (np.arange(fs.MAX_TRACKS)[None, :] < n[:, None])).all(), "valid tracks fill the front"
    assert np.isnan(tracks["d0"][~valid]).all() and (tracks["ftagTruthVertexIndex"][~valid] == -1).all()
    abs_sd0 = np.where(valid, np.abs(tracks["IP3D_signed_d0_significance"]), -1)
    assert (np.diff(abs_sd0, axis=1) <= 0).all(), "sorted by |d0 significance|, descending"

    # GN2 track selection and jet acceptance (MeV, mm)
    t = tracks[valid]
    assert (t["pt"] > 500).all() and (np.abs(t["eta"]) < 2.5).all()
    assert (np.abs(t["d0"]) < 3.5).all() and (np.abs(t["z0SinTheta"]) < 5).all()
    assert (t["numberOfPixelHits"].astype(int) + t["numberOfSCTHits"] >= 8).all()
    assert (np.hypot(t["dphi"], t["deta"]) < 0.5).all(), "tracks lie in the jet's association cone"
    assert attrs["pileup"] == 0
    assert (np.abs(jets["eta"]) < 2.5).all() and np.median(jets["pt"]) > 20e3
    assert (jets["abs_eta"] == np.abs(jets["eta"])).all() and (jets["mass"] > 0).all()
    assert set(np.unique(t["ftagTruthOriginLabel"])) <= {2, 3, 4, 5, 6, 7}, "no pileup or fakes generated"

    # labels agree with each other; lifetime signs follow the jet axis (dphi = φ_trk - φ_jet)
    np.testing.assert_array_equal(
        jets["HadronConeExclTruthLabelID"], np.asarray(fs.TRUTH_LABEL_ID)[jets["flavour_label"]]
    )
    sd0, sz0 = t["IP3D_signed_d0_significance"], t["IP3D_signed_z0_significance"]
    assert (np.sign(sd0) == np.where(t["d0"] * -np.sin(t["dphi"]) >= 0, 1, -1)).all()
    assert (np.sign(sz0) == np.where(t["z0SinTheta"] * -t["deta"] >= 0, 1, -1)).all()


def test_reads_through_spec_and_pipeline(tt):
    path = tt[0]
    for jet_vars in (["pt", "eta"], ["pt_btagJes", "eta_btagJes"]):
        cfg = fh.FtagConfig(path=str(path), jet_vars=jet_vars, eval_fraction=0.0, batch_size=48)
        src = fh.SPEC.source(cfg, "train")
        assert len(src) == N_JETS and src.aux
        batch = next(iter(pipeline.batched(src, batch_size=48, seed=0)))
        assert set(batch) == {"tracks", "valid", "flavour", "track_origin", "track_vertex"}
        assert batch["tracks"].shape == (48, 40, 21) and batch["tracks"].dtype == np.float32
        assert np.isfinite(batch["tracks"]).all() and (batch["tracks"][~batch["valid"]] == 0).all()
        assert set(np.unique(batch["flavour"])) <= {B, C, LIGHT, TAU}
        assert (batch["track_origin"][~batch["valid"]] == -1).all()
        assert (batch["track_vertex"][batch["valid"]] >= 0).all()
    report = fh.check(str(path))[str(path)]
    assert report["jets"] == N_JETS and report["aux"] and sum(report["flavours"]) == N_JETS


def test_b_jets_carry_displaced_tracks_from_b_decays(tt):
    _, jets, tracks, _ = tt
    flav, valid = jets["flavour_label"], tracks["valid"]
    counts = np.bincount(flav, minlength=4)
    assert counts[B] >= 0.15 * N_JETS and counts[LIGHT] >= 0.25 * N_JETS, counts  # tt̄: 2 b quarks per event
    sd0 = np.abs(tracks["IP3D_signed_d0_significance"])
    mean_b, mean_light = (sd0[valid & (flav[:, None] == k)].mean() for k in (B, LIGHT))
    assert mean_b > 2 * mean_light, (mean_b, mean_light)

    origin = np.where(valid, tracks["ftagTruthOriginLabel"], -1)
    from_b = ((origin == fs.FROM_B) | (origin == fs.FROM_BC)).any(1)
    assert from_b[flav == B].mean() > 0.9 and from_b[flav == LIGHT].mean() < 0.15
    from_c = (origin == fs.FROM_C).any(1)
    assert from_c[flav == C].mean() > 0.3 and from_c[flav == C].mean() > 3 * from_c[flav == LIGHT].mean()
    # decay products of a b hadron fly along the jet: positive lifetime sign
    disp = (origin == fs.FROM_B) & (sd0 > 3)
    assert (tracks["IP3D_signed_d0_significance"][disp] > 0).mean() > 0.8


def test_vertex_indices_group_tracks_by_production_vertex(tt):
    tracks = tt[2]
    valid = tracks["valid"]
    vertex = np.where(valid, tracks["ftagTruthVertexIndex"], -1).astype(int)
    origin = tracks["ftagTruthOriginLabel"]
    for row in vertex[valid.sum(1) < fs.MAX_TRACKS]:  # 0 (primary vertex) and 1..k without gaps
        used = np.unique(row[row >= 0])
        if used.size:
            assert (used == np.arange(used[0], used[0] + used.size)).all() and used[0] in (0, 1)
    primary = valid & (origin == fs.PRIMARY)
    heavy = valid & np.isin(origin, (fs.FROM_B, fs.FROM_BC, fs.FROM_C))
    assert (vertex[primary] == 0).mean() > 0.95 and (vertex[heavy] > 0).mean() > 0.9
    # most b jets with several B-decay tracks have two of them from one displaced vertex
    shared = [
        np.bincount(row[(o == fs.FROM_B) & (row > 0)]).max(initial=0) >= 2
        for row, o in zip(vertex, origin, strict=True)
        if ((o == fs.FROM_B) & (row > 0)).sum() >= 3
    ]
    assert len(shared) >= 3 and np.mean(shared) > 0.8, shared


def test_parallel_output_is_deterministic_per_worker(tt, tmp_path):
    """Worker k's jets depend only on (seed, k): a smaller file is the heads of the workers' shares."""
    _, jets, tracks, _ = tt
    path = fp.make(tmp_path / "small.h5", 60, SEED, workers=WORKERS, pileup=0, progress=False)
    with h5py.File(path, "r", locking=False) as f:
        small_jets, small_tracks = f["jets"][:], f["tracks"][:]
    share = N_JETS // WORKERS
    rows = np.r_[0:30, share : share + 30]
    np.testing.assert_array_equal(small_jets, jets[rows])
    for name in fs.TRACK_DTYPE.names:  # field by field: NaN padding compares equal
        np.testing.assert_array_equal(small_tracks[name], tracks[name][rows], err_msg=name)
    assert len(np.unique(jets["eventNumber"] // 100_000_000)) == WORKERS


# ------------------------------------------------------------------------------------- pile-up and fakes


@pytest.fixture(scope="module")
def pu():
    """Worker 0's first PU_EVENTS tt̄ events without and with pile-up (mu = MU), made in this process:
    {mu: (jets, tracks)}, and the pile-up generator's ``MinBias`` under the key "minbias"."""
    from smilejax.generators.pythia import seeds

    out = {}
    for mu in (0.0, MU):
        gen = fp.Generator(*seeds(SEED, 0), pileup=mu)
        out[mu] = gen.batch(PU_EVENTS)
        assert gen.events == PU_EVENTS
    out["minbias"] = gen.minbias
    return out


def test_make_records_the_pileup_and_the_maker_reports_tracks_per_jet(tmp_path, capsys):
    import argparse

    from smilejax.models.gn2 import makers

    path = fp.make(tmp_path / "pu.h5", 10, SEED, workers=1, pileup=5, progress=False)
    with h5py.File(path, "r", locking=False) as f:
        assert f.attrs["pileup"] == 5 and f.attrs["pileup_sigma_z_mm"] == pileup.SIGMA_Z
    assert multiplicity.summary(path)["jets"] == 10
    png = tmp_path / "n.png"
    makers._report_tracks(path, str(png))
    assert "tracks per jet: mean" in capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    parser = argparse.ArgumentParser()
    makers.PYTHIA.add_arguments(parser)
    args = parser.parse_args(["--out", "x.h5", "--jets", "5"])
    assert args.pileup == makers.DEFAULT_PILEUP == fp.DEFAULT_PILEUP and args.plot is None


def test_pileup_and_fake_tracks_are_made_and_labelled(pu):
    jets, tracks = pu[MU]
    valid = tracks["valid"]
    t = tracks[valid]
    origin = t["ftagTruthOriginLabel"]
    n_origin = np.bincount(origin, minlength=8)
    assert n_origin[fs.PILEUP] >= 20 and n_origin[fs.FAKE] >= 5, n_origin
    assert n_origin[fs.PRIMARY] > 2 * n_origin[fs.PILEUP], "|z0 sinθ| < 5 mm keeps few pile-up tracks"
    no_truth = np.isin(origin, (fs.PILEUP, fs.FAKE))
    assert (t["ftagTruthVertexIndex"][no_truth] == tracker.NO_TRUTH_VERTEX).all()
    assert (t["ftagTruthVertexIndex"][~no_truth] >= 0).all()
    # pile-up vertices lie along the beam line, mm to cm from the hard scatter: z0 sinθ is wide
    z0 = np.abs(t["z0SinTheta"])
    assert np.median(z0[origin == fs.PILEUP]) > 20 * np.median(z0[origin == fs.PRIMARY])
    assert np.median(z0[origin == fs.PILEUP]) > 1.0
    # the jets and their labels come from the hard scatter alone: the same as without pile-up
    jets0 = pu[0.0][0]
    for name in ("eta", "flavour_label", "HadronConeExclTruthLabelID", "eventNumber"):
        np.testing.assert_array_equal(jets[name], jets0[name], err_msg=name)


def test_selection_and_cap_hold_on_every_stored_track(pu):
    for mu in (0.0, MU):
        jets, tracks = pu[mu]
        valid = tracks["valid"]
        n = valid.sum(1)
        assert (jets["n_tracks"] == n).all() and n.max() <= fs.MAX_TRACKS
        assert (valid == (np.arange(fs.MAX_TRACKS)[None, :] < n[:, None])).all()
        abs_sd0 = np.where(valid, np.abs(tracks["IP3D_signed_d0_significance"]), -1)
        assert (np.diff(abs_sd0, axis=1) <= 0).all(), "sorted by |d0 significance|, descending"
        t = tracks[valid]
        assert (t["pt"] > 500).all() and (np.abs(t["eta"]) < 2.5).all(), mu
        assert (np.abs(t["d0"]) < tracker.D0_MAX).all() and (np.abs(t["z0SinTheta"]) < tracker.Z0_MAX).all()
        hits = t["numberOfPixelHits"].astype(int) + t["numberOfSCTHits"]
        shared = t["numberOfPixelSharedHits"].astype(int) + t["numberOfSCTSharedHits"] // 2
        holes = t["numberOfPixelHoles"].astype(int) + t["numberOfSCTHoles"]
        assert (hits >= 8).all() and (shared <= 1).all() and (holes <= 2).all()
        assert (t["numberOfPixelHoles"] <= 1).all()
        # the association cone is ATLAS's pT-dependent one: at most 0.456 (at 20 GeV)
        assert (np.hypot(t["dphi"], t["deta"]) < 0.239 + np.exp(-1.22 - 1.64e-5 * 20e3) + 0.01).all()


def test_pileup_raises_the_tracks_per_jet(pu):
    s0, s1 = (
        multiplicity.summarise(t["valid"].sum(1), t["ftagTruthOriginLabel"][t["valid"]])
        for _, t in (pu[0.0], pu[MU])
    )
    assert s0["origin_share"]["Pileup"] == 0 and s0["origin_share"]["Fake"] == 0
    assert s1["origin_share"]["Pileup"] > 0.02 and s1["origin_share"]["Fake"] > 0.002, s1
    assert s1["mean"] > s0["mean"] + 0.5, (s0["mean"], s1["mean"])
    assert s0["quantiles"]["0.5"] <= s1["quantiles"]["0.5"] and s1["quantiles"]["0.99"] <= fs.MAX_TRACKS
    assert "tracks per jet: mean" in multiplicity.describe(s1)


def test_overlay_spreads_vertices_along_the_beam_line(pu):
    from smilejax.generators.pythia import kinematics

    rng = np.random.default_rng(0)
    rec, info = pileup.overlay(rng, pu["minbias"], 40, 25.0)
    z = info["z"]
    assert 800 < z.size < 1200 and (np.diff(info["crossing"]) >= 0).all()
    # z of pile-up minus z of the hard scatter: sigma_z * sqrt(2)
    assert abs(z.std() / (pileup.SIGMA_Z * np.sqrt(2)) - 1) < 0.15, z.std()
    assert rec.n_events == 40 and (np.diff(rec.event) >= 0).all() and (rec.charge != 0).all()
    pt, eta, _ = kinematics(rec.p)
    assert (pt > pileup.PT_KEEP).all() and (np.abs(eta) < pileup.ETA_KEEP).all()
    assert np.std(rec.v[:, 2]) > 30 and np.percentile(np.hypot(rec.v[:, 0], rec.v[:, 1]), 50) < 0.05


def test_fakes_scale_with_pileup_and_have_wide_impact_parameters():
    rng = np.random.default_rng(1)
    jets = {"pt": np.full(2000, 50.0), "eta": rng.uniform(-2, 2, 2000), "phi": rng.uniform(-3, 3, 2000)}
    assert pileup.fakes(rng, jets, 0.0) is None
    low, high = (pileup.fakes(rng, jets, mu) for mu in (10.0, 60.0))
    assert 0.8 < high["jet"].size / (6 * low["jet"].size) < 1.25
    assert abs(high["jet"].size / 2000 - pileup.FAKES_PER_MU * 60) < 0.1
    assert np.median(np.abs(high["d0"])) > 0.1 and (np.abs(high["d0"]) > 3.5).any()
    assert (np.hypot(high["deta"], high["dphi"]) <= 0.239 + np.exp(-1.22 - 1.64e-5 * 50e3) + 1e-9).all()
    kept = tracker.selected(high)
    assert 0.05 < kept.mean() < 0.8, kept.mean()


# ------------------------------------------------------------------------------------- unit pieces


def test_hadron_flavour_from_pdg_ids():
    ids = np.array([511, -521, 5122, 531, 421, -411, 4122, 443, 211, 310, 3122, 2101, 21, 11, 15])
    np.testing.assert_array_equal(tracker.heavy_quark(ids), [5, 5, 5, 5, 4, 4, 4, 4, 2, 3, 3, 0, 0, 0, 0])


def test_origin_priority():
    tb, tc, tt, tl = tracker.B, tracker.C, tracker.TAU, tracker.LONG
    flags = np.array([0, tb, tb | tc, tc, tt, tl, tb | tl, tt | tc])
    expected = [fs.PRIMARY, fs.FROM_B, fs.FROM_BC, fs.FROM_C, fs.FROM_TAU, fs.OTHER, fs.FROM_B, fs.FROM_C]
    np.testing.assert_array_equal(tracker.origin(flags), expected)


def test_vertex_numbering_follows_the_dumper():
    jet = np.array([0, 0, 0, 0, 0, 1, 1])
    pt = np.array([5.0, 1.0, 3.0, 2.0, 4.0, 1.0, 2.0])
    v = np.array(
        [
            [0.0, 0.0, 0.05],  # within 0.1 mm of the primary vertex -> 0
            [2.0, 0.0, 0.0],  # softest displaced track -> 1
            [2.05, 0.0, 0.0],  # within 0.1 mm of vertex 1 -> 1
            [5.0, 1.0, 0.0],  # -> 2
            [5.0, 1.0, 0.0],  # same point -> 2
            [1.0, 1.0, 1.0],  # other jet: numbering starts again
            [0.0, 0.0, 0.0],
        ]
    )
    np.testing.assert_array_equal(tracker.vertex_index(jet, pt, v), [0, 1, 1, 2, 2, 1, 0])


def test_hits_depend_on_the_production_radius():
    r = np.repeat([0.0, 40.0, 100.0, 200.0, 320.0], 200)
    hits = tracker.layer_hits(np.random.default_rng(0), r)
    ibl, pix, sct = (
        hits[k].reshape(5, -1)
        for k in ("numberOfInnermostPixelLayerHits", "numberOfPixelHits", "numberOfSCTHits")
    )
    assert ibl[0].mean() > 0.95 and (ibl[1:] == 0).all(), "produced beyond the IBL: no IBL hit"
    assert (pix[3:] == 0).all() and pix[2].max() <= 2 and pix[0].mean() > 3.5
    assert (hits["numberOfPixelHoles"].reshape(5, -1)[3:] == 0).all(), "layers never crossed are no holes"
    assert sct[:4].min() >= 6 and sct[4].max() <= 6 + 2 * 3, "beyond the first SCT layer: fewer SCT hits"
    assert np.isinf(hits["first_r"]).sum() == 0 and (hits["first_r"].reshape(5, -1)[4] >= 371).all()


def test_closest_matches_within_groups():
    # a: 3 objects in events 0, 0, 1; b: jets in events 0, 0, 1 with per-jet cones
    idx = tracker.closest(
        np.array([0, 0, 1]),
        np.array([0.0, 1.0, 0.0]),
        np.array([0.0, 0.0, 3.1]),
        np.array([0, 0, 1]),
        np.array([0.1, 1.05, 0.0]),
        np.array([0.0, 0.0, -3.1]),
        np.array([0.3, 0.3, 0.1]),
    )
    np.testing.assert_array_equal(idx, [0, 1, 2])  # the last one across φ = ±π
    assert (
        tracker.closest(
            np.array([0]), np.zeros(1), np.zeros(1), np.array([1]), np.zeros(1), np.zeros(1), 0.3
        )[0]
        == -1
    )


def test_missing_generator_fails_with_install_hint(monkeypatch):
    from smilejax.generators import pythia

    real = pythia.importlib.util.find_spec
    monkeypatch.setattr(pythia.importlib.util, "find_spec", lambda m: None if m == "pythia8mc" else real(m))
    with pytest.raises(ImportError, match=r"pip install -c launch/locks/venv\.txt -e '\.\[pythia\]'"):
        fp.make("unused.h5", 10)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n_jets"):
        fp.make(tmp_path / "x.h5", 0)
    with pytest.raises(ValueError, match="workers"):
        fp.make(tmp_path / "x.h5", 10, workers=0)
    with pytest.raises(ValueError, match="pileup"):
        fp.make(tmp_path / "x.h5", 10, pileup=-1)
    assert not list(tmp_path.iterdir()), "nothing written on bad arguments"
