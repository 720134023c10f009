"""Packed sets (inputs/packing.py): every valid track and jet lands once with its values, each jet's
tracks contiguous in one row, capacities respected, deterministic plans, rows a multiple."""

from __future__ import annotations

import numpy as np
import pytest
from smilejax.inputs import packing

pytestmark = pytest.mark.unit


def _batch(n: int, t: int, seed: int = 0, holes: bool = True) -> dict[str, np.ndarray]:
    """A padded ftag-like batch: distinct track values, holes in ``valid``, per-jet keys."""
    rng = np.random.default_rng(seed)
    counts = np.minimum(rng.poisson(8.4, n), t)
    counts[: min(n, 3)] = [0, t, 1][: min(n, 3)]  # an empty jet and a full one
    valid = np.arange(t)[None, :] < counts[:, None]
    if holes:  # same counts, holes where the file has them
        valid = np.stack([rng.permutation(v) for v in valid])
    tracks = rng.normal(size=(n, t, 3)).astype(np.float32)
    tracks[~valid] = 0
    origin = np.where(valid, rng.integers(0, 8, (n, t)), -1).astype(np.int32)
    vertex = np.where(valid, rng.integers(0, 5, (n, t)), -1).astype(np.int32)
    return {
        "tracks": tracks,
        "valid": valid,
        "track_origin": origin,
        "track_vertex": vertex,
        "flavour": rng.integers(0, 4, n).astype(np.int32),
        "weight": rng.random((n, 2)).astype(np.float32),
    }


def _check_plan(p: packing.Packing, lengths: np.ndarray, slots: int, jets_per_row: int) -> None:
    rows = p.rows
    assert ((p.row >= 0) & (p.row < rows)).all()
    used = np.bincount(p.row, weights=lengths, minlength=rows)
    jets = np.bincount(p.row, minlength=rows)
    assert used.max() <= slots and jets.max() <= jets_per_row
    # jet slots 0..n-1 in each row, each once; track ranges inside the row and disjoint
    for r in np.unique(p.row):
        mine = np.flatnonzero(p.row == r)
        assert sorted(p.slot[mine].tolist()) == list(range(mine.size))
        o = np.argsort(p.offset[mine], kind="stable")
        ends = p.offset[mine][o] + lengths[mine][o]
        assert (p.offset[mine][o][1:] >= ends[:-1]).all() and ends[-1] <= slots


