"""The edge filter stage: trained on a graph stage's candidate edges, applied by the filtered_graph hook
between graph construction and the GNN, and evaluated per score cut."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from smilejax.models.tracking import construction, filter_eval

from smilejax import config, metrics, registry, trainer


@pytest.fixture(scope="module")
def filter_run(tmp_path_factory) -> Path:
    """A tiny filter trained on 12 generated events' module-map graphs (in this process, 8 devices)."""
    from smilejax.models.tracking import make_events

    root = tmp_path_factory.mktemp("filter")
    make_events.make(root / "ev", 12, pileup=0, seed=3, kind="synthetic", workers=1, progress=False)
    run = root / "run"
    overrides = [
        f"run.dir={run}",
        f"data.path={root / 'ev'}",
        "data.eval_events=4",
        "data.module_map_margin=0.5",
        "run.steps=40",
        "run.log_every=10",
        "logging.progress=false",
    ]
    trainer.train(config.load(registry.configs()["tracking-filter-tiny"], overrides))
    return run


def _event(run: Path, split: str = "eval") -> tuple[dict, object]:
    from smilejax.inputs import trackml

    cfg = config.load(run / "config.yaml").data
    src = trackml.source(cfg, split, fields=list(trackml.FIELDS))
    return src.read(np.array([0])), src


def test_filter_trains_and_the_loss_falls(filter_run):
    rec = {r["step"]: r for r in metrics.read(filter_run / "metrics.jsonl") if "loss" in r}
    assert rec[40]["loss"] < 0.8 * rec[10]["loss"], rec
    assert 0 < rec[40]["edge_efficiency"] <= 1 and 0 < rec[40]["kept_fraction"] <= 1


def test_hook_keeps_exactly_the_edges_above_the_cut(filter_run, monkeypatch):
    import jax.numpy as jnp

    batch, _ = _event(filter_run)
    n, m = int(batch["hit_mask"][0].sum()), int(batch["edge_mask"][0].sum())
    features, candidates = batch["hits"][0, :n], batch["edges"][0, :m]
    graph = construction.FilteredGraph(filter_run)
    assert graph.cut == 0.5  # the run's edge_cut
    # scores of the trained model on the unpadded event, by hand
    ones = lambda k: jnp.ones((1, k), bool)  # noqa: E731
    out = graph.trained.model(jnp.asarray(features[None]), ones(n), jnp.asarray(candidates[None]), ones(m))
    expected = np.asarray(out["edge_scores"][0])
    scores = graph.scores(features, candidates)
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    cut = float(np.median(expected))  # a cut that splits this event's edges
    graph.cut = cut
    kept = graph.keep(features, candidates)
    np.testing.assert_array_equal(kept, candidates[expected > cut])
    assert 0 < len(kept) < m
    # through the trackml format: data.graph names the hook, the run and cut come from the environment
    monkeypatch.setenv("SMILEJAX_TRACKING_FILTER", str(filter_run))
    monkeypatch.setenv("SMILEJAX_TRACKING_FILTER_CUT", repr(cut))
    data = config.load(filter_run / "config.yaml").data
    data.graph = "smilejax.models.tracking.construction:filtered_graph"
    data.cache_dir = str(filter_run.parent / "cache-filtered")
    from smilejax.inputs import trackml

    hooked = trackml.source(data, "eval").edges_of(0)
    np.testing.assert_array_equal(hooked, kept)
    # the hook follows the environment within a process (as the edge cache's key does)
    monkeypatch.setenv("SMILEJAX_TRACKING_FILTER_CUT", "0.75")
    assert construction._filter_from_environment().cut == 0.75


