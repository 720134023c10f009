"""TrackML data: the CSV reader (plain and gzipped, named errors), the HDF5 cache, the module map, the
``trackml`` format's batches, and the TrackML-like event generator (geometry, helices, the CLI maker)."""

from __future__ import annotations

import dataclasses
import gzip
import os
import shutil

import numpy as np
import pytest
from smilejax.inputs import trackml
from smilejax.inputs.trackml import cache as tcache
from smilejax.inputs.trackml import csv as tcsv
from smilejax.inputs.trackml import module_map as mm
from smilejax.inputs.trackml.features import particle_truth
from smilejax.models.tracking import detector, make_events

from .conftest import run_cli

N_EVENTS = 12


@pytest.fixture(scope="module")
def events_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("trackml")
    make_events.make(out, N_EVENTS, pileup=1, seed=3, kind="synthetic", workers=1, progress=False)
    return out


def _names(folder):
    return tcsv.find_events(folder)


def test_reader_reads_a_generated_event(events_dir):
    names = _names(events_dir)
    assert names == [f"event{1000 + i:09d}" for i in range(N_EVENTS)]
    ev = tcsv.read_event(events_dir, names[0])
    hits, truth, prt, cells = ev["hits"], ev["truth"], ev["particles"], ev["cells"]
    assert len(hits) > 100 and (hits["hit_id"] == np.arange(1, len(hits) + 1)).all()
    assert (truth["hit_id"] == hits["hit_id"]).all()
    assert set(np.unique(cells["hit_id"])) == set(hits["hit_id"])  # every hit has cells
    counted = np.bincount(np.searchsorted(prt["particle_id"], truth["particle_id"][truth["particle_id"] > 0]))
    assert (prt["nhits"][: counted.size] == counted).all()
    assert 0.05 < (truth["particle_id"] == 0).mean() < 0.15  # noise
    assert truth["weight"].sum() == pytest.approx(1.0, rel=1e-4)
    assert hits.dtype.names == tuple(n for n, _ in tcsv.COLUMNS["hits"])


def test_malformed_csv_names_file_column_and_row(tmp_path):
    bad = tmp_path / "event000000001-hits.csv"
    bad.write_text(
        "hit_id,x,y,z,volume_id,layer_id,module_id\n"
        "1,-64.4,-7.16,-1502.5,7,2,1\n"
        "2,-55.3,0.63,-1502.5,7,2,1\n"
        "3,-83.8,-1.14,oops,7,2,1\n"
    )
    with pytest.raises(tcsv.CsvError) as err:
        tcsv.read(bad, "hits")
    assert (err.value.file, err.value.column, err.value.row) == (str(bad), "z", 3)
    assert "'oops' is not a number" in str(err.value) and str(bad) in str(err.value)

    bad.write_text("hit_id,x,y,z,volume_id,layer_id,module_id\n1,1,2,3,7,2,1\n2,1,2,3,7,2.5,1\n")
    with pytest.raises(tcsv.CsvError, match=r"column 'layer_id', row 2: '2\.5' is not an integer"):
        tcsv.read(bad, "hits")
    bad.write_text("hit_id,x,y,z,volume_id,layer_id,module_id\n1,1,2,3,7,2,1\n2,1,2,3,7\n")
    with pytest.raises(tcsv.CsvError, match="row 2: 5 fields, the header has 7"):
        tcsv.read(bad, "hits")
    bad.write_text("hit_id,x,y,volume_id,layer_id,module_id\n1,1,2,7,2,1\n")
    with pytest.raises(tcsv.CsvError, match="column 'z': the header lacks"):
        tcsv.read(bad, "hits")
    bad.write_text("hit_id,x,y,z,volume_id,layer_id,module_id\n1,1,2,nan,7,2,1\n")
    with pytest.raises(tcsv.CsvError, match=r"column 'z', row 1: .* not finite"):
        tcsv.read(bad, "hits")


def test_cross_file_errors_are_named(events_dir, tmp_path):
    name = _names(events_dir)[0]
    for kind in tcsv.KINDS:
        shutil.copy(tcsv.event_file(events_dir, name, kind), tmp_path)
    truth = tcsv.read(tmp_path / f"{name}-truth.csv", "truth")
    row = int(np.flatnonzero(truth["particle_id"] > 0)[0])
    truth["particle_id"][row] = 999
    tcsv.write(tmp_path / f"{name}-truth.csv", "truth", truth)
    with pytest.raises(tcsv.CsvError, match=rf"truth.csv, column 'particle_id', row {row + 1}: particle 999"):
        tcsv.read_event(tmp_path, name)


