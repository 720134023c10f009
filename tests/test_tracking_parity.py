"""The tracking GNN against its PyTorch Geometric peer (models/tracking/torch_peer.py, run in the PyG
reference environment that `make reference` installs): the same weights on the same padded graphs give
the same edge scores within 1e-5 in float32; and the peer's benchmark graphs are the JAX benchmark's."""

from __future__ import annotations

import json
import subprocess

import jax
import numpy as np
import pytest
from flax import nnx
from smilejax.models.tracking import features, gnn

from tests.conftest import run_reference

B, N, E = 3, 150, 600


def _graphs(n_features: int) -> dict[str, np.ndarray]:
    """Padded graphs whose real hits are not a prefix (the peer must reindex) and whose padded edges
    point at hit 0 (as the trackml format pads them)."""
    rng = np.random.default_rng(1)
    hit_mask = rng.random((B, N)) < 0.8
    edge_mask = np.arange(E) < rng.integers(E // 2, E + 1, size=(B, 1))
    edges = np.zeros((B, E, 2), np.int32)
    for row in range(B):
        real = np.flatnonzero(hit_mask[row])
        edges[row] = real[rng.integers(0, real.size, (E, 2))]
    edges[~edge_mask] = 0
    hits = rng.normal(size=(B, N, n_features)).astype(np.float32) * 2
    return {"hits": hits, "hit_mask": hit_mask, "edges": edges, "edge_mask": edge_mask}


def _peer(*args: str) -> subprocess.CompletedProcess:
    return run_reference(
        features.ENV_DIR, features.INSTALL, "torch + torch_geometric", str(features.PEER), *args
    )


@pytest.mark.parametrize("recurrent", [True, False])
def test_same_weights_same_graphs_same_scores(tmp_path, recurrent):
    # acorn's TrackML width and depth (hidden 128, 8 iterations), float32
    cfg = gnn.IGNConfig(hidden=128, n_graph_iters=8, recurrent=recurrent)
    with nnx.use_eager_sharding(False):
        model = gnn.IGN(cfg, rngs=nnx.Rngs(3))
    weights = {
        "/".join(str(p) for p in path): np.asarray(v.get_value())
        for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
    }
    np.savez(tmp_path / "weights.npz", **weights)
    graphs = _graphs(cfg.n_features)
    np.savez(tmp_path / "graphs.npz", **graphs)
    _peer(
        f"--model={json.dumps(features.torch_config(cfg))}",
        f"--weights={tmp_path / 'weights.npz'}",
        f"--graphs={tmp_path / 'graphs.npz'}",
        f"--scores={tmp_path / 'scores.npz'}",
    )
    theirs = np.load(tmp_path / "scores.npz")["edge_logits"]
    with jax.default_device(jax.devices()[0]):
        ours = nnx.jit(lambda m, g: m(g["hits"], g["hit_mask"], g["edges"], g["edge_mask"]))(model, graphs)
    mask = graphs["edge_mask"]
    logits = np.asarray(ours["edge_logits"])
    assert np.all(theirs[~mask] == 0) and np.all(logits[~mask] == 0)
    assert np.std(logits[mask]) > 0.1  # scores that differ between edges: the comparison means something
    np.testing.assert_allclose(
        np.asarray(ours["edge_scores"])[mask], 1 / (1 + np.exp(-theirs[mask])), atol=1e-5
    )
    np.testing.assert_allclose(logits[mask], theirs[mask], atol=1e-5, rtol=1e-5)


def test_peer_benchmark_graphs_are_the_jax_benchmarks(tmp_path):
    """``bench train``'s JAX side trains on ``_synthetic.batch(spec, cfg, batch, seed=0)``; the peer
    rebuilds those graphs with numpy and must get the very same arrays."""
    from smilejax import registry
    from smilejax.bench import _synthetic

    spec = registry.model("ign")
    cfg = gnn.IGNConfig(max_nodes=64, max_edges=256)
    ours = _synthetic.batch(spec, cfg, 3, seed=0)
    script = (
        "import json, sys, numpy as np; sys.path.insert(0, sys.argv[1]); import torch_peer; "
        "np.savez(sys.argv[3], **torch_peer.synthetic(json.loads(sys.argv[2]), 3, 256))"
    )
    out = tmp_path / "peer_graphs.npz"
    config = json.dumps(features.torch_config(cfg))
    run_reference(
        features.ENV_DIR, features.INSTALL, "torch", "-c", script, str(features.PEER.parent), config, str(out)
    )
    theirs = dict(np.load(out))
    for name in ("hits", "hit_mask", "edges", "edge_mask", "edge_y", "pt"):
        np.testing.assert_array_equal(theirs[name], ours[name], err_msg=name)
