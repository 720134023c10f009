"""Merging of track pieces (models/tracking/merge.py) on hand-built helices: pieces of one helix are
joined, pieces of two particles are not, and the tolerance decides."""

import numpy as np
import pytest
from smilejax.models.tracking import merge, tracks
from smilejax.models.tracking.detector import MM_PER_GEV

pytestmark = pytest.mark.unit  # make test-fast runs it: one device, seconds

RADII = np.array([32.0, 72.0, 116.0, 172.0, 260.0, 360.0, 500.0, 660.0, 820.0, 1020.0])  # barrel layers


def helix(pt: float, charge: int, phi0: float, cot: float, z0: float = 0.0, radii=RADII) -> np.ndarray:
    """[k, 3] x, y, z (mm) where a helix from the beam line crosses the cylinders ``radii``."""
    radius = pt * MM_PER_GEV
    half = np.arcsin(radii / (2 * radius))  # half the turning angle at radius r
    phi = phi0 - charge * half  # the point's azimuth
    s = 2 * radius * half
    return np.stack([radii * np.cos(phi), radii * np.sin(phi), z0 + cot * s], 1)


def _groups(labels: np.ndarray) -> set:
    return {frozenset(np.flatnonzero(labels == t).tolist()) for t in np.unique(labels[labels >= 0])}


def test_positions_reads_the_hit_features():
    xyz = helix(1.0, 1, 0.3, 0.5)
    r, phi = np.hypot(xyz[:, 0], xyz[:, 1]), np.arctan2(xyz[:, 1], xyz[:, 0])
    feats = np.stack([r / 1000, phi / np.pi, xyz[:, 2] / 1000, np.zeros_like(r)], 1)
    np.testing.assert_allclose(merge.positions(feats), xyz, atol=1e-9)


def test_helix_fit_recovers_pt_and_direction():
    f = merge.helix_fit(helix(2.0, -1, 1.0, 0.8, z0=30.0))
    assert f["pt"] == pytest.approx(2.0, rel=1e-6)
    assert (f["cot"], f["z0"]) == (pytest.approx(0.8, abs=1e-6), pytest.approx(30.0, abs=1e-4))
    assert np.abs(f["dxy"]).max() < 1e-6 and np.abs(f["dz"]).max() < 1e-6


def test_two_pieces_of_one_helix_are_merged():
    xyz = helix(0.8, 1, 0.4, 0.3)
    labels = np.r_[np.zeros(5, int), np.ones(5, int)]
    assert _groups(merge.merge(labels, xyz)) == {frozenset(range(10))}
    # a piece of two hits between them and a gap of one layer: all three joined
    labels = np.r_[np.zeros(4, int), -1, np.full(2, 1), np.full(3, 2)]
    assert _groups(merge.merge(labels, xyz)) == {frozenset(set(range(10)) - {4})}


def test_pieces_of_two_particles_are_not_merged():
    # same start direction, opposite charges: B's hits are ~40 mm (xy) off A's helix at r = 260 mm
    a, b = helix(1.0, 1, 0.4, 0.3)[:5], helix(1.0, -1, 0.4, 0.3)[5:]
    labels = np.r_[np.zeros(5, int), np.ones(5, int)]
    assert _groups(merge.merge(labels, np.r_[a, b])) == _groups(labels)
    # same circle, another dip angle (a different particle in z)
    a, b = helix(1.0, 1, 0.4, 0.3)[:5], helix(1.0, 1, 0.4, 0.45)[5:]
    assert _groups(merge.merge(labels, np.r_[a, b])) == _groups(labels)


