"""The Pythia e+e- -> qq̄ MLPF maker: the TFDS dataset particleflow reads, element and target physics, the PF
baseline, jets, determinism and argument errors. One small dataset (2 workers) is shared by the tests."""

from __future__ import annotations

import json

import numpy as np
import pytest
from smilejax.inputs import mlpf_format as fmt
from smilejax.models.mlpf import detector
from smilejax.models.mlpf import make_pythia as mp

# TFDS's protobuf use warns on every dataset write and read
pytestmark = pytest.mark.filterwarnings("ignore:label\\(\\) is deprecated:DeprecationWarning")

N_EVENTS, WORKERS, SEED = 40, 2, 5
N_TEST = 4  # round(40 * 0.1)
TRACK, CLUSTER = 1, 2
CH_HADRON, N_HADRON, PHOTON, ELECTRON, MUON = 1, 2, 3, 4, 5


def _read(data_dir, split: str, name: str = mp.NAME, config: int = 1) -> list[dict]:
    import tensorflow_datasets as tfds

    source = tfds.builder(f"{name}/{config}:{fmt.VERSION}", data_dir=str(data_dir)).as_data_source(split)
    return [source[i] for i in range(len(source))]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("mlpf_pythia")
    out = mp.make(data_dir, N_EVENTS, seed=SEED, workers=WORKERS, progress=False)
    return data_dir, out, _read(data_dir, "train"), _read(data_dir, "test")


@pytest.fixture(scope="module")
def events(made):
    return made[2] + made[3]


def _cat(events, key):
    return np.concatenate([e[key] for e in events])


def test_dataset_reads_back_with_tfds(made):
    data_dir, out, train, test = made
    assert out == data_dir / mp.NAME / "1" / fmt.VERSION
    assert len(train) == N_EVENTS - N_TEST and len(test) == N_TEST
    assert not list(data_dir.glob(".*parts")), "part files are removed"
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["name"] == mp.NAME and info["configName"] == "1" and "mlpf-pythia" in info["description"]
    for e in train + test:
        assert set(e) == set(fmt.EVENT_KEYS)
        n = e["X"].shape[0]
        assert n > 0 and e["X"].shape == (n, fmt.N_X) and e["X"].dtype == np.float32
        assert e["ytarget"].shape == e["ycand"].shape == (n, fmt.N_Y)
        assert e["ytarget"].dtype == e["ycand"].dtype == np.float32
        assert np.ndim(e["genmet"]) == 0 and e["genmet"] >= 0
        for key in ("genjets", "targetjets"):
            assert e[key].ndim == 2 and e[key].shape[1] == 4 and e[key].dtype == np.float32
        for key in ("X", "ytarget", "ycand"):
            assert np.isfinite(e[key]).all()


