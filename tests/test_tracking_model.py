"""The tracking models: the Interaction GNN's message passing against a dense reference, padding and
remat invariance, and the metric-learning radius search on a toy embedding."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from smilejax.models.tracking import embedding, gnn

CFG = gnn.IGNConfig(hidden=8, n_graph_iters=3, nb_node_layer=1, nb_edge_layer=1, classifier_layers=2)


def _model(cfg=CFG, cls=gnn.build):
    with nnx.use_eager_sharding(False):
        return cls(cfg, rngs=nnx.Rngs(0))


def _graph(n=6, e=9, seed=0):
    rng = np.random.default_rng(seed)
    hits = rng.normal(size=(n, CFG.n_features)).astype(np.float32)
    edges = rng.integers(0, n, size=(e, 2)).astype(np.int32)
    return hits, edges


def test_interaction_step_equals_a_dense_reference():
    model = _model()
    rng = np.random.default_rng(1)
    n, e, h = 5, 7, CFG.hidden
    nodes = jnp.asarray(rng.normal(size=(n, h)), jnp.float32)
    feats = jnp.asarray(rng.normal(size=(e, h)), jnp.float32)
    s, r = rng.integers(0, n, e), rng.integers(0, n, e)
    mask = np.ones(e, bool)
    mask[-2:] = False
    block = model.blocks[0]
    x, y = gnn.interaction_step(block, nodes, feats, jnp.asarray(s), jnp.asarray(r), jnp.asarray(mask))
    # dense: one-hot incidence matrices
    S, R = np.eye(n)[s] * mask[:, None], np.eye(n)[r] * mask[:, None]
    agg = np.concatenate([R.T @ np.asarray(feats), S.T @ np.asarray(feats)], -1)
    x_ref = nodes + block.node_net(jnp.concatenate([nodes, jnp.asarray(agg, jnp.float32)], -1))
    y_ref = feats + block.edge_net(jnp.concatenate([np.eye(n)[s] @ x_ref, np.eye(n)[r] @ x_ref, feats], -1))
    np.testing.assert_allclose(x, x_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)


def test_padding_does_not_change_real_edge_scores():
    model = _model()
    hits, edges = _graph()
    n, e = len(hits), len(edges)
    small = model(hits[None], np.ones((1, n), bool), edges[None], np.ones((1, e), bool))["edge_scores"]
    rng = np.random.default_rng(2)
    hp = np.concatenate([hits, rng.normal(size=(10, hits.shape[1]))]).astype(np.float32)  # garbage padding
    ep = np.concatenate([edges, np.zeros((20, 2), np.int32)])
    hm = np.arange(n + 10) < n
    em = np.arange(e + 20) < e
    big = model(hp[None], hm[None], ep[None], em[None])["edge_scores"]
    np.testing.assert_allclose(big[0, :e], small[0], rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(big[0, e:]) == 0.5)  # padded edges: logit 0


def _grads(cfg):
    model = _model(cfg)
    hits, edges = _graph(8, 12, seed=3)
    batch = {
        "hits": hits[None],
        "hit_mask": np.ones((1, 8), bool),
        "edges": edges[None],
        "edge_mask": np.ones((1, 12), bool),
        "edge_y": (edges[:, 0] % 2 == edges[:, 1] % 2)[None],
        "pt": np.linspace(0.5, 2, 8, dtype=np.float32)[None],
    }
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def f(p):
        return gnn.loss(nnx.merge(graphdef, p, rest), batch)[0]

    return jax.jit(jax.grad(f))(params)


def test_remat_gives_the_same_gradients():
    plain = _grads(CFG)
    remat = _grads(dataclasses.replace(CFG, remat=True))
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    other = _grads(dataclasses.replace(CFG, recurrent=False))  # one block per iteration
    assert len(jax.tree.leaves(other)) > len(jax.tree.leaves(plain))


def _unrolled(model, hits, edges, mask):
    """IGN.graph's logits with the iterations as a Python loop of interaction_step (the scan's reference)."""
    s, r = edges[:, 0], edges[:, 1]
    x = model.node_encoder(hits)
    e = model.edge_encoder(jnp.concatenate([x[s], x[r]], -1))
    for i in range(model.cfg.n_graph_iters):
        x, e = gnn.interaction_step(model.blocks[i % len(model.blocks)], x, e, s, r, mask)
    return jnp.where(mask, model.classifier(jnp.concatenate([x[s], x[r], e], -1))[:, 0], 0.0)


@pytest.mark.parametrize(
    ("recurrent", "remat", "unroll"), [(True, True, 1), (False, False, 1), (True, False, 2)]
)
def test_scanned_iterations_equal_the_unrolled_loop(recurrent, remat, unroll):
    cfg = dataclasses.replace(CFG, n_graph_iters=4, recurrent=recurrent, remat=remat, scan_unroll=unroll)
    model = _model(cfg)
    hits, edges = _graph(8, 12, seed=4)
    mask = np.arange(12) < 10
    w = jnp.asarray(np.random.default_rng(5).normal(size=12), jnp.float32)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def value(fn):
        return jax.jit(jax.value_and_grad(lambda p: jnp.sum(w * fn(nnx.merge(graphdef, p, rest)))))(params)

    scanned = value(lambda m: m.graph(hits, edges, mask))
    unrolled = value(lambda m: _unrolled(m, hits, edges, mask))
    np.testing.assert_allclose(scanned[0], unrolled[0], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(scanned[1]), jax.tree.leaves(unrolled[1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    logits = jax.jit(lambda m: m.graph(hits, edges, mask))(model)
    np.testing.assert_allclose(logits, _unrolled(model, hits, edges, mask), rtol=1e-5, atol=1e-6)
    hlo = jax.jit(lambda m: m.graph(hits, edges, mask)).lower(model).as_text()
    assert "while" in hlo  # one loop in the program, not n_graph_iters copies


def test_consecutive_truth_from_true_pairs():
    edges = jnp.array([[0, 1], [1, 2], [0, 2], [2, 1], [3, 4]])
    true = jnp.array([[0, 1], [1, 2], [0, 0]])
    y = gnn.consecutive(edges, true, jnp.array([True, True, False]), 5)
    np.testing.assert_array_equal(y, [True, True, False, True, False])


def test_radius_graph_finds_the_true_neighbours():
    # three tight clusters of 4 points far apart, plus padding
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [5, 0], [0, 5]], np.float32)
    pts = np.repeat(centres, 4, 0) + 0.01 * rng.normal(size=(12, 2)).astype(np.float32)
    emb = np.concatenate([pts, np.zeros((4, 2), np.float32)])
    mask = np.arange(16) < 12
    idx, valid = embedding.radius_graph(jnp.asarray(emb), jnp.asarray(mask), r=0.5, k=5, chunk=5)
    idx, valid = np.asarray(idx), np.asarray(valid)
    for i in range(12):
        found = set(idx[i][valid[i]].tolist())
        assert found == {j for j in range(12) if j // 4 == i // 4 and j != i}, (i, found)
    assert not valid[12:].any()
    radius = jnp.asarray(np.arange(16, dtype=np.float32))
    edges, em = embedding.edges_from_neighbours(jnp.asarray(idx), jnp.asarray(valid), radius)
    pairs = {tuple(p) for p in np.asarray(edges)[np.asarray(em)].tolist()}
    assert len(pairs) == int(em.sum()) == 3 * 6  # each pair once, inner -> outer
    assert all(a < b and a // 4 == b // 4 for a, b in pairs)


def test_embedding_loss_pulls_true_pairs_together():
    cfg = embedding.EmbeddingConfig(
        n_features=2, emb_hidden=32, nb_layer=2, emb_dim=4, random_pairs=64, queries=8, knn=4, max_nodes=24
    )
    model = _model(cfg, embedding.build)
    rng = np.random.default_rng(0)
    particle = np.repeat(np.arange(1, 7), 4)[None].astype(np.int32)
    hits = (np.repeat(rng.normal(size=(6, 2)), 4, 0) + 0.05 * rng.normal(size=(24, 2)))[None].astype(
        np.float32
    )
    idx = np.flatnonzero(particle[0, 1:] == particle[0, :-1])
    true = np.zeros((1, 24, 2), np.int32)
    true[0, : idx.size] = np.stack([idx, idx + 1], 1)
    batch = {
        "hits": hits,
        "hit_mask": np.ones((1, 24), bool),
        "particle": particle,
        "true_edges": true,
        "true_edge_mask": (np.arange(24) < idx.size)[None],
    }
    import optax

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
    tx = optax.adam(3e-3)
    opt = tx.init(params)

    @jax.jit
    def step(params, rest, opt):
        def f(p):
            m = nnx.merge(graphdef, p, rest)
            value, metrics = embedding.loss(m, batch)
            return value, (metrics, nnx.to_pure_dict(nnx.split(m, nnx.Param, ...)[2]))

        (value, (metrics, rest)), g = jax.value_and_grad(f, has_aux=True)(params)
        updates, opt = tx.update(g, opt)
        return optax.apply_updates(params, updates), rest, opt, value, metrics

    first = None
    for _ in range(150):
        params, rest, opt, value, metrics = step(params, rest, opt)
        first = value if first is None else first
    assert value < 0.5 * first
    assert metrics["true_pairs_in_radius"] > 0.9, metrics


def test_embedding_trains_through_the_cli_and_builds_graphs(tmp_path):
    from smilejax.inputs import trackml
    from smilejax.models.tracking import construction, make_events

    from smilejax import metrics
    from tests.conftest import run_cli

    make_events.make(tmp_path / "ev", 12, pileup=0, seed=2, kind="synthetic", workers=1, progress=False)
    run = tmp_path / "run"
    proc = run_cli(
        "train",
        "tracking-embedding",
        f"run.dir={run}",
        f"data.path={tmp_path / 'ev'}",
        "data.batch_size=8",
        "data.eval_events=2",
        "data.node_widths=[1024]",
        "data.edge_widths=[16]",
        "data.read_threads=1",
        "model.emb_hidden=64",
        "model.nb_layer=2",
        "model.emb_dim=8",
        "model.knn=16",
        "model.random_pairs=512",
        "run.steps=150",
        "run.log_every=50",
        "run.eval_every=0",
        "run.checkpoint_every=0",
        "optimizer.lr=3e-3",
        "logging.progress=false",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rec = {r["step"]: r for r in metrics.read(run / "metrics.jsonl") if "loss" in r}
    assert rec[150]["loss"] < rec[50]["loss"], rec
    builder = construction.EmbeddingGraph(run, radius=0.2, knn=16)
    cfg = trackml.TrackmlConfig(
        path=str(tmp_path / "ev"), graph="none", fields=list(trackml.FIELDS), eval_events=2
    )
    batch = trackml.source(cfg, "eval").read(np.array([0]))
    n = int(batch["hit_mask"][0].sum())
    edges = builder.edges(batch["hits"][0, :n])
    assert edges.ndim == 2 and edges.shape[1] == 2 and (edges < n).all()
    assert (batch["hits"][0, edges[:, 0], 0] <= batch["hits"][0, edges[:, 1], 0]).all()  # inner -> outer
    true = batch["true_edges"][0, : int(batch["true_edge_mask"][0].sum())]
    found = construction.edge_metrics(edges, true, n)
    assert found["efficiency"] > 0.5, found
    out = tmp_path / "eval"
    proc = run_cli("eval", str(run), "--out", str(out), "--split", "train", "--radius", "0.2", "--knn", "16")
    assert proc.returncode == 0, proc.stderr[-4000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_events"] == 8 and m["radius"] == 0.2 and m["efficiency"] > 0.5, m
    assert (out / "graph_efficiency.png").is_file() and "edges per event" in proc.stdout


def test_parameters_float32_replicated_and_counted():
    """float32 parameters, none named for sharding (the graph-partitioned form puts the edges, not the
    weights, on the model axes), and acorn's size counted by hand."""
    with nnx.use_eager_sharding(False):
        for cfg in (gnn.IGNConfig(), dataclasses.replace(CFG, recurrent=False)):
            model = nnx.eval_shape(lambda cfg=cfg: gnn.build(cfg, rngs=nnx.Rngs(0)))
            params = jax.tree.leaves(
                nnx.state(model, nnx.Param), is_leaf=lambda x: isinstance(x, nnx.Variable)
            )
            for p in params:
                assert p.dtype == jnp.float32
                assert all(n is None for n in p.get_metadata()["out_sharding"])
            count = sum(int(np.prod(p.shape)) for p in params)
            if cfg.hidden == 128:
                # encoders 18,048 + 49,920; node and edge networks 66,304 each; classifier 66,433
                assert count == 267_009
