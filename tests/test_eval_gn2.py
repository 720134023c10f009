"""``smilejax eval``: flavour-tagging figures of merit on hand-made scores, the IP baseline and track
metrics on hand-made tracks, and a tiny trained GN2 evaluated end to end through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ftag import Flavours
from ftag.utils import calculate_rejection, calculate_rejection_error, get_discriminant
from smilejax.models.gn2 import flavour, ip_baseline, plots, tracks

from smilejax import cli, config, evaluation
from tests import toy
from tests.conftest import run_cli

# ---------------------------------------------------------------- ROC, AUC, rejection


def test_auc_of_separated_inverted_and_tied_scores():
    assert flavour.auc([2.0, 3.0, 4.0], [0.0, 1.0]) == 1.0
    assert flavour.auc([0.0, 1.0], [2.0, 3.0, 4.0]) == 0.0
    assert flavour.auc([1.0, 1.0], [1.0, 1.0, 1.0]) == 0.5
    # P(sig > bkg) + P(tie) / 2 over the 4 pairs: (3 > 2), (3 > 1), (2 = 2), (2 > 1) -> 3.5 / 4
    assert flavour.auc([3.0, 2.0], [2.0, 1.0]) == pytest.approx(0.875)


def test_roc_steps_through_every_distinct_cut():
    eff_sig, eff_bkg = flavour.roc([3.0, 1.0], [2.0, 0.0])
    np.testing.assert_allclose(eff_sig, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(eff_bkg, [0, 0, 0.5, 0.5, 1])


def test_rejection_at_working_points_is_one_over_the_mistag_rate():
    sig = np.arange(100.0)  # the cut keeping 70% of it sits at its 30% quantile, 29.7
    bkg = np.array([5, 10, 20, 31, 40, 45, 50, 95, 2, 1], float)
    cuts = np.quantile(sig, [0.30, 0.23, 0.15])
    assert [(sig > c).mean() for c in cuts] == pytest.approx([0.70, 0.77, 0.85])
    # by hand: above 29.7 are 31, 40, 45, 50, 95 (5 of 10); above 22.77 the same; above 14.85 also 20
    np.testing.assert_allclose(flavour.mistag(sig, bkg, [0.70, 0.77, 0.85]), [0.5, 0.5, 0.6])
    np.testing.assert_allclose(flavour.rejection(sig, bkg, [0.70, 0.77, 0.85]), [2.0, 2.0, 1 / 0.6])
    assert flavour.rejection(sig, np.array([-1.0, 0.0]), [0.7])[0] == np.inf  # nothing passes


def test_rejections_carry_binomial_errors_and_the_jets_behind_them():
    sig = np.arange(100.0)
    bkg = np.array([5, 10, 20, 31, 40, 45, 50, 95, 2, 1], float)
    r70, r85 = flavour.rejections(sig, bkg, [0.70, 0.85])
    # 70%: 5 of 10 pass, eps = 0.5, R = 2, sigma = R^2 sqrt(eps (1 - eps) / 10) = 4 sqrt(0.025)
    assert r70 == pytest.approx(
        {"rejection": 2.0, "stat_err": 0.6324555, "n_pass": 5, "n_bkg": 10, "low_stats": True}
    )
    # 85%: 6 of 10 pass, R = 5/3, sigma = (25/9) sqrt(0.6 * 0.4 / 10) = 0.4303315
    assert r85["rejection"] == pytest.approx(5 / 3) and r85["stat_err"] == pytest.approx(0.4303315)
    np.testing.assert_allclose(
        [r70["stat_err"], r85["stat_err"]], calculate_rejection_error(np.array([2.0, 5 / 3]), 10)
    )
    # 40 background jets of which 20 pass: enough jets; none passing: infinite rejection, flagged
    (enough,) = flavour.rejections(sig, np.r_[np.full(20, 50.0), np.full(20, 0.0)], [0.70])
    assert enough["rejection"] == 2.0 and enough["n_pass"] == 20 and enough["low_stats"] is False
    assert enough["stat_err"] == pytest.approx(4 * np.sqrt(0.25 / 40))
    (none,) = flavour.rejections(sig, np.array([-1.0, 0.0]), [0.70])
    assert none == {"rejection": np.inf, "stat_err": np.inf, "n_pass": 0, "n_bkg": 2, "low_stats": True}
    with pytest.raises(ValueError, match="passing jets"):
        flavour.rejection_error([11], 10)


def test_roc_plot_bands_ratio_to_the_reference_and_labelled_working_points(tmp_path):
    rng = np.random.default_rng(2)
    b, light = rng.normal(2.0, 1.0, 4000), rng.normal(0.0, 1.0, 4000)
    scores = {"GN2": (b, light), "IP": (0.5 * b, light)}
    fig = plots.rejection_curves(scores, "light", "test sample", tmp_path / "roc.png")
    assert (tmp_path / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    top, bottom = fig.axes
    assert top.get_ylabel() == "Light-jet rejection" and top.get_yscale() == "log"
    assert bottom.get_xlabel() == "$b$-jet efficiency" and bottom.get_ylabel() == "Ratio to IP"
    texts = [t.get_text() for t in top.texts]
    assert {"70% WP", "77% WP", "85% WP"} <= set(texts)
    assert top.get_legend().get_title().get_text().startswith("test sample\nbands: binomial")
    eff = plots.EFFICIENCIES
    rej = {k: [r["rejection"] for r in flavour.rejections(*v, eff)] for k, v in scores.items()}
    curves = {line.get_label(): line.get_ydata() for line in top.lines if line.get_label() in scores}
    np.testing.assert_allclose(curves["GN2"], rej["GN2"])
    ratio_gn2, ratio_ip = (line.get_ydata() for line in bottom.lines if len(line.get_ydata()) == eff.size)
    np.testing.assert_allclose(ratio_gn2, np.divide(rej["GN2"], rej["IP"]))
    np.testing.assert_allclose(ratio_ip, 1.0)
    # one band per tagger in each panel: at 70% GN2's spans rejection +- its binomial error
    assert len(top.collections) == len(bottom.collections) == 2
    (r70,) = flavour.rejections(b, light, [eff[40]])
    band = top.collections[0].get_paths()[0].vertices[:, 1]
    for edge in (r70["rejection"] - r70["stat_err"], r70["rejection"] + r70["stat_err"]):
        assert np.isclose(band, edge, rtol=1e-9).any(), edge
    with pytest.raises(ValueError, match="reference tagger 'DL1'"):
        plots.rejection_curves(scores, "c", "", tmp_path / "x.png", reference="DL1")


def test_discriminant_plot_marks_the_working_point_cuts(tmp_path):
    db = np.r_[np.linspace(0, 4, 300), np.linspace(-3, 1, 500)]
    labels = np.r_[np.zeros(300, int), np.full(500, 2)]
    cuts = dict(zip(["70", "77", "85"], flavour.cuts(db[:300], flavour.WORKING_POINTS).tolist(), strict=True))
    fig = plots.discriminant_by_flavour(
        db, labels, ("b", "c", "light", "tau"), "info", cuts, tmp_path / "d.png"
    )
    (ax,) = fig.axes
    assert ax.get_xlabel() == "$D_b$" and ax.get_ylabel() == "Normalised number of jets"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["$b$-jets (300)", "Light-jets (500)"]
    wp_lines = sorted(line.get_xdata()[0] for line in ax.lines)
    np.testing.assert_allclose(wp_lines, sorted(cuts.values()))
    assert cuts["70"] == pytest.approx(4 * 0.3, abs=0.02)  # 70% of a uniform 0..4 lies above 1.2


def test_rejection_agrees_with_atlas_ftag_tools_on_a_large_sample():
    rng = np.random.default_rng(0)
    sig, bkg = rng.normal(2.0, 1.0, 40_000), rng.normal(0.0, 1.0, 40_000)
    wps = [0.70, 0.77, 0.85]
    np.testing.assert_allclose(
        flavour.rejection(sig, bkg, wps), calculate_rejection(sig, bkg, np.array(wps)), rtol=0.02
    )
    summary = flavour.summary(sig, bkg, None)
    assert set(summary["light_rejection"]) == {"70", "77", "85"} and summary["c_rejection"] is None
    assert summary["auc_b_vs_light"] == pytest.approx(0.921, abs=0.005)  # Phi(2 / sqrt 2)


def test_discriminant_formula_and_fraction_checks():
    probs = np.array([[0.5, 0.2, 0.29, 0.01], [0.1, 0.6, 0.2, 0.1]])
    expected = np.log(0.5 / (0.2 * 0.2 + 0.01 * 0.01 + 0.79 * 0.29))
    db = flavour.discriminant(probs, fc=0.2, ftau=0.01)
    assert db[0] == pytest.approx(expected, rel=1e-12)
    assert flavour.discriminant(probs, 0.0, 0.0)[1] == pytest.approx(np.log(0.1 / 0.2))
    jets = np.zeros(2, [("GN2_pb", "f8"), ("GN2_pc", "f8"), ("GN2_pu", "f8"), ("GN2_ptau", "f8")])
    for i, name in enumerate(("GN2_pb", "GN2_pc", "GN2_pu", "GN2_ptau")):
        jets[name] = probs[:, i]
    reference = get_discriminant(
        jets,
        "GN2",
        Flavours["bjets"],
        Flavours.by_category("single-btag"),
        {"fc": 0.2, "fu": 0.79, "ftau": 0.01},
    )
    np.testing.assert_allclose(db, reference, rtol=1e-8)
    with pytest.raises(ValueError, match="fc"):
        flavour.discriminant(probs, fc=0.9, ftau=0.2)
    with pytest.raises(ValueError, match=r"\[n, 4\]"):
        flavour.discriminant(probs[:, :3], 0.2, 0.01)


# ---------------------------------------------------------------- IP baseline and track metrics


def test_ip_baseline_sums_per_track_log_ratios_and_separates_displaced_jets():
    rng = np.random.default_rng(1)
    n, t = 2000, 6
    flav = np.where(np.arange(n) % 2 == 0, 0, 2)  # b, light alternating
    sd0 = rng.normal(0, 1, (n, t)) + (flav == 0)[:, None] * rng.exponential(6, (n, t))
    valid = rng.random((n, t)) < 0.8
    templates = ip_baseline.fit(sd0, valid, flav)
    assert templates.b_counts.sum() == valid[flav == 0].sum()
    assert templates.light_counts.sum() == valid[flav == 2].sum()
    scores = ip_baseline.score(templates, sd0, valid)
    bins = np.clip(np.searchsorted(templates.edges, np.sign(sd0) * np.log1p(np.abs(sd0))) - 1, 0, 47)
    np.testing.assert_allclose(scores, np.where(valid, templates.log_ratio[bins], 0).sum(1))
    assert ip_baseline.score(templates, sd0[:1], np.zeros((1, t), bool))[0] == 0.0  # no tracks
    assert flavour.auc(scores[flav == 0], scores[flav == 2]) > 0.9
    with pytest.raises(ValueError, match="light jets"):
        ip_baseline.fit(sd0, valid, np.zeros(n, int))


def test_origin_counts_give_confusion_and_per_class_accuracy():
    counts = tracks.OriginCounts(3)
    label = np.array([[0, 1, 2, 2, -1]])
    predicted = np.array([[0, 2, 2, 1, 0]])
    valid = np.array([[True, True, True, True, False]])
    counts.add(label, predicted, valid)
    result = counts.result(("a", "b", "c"))
    assert result["confusion"] == [[1, 0, 0], [0, 0, 1], [0, 1, 1]]
    assert result["accuracy"] == pytest.approx(0.5)
    assert result["per_class_accuracy"] == {"a": 1.0, "b": 0.0, "c": 0.5}


def test_vertex_pair_efficiency_and_purity_by_hand():
    vertex = np.array([[0, 0, 1, -1, -1, 0]])
    valid = np.array([[True, True, True, True, True, False]])
    p = np.zeros((1, 6, 6))
    p[0, 0, 1], p[0, 1, 0] = 0.9, 0.7  # true pair, mean 0.8: found
    p[0, 2, 3], p[0, 3, 2] = 0.6, 0.6  # vertex 1 vs none: a fake
    p[0, 0, 2] = 0.9  # mean with (2, 0) = 0.45: not predicted
    p[0, 3, 4], p[0, 4, 3] = 0.2, 0.2  # both without a vertex (-1): never a true pair
    p[0, 0, 5], p[0, 5, 0] = 1.0, 1.0  # track 5 is padding: not a pair
    counts = tracks.VertexCounts()
    counts.add(vertex, p, valid)
    assert counts.result() == {
        "pair_efficiency": 1.0,
        "pair_purity": 0.5,
        "true_pairs": 1,
        "predicted_pairs": 2,
        "matched_pairs": 1,
    }


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def gn2_run(tiny_gn2_run):
    return tiny_gn2_run


def test_eval_writes_metrics_and_plots_for_gn2_and_the_ip_baseline(gn2_run):
    proc = run_cli("eval", str(gn2_run), "--jets", "512", devices=3)  # another device count than training
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = gn2_run / "eval"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "gn2" and metrics["step"] == 20 and metrics["split"] == "eval"
    assert metrics["n_jets"] == 512 and sum(metrics["flavour_counts"].values()) == 512
    assert metrics["fractions"] == pytest.approx({"fc": 0.2, "ftau": 0.01, "flight": 0.79})
    for tagger in ("GN2", "IP"):
        t = metrics["taggers"][tagger]
        assert 0 <= t["auc_b_vs_light"] <= 1 and 0 <= t["auc_b_vs_c"] <= 1
        for kind, background in (("light_rejection", "light"), ("c_rejection", "c")):
            assert set(t[kind]) == {"70", "77", "85"}
            for wp, r in t[kind].items():
                assert r["n_bkg"] == metrics["flavour_counts"][background] and 0 < r["n_pass"] <= r["n_bkg"]
                eps = r["n_pass"] / r["n_bkg"]
                assert r["rejection"] == pytest.approx(1 / eps) and r["rejection"] >= 1
                assert r["stat_err"] == pytest.approx(np.sqrt(eps * (1 - eps) / r["n_bkg"]) / eps**2)
                assert r["low_stats"] == (r["n_pass"] < 10)
                warned = f"{tagger}'s {background} rejection at the {wp}% WP rests on {r['n_pass']} of"
                assert (warned in proc.stderr) == r["low_stats"], proc.stderr[-2000:]
    assert metrics["taggers"]["IP"]["auc_b_vs_light"] > 0.6  # displaced b tracks are visible
    assert metrics["ip_baseline"]["fit_split"] == "train" and metrics["ip_baseline"]["fit_jets"] == 5000
    origin = metrics["track_origin"]
    assert 0 <= origin["accuracy"] <= 1 and len(origin["confusion"]) == 8 and origin["tracks"] > 512
    vertexing = metrics["vertexing"]
    assert 0 <= vertexing["pair_efficiency"] <= 1 and 0 <= vertexing["pair_purity"] <= 1
    assert vertexing["true_pairs"] > 0

    pngs = ["discriminant.png", "roc_c.png", "roc_light.png", "track_origin_confusion.png"]
    assert metrics["files"] == sorted([*pngs, "scores.npz"])
    for name in pngs:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the per-jet scores reproduce the JSON through the tested functions
    with np.load(out / "scores.npz") as scores:
        flav, db, ip = scores["flavour"], scores["db"], scores["ip"]
        assert flav.shape == db.shape == ip.shape == (512,)
        np.testing.assert_allclose(db, flavour.discriminant(scores["probs"], 0.2, 0.01), atol=1e-4)
    for wp, cut in metrics["working_point_cuts"].items():  # GN2's D_b cuts keep their share of b jets
        assert (db[flav == 0] > cut).mean() == pytest.approx(int(wp) / 100, abs=0.02)
    assert flavour.auc(ip[flav == 0], ip[flav == 2]) == pytest.approx(
        metrics["taggers"]["IP"]["auc_b_vs_light"]
    )
    assert flavour.auc(db[flav == 0], db[flav == 1]) == pytest.approx(metrics["taggers"]["GN2"]["auc_b_vs_c"])
    assert "IP" in proc.stdout and "metrics.json" in proc.stdout
    low = [
        r["low_stats"]
        for t in metrics["taggers"].values()
        for k in ("light", "c")
        for r in t[f"{k}_rejection"].values()
    ]
    assert ("pass the cut (low_stats)" in proc.stdout) == any(
        low
    )  # the table's footnote to its starred cells


def test_eval_errors_exit_2_naming_the_problem(gn2_run, tmp_path, capsys):
    assert cli.main(["eval", str(tmp_path)]) == 2
    assert "not a smilejax run directory" in capsys.readouterr().err

    toy_run = tmp_path / "toy"
    toy_run.mkdir()
    config.save(config.load(toy.config()), toy_run / "config.yaml")
    assert cli.main(["eval", str(toy_run)]) == 2
    err = capsys.readouterr().err
    assert "model 'tests.toy:MODEL' has no evaluation" in err and "gn2" in err

    assert cli.main(["eval", str(gn2_run), "--step", "7"]) == 2
    assert "no checkpoint of step 7" in capsys.readouterr().err
    assert cli.main(["eval", str(gn2_run), "--fc", "0.995", "--ftau", "0.01"]) == 2
    assert "fc + ftau < 1" in capsys.readouterr().err
    assert "gn2" in evaluation.evaluators()
