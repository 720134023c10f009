"""Tracking evaluation: track builders and matching on hand-made events with hand-computed values, and
the tiny Interaction GNN through the command line (train, eval, export) on generated events."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from smilejax.models.tracking import make_events, tracks

from smilejax import metrics
from tests.conftest import run_cli


def _groups(labels: np.ndarray) -> set[frozenset[int]]:
    return {frozenset(np.flatnonzero(labels == t).tolist()) for t in range(labels.max(initial=-1) + 1)}


def test_connected_components_and_walkthrough_on_a_hand_made_graph():
    edges = np.array([[0, 1], [0, 2], [1, 3], [2, 3], [2, 4], [5, 6], [6, 7], [8, 9]])
    scores = np.array([0.9, 0.6, 0.9, 0.7, 0.8, 0.9, 0.9, 0.3])
    cc = tracks.connected_components(10, edges, scores, 0.5, min_hits=3)
    assert _groups(cc) == {frozenset({0, 1, 2, 3, 4}), frozenset({5, 6, 7})}
    assert (cc[[8, 9]] == -1).all()
    walk = tracks.walkthrough(10, edges, scores, 0.5, min_hits=3)
    # from 0 the best edges lead 0 -> 1 -> 3; from 5: 5 -> 6 -> 7; 2 -> 4 is too short
    assert _groups(walk) == {frozenset({0, 1, 3}), frozenset({5, 6, 7})}
    assert _groups(tracks.walkthrough(10, edges, scores, 0.5, min_hits=2)) == _groups(walk) | {
        frozenset({2, 4})
    }
    with pytest.raises(ValueError, match="unknown track builder"):
        tracks.build("x", 10, edges, scores, 0.5)


def test_matching_rates_and_trackml_score_on_a_hand_made_event():
    particle = np.array([1, 1, 1, 1, 2, 2, 2, 3, 3, 0])
    weight = np.array([0.1] * 4 + [0.15] * 3 + [0.075] * 2 + [0.0])
    edges = np.array([[0, 1], [1, 2], [2, 3], [4, 5], [5, 6], [6, 7], [7, 8], [8, 9]])
    scores = np.array([0.9, 0.9, 0.9, 0.9, 0.2, 0.8, 0.8, 0.8])
    labels = tracks.connected_components(10, edges, scores, 0.5)
    # tracks {0,1,2,3} (particle 1, matched) and {6,7,8,9} (particle 3 holds 2 of 4: fake); {4,5} too short
    m = tracks.match(labels, particle)
    assert m["matched"].tolist() == [True, False] and m["fake"].tolist() == [False, True]
    assert not m["duplicate"].any()
    assert tracks.trackml_score(labels, particle, weight) == pytest.approx(0.4)
    from smilejax.models.tracking import evaluation

    event = {
        "hit_mask": np.ones(12, bool) & (np.arange(12) < 10),
        "edge_mask": np.arange(10) < 8,
        "edges": np.concatenate([edges, np.zeros((2, 2), int)]),
        "particle": np.r_[particle, 0, 0],
        "pt": np.r_[[2.0] * 4, [0.5] * 3, [3.0] * 2, 0, 0, 0],
        "eta": np.r_[[0.1] * 4, [1.0] * 3, [-1.0] * 2, 0, 0, 0],
        "weight": np.r_[weight, 0, 0],
    }
    res = evaluation.event_tracks(event, np.r_[scores, 0.9, 0.9], 0.5, "cc", 3)
    assert res["score"] == pytest.approx(0.4)
    # reconstructable: particles 1 (4 hits) and 2 (3 hits); 3 has 2 hits
    np.testing.assert_array_equal(res["particle_pt"], [2.0, 0.5])
    np.testing.assert_array_equal(res["particle_matched"], [True, False])
    s = evaluation.summarise({k: v for k, v in res.items() if k != "score"}, pt_cut=1.0)
    assert s["all"]["track_efficiency"] == 0.5 and s["all"]["fake_rate"] == 0.5
    assert s["pt>1"]["track_efficiency"] == 1.0 and s["pt>1"]["tracks"] == 2  # both majorities > 1 GeV
    assert s["pt>1"]["fake_rate"] == 0.5 and s["all"]["duplicate_rate"] == 0.0


def test_no_tracks():
    m = tracks.match(np.full(4, -1), np.array([1, 1, 2, 0]))
    assert m["matched"].size == 0
    assert tracks.trackml_score(np.full(4, -1), np.array([1, 1, 2, 0]), np.full(4, 0.25)) == 0.0


def test_duplicates():
    particle = np.array([1] * 7)
    labels = np.array([0, 0, 0, 0, 1, 1, 1])  # the particle split in two pure tracks
    m = tracks.match(labels, particle)
    assert m["matched"].tolist() == [True, False]
    assert m["duplicate"].tolist() == [False, True] and not m["fake"].any()
    assert tracks.trackml_score(labels, particle, np.full(7, 1 / 7)) == pytest.approx(4 / 7)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracking")
    make_events.make(root / "events", 24, pileup=0, seed=1, kind="synthetic", workers=1, progress=False)
    run = root / "run"
    proc = run_cli(
        "train",
        "tracking-tiny",
        f"run.dir={run}",
        f"data.path={root / 'events'}",
        "run.steps=60",
        "run.log_every=20",
        "logging.progress=false",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return run


def test_tiny_trains_and_evaluates(tiny_run, tmp_path):
    losses = {r["step"]: r["loss"] for r in metrics.read(tiny_run / "metrics.jsonl") if "loss" in r}
    assert losses[60] < losses[20], losses
    out = tmp_path / "eval"
    proc = run_cli("eval", str(tiny_run), "--out", str(out), "--builder", "walk", "--score-cut", "0.4")
    assert proc.returncode == 0, proc.stderr[-4000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["builder"] == "walk" and m["score_cut"] == 0.4 and m["n_events"] == 8
    assert 0 <= m["trackml_score"] <= 1 and 0 <= m["edges"]["purity"] <= 1
    assert {"all", "pt>1"} <= set(m["tracks"]) and "efficiency_vs_pt" in m["tracks"]["binned"]
    # the fake rate of tracks of fitted pT > 1 GeV: a column beside acorn's, of no more tracks
    for style in ("ATLAS", "two_way"):
        a = m["acorn"][style]
        assert 0 <= a["fake_rate_reco_pt>1"] <= 1 and a["tracks_reco_pt"] <= a["tracks"]
    assert "fitted pT > 1:" in proc.stdout
    for name in ("track_efficiency.png", "fake_duplicate.png", "edge_scores.png", "tracking.npz"):
        assert (out / name).is_file(), name
    assert "TrackML score" in proc.stdout


def test_export_stablehlo(tiny_run, tmp_path):
    repo = tmp_path / "repo"
    proc = run_cli("export", str(tiny_run), "--out", str(repo), "--format", "stablehlo", timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    meta = json.loads((repo / "smilejax_export.json").read_text())
    (name,) = meta["models"]
    exported = jax.export.deserialize(bytearray((repo / name / "1" / "model.jaxexport").read_bytes()))
    rng = np.random.default_rng(0)
    hits = rng.normal(size=(2, 300, 7)).astype(np.float32)  # another node count than the config's
    edges = rng.integers(0, 300, size=(2, 512, 2)).astype(np.int32)
    out = exported.call(hits, np.ones((2, 300), bool), edges, np.ones((2, 512), bool))
    assert out["edge_scores"].shape == (2, 512) and np.all(
        (out["edge_scores"] >= 0) & (out["edge_scores"] <= 1)
    )
