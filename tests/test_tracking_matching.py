"""acorn's track-level definitions (matching styles, minimum track length, targets) and the walk-through's
bridge over one weak edge, on hand-made events with hand-counted values."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from smilejax.models.tracking import evaluation, matching, tracks

# particle 1: 10 hits (pT 2), split 6 + 4 over tracks 0 and 1;
# particle 2: 6 hits (pT 3), on track 2 with 2 hits of particle 3 (8 hits: 6/8 pure, all of 2's hits);
# particle 3: 4 hits (pT 0.5), 2 on track 2, 2 on track 3 with 3 noise hits (track 3: noise majority);
# particle 4: 5 hits (pT 1.5, eta 4.5: outside |eta| <= 4), track 4 of 5 hits; particle 5: 4 hits
# (pT 1.2) on a 4-hit track 5, too short for acorn's 5.
PARTICLE = np.array([1] * 10 + [2] * 6 + [3] * 4 + [0] * 3 + [4] * 5 + [5] * 4)
LABELS = np.array(
    [0] * 6 + [1] * 4 + [2] * 6 + [2, 2, 3, 3] + [3] * 3 + [4] * 5 + [5] * 4,
)
PT = np.array([0.0, 2.0, 3.0, 0.5, 1.5, 1.2])
ETA = np.array([0.0, 0.1, -1.0, 0.3, 4.5, 2.0])


def test_pairs_count_shared_hits_and_both_lengths():
    p = matching.pairs(LABELS, PARTICLE)
    rows = {(t, q): (s, r, n) for t, q, s, r, n in zip(*(p[k] for k in p), strict=True)}
    assert rows[(2, 2)] == (6, 8, 6) and rows[(2, 3)] == (2, 8, 4)
    assert rows[(3, 0)] == (3, 5, 3) and rows[(0, 1)] == (6, 6, 10)


@pytest.mark.parametrize(
    ("style", "reconstructed", "matched", "duplicates"),
    [
        # targets: particles 1 (10 hits), 2 (6) and 5 (4 hits, pT 1.2); 3 is below 1 GeV, 4 beyond |eta| 4.
        # Matchable tracks (>= 5 hits): 0 (6 of 1), 2 (6/8 of 2), 3 (noise majority: fake), 4 (5 of 4).
        ("ATLAS", 2, 3, 0),  # 1 by track 0 (pure), 2 by track 2; 5's only track has 4 hits
        ("one_way", 2, 3, 0),  # track 0 holds 6 of 1's 10 hits, track 2 all of 2's
        ("two_way", 2, 3, 0),
    ],
)
def test_acorn_counts_by_style(style, reconstructed, matched, duplicates):
    r = matching.event(LABELS, PARTICLE, PT, ETA, style=style)
    assert (r["particles"], r["tracks"]) == (3, 4)
    assert (r["reconstructed"], r["matched_tracks"], r["duplicates"]) == (reconstructed, matched, duplicates)
    np.testing.assert_array_equal(r["pt"], [2.0, 3.0, 1.2])
    rates = matching.rates(r)
    assert rates["track_efficiency"] == pytest.approx(2 / 3) and rates["fake_rate"] == pytest.approx(0.25)


def test_styles_differ_on_a_particle_split_in_halves_and_short_tracks_count_with_length_3():
    particle = np.array([1] * 10 + [2] * 3)
    labels = np.array([0] * 5 + [1] * 5 + [2] * 3)  # particle 1 in two pure halves
    pt, eta = np.array([0.0, 2.0, 2.0]), np.zeros(3)
    atlas = matching.event(labels, particle, pt, eta, style="ATLAS")
    # both halves are pure: reconstructed, one duplicate; particle 2's 3-hit track is too short
    counts = (atlas["reconstructed"], atlas["duplicates"], atlas["tracks"], atlas["matched_tracks"])
    assert counts == (1, 1, 2, 2)
    # one_way: both tracks are matched (pure) but neither holds more than half of particle 1's hits
    one = matching.event(labels, particle, pt, eta, style="one_way")
    assert (one["reconstructed"], one["duplicates"], one["tracks"], one["matched_tracks"]) == (0, 0, 2, 2)
    two = matching.event(labels, particle, pt, eta, style="two_way")
    assert (two["reconstructed"], two["tracks"], two["matched_tracks"]) == (0, 2, 0)  # 5/10 is not > 1/2
    short = matching.event(labels, particle, pt, eta, style="two_way", min_track_length=3)
    assert (short["reconstructed"], short["tracks"], short["matched_tracks"]) == (1, 3, 1)
    assert matching.rates(short)["fake_rate"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="matching style"):
        matching.event(labels, particle, pt, eta, style="three_way")


def test_walkthrough_bridges_one_weak_edge_only_when_a_strong_edge_follows():
    # one particle 0 -> 1 -> 2 -> 3 -> 4 -> 5 whose 2 -> 3 edge scored 0.2; a weak dead end 2 -> 6
    edges = np.array([[0, 1], [1, 2], [2, 3], [3, 4], [4, 5], [2, 6]])
    scores = np.array([0.9, 0.9, 0.2, 0.9, 0.9, 0.3])
    plain = tracks.walkthrough(7, edges, scores, 0.5, min_hits=3)
    assert _groups(plain) == {frozenset({0, 1, 2}), frozenset({3, 4, 5})}
    # 2 -> 6 scores higher but 6 goes nowhere; 2 -> 3 goes on with 3 -> 4 above the cut
    bridged = tracks.build("walk", 7, edges, scores, 0.5, 3, bridge=0.1)
    assert _groups(bridged) == {frozenset({0, 1, 2, 3, 4, 5})}
    # a bridge above the weak edge's score leaves the track split
    assert _groups(tracks.walkthrough(7, edges, scores, 0.5, bridge=0.25)) == _groups(plain)


def test_event_tracks_reports_acorn_counts_per_style():
    n, edges = PARTICLE.size, []
    for t in range(LABELS.max() + 1):  # a chain through each track's hits
        edges += list(itertools.pairwise(np.flatnonzero(t == LABELS)))
    edges = np.array(edges)
    event = {
        "hit_mask": np.ones(n, bool),
        "edge_mask": np.ones(len(edges), bool),
        "edges": edges,
        "particle": PARTICLE,
        "pt": PT[PARTICLE],
        "eta": ETA[PARTICLE],
        "weight": np.full(n, 1.0 / n),
    }
    res = evaluation.event_tracks(event, np.full(len(edges), 0.9), 0.5, "cc", 3)
    assert set(res["acorn"]) == set(matching.STYLES)
    a = res["acorn"]["ATLAS"]
    assert (a["particles"], a["reconstructed"], a["tracks"], a["matched_tracks"]) == (3, 2, 4, 3)
    three = evaluation.event_tracks(event, np.full(len(edges), 0.9), 0.5, "cc", 3, min_track_length=3)
    assert three["acorn"]["ATLAS"]["tracks"] == 6 and three["acorn"]["ATLAS"]["reconstructed"] == 3


def _groups(labels: np.ndarray) -> set[frozenset[int]]:
    return {frozenset(np.flatnonzero(labels == t).tolist()) for t in range(labels.max(initial=-1) + 1)}


def test_eval_options_default_to_acorns_length_and_refuse_a_bridge_without_walk():
    from smilejax.models.tracking import EVALUATION

    from smilejax.evaluation import family_options

    values = family_options(EVALUATION, {"builder": "walk", "bridge": 0.1})
    assert (values["min_track_length"], values["bridge"]) == (5, 0.1)
    with pytest.raises(ValueError, match="--bridge needs --builder walk"):
        family_options(EVALUATION, {"bridge": 0.1})  # the default builder is cc
    with pytest.raises(ValueError, match="--min-track-length"):
        family_options(EVALUATION, {"min_track_length": 0})


def test_fake_rate_of_tracks_above_a_fitted_pt_is_a_column_beside_acorns():
    # particle 1 (pT 0.5, 10 hits) split in halves, tracks 0 and 1, fitted 0.45 and 0.55 GeV;
    # track 2: 3 hits of particle 2 and 3 of particle 3 (a fake), fitted 3 GeV; track 3: all 6 of particle 4
    particle = np.array([1] * 10 + [2] * 3 + [3] * 3 + [4] * 6)
    labels = np.array([0] * 5 + [1] * 5 + [2] * 6 + [3] * 6)
    pt, eta = np.array([0.0, 0.5, 2.0, 2.0, 2.0]), np.zeros(5)
    fitted = np.array([0.45, 0.55, 3.0, 2.0])
    two = matching.event(labels, particle, pt, eta, style="two_way", track_pt=fitted)
    # two_way: both halves are fakes (5/10); above 1 GeV only tracks 2 (fake) and 3 (matched) count
    assert (two["tracks"], two["matched_tracks"]) == (4, 1)
    assert (two["tracks_reco_pt"], two["matched_tracks_reco_pt"]) == (2, 1)
    rates = matching.rates(two)
    assert rates["fake_rate"] == pytest.approx(0.75) and rates["fake_rate_reco_pt>1"] == pytest.approx(0.5)
    atlas = matching.rates(matching.event(labels, particle, pt, eta, track_pt=fitted))
    assert atlas["fake_rate"] == pytest.approx(0.25) and atlas["fake_rate_reco_pt>1"] == pytest.approx(0.5)
    # without fitted pT the column is absent, not zero
    assert "fake_rate_reco_pt>1" not in matching.rates(matching.event(labels, particle, pt, eta))