def test_hook_errors_are_named(filter_run, tmp_path, monkeypatch):
    monkeypatch.delenv("SMILEJAX_TRACKING_FILTER", raising=False)
    with pytest.raises(ValueError, match="needs SMILEJAX_TRACKING_FILTER=RUN_DIR"):
        construction.filtered_graph({}, None)
    monkeypatch.setenv("SMILEJAX_TRACKING_FILTER", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="not a smilejax run directory"):
        construction.filtered_graph({}, None)
    other = tmp_path / "ign-run"
    other.mkdir()
    shutil.copy(registry.configs()["tracking-ign"], other / "config.yaml")
    with pytest.raises(ValueError, match="is a run of ign, not of tracking_filter"):
        construction.FilteredGraph(other)
    monkeypatch.setenv("SMILEJAX_TRACKING_FILTER", str(filter_run))
    for bad, match in (("abc", "must be a score in"), ("1.5", r"cut must be in \[0, 1\), not 1.5")):
        monkeypatch.setenv("SMILEJAX_TRACKING_FILTER_CUT", bad)
        with pytest.raises(ValueError, match=match):
            construction.filtered_graph({}, None)


@pytest.mark.unit
def test_cut_metrics_on_a_hand_made_event():
    scores = np.array([0.9, 0.6, 0.3, 0.05, 0.8, 0.2])
    y = np.array([True, True, True, False, False, False])
    target = np.array([True, False, True, False, False, False])
    cuts = (0.1, 0.5)
    counts = filter_eval.tally(scores, y, target, cuts)
    # cut 0.1 keeps 0.9, 0.6, 0.3, 0.8, 0.2; cut 0.5 keeps 0.9, 0.6, 0.8
    np.testing.assert_array_equal(counts, [[5, 3, 2], [3, 2, 1]])
    totals = {"candidates": 6, "true": 3, "target": 2, "true_pairs": 4, "target_pairs": 2}
    rows = filter_eval.rates(totals, counts, cuts, n_events=2)
    assert rows[0] == pytest.approx(
        {
            "cut": 0.1,
            "efficiency": 1.0,
            "efficiency_target": 1.0,
            "purity": 0.6,
            "kept_fraction": 5 / 6,
            "graph_efficiency": 0.75,
            "graph_efficiency_target": 1.0,
            "edges_per_event": 2.5,
        }
    )
    assert rows[1] == pytest.approx(
        {
            "cut": 0.5,
            "efficiency": 2 / 3,
            "efficiency_target": 0.5,
            "purity": 2 / 3,
            "kept_fraction": 0.5,
            "graph_efficiency": 0.5,
            "graph_efficiency_target": 0.5,
            "edges_per_event": 1.5,
        }
    )


def test_eval_writes_and_prints_the_cuts(filter_run, tmp_path, capsys):
    from smilejax import evaluation

    opts = evaluation.EvalOptions(out=tmp_path / "eval", split="train", model={"cuts": "0.2,0.7"})
    _, path = evaluation.run(filter_run, opts)
    written = json.loads(path.read_text())
    assert [r["cut"] for r in written["cuts"]] == [0.2, 0.5, 0.7]  # the run's edge_cut joins the list
    eff = [r["efficiency"] for r in written["cuts"]]
    kept = [r["kept_fraction"] for r in written["cuts"]]
    assert eff == sorted(eff, reverse=True) and kept == sorted(kept, reverse=True)
    assert written["n_events"] == 8 and 0 < written["candidate_purity"] < 1
    batch, _ = _event(filter_run, "train")
    assert written["candidates_per_event"] > 0 and batch["edge_mask"].sum() > 0
    out = capsys.readouterr().out
    assert "edges/event" in out and "candidates:" in out
    assert (tmp_path / "eval" / "filter_cuts.png").is_file()