def test_the_tolerance_is_respected():
    cfg = merge.MergeConfig()
    xyz = helix(10.0, 1, 0.4, 0.3)  # 10 GeV: the tolerance is 2 x sqrt(0.035^2 + 0.1^2) mm in xy
    tol_xy, _ = merge.tolerance(cfg, 10.0)
    assert tol_xy == pytest.approx(2 * np.hypot(0.12 / np.sqrt(12), 0.1))
    labels = np.r_[np.zeros(5, int), np.ones(5, int)]
    for shift, joined in ((0.3, True), (3.0, False)):  # B's hits moved across the track, in tolerances
        moved = xyz.copy()
        u = moved[5:, :2] / np.hypot(moved[5:, 0], moved[5:, 1])[:, None]
        moved[5:, :2] += shift * tol_xy * np.stack([-u[:, 1], u[:, 0]], 1)
        assert (merge.quality(cfg, moved) <= 1.0) == joined
        assert (len(_groups(merge.merge(labels, moved, cfg))) == 1) == joined
    # the gap: with max_gap below the 104 mm between the hits at r 260 and 360 mm the pieces stay apart
    assert len(_groups(merge.merge(labels, xyz, merge.MergeConfig(max_gap=80.0)))) == 2


def test_build_merges_the_walks_pieces_and_needs_positions():
    xyz = helix(1.5, -1, 2.0, -0.2)
    edges = np.stack([np.arange(9), np.arange(1, 10)], 1)
    scores = np.full(9, 0.9)
    scores[4] = 0.1  # the classifier missed one true edge: the walk makes two pieces of five
    plain = tracks.build("walk", 10, edges, scores, 0.5, 3)
    assert len(_groups(plain)) == 2
    joined = tracks.build("walk", 10, edges, scores, 0.5, 3, merge=merge.MergeConfig(), xyz=xyz)
    assert _groups(joined) == {frozenset(range(10))}
    # pieces shorter than min_hits are merged before the short ones are dropped: 2 + 2 + 6 hits
    short = np.full(9, 0.9)
    short[[1, 3]] = 0.1
    assert _groups(tracks.build("walk", 10, edges, short, 0.5, 3)) == {frozenset(range(4, 10))}
    labels = tracks.build("walk", 10, edges, short, 0.5, 3, merge=merge.MergeConfig(), xyz=xyz)
    assert _groups(labels) == {frozenset(range(10))}
    with pytest.raises(ValueError, match="needs the hits' positions"):
        tracks.build("walk", 10, edges, scores, 0.5, 3, merge=merge.MergeConfig())


def test_free_hits_join_a_piece_only_when_on_its_helix():
    xyz = np.r_[helix(1.0, 1, 0.4, 0.3), [[0.0, -700.0, 300.0]]]  # hit 10: noise, far from the helix
    labels = np.r_[np.zeros(7, int), -1, -1, -1, -1]
    cfg = merge.MergeConfig(free_hits=True)
    assert _groups(merge.merge(labels, xyz, cfg)) == {frozenset(range(10))}
    assert _groups(merge.merge(labels, xyz)) == {frozenset(range(7))}  # off by default


def test_eval_options_name_the_merge_modes():
    from smilejax.models.tracking import EVALUATION

    from smilejax.evaluation import family_options

    values = family_options(EVALUATION, {"builder": "walk", "merge": "hits"})
    assert (values["merge"], values["merge_sigma"]) == ("hits", merge.MergeConfig.n_sigma)
    assert family_options(EVALUATION, {})["merge"] is None  # off by default
    cfg = merge.config("hits", 2.5)
    assert (cfg.n_sigma, cfg.free_hits, cfg.clean) == (2.5, True, 2)
    assert (merge.config("pieces").free_hits, merge.config(None)) == (False, None)
    with pytest.raises(ValueError, match="--merge must be pieces or hits"):
        family_options(EVALUATION, {"merge": "tracks"})
    with pytest.raises(ValueError, match="--merge-sigma must be positive"):
        family_options(EVALUATION, {"merge": "pieces", "merge_sigma": 0.0})
    with pytest.raises(ValueError, match="--merge-sigma needs --merge"):
        family_options(EVALUATION, {"merge_sigma": 3.0})


def test_clean_drops_a_foreign_hit_so_the_pieces_merge():
    xyz = helix(1.0, 1, 0.4, 0.3)
    xyz[7] += [30.0, -30.0, 0.0]  # hit 7 is another particle's, picked up by piece 1
    labels = np.r_[np.zeros(5, int), np.ones(5, int)]
    assert _groups(merge.merge(labels, xyz)) == _groups(labels)  # no helix fits piece 1
    cleaned = merge.merge(labels, xyz, merge.MergeConfig(clean=1))
    assert _groups(cleaned) == {frozenset(set(range(10)) - {7})} and cleaned[7] == -1