def test_gzipped_files_read_the_same(events_dir, tmp_path):
    name = _names(events_dir)[1]
    for kind in tcsv.KINDS:
        src = tcsv.event_file(events_dir, name, kind)
        with open(src, "rb") as f, gzip.open(tmp_path / f"{src.name}.gz", "wb") as g:
            g.write(f.read())
    assert _names(tmp_path) == [name]
    plain, zipped = tcsv.read_event(events_dir, name), tcsv.read_event(tmp_path, name)
    for kind in tcsv.KINDS:
        np.testing.assert_array_equal(plain[kind], zipped[kind])
    # the writer's .gz output reads back too
    tcsv.write(tmp_path / "event000000009-hits.csv.gz", "hits", plain["hits"][:5])
    np.testing.assert_array_equal(
        tcsv.read(tmp_path / "event000000009-hits.csv.gz", "hits"), plain["hits"][:5]
    )


def test_cache_equals_the_csvs_and_is_rebuilt_when_one_changes(events_dir, tmp_path):
    name = _names(events_dir)[2]
    for kind in tcsv.KINDS:
        shutil.copy(tcsv.event_file(events_dir, name, kind), tmp_path)
    csv_read = tcsv.read_event(tmp_path, name)
    first = tcache.load(tmp_path, name)
    h5 = tcache.cache_dir(tmp_path) / f"{name}.h5"
    built = h5.stat().st_mtime_ns
    again = tcache.load(tmp_path, name)
    assert h5.stat().st_mtime_ns == built  # read from the cache, not rebuilt
    for kind in tcsv.KINDS:
        np.testing.assert_array_equal(first[kind], csv_read[kind])
        np.testing.assert_array_equal(again[kind], csv_read[kind])
    assert tcache.read_index(tcache.cache_dir(tmp_path))[name]["hits"] == len(csv_read["hits"])

    hits = csv_read["hits"].copy()
    hits["x"][0] += 1.5
    tcsv.write(tmp_path / f"{name}-hits.csv", "hits", hits)
    os.utime(tmp_path / f"{name}-hits.csv", ns=(built + 10**9, built + 10**9))
    changed = tcache.load(tmp_path, name)
    assert changed["hits"]["x"][0] == pytest.approx(csv_read["hits"]["x"][0] + 1.5, abs=1e-4)


def _truth_inputs(tables):
    prt = tables["particles"]
    vertex = np.r_[np.zeros((1, 3)), np.stack([prt["vx"], prt["vy"], prt["vz"]], 1)]
    return tables["hits"], particle_truth(tables["truth"], prt)["particle"], vertex


def test_module_map_finds_the_true_consecutive_pairs(events_dir):
    train = [_truth_inputs(tcsv.read_event(events_dir, n)) for n in _names(events_dir)[:10]]
    mmap = mm.learn(train)
    assert mmap.events == 10 and len(mmap) > 100
    for hits, particle, vertex in train:
        pairs = mm.true_pairs(hits, particle, vertex)
        metrics = mm.edge_metrics(mmap.apply(hits), particle, pairs)
        assert metrics["efficiency"] > 0.95, metrics
        assert metrics["purity"] > 0.5, metrics
        # triplet cuts (z0 and phi-slope continuity per module triplet): fewer, purer edges
        both = mm.edge_metrics(mmap.apply(hits, triplets=True), particle, pairs)
        assert both["efficiency"] > 0.95 and both["purity"] >= metrics["purity"], (both, metrics)
        assert both["edges"] <= metrics["edges"]
    # a denser event (pile-up 20): the triplet cuts remove most of the doublets' fakes
    rng = np.random.default_rng(7)
    tables = make_events.simulate(rng, make_events.gun(rng, 20))
    hits, particle, vertex = _truth_inputs(tables)
    dense = mm.learn([(hits, particle, vertex)])
    pairs = mm.true_pairs(hits, particle, vertex)
    doublets = mm.edge_metrics(dense.apply(hits), particle, pairs)
    triplets = mm.edge_metrics(dense.apply(hits, triplets=True), particle, pairs)
    assert doublets["efficiency"] > 0.95 and triplets["efficiency"] > 0.95
    assert triplets["purity"] > doublets["purity"] + 0.03, (triplets, doublets)
    path = mmap.save(events_dir / "map.npz")
    again = mm.ModuleMap.load(path)
    np.testing.assert_array_equal(again.pairs, mmap.pairs)
    np.testing.assert_array_equal(
        again.apply(train[0][0], triplets=True), mmap.apply(train[0][0], triplets=True)
    )


