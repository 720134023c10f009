"""``smilejax eval`` for MLPF: particle efficiency / fake rate, jets and missing pT on hand-made particles
with known answers, and a tiny trained MLPF evaluated end to end through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from smilejax.models.mlpf import evaluation, jets, particles, plots, response
from smilejax.models.mlpf.particles import Particles

from smilejax import cli

PNG = b"\x89PNG\r\n\x1a\n"


def _particles(cls, pt, eta=None, phi=None, energy=None) -> Particles:
    cls = np.atleast_2d(np.asarray(cls, np.int32))
    pt = np.atleast_2d(np.asarray(pt, np.float64))
    eta = np.zeros_like(pt) if eta is None else np.atleast_2d(np.asarray(eta, np.float64))
    phi = np.zeros_like(pt) if phi is None else np.atleast_2d(np.asarray(phi, np.float64))
    energy = pt * np.cosh(eta) if energy is None else np.atleast_2d(np.asarray(energy, np.float64))
    return Particles(cls, pt, eta, phi, energy)


# ---------------------------------------------------------------- reading the three collections


def test_prediction_unpacking_follows_particleflow():
    # binary (no particle, particle) x pid (none, 211, 130, 22, 11, 13)
    binary = np.array([[[0.0, 1.0], [2.0, 0.0], [0.0, 3.0]]])
    pid = np.zeros((1, 3, 6))
    pid[0, 0, 3] = pid[0, 1, 1] = pid[0, 2, 0] = 5.0  # photon; (ignored: no particle); "none" type
    np.testing.assert_array_equal(particles.predicted_class(binary, pid), [[3, 0, 0]])

    X = np.zeros((1, 3, 17), np.float32)
    X[0, :, 1], X[0, :, 5] = [2.0, 4.0, 1.0], [10.0, 20.0, 5.0]
    momentum = np.zeros((1, 3, 5), np.float32)
    momentum[0, 0] = [np.log(1.5), 0.7, 1.0, 0.0, np.log(0.5)]  # sin phi 1, cos phi 0: phi = pi/2
    p = particles.from_prediction(X, binary, pid, momentum)
    assert p.cls.tolist() == [[3, 0, 0]]
    np.testing.assert_allclose(p.pt[0], [3.0, 0.0, 0.0])  # exp(log 1.5) * 2; 0 without a particle
    np.testing.assert_allclose(p.energy[0], [5.0, 0.0, 0.0])
    assert p.eta[0, 0] == pytest.approx(0.7) and p.phi[0, 0] == pytest.approx(np.pi / 2)

    ytarget = np.zeros((1, 2, 13), np.float32)
    ytarget[0, 0, [0, 3, 4, 5]] = [1.9, -0.3, 0.0, -1.0]  # class truncates to 1; phi = pi
    t = particles.from_target(ytarget, np.array([[7.0, 0.0]]), np.array([[9.0, 0.0]]))
    assert t.cls.tolist() == [[1, 0]] and t.pt[0, 0] == 7.0 and t.energy[0, 0] == 9.0
    assert t.phi[0, 0] == pytest.approx(np.pi) and t.eta[0, 0] == pytest.approx(-0.3)
    ycand = np.zeros((1, 1, 13), np.float32)
    ycand[0, 0, [0, 2, 3, 4, 5, 6]] = [4, 12.0, 0.5, -1.0, 0.0, 14.0]
    c = particles.from_candidates(ycand)
    assert (c.cls[0, 0], c.pt[0, 0], c.energy[0, 0]) == (4, 12.0, 14.0)
    assert c.phi[0, 0] == pytest.approx(-np.pi / 2)


# ---------------------------------------------------------------- efficiency and fake rate


def test_perfect_prediction_has_efficiency_one_and_no_fakes():
    rng = np.random.default_rng(0)
    cls = rng.integers(0, 6, (4, 50))
    target = _particles(cls, np.where(cls > 0, rng.uniform(0.2, 50, cls.shape), 0))
    valid = np.ones(cls.shape, bool)
    valid[:, 45:] = False  # padding
    counts = particles.ClassCounts()
    counts.add(target, target, valid)
    result = counts.result()
    assert result["elements"] == 180
    for key in ("any", *particles.CLASS_KEYS[1:]):
        assert result["efficiency"][key] == 1.0 and result["fake_rate"][key] == 0.0
        c = result["counts"][key]
        assert c["target"] == c["predicted"] == c["matched"] and c["fake"] == 0
    assert result["counts"]["any"]["target"] == int((cls[:, :45] > 0).sum())
    assert np.count_nonzero(np.asarray(result["confusion"]) - np.diag(np.diag(result["confusion"]))) == 0


def test_efficiency_and_fake_rate_by_hand():
    target = _particles([1, 1, 1, 2, 0, 0, 3, 0, 5], [1, 2, 3, 4, 0, 0, 5, 0, 6])
    pred = _particles([1, 1, 2, 2, 1, 0, 0, 3, 1], [1, 2, 3, 4, 5, 0, 0, 7, 6])
    valid = np.array([[True] * 8 + [False]])  # the muon element is padding
    counts = particles.ClassCounts()
    counts.add(target, pred, valid)
    r = counts.result()
    # charged hadrons: 3 targets, 2 predicted as such; predicted charged: 3, one without a target
    assert r["efficiency"]["charged_hadron"] == pytest.approx(2 / 3)
    assert r["fake_rate"]["charged_hadron"] == pytest.approx(1 / 3)
    assert r["counts"]["charged_hadron"] == {"target": 3, "predicted": 3, "matched": 2, "fake": 1}
    assert r["efficiency"]["neutral_hadron"] == 1.0 and r["fake_rate"]["neutral_hadron"] == 0.0
    assert r["efficiency"]["photon"] == 0.0 and r["fake_rate"]["photon"] == 1.0
    assert r["efficiency"]["muon"] is None and r["fake_rate"]["muon"] is None  # none counted
    # any: 5 targets (1, 1, 1, 2, 3), 4 predicted as a particle; 6 predicted particles, 2 without target
    assert r["efficiency"]["any"] == pytest.approx(4 / 5) and r["fake_rate"]["any"] == pytest.approx(2 / 6)
    assert r["elements"] == 8 and r["confusion"][0][3] == 1 and r["confusion"][3][0] == 1


def test_efficiency_binned_in_target_pt_and_fake_rate_in_predicted_pt():
    # two charged-hadron targets, at 0.5 GeV (lost) and 20 GeV (found); a fake photon at 3 GeV
    target = _particles([1, 1, 0], [0.5, 20.0, 0.0])
    pred = _particles([0, 1, 3], [0.0, 19.0, 3.0])
    counts = particles.ClassCounts()
    counts.add(target, pred, np.ones((1, 3), bool))
    matched, total = counts.efficiency_binned()
    low, high = (np.searchsorted(particles.PT_EDGES, x) - 1 for x in (0.5, 20.0))
    assert total[1, low] == total[1, high] == 1 and matched[1, low] == 0 and matched[1, high] == 1
    np.testing.assert_array_equal(total[0], total[1])  # "any" = the charged hadrons here
    fake, predicted = counts.fake_rate_binned()
    b3 = np.searchsorted(particles.PT_EDGES, 3.0) - 1
    assert fake[3, b3] == predicted[3, b3] == 1 and fake[3].sum() == 1
    assert fake[0].sum() == 1 and predicted[0].sum() == 2  # any: the photon and the 19 GeV hadron
    with pytest.raises(ValueError, match=r"predicted class index outside 0\.\.5"):
        counts.add(target, _particles([7, 0, 0], [1, 0, 0]), np.ones((1, 3), bool))


# ---------------------------------------------------------------- response and missing pT


def test_response_summary_is_median_and_iqr():
    s = response.summary([5.0, 1.0, 4.0, np.nan, 2.0, 3.0, np.inf])
    assert s == {"n": 5, "median": 3.0, "p25": 2.0, "p75": 4.0, "iqr": 2.0, "iqr_over_median": 2 / 3}
    assert response.summary([])["median"] is None and response.summary([])["n"] == 0


def test_missing_pt_sums_particle_pt_vectors():
    p = _particles(
        [[1, 1, 3, 0], [2, 1, 1, 1]],
        [[5, 5, 3, 100], [4, 3, 9, 9]],
        phi=[[0, np.pi, 0.5, 1], [0, np.pi / 2, 0, 0]],
    )
    keep = np.array([[True, True, True, True], [True, True, False, False]])
    # event 0: two back-to-back cancel, the class-0 element is ignored -> 3; event 1: (4, 3) -> 5
    np.testing.assert_allclose(response.missing_pt(p, keep), [3.0, 5.0], atol=1e-12)


# ---------------------------------------------------------------- jets


def _two_jet_event(scale: float = 1.0) -> tuple[Particles, np.ndarray]:
    """One event with two narrow sprays of particles, around (eta, phi) = (0.3, 1.0) and (-1.0, -2.5)."""
    eta = np.array([[0.30, 0.32, 0.28, -1.00, -1.02, 0.0]])
    phi = np.array([[1.00, 1.02, 0.98, -2.50, -2.48, 0.0]])
    pt = np.array([[10.0, 5.0, 3.0, 8.0, 4.0, 0.0]]) * scale
    cls = np.array([[1, 2, 3, 1, 3, 0]])
    return _particles(cls, pt, eta, phi), cls != 0


def test_cluster_ee_genkt_jets_of_two_sprays():
    p, keep = _two_jet_event()
    found = jets.cluster(p, keep)
    assert len(found) == 2 and found.event.tolist() == [0, 0]
    order = np.argsort(-found.pt)
    np.testing.assert_allclose(found.pt[order], [17.99, 11.99], rtol=2e-3)  # ~ scalar sums of narrow sprays
    np.testing.assert_allclose(found.eta[order], [0.30, -1.007], atol=0.01)
    np.testing.assert_allclose(found.phi[order], [1.0, -2.493], atol=0.01)
    # the 5 GeV cut drops a spray of 4 GeV; empty events and events without particles give no jets
    small = _particles([[1, 0], [0, 0]], [[4.0, 0.0], [0.0, 0.0]])
    assert len(jets.cluster(small, small.cls != 0)) == 0
    two = jets.cluster(p[[0, 0]], np.concatenate([keep, np.zeros_like(keep)]))
    assert two.event.tolist() == [0, 0]


def test_match_takes_the_closest_jet_within_dr_across_the_phi_boundary():
    gen = jets.Jets(
        event=np.array([0, 0, 1, 2]),
        pt=np.array([50.0, 20.0, 30.0, 10.0]),
        eta=np.array([0.0, 1.0, -0.5, 0.0]),
        phi=np.array([3.12, 0.0, 0.0, 0.0]),
        energy=np.array([50.0, 30.0, 35.0, 10.0]),
    )
    reco = jets.Jets(
        event=np.array([0, 0, 1, 1]),
        pt=np.array([19.0, 55.0, 1.0, 33.0]),
        eta=np.array([1.05, 0.0, -0.5, -0.45]),
        phi=np.array([0.2, -3.12, 0.08, 0.0]),
        energy=np.zeros(4),
    )
    idx = jets.match(gen, reco, n_events=3, max_dr=0.1)
    # gen 0 <-> reco 1 (dphi 0.04 across pi); gen 1: closest reco 0 has dR 0.206 -> none;
    # gen 2: reco 3 (dR 0.05) beats reco 2 (dR 0.08); gen 3: its event has no reco jet
    assert idx.tolist() == [1, -1, 3, -1]
    np.testing.assert_allclose(jets.take(reco.pt, idx), [55.0, np.nan, 33.0, np.nan])
    assert jets.match(gen, jets.from_padded(np.zeros((3, 1, 4)), 5.0), 3, 0.1).tolist() == [-1] * 4


def test_match_agrees_with_particleflows_loop_on_random_jets():
    rng = np.random.default_rng(3)

    def random_jets(counts):
        n = int(sum(counts))
        return jets.Jets(
            np.repeat(np.arange(len(counts)), counts),
            rng.uniform(5, 50, n),
            rng.uniform(-0.3, 0.3, n),
            rng.uniform(-np.pi, np.pi, n) * 0.05 + np.pi * rng.choice([-1, 1], n) * 0.98,
            np.zeros(n),
        )

    gen, reco = random_jets(rng.integers(0, 6, 200)), random_jets(rng.integers(0, 6, 200))
    expected = []  # mlpf.jet_utils.match_jets: per gen jet the closest reco jet of its event, if dR < cut
    for i in range(len(gen)):
        same = np.flatnonzero(reco.event == gen.event[i])
        dr = np.hypot(gen.eta[i] - reco.eta[same], jets.delta_phi(gen.phi[i], reco.phi[same]))
        expected.append(int(same[np.argmin(dr)]) if same.size and dr.min() < 0.1 else -1)
    got = jets.match(gen, reco, 200, 0.1)
    assert got.tolist() == expected and 0 < (got >= 0).sum() < len(gen)


def test_jet_response_is_one_for_the_truth_and_scales_with_a_known_shift():
    p, keep = _two_jet_event()
    truth = jets.cluster(p, keep)
    genjets = np.zeros((1, 3, 4))
    genjets[0, :2] = np.stack([truth.pt, truth.eta, truth.phi, truth.energy], axis=1)
    gen = jets.from_padded(genjets, jets.CLIC.pt_min)
    assert len(gen) == 2
    for scale in (1.0, 1.1):
        shifted, _ = _two_jet_event(scale)
        reco = jets.cluster(shifted, keep)
        ratio = jets.take(reco.pt, jets.match(gen, reco, 1, jets.CLIC.match_dr)) / gen.pt
        assert response.summary(ratio)["median"] == pytest.approx(scale, rel=1e-9)
        assert response.summary(ratio)["iqr"] == pytest.approx(0.0, abs=1e-9)


def test_plots_write_pngs(tmp_path):
    counts = particles.ClassCounts()
    target = _particles([1, 2, 3, 0], [1.0, 2.0, 30.0, 0.0])
    counts.add(target, _particles([1, 3, 3, 4], [1.0, 2.0, 30.0, 1.0]), np.ones((1, 4), bool))
    results = {"MLPF": counts.result(), "PF": counts.result()}
    ratios = {"MLPF": np.array([0.9, 1.0, 1.1]), "PF": np.array([0.5, np.nan]), "target": np.array([])}
    paths = [
        plots.rates(results, "t", tmp_path / "rates.png"),
        plots.rates_vs_pt(
            {"MLPF": counts.efficiency_binned()}, particles.PT_EDGES, "eff", "pT", "t", tmp_path / "eff.png"
        ),
        plots.response_histograms(
            ratios, {k: response.summary(v) for k, v in ratios.items()}, "r", "t", tmp_path / "resp.png"
        ),
        plots.distributions(ratios, "x", "t", tmp_path / "dist.png", np.linspace(0, 2, 11)),
    ]
    for path in paths:
        assert path.read_bytes()[:8] == PNG


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def mlpf_run(tiny_mlpf_run):
    return tiny_mlpf_run


def test_eval_reads_every_field_and_fixed_batches_of_events():
    from smilejax import config
    from smilejax.trained import TrainedModel

    cfg = config.load("mlpf")  # element-budget batching, training fields only
    assert cfg.data.element_budget > 0 and "ycand" not in cfg.data.fields
    run = evaluation._eval_inputs(TrainedModel(run_dir=None, cfg=cfg, spec=None, model=None, step=0))
    assert set(evaluation.FIELDS) <= set(run.cfg.data.fields)
    # the budget's batch of its widest bucket, in file order (no budget plan grouping events by size)
    assert run.cfg.data.element_budget == 0 and run.cfg.data.batch_size == min(cfg.data.global_batch_sizes())


def test_eval_writes_metrics_and_plots_for_mlpf_and_pf(mlpf_run, capsys):
    assert cli.main(["eval", str(mlpf_run), "--jets", "40"]) == 0
    stdout = capsys.readouterr().out
    out = mlpf_run / "eval"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "mlpf" and metrics["step"] == 2 and metrics["split"] == "eval"
    assert metrics["n_events"] == 40 and metrics["n_elements"] > 40 * 8
    keys = {"any", *particles.CLASS_KEYS[1:]}
    for name in ("MLPF", "PF"):
        p = metrics["particles"][name]
        assert set(p["efficiency"]) == set(p["fake_rate"]) == set(p["counts"]) == keys
        assert p["elements"] == metrics["n_elements"] and np.sum(p["confusion"]) == p["elements"]
        for rates in (p["efficiency"], p["fake_rate"]):
            assert all(v is None or 0 <= v <= 1 for v in rates.values()), rates
    # same events: the same targets; the synthetic PF candidates are mostly right
    assert (
        metrics["particles"]["MLPF"]["counts"]["any"]["target"]
        == metrics["particles"]["PF"]["counts"]["any"]["target"]
    )
    assert metrics["particles"]["PF"]["efficiency"]["any"] > 0.8

    jet = metrics["jets"]
    assert jet["definition"] == {
        "algorithm": "ee_genkt_algorithm",
        "r": 0.4,
        "p": -1.0,
        "pt_min": 5.0,
        "match_dr": 0.1,
    }
    assert jet["gen_jets"] > 40
    for name in ("MLPF", "PF", "target"):
        j = jet[name]
        assert 0 <= j["matched_fraction"] <= 1 and j["matched"] == j["n"]
        assert j["n"] == 0 or j["iqr"] >= 0
    # the synthetic generator jets sum sprays wider than R = 0.4 (so some split, some lose particles);
    # clustered target particles (the same particles less neutrinos) reproduce most of them exactly
    assert jet["target"]["matched_fraction"] > 0.4 and 0.85 < jet["target"]["median"] <= 1.0
    assert jet["target"]["p75"] == pytest.approx(1.0, abs=1e-4)
    assert 0.8 < jet["PF"]["median"] < 1.1

    met = metrics["met"]
    assert met["events"] == 40 and met["events_with_genmet"] > 30
    for name in ("MLPF", "PF", "target"):
        assert met[name]["n"] == met["events_with_genmet"] and met[name]["median"] >= 0

    pngs = [
        "confusion_mlpf.png",
        "confusion_pf.png",
        "efficiency_vs_pt.png",
        "fake_rate_vs_pt.png",
        "jet_pt.png",
        "jet_response.png",
        "met.png",
        "met_response.png",
        "particle_rates.png",
    ]
    assert metrics["files"] == sorted([*pngs, "jets.npz", "met.npz"])
    for name in pngs:
        assert (out / name).read_bytes()[:8] == PNG
    with np.load(out / "jets.npz") as saved:
        assert saved["gen_pt"].shape == (jet["gen_jets"],)
        ratio = saved["pt_PF"] / saved["gen_pt"]
        assert np.nanmedian(ratio) == pytest.approx(jet["PF"]["median"])
    with np.load(out / "met.npz") as saved:
        assert saved["genmet"].shape == saved["MLPF"].shape == (40,)
    assert "MLPF" in stdout and "jets:" in stdout and "metrics.json" in stdout


def test_without_fastjet_jets_are_skipped_with_the_install_command(monkeypatch):
    assert jets.missing() is None
    real = jets.importlib.util.find_spec
    monkeypatch.setattr(jets.importlib.util, "find_spec", lambda m: None if m == "fastjet" else real(m))
    assert jets.missing() == "fastjet not installed (pip install -c launch/locks/venv.txt fastjet)"
    # the evaluator's JSON then says so in place of the jet figures, and so does its summary
    counts = particles.ClassCounts()
    counts.add(_particles([1, 0], [2.0, 0.0]), _particles([1, 3], [2.0, 1.0]), np.ones((1, 2), bool))
    met = {"MLPF": {**response.summary([1.2]), "difference_median": 0.5, "difference_iqr": 0.0}}
    metrics = {
        "model": "mlpf",
        "step": 3,
        "split": "eval",
        "n_events": 1,
        "n_elements": 2,
        "particles": {"MLPF": counts.result()},
        "jets": {"skipped": jets.missing()},
        "met": {"events": 1, "events_with_genmet": 1, **{k: met["MLPF"] for k in evaluation.COLLECTIONS}},
    }
    text = evaluation.summary(metrics)
    assert "jets skipped: fastjet not installed (pip install -c launch/locks/venv.txt fastjet)" in text
    assert "MLPF" in text and "1.200" in text and "0.500" in text