def test_event_tracks_merges_from_the_hit_features():
    from smilejax.models.tracking import evaluation

    xyz = helix(1.2, 1, -0.7, 0.6)
    r, phi = np.hypot(xyz[:, 0], xyz[:, 1]), np.arctan2(xyz[:, 1], xyz[:, 0])
    event = {  # one particle of 10 hits, padded to 12 hits and 11 edges
        "hits": np.r_[np.stack([r / 1000, phi / np.pi, xyz[:, 2] / 1000], 1), np.zeros((2, 3))],
        "hit_mask": np.arange(12) < 10,
        "edges": np.r_[np.stack([np.arange(9), np.arange(1, 10)], 1), np.zeros((2, 2), int)],
        "edge_mask": np.arange(11) < 9,
        "particle": np.r_[np.ones(10, int), 0, 0],
        "pt": np.r_[np.full(10, 1.2), 0, 0],
        "eta": np.r_[np.full(10, 0.5), 0, 0],
        "weight": np.r_[np.full(10, 0.1), 0, 0],
    }
    scores = np.r_[np.full(4, 0.9), 0.1, np.full(4, 0.9), 0, 0]
    plain = evaluation.event_tracks(event, scores, 0.5, "walk", 3)
    joined = evaluation.event_tracks(event, scores, 0.5, "walk", 3, merge=merge.config("pieces"))
    # two pieces of 5: both two-way fakes; merged: one matched track
    assert (plain["acorn"]["two_way"]["tracks"], plain["acorn"]["two_way"]["matched_tracks"]) == (2, 0)
    assert (joined["acorn"]["two_way"]["tracks"], joined["acorn"]["two_way"]["matched_tracks"]) == (1, 1)
    assert joined["score"] == pytest.approx(1.0)


def test_the_screen_in_blocks_finds_the_same_pairs(monkeypatch):
    xyz = np.r_[helix(0.8, 1, 0.4, 0.3), helix(2.0, -1, 2.5, -0.4), helix(0.5, 1, -2.0, 1.0)]
    labels = np.repeat(np.arange(9), [3, 3, 4] * 3)  # three pieces per helix
    whole = merge.merge(labels, xyz)
    assert len(_groups(whole)) == 3
    monkeypatch.setattr(merge, "SCREEN_BLOCK", 2)
    np.testing.assert_array_equal(merge.merge(labels, xyz), whole)


def test_a_joint_fit_of_lower_pt_than_its_pieces_keeps_their_tolerance():
    # two 2 GeV particles of opposite charge, 20 mrad apart: A's two pixel hits, then B's next two
    a, b = helix(2.0, 1, 0.4, 0.3)[:2], helix(2.0, -1, 0.42, 0.3)[2:4]
    xyz, labels = np.r_[a, b], np.r_[0, 0, 1, 1]
    cfg = merge.MergeConfig()
    joint = merge.helix_fit(xyz)["pt"]
    pieces = np.array([merge.helix_fit(a)["pt"], merge.helix_fit(b)["pt"]])
    np.testing.assert_allclose(pieces, [2.0, 2.0], rtol=1e-6)
    assert joint < 0.6  # the joint circle bends to reach both: its own scattering term is > 3x wider
    assert merge.quality(cfg, xyz) <= 1.0  # within the tolerance at the joint fit's own pT
    floor = merge.pair_pt(pieces, np.array([2, 2]))
    assert floor == pytest.approx(2.0) and merge.quality(cfg, xyz, floor) > 1.5
    assert _groups(merge.merge(labels, xyz, cfg)) == _groups(labels)
    # one particle's pieces of the same sizes still join, at 2 GeV and at 0.5 GeV
    for pt in (2.0, 0.5):
        assert len(_groups(merge.merge(labels, helix(pt, 1, 0.4, 0.3)[:4], cfg))) == 1
    # a one-hit piece has no pT of its own: the floor is the other piece's
    assert merge.pair_pt(np.array([0.01, 3.0]), np.array([1, 5])) == pytest.approx(3.0)