@pytest.mark.parametrize("slots,jets_per_row,multiple", [(40, 8, 1), (64, 16, 8), (40, 1, 4), (97, 100, 3)])
def test_plan_capacity_and_multiple(slots, jets_per_row, multiple):
    lengths = _batch(1000, 40, seed=slots).get("valid").sum(1)
    p = packing.plan_rows(lengths, slots, jets_per_row, multiple)
    _check_plan(p, lengths, slots, jets_per_row)
    assert p.rows % multiple == 0 and p.rows - p.used_rows < multiple
    assert p.used_rows >= -(-lengths.sum() // slots) and p.used_rows >= -(-lengths.size // jets_per_row)
    if jets_per_row == 1:
        assert p.used_rows == lengths.size


def test_plan_is_first_fit_decreasing():
    """A small case worked by hand: 5, 4, 3, 3, 2, 1 into rows of 8 slots, 3 jets at most."""
    p = packing.plan_rows(np.array([3, 5, 1, 4, 3, 2]), slots=8, jets_per_row=3)
    # decreasing: 5 (j1) -> r0; 4 (j3) -> r1; 3 (j0) -> r0 [8 full]; 3 (j4) -> r1 [7];
    # 2 (j5) -> r2; 1 (j2) -> r1
    assert p.row.tolist() == [0, 0, 1, 1, 1, 2]
    assert p.offset.tolist() == [5, 0, 7, 0, 4, 0]
    assert p.slot.tolist() == [1, 0, 2, 0, 1, 0]
    assert p.rows == 3 and p.padding_fraction == pytest.approx(1 - 18 / 24)


def test_plan_matches_a_per_jet_first_fit():
    """The vectorised plan equals a plain per-jet first-fit decreasing loop."""
    rng = np.random.default_rng(3)
    lengths = np.minimum(rng.poisson(6, 500), 30)
    slots, jpr = 30, 6
    free, count, rows = [], [], []
    for j in np.argsort(-lengths, kind="stable"):
        r = next((i for i in range(len(free)) if free[i] >= lengths[j] and count[i] < jpr), len(free))
        if r == len(free):
            free.append(slots)
            count.append(0)
        rows.append((j, r, slots - free[r], count[r]))
        free[r] -= lengths[j]
        count[r] += 1
    p = packing.plan_rows(lengths, slots, jpr)
    for j, r, off, s in rows:
        assert (p.row[j], p.offset[j], p.slot[j]) == (r, off, s)


def test_count_rows_agrees_with_the_placing_plan():
    """``count_rows`` of many slices at once equals ``plan_rows(...).used_rows`` of each: random track
    counts and sizes, empty jets, one-jet rows, full rows, no jets."""
    rng = np.random.default_rng(11)
    for _ in range(200):
        slots, jets_per_row = int(rng.integers(1, 70)), int(rng.integers(1, 20))
        lengths = np.minimum(
            rng.poisson(rng.uniform(0, slots), (int(rng.integers(1, 6)), rng.integers(0, 120))), slots
        )
        want = [packing.plan_rows(x, slots, jets_per_row).used_rows for x in lengths]
        assert packing.count_rows(lengths, slots, jets_per_row).tolist() == want
    assert packing.count_rows(np.full((2, 7), 5), 5, 3).tolist() == [7, 7]  # a full row per jet
    assert packing.count_rows(np.zeros((3, 0), np.int64), 8, 2).tolist() == [0, 0, 0]
    assert packing.count_rows(np.zeros((0, 4), np.int64), 8, 2).shape == (0,)
    with pytest.raises(ValueError, match=r"track counts must be in 0..8"):
        packing.count_rows(np.array([[9]]), 8, 2)
    with pytest.raises(ValueError, match="2-D integer"):
        packing.count_rows(np.array([1, 2]), 8, 2)


def test_pack_moves_every_track_and_jet_once():
    b = _batch(300, 40)
    out, p = packing.pack_padded(b, slots=64, jets_per_row=12, row_multiple=4)
    assert set(out) == {*b, "segment", "jet_valid"}
    r, t, j = p.rows, 64, 12
    assert (
        out["tracks"].shape == (r, t, 3) and out["valid"].shape == (r, t) and out["segment"].shape == (r, t)
    )
    assert (
        out["flavour"].shape == (r, j)
        and out["weight"].shape == (r, j, 2)
        and out["jet_valid"].shape == (r, j)
    )
    assert out["segment"].dtype == np.int32 and out["jet_valid"].dtype == bool
    assert out["valid"].sum() == b["valid"].sum() and out["jet_valid"].sum() == 300
    assert ((out["segment"] >= 0) == out["valid"]).all()
    # empty slots carry the fill values
    assert (out["tracks"][~out["valid"]] == 0).all()
    for key in ("track_origin", "track_vertex"):
        assert (out[key][~out["valid"]] == -1).all()
    assert (out["flavour"][~out["jet_valid"]] == -1).all() and (out["weight"][~out["jet_valid"]] == 0).all()
    for n in range(300):
        row, slot = p.row[n], p.slot[n]
        assert out["jet_valid"][row, slot] and out["flavour"][row, slot] == b["flavour"][n]
        np.testing.assert_array_equal(out["weight"][row, slot], b["weight"][n])
        mine = np.flatnonzero(out["segment"][row] == slot)
        k = int(b["valid"][n].sum())
        assert mine.size == k
        if k:  # contiguous, in the padded order
            assert (np.diff(mine) == 1).all() and mine[0] == p.offset[n]
            for key in ("tracks", "track_origin", "track_vertex"):
                np.testing.assert_array_equal(out[key][row, mine], b[key][n][b["valid"][n]])
    np.testing.assert_array_equal(packing.unpack_jets(out["flavour"], p), b["flavour"])


def test_pack_is_deterministic():
    b = _batch(500, 40, seed=7)
    one, _ = packing.pack_padded(b, 48, 10, 8)
    two, _ = packing.pack_padded({k: v.copy() for k, v in b.items()}, 48, 10, 8)
    assert one.keys() == two.keys()
    for k in one:
        np.testing.assert_array_equal(one[k], two[k])


def test_explicit_keys_and_errors():
    b = _batch(20, 10, holes=False)
    p = packing.plan_rows(b["valid"].sum(1), 10, 4)
    out = packing.pack(
        b, p, track_keys=["tracks"], jet_keys=["flavour", "track_origin", "track_vertex", "weight"]
    )
    assert out["track_origin"].shape == (p.rows, 4, 10)  # taken as a per-jet key: moved whole
    with pytest.raises(ValueError, match=r"\[.weight.\] are neither track_keys nor jet_keys"):
        packing.pack(b, p, track_keys=["tracks", "track_origin", "track_vertex"], jet_keys=["flavour"])
    with pytest.raises(ValueError, match="jet 1 has 10 tracks, more than the 8 track slots"):
        packing.plan_rows(b["valid"].sum(1), 8, 4)
    with pytest.raises(ValueError, match="jets_per_row must be at least 1, got 0"):
        packing.plan_rows(np.array([1, 2]), 8, 0)
    with pytest.raises(ValueError, match=r"slots .* at least 1"):
        packing.plan_rows(np.array([0]), 0, 2)
    with pytest.raises(ValueError, match="row_multiple must be at least 1"):
        packing.plan_rows(np.array([1]), 8, 2, 0)
    with pytest.raises(ValueError, match="1-D integer"):
        packing.plan_rows(np.array([1.5]), 8, 2)
    with pytest.raises(ValueError, match="differ from those the packing was planned for"):
        packing.pack({**b, "valid": np.zeros_like(b["valid"])}, p)


def test_empty_and_tiny():
    p = packing.plan_rows(np.zeros(0, np.int64), 8, 2, 4)
    assert p.rows == 4 and p.used_rows == 0 and p.padding_fraction == 1.0
    p = packing.plan_rows(np.zeros(5, np.int64), 8, 2)  # jets without tracks still take jet slots
    assert p.rows == 3 and p.slot.tolist() == [0, 1, 0, 1, 0]