def test_sparse_module_pairs_are_widened(events_dir, monkeypatch):
    """Pairs seen in few training events get the typical width of their layer pair instead of the width
    0 of one sample: held-out events' true pairs are found far more often, with a few more edges."""
    tables = [_truth_inputs(tcsv.read_event(events_dir, n)) for n in _names(events_dir)]
    train, held = tables[:8], tables[8:]
    wide = mm.learn(train)
    assert (wide.hi - wide.lo > 0).all()
    monkeypatch.setattr(mm, "_widened", lambda lo, hi, counts, groups: (lo, hi))
    raw = mm.learn(train)
    np.testing.assert_array_equal(raw.pairs, wide.pairs)
    assert ((raw.hi - raw.lo) == 0).mean() > 0.3  # most pairs were seen once
    for m in (raw, wide):
        m.found = [mm.edge_metrics(m.apply(h), p, mm.true_pairs(h, p, v)) for h, p, v in held]
    eff = {k: np.mean([f["efficiency"] for f in m.found]) for k, m in (("raw", raw), ("wide", wide))}
    assert eff["wide"] > 1.5 * eff["raw"], eff


def test_trackml_format_batches(events_dir):
    cfg = trackml.TrackmlConfig(
        path=str(events_dir), node_widths=[1024, 4096], edge_widths=[2048, 16384], batch_size=2
    )
    src = trackml.source(cfg, "train")
    assert len(src) == N_EVENTS - 1 and len(trackml.source(cfg, "eval")) == 1
    assert set(src.levels.tolist()) <= {1, 2}
    batch = src.read(np.array([0, 1]))
    n_w = cfg.node_widths[int(src.levels[[0, 1]].max()) - 1]
    assert batch["hits"].shape == (2, n_w, 7) and batch["edges"].shape[2] == 2
    for row, i in enumerate((0, 1)):
        n = int(src.nodes[i])
        assert batch["hit_mask"][row].sum() == n and batch["hit_mask"][row, :n].all()
        m = int(batch["edge_mask"][row].sum())
        edges, p = batch["edges"][row, :m], batch["particle"][row]
        assert (edges < n).all()
        np.testing.assert_array_equal(
            batch["edge_y"][row, :m], (p[edges[:, 0]] == p[edges[:, 1]]) & (p[edges[:, 0]] > 0)
        )
        assert batch["edge_y"][row, :m].mean() > 0.5
    truth = trackml.source(dataclasses.replace(cfg, fields=list(trackml.FIELDS)), "train").read(np.array([0]))
    n = int(truth["true_edge_mask"][0].sum())
    pairs = truth["true_edges"][0, :n]
    assert n > 0 and (truth["particle"][0, pairs[:, 0]] == truth["particle"][0, pairs[:, 1]]).all()
    it = iter(trackml.from_config(src, cfg, seed=0, process_index=0, process_count=1))
    shapes = {tuple(next(it)["hits"].shape) for _ in range(4)}
    assert shapes <= {(2, 1024, 7), (2, 4096, 7)}


def test_edge_counts_are_cached_with_the_event_stamps(events_dir, tmp_path, monkeypatch):
    """A second open reads the events' edge counts from one file (no event's edges touched); an event
    whose CSVs changed is counted again, alone; a changed training event (a new module map) recounts all."""
    names = _names(events_dir)[:4]
    for name in names:
        for kind in tcsv.KINDS:
            shutil.copy(tcsv.event_file(events_dir, name, kind), tmp_path)
    cfg = trackml.TrackmlConfig(
        path=str(tmp_path), eval_events=1, node_widths=[1024, 4096], edge_widths=[2048, 16384]
    )
    first = trackml.source(cfg, "train")
    counts = first.edge_counts()
    assert counts.min() > 0 and counts.tolist() == [len(first.edges_of(i)) for i in range(len(first))]

    built, edges_of = [], trackml.TrackmlSource.edges_of
    monkeypatch.setattr(
        trackml.TrackmlSource, "edges_of", lambda self, i, t=None: built.append(i) or edges_of(self, i, t)
    )
    np.testing.assert_array_equal(trackml.source(cfg, "train").levels, first.levels)
    assert built == []  # the counts file alone

    later = tcache.stamp(tmp_path, names[1], tcsv.KINDS)[0][3] + 10**9
    os.utime(tcsv.event_file(tmp_path, names[1], "cells"), ns=(later, later))  # not a module-map input
    np.testing.assert_array_equal(trackml.source(cfg, "train").edge_counts(), counts)
    assert built == [1]
    built.clear()
    os.utime(tcsv.event_file(tmp_path, names[0], "hits"), ns=(later, later))  # a module-map input
    np.testing.assert_array_equal(trackml.source(cfg, "train").edge_counts(), counts)
    assert built == [0, 1, 2]


def test_node_budget_batches_and_too_big_events(events_dir):
    cfg = trackml.TrackmlConfig(
        path=str(events_dir), node_widths=[2048, 4096], edge_widths=[8192, 16384], node_budget=8192
    )
    assert cfg.global_batch_sizes() == [2, 4]
    src = trackml.source(cfg, "train")
    it = iter(trackml.from_config(src, cfg, seed=1, process_index=0, process_count=1))
    for _ in range(3):
        batch = next(it)
        b, n = batch["hit_mask"].shape
        assert b * n <= cfg.node_budget and (b, n) in {(4, 2048), (2, 4096)}
    small = trackml.TrackmlConfig(path=str(events_dir), node_widths=[64], edge_widths=[64])
    with pytest.raises(ValueError, match=r"hits and .* edges do not fit the largest level"):
        _ = trackml.source(small, "train").levels