def test_relabelling_joins_pieces_under_the_innermost_label():
    # three helices in 9 pieces with scattered, gapped labels, hits shuffled; hit 30 is on no track
    rng = np.random.default_rng(5)
    xyz = np.r_[helix(0.8, 1, 0.4, 0.3), helix(2.0, -1, 2.5, -0.4), helix(0.5, 1, -2.0, 1.0), [[0, 0, 0]]]
    piece = [40, 40, 40, 7, 7, 7, 23, 23, 23, 23]  # helix 1: inner to outer
    piece += [3, 3, 3, 91, 91, 91, 12, 12, 12, 12]  # helix 2
    piece += [55, 55, 55, 8, 8, 8, 60, 60, 60, 60]  # helix 3
    perm = rng.permutation(31)
    labels = np.r_[piece, -1][perm]
    merged = merge.merge(labels, xyz[perm])
    # each helix's hits take its innermost piece's label; the hit on no track stays off
    expected = np.r_[[40] * 10, [3] * 10, [55] * 10, -1][perm]
    np.testing.assert_array_equal(merged, expected)
    ids, members = merge.groups(labels)
    assert ids.tolist() == [3, 7, 8, 12, 23, 40, 55, 60, 91]
    assert all(np.all(np.diff(m) > 0) and np.all(labels[m] == t) for t, m in zip(ids, members, strict=True))
    assert sum(m.size for m in members) == 30


def test_track_pt_is_the_helix_fit_of_each_tracks_hits():
    xyz = np.r_[helix(0.8, 1, 0.4, 0.3), helix(2.0, -1, 2.5, -0.4)[:4]]
    labels = np.r_[np.full(10, 1), np.full(4, 0)]
    np.testing.assert_allclose(merge.track_pt(labels, xyz), [2.0, 0.8], rtol=1e-6)
    pt = merge.track_pt(np.r_[labels, -1, 2], np.r_[xyz, [[1, 1, 1], [9, 9, 9]]], min_hits=5)
    assert np.isnan(pt[0]) and pt[1] == pytest.approx(0.8) and np.isnan(pt[2])  # fewer than 5 hits


def test_event_tracks_fits_each_tracks_pt_from_the_hits():
    from smilejax.models.tracking import evaluation

    # a 0.5 GeV particle whose walk breaks in two 5-hit pieces, and a 3 GeV helix of 6 hits that holds
    # 3 hits of particle 2 and 3 of particle 3 (a fake of high fitted pT)
    xyz = np.r_[helix(0.5, 1, 0.4, 0.3), helix(3.0, -1, 2.0, -0.5)[:6]]
    particle = np.array([1] * 10 + [2] * 3 + [3] * 3)
    r, phi = np.hypot(xyz[:, 0], xyz[:, 1]), np.arctan2(xyz[:, 1], xyz[:, 0])
    edges = np.array([(i, i + 1) for i in range(9)] + [(i, i + 1) for i in range(10, 15)])
    scores = np.full(len(edges), 0.9)
    scores[4] = 0.1  # particle 1's walk stops after 5 hits
    event = {
        "hits": np.stack([r / 1000, phi / np.pi, xyz[:, 2] / 1000], 1),
        "hit_mask": np.ones(16, bool),
        "edges": edges,
        "edge_mask": np.ones(len(edges), bool),
        "particle": particle,
        "pt": np.array([0.0, 0.5, 3.0, 3.0])[particle],
        "eta": np.zeros(16),
        "weight": np.full(16, 1 / 16),
    }
    two = evaluation.event_tracks(event, scores, 0.5, "walk", 3)["acorn"]["two_way"]
    assert (two["tracks"], two["matched_tracks"]) == (3, 0)  # two halves and the mixed track
    assert (two["tracks_reco_pt"], two["matched_tracks_reco_pt"]) == (1, 0)  # only the 3 GeV fake