@pytest.mark.unit
def test_config_sizes_and_errors():
    from smilejax.models.tracking import FilterConfig

    cfg = config.load(registry.configs()["tracking-filter"]).model
    assert (cfg.hidden, cfg.nb_layer, cfg.activation, cfg.edge_cut) == (512, 3, "tanh", 0.5)
    assert registry.model(cfg.name).name == "tracking_filter"
    with pytest.raises(ValueError, match="pos_weight must be positive"):
        FilterConfig(pos_weight=0)
    with pytest.raises(ValueError, match=r"edge_cut must be in \[0, 1\)"):
        FilterConfig(edge_cut=1.0)
    from smilejax.models.tracking import FILTER_SPEC

    from smilejax.evaluation import family_options

    assert family_options(FILTER_SPEC.evaluation, {"cuts": "0.1, 0.3"})["cuts"] == "0.1, 0.3"
    bad_cuts = (("0.1,x", "comma-separated scores"), ("0.5,1", r"scores in \[0, 1\)"), (",", "scores in"))
    for bad, match in bad_cuts:
        with pytest.raises(ValueError, match=match):
            family_options(FILTER_SPEC.evaluation, {"cuts": bad})


@pytest.mark.unit
def test_edge_cache_key_follows_the_run_and_cut(tmp_path, monkeypatch):
    """The trackml edge cache's key holds what a learned graph reads from the environment: another cut,
    another run, or a retrained run (a new checkpoint) names other cache files; the same settings the same."""
    from smilejax.inputs.trackml.source import TrackmlConfig, TrackmlSource

    def digest() -> str:
        cfg = TrackmlConfig(graph="smilejax.models.tracking.construction:filtered_graph")
        return TrackmlSource([], cfg)._graph_digest()

    (tmp_path / "a" / "checkpoints" / "100").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    monkeypatch.setenv("SMILEJAX_TRACKING_FILTER", str(tmp_path / "a"))
    monkeypatch.setenv("SMILEJAX_TRACKING_FILTER_CUT", "0.2")
    first = digest()
    assert digest() == first
    monkeypatch.setenv("SMILEJAX_TRACKING_FILTER_CUT", "0.5")
    other_cut = digest()
    monkeypatch.setenv("SMILEJAX_TRACKING_FILTER", str(tmp_path / "b"))
    other_run = digest()
    assert len({first, other_cut, other_run}) == 3
    monkeypatch.setenv("SMILEJAX_TRACKING_FILTER", str(tmp_path / "a"))
    (tmp_path / "a" / "checkpoints" / "200").mkdir()
    assert digest() not in (first, other_cut)
    # the embedding hook too (its radius)
    monkeypatch.setenv("SMILEJAX_TRACKING_EMBEDDING", str(tmp_path / "a"))
    keys = []
    for radius in ("0.1", "0.2"):
        monkeypatch.setenv("SMILEJAX_TRACKING_RADIUS", radius)
        keys.append(construction.embedding_graph.cache_key())
    assert keys[0] != keys[1]
    # a filter trained on an embedding graph: that embedding's settings are in the filter's key too
    stage = "data:\n  graph: smilejax.models.tracking.construction:embedding_graph\n"
    (tmp_path / "a" / "config.yaml").write_text("base: tracking-filter-tiny\n" + stage)
    before = digest()
    monkeypatch.setenv("SMILEJAX_TRACKING_RADIUS", "0.3")
    assert digest() != before


@pytest.mark.unit
def test_a_graph_stage_reads_the_features_of_its_own_run(monkeypatch):
    """The embedding and the filter read hit features as their own run trained (its data.cell_features),
    not as the GNN's config says: cells dropped when the run had none, a named error when it needs them."""
    from types import SimpleNamespace

    from smilejax.inputs.trackml import features

    seen = []
    monkeypatch.setattr(features, "hit_features", lambda hits, cells: seen.append(cells) or hits)
    tables = {"hits": np.ones((3, 4)), "cells": "the cells"}
    out = construction.run_features(tables, SimpleNamespace(cell_features=False), "edge filter")
    assert out is tables["hits"] and seen == [None]
    construction.run_features(tables, SimpleNamespace(cell_features=True), "edge filter")
    assert seen == [None, "the cells"]
    with pytest.raises(ValueError, match="the metric-learning embedding reads cell features"):
        construction.run_features(
            {"hits": tables["hits"]}, SimpleNamespace(cell_features=True), "metric-learning embedding"
        )