def test_hits_lie_on_the_surfaces(events_dir):
    t = detector.tables()
    ev = tcsv.read_event(events_dir, _names(events_dir)[3])
    hits, truth = ev["hits"], ev["truth"]
    key = {(v, lay): k for k, (v, lay) in enumerate(zip(t.volume, t.layer, strict=True))}
    s = np.array([key[(v, lay)] for v, lay in zip(hits["volume_id"], hits["layer_id"], strict=True)])
    for x, y, z in ((hits["x"], hits["y"], hits["z"]), (truth["tx"], truth["ty"], truth["tz"])):
        r = np.hypot(x, y)
        barrel = t.barrel[s]
        np.testing.assert_allclose(r[barrel], t.position[s][barrel], atol=1e-3)
        np.testing.assert_allclose(z[~barrel], t.position[s][~barrel], atol=1e-3)
        assert (np.abs(z[barrel]) <= t.hi[s][barrel] + 1e-3).all()
        assert ((r[~barrel] >= t.lo[s][~barrel] - 1e-3) & (r[~barrel] <= t.hi[s][~barrel] + 1e-3)).all()
    assert (hits["module_id"] >= 1).all() and (hits["module_id"] <= t.n_phi[s] * t.n_long[s]).all()


def test_helices_curve_with_the_charge_and_field():
    t = detector.tables()
    pt = np.array([1.0, 1.0, 0.5])
    q = np.array([1.0, -1.0, 1.0])
    mom = np.stack([pt, np.zeros(3), np.zeros(3)], 1)
    rng = np.random.default_rng(0)
    cross = detector.propagate(rng, t, np.zeros((3, 3)), mom, q, np.full(3, 0.1396), scattering=False)
    rc = pt * detector.MM_PER_GEV  # 1667 mm at 1 GeV in 2 T
    for i in range(3):
        sel = cross.particle == i
        pos = cross.pos[sel]
        r = np.hypot(pos[:, 0], pos[:, 1])
        phi = np.arctan2(pos[:, 1], pos[:, 0])
        assert len(r) >= 8 and (np.diff(r) > 0).all()
        # B along +z: a positive particle turns clockwise (phi decreases), by asin(r / 2Rc) at radius r
        np.testing.assert_allclose(phi, -q[i] * np.arcsin(r / (2 * rc[i])), atol=1e-7)
        # the momentum turns by twice that angle, and keeps its pT
        mphi = np.arctan2(cross.mom[sel, 1], cross.mom[sel, 0])
        np.testing.assert_allclose(mphi, -2 * q[i] * np.arcsin(r / (2 * rc[i])), atol=1e-7)
        np.testing.assert_allclose(np.hypot(cross.mom[sel, 0], cross.mom[sel, 1]), pt[i])
    # with material, the hits scatter around the helix: spread grows outward, at the Highland scale
    n = 400
    many = detector.propagate(
        rng, t, np.zeros((n, 3)), np.tile([1.0, 0, 0], (n, 1)), np.ones(n), np.full(n, 0.1396)
    )
    last = (many.surface == int(np.flatnonzero(t.barrel)[-1])) & np.isin(many.particle, np.arange(n))
    assert 0.05 < np.std(many.pos[last, 1]) < 5.0  # mm at r = 1020


def test_data_make_through_the_cli(tmp_path):
    out = tmp_path / "made"
    done = run_cli(
        "data",
        "make",
        "trackml-synthetic",
        "--events",
        "2",
        "--pileup",
        "0",
        "--gzip",
        "--workers",
        "1",
        "--no-progress",
        "--out",
        str(out),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "wrote 2 events" in done.stdout and "data.format=trackml" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"event{1000 + i:09d}-{k}.csv.gz" for i in range(2) for k in tcsv.KINDS
    )
    assert len(tcsv.read_event(out, "event000001001")["hits"]) > 50


def test_pythia_events_with_pileup(tmp_path, capfd):
    info = make_events.make(tmp_path, 1, pileup=3, seed=1, kind="pythia", workers=1, progress=False)
    print("stdout still works")  # one worker runs in this process: Pythia's banner is silenced only there
    assert "stdout still works" in capfd.readouterr().out
    ev = tcsv.read_event(tmp_path, "event000001000")
    interactions = np.unique(ev["particles"]["particle_id"] >> 28)
    assert interactions.size >= 2 and info["hits_mean"] == len(ev["hits"]) > 500
    vz = ev["particles"]["vz"]
    assert np.ptp(vz) > 1.0  # interactions at different z