def test_elements_tracks_then_clusters_with_their_columns(events):
    for e in events:
        kind = e["X"][:, 0]
        assert set(np.unique(kind)) <= set(fmt.ELEMENT_TYPES)
        assert (np.diff(kind) >= 0).all(), "tracks first, then clusters"
    X = _cat(events, "X")
    trk = dict(zip(fmt.TRACK_FEATURES, X[X[:, 0] == TRACK, :16].T, strict=True))
    cl = dict(zip(fmt.CLUSTER_FEATURES, X[X[:, 0] == CLUSTER].T, strict=True))
    assert 10 * len(events) < trk["pt"].size and 10 * len(events) < cl["energy"].size
    assert (X[X[:, 0] == TRACK, 16] == 0).all(), "the 17th column is cluster-only"
    # tracks: pT from ω in 4 T, p >= pT, the acceptance, LCIO-like parameters in mm
    np.testing.assert_allclose(trk["pt"], 1.2e-3 / np.abs(trk["omega"]), rtol=1e-4)
    np.testing.assert_allclose(trk["p"], trk["pt"] * np.sqrt(1 + trk["tanLambda"] ** 2), rtol=1e-4)
    np.testing.assert_allclose(trk["eta"], np.arcsinh(trk["tanLambda"]), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(trk["sin_phi"] ** 2 + trk["cos_phi"] ** 2, 1.0, rtol=1e-5)
    assert trk["pt"].min() > 0.15 and np.abs(trk["eta"]).max() < 2.6
    assert set(np.unique(trk["ndf"])) <= {2.0 * h - 5 for h in range(4, 13)} and (trk["chi2"] > 0).all()
    assert np.median(np.abs(trk["D0"])) < 0.05 and np.median(np.abs(trk["Z0"])) < 0.1, "mostly prompt"
    assert (trk["radiusOfInnermostHit"] >= 20).all() and np.median(trk["radiusOfInnermostHit"]) == 31.0
    assert (trk["dEdx"] > 0).all() and (trk["time"] >= 0).all()
    # clusters: energy split, position on the calorimeter, et = E sinθ
    assert (cl["energy"] >= detector.CLUSTER_E_MIN - 1e-6).all()
    parts = cl["energy_ecal"] + cl["energy_hcal"] + cl["energy_other"]
    np.testing.assert_allclose(cl["energy"], parts, rtol=1e-5)
    np.testing.assert_allclose(cl["et"], cl["energy"] * np.sin(cl["iTheta"]), rtol=1e-4, atol=1e-6)
    r = np.hypot(cl["position.x"], cl["position.y"])
    on_calo = (r > detector.R_ECAL - 50) | (np.abs(cl["position.z"]) > detector.Z_ECAL - 50)
    assert on_calo.all()
    np.testing.assert_allclose(cl["iTheta"], np.arctan2(r, cl["position.z"]), rtol=1e-4, atol=1e-5)
    assert (cl["num_hits"] >= 1).all() and (cl["sigma_x"] > 0).all()


def test_targets_follow_particleflows_rules(events):
    X, y = _cat(events, "X"), _cat(events, "ytarget")
    trk, cl = X[:, 0] == TRACK, X[:, 0] == CLUSTER
    # every track has its particle: charged classes, unit charge, one track each
    assert set(np.unique(y[trk, 0])) <= {CH_HADRON, ELECTRON, MUON} and (y[trk, 0] == CH_HADRON).mean() > 0.9
    assert (np.abs(y[trk, 1]) == 1).all() and (y[trk, 10] == 1).all()
    # clusters: neutral targets or none, photons the most common
    assert set(np.unique(y[cl, 0])) <= {0, N_HADRON, PHOTON} and (y[cl, 1] == 0).all()
    counts = np.bincount(y[cl, 0].astype(int), minlength=6)
    assert counts[PHOTON] > counts[N_HADRON] > 0 and counts[0] > 0
    has = y[:, 0] > 0
    assert (y[~has, :12] == 0).all() and (y[~has, 12] == -1).all(), "rows without target: zeros, jet_idx -1"
    assert (y[has, 6] >= y[has, 2] * 0.999).all() and (y[has, 8] == 1).all()
    np.testing.assert_allclose(y[has, 4] ** 2 + y[has, 5] ** 2, 1.0, rtol=1e-5)
    # target pT follows the element's measurement
    ratio = y[trk, 2] / X[trk, 1]
    assert 0.98 < np.median(ratio) < 1.02 and np.percentile(np.abs(ratio - 1), 90) < 0.05
    # each visible particle in one target: the sum is √s minus what escapes (ν, beam pipe, loopers)
    total = np.array([e["ytarget"][:, 6].sum() for e in events])
    assert (total > 0).all() and (total <= mp.ECM + 0.1).all()
    assert 100 < np.median(total) < mp.ECM and (total > 340).mean() >= 0.1, total


def test_jets_met_and_jet_index(events):
    genjets = [e["genjets"] for e in events]
    assert np.mean([len(j) > 0 for j in genjets]) > 0.9
    lead = np.array([j[0, 0] for j in genjets if len(j)])
    assert 20 < np.median(lead) < mp.ECM / 2 + 1
    for e in events:
        for key in ("genjets", "targetjets"):
            jets = e[key]
            assert (jets[:, 0] >= mp.JET_PT_MIN).all() and (np.diff(jets[:, 0]) <= 0).all(), "pT-ordered"
            assert (jets[:, 3] >= jets[:, 0] * 0.999).all() and (np.abs(jets[:, 2]) <= np.pi + 1e-6).all()
        # jet_idx: each target jet's energy is that of the targets pointing to it
        y, tj = e["ytarget"], e["targetjets"]
        assert y[:, 12].max() < len(tj)
        for j in range(len(tj)):
            np.testing.assert_allclose(y[y[:, 12] == j, 6].sum(), tj[j, 3], rtol=1e-3)
    met = np.array([e["genmet"] for e in events])
    assert np.median(met) < 5 and met.max() < mp.ECM / 2


def test_pf_baseline_agrees_with_targets(events):
    y, c = _cat(events, "ytarget"), _cat(events, "ycand")
    agree = (y[:, 0] == c[:, 0]).mean()
    freq_y = np.bincount(y[:, 0].astype(int), minlength=6) / len(y)
    freq_c = np.bincount(c[:, 0].astype(int), minlength=6) / len(c)
    chance = float(freq_y @ freq_c)
    assert agree > 0.85 and agree > chance + 0.3, (agree, chance)
    X = _cat(events, "X")
    trk = X[:, 0] == TRACK
    assert (c[trk, 0] > 0).all() and (c[trk, 1] == np.sign(X[trk, 13])).all(), "each track: a charged one"
    assert (c[~trk, 1] == 0).all() and set(np.unique(c[~trk, 0])) <= {0, N_HADRON, PHOTON}
    ratio = np.array([e["ycand"][:, 6].sum() / e["ytarget"][:, 6].sum() for e in events])
    assert 0.9 < np.median(ratio) < 1.1, ratio


def test_same_seed_same_events_and_workers_one_writes_generate(tmp_path):
    a, b = mp.generate(20, seed=11), mp.generate(20, seed=11)
    assert len(a) == 20
    for x, z in zip(a, b, strict=True):
        for key in fmt.EVENT_KEYS:
            np.testing.assert_array_equal(x[key], z[key])
    other = mp.generate(20, seed=12)
    differs = [len(x["X"]) != len(z["X"]) or (x["X"] != z["X"]).any() for x, z in zip(a, other, strict=True)]
    assert any(differs), "another seed gives other events"

    mp.make(tmp_path, 20, seed=11, workers=1, test_fraction=0.25, config=3, progress=False)
    written = _read(tmp_path, "train", config=3) + _read(tmp_path, "test", config=3)

    def key(e):  # TFDS shuffles records on write: compare as sets
        return (e["X"].shape[0], round(float(e["X"][:, 5].sum()), 2))

    assert sorted(map(key, written)) == sorted(map(key, a))
    by_key = {key(e): e for e in a}
    for e in written:
        for k in fmt.EVENT_KEYS:
            np.testing.assert_array_equal(e[k], by_key[key(e)][k])


def test_bad_arguments(made, tmp_path):
    with pytest.raises(ValueError, match="n_events"):
        mp.generate(0)
    with pytest.raises(ValueError, match="n_events"):
        mp.generate(2.5)
    with pytest.raises(ValueError, match="seed"):
        mp.generate(1, seed=-1)
    with pytest.raises(ValueError, match="n_events"):
        mp.make(tmp_path, 1)
    with pytest.raises(ValueError, match="workers"):
        mp.make(tmp_path, 10, workers=0)
    for fraction in (0, 1, 1.5):
        with pytest.raises(ValueError, match="test_fraction"):
            mp.make(tmp_path, 10, test_fraction=fraction)
    with pytest.raises(ValueError, match="config"):
        mp.make(tmp_path, 10, config=11)
    with pytest.raises(ValueError, match="name"):
        mp.make(tmp_path, 10, name="Bad-Name")
    with pytest.raises(FileExistsError, match="overwrite"):
        mp.make(made[0], 10)
    assert not list(tmp_path.iterdir()), "nothing written on bad arguments"
