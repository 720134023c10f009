"""Graph-partitioned IGN (models/tracking/partitioned.py): the edges of each graph split over 8 CPU devices
give the edge scores and the parameter gradients of the same model on one device, with the node sums
completed by an all-reduce (replicated nodes) or a reduce-scatter + all-gather (sharded nodes)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, Mesh
from smilejax.models.tracking import gnn, partitioned

B, N, E = 2, 37, 101  # neither N nor E divides 8: the padding inside must stay out of the result


def _model(remat: bool) -> gnn.IGN:
    cfg = gnn.IGNConfig(hidden=16, n_graph_iters=3, recurrent=False, remat=remat)
    with nnx.use_eager_sharding(False):
        return gnn.IGN(cfg, rngs=nnx.Rngs(0))


def _graphs():
    rng = np.random.default_rng(0)
    pt = rng.exponential(1.0, size=(B, N)).astype(np.float32)
    return {
        "hits": jnp.asarray(rng.normal(size=(B, N, 7)), jnp.float32),
        "hit_mask": jnp.asarray(rng.random((B, N)) < 0.9),
        "edges": jnp.asarray(rng.integers(0, N, (B, E, 2)), jnp.int32),
        "edge_mask": jnp.asarray(rng.random((B, E)) < 0.8),
        "edge_y": jnp.asarray(rng.random((B, E)) < 0.3),
        "pt": jnp.asarray(pt),
    }


def _loss(forward):
    """gnn.loss's weighted BCE on the logits of ``forward(model, batch)``."""

    def loss(model, batch):
        logits = forward(model, batch)
        mask = batch["edge_mask"]
        y = gnn.edge_truth(batch)
        w = jnp.where(y & (gnn.edge_pt(batch) >= 1.0), 2.0, 1.0) * mask
        bce = jnp.maximum(logits, 0) - logits * y + jnp.log1p(jnp.exp(-jnp.abs(logits)))
        return jnp.sum(w * bce) / mask.sum()

    return loss


def _one_device(model, b):
    return model(b["hits"], b["hit_mask"], b["edges"], b["edge_mask"])["edge_logits"]


@pytest.mark.parametrize(("nodes", "remat"), [("replicated", False), ("sharded", True)])
def test_eight_devices_match_one(nodes, remat):
    assert jax.device_count() == 8
    model, batch = _model(remat), _graphs()
    mesh = Mesh(np.asarray(jax.devices()), ("graph",), axis_types=(AxisType.Auto,))

    def sharded(model, b):
        out = partitioned.forward(
            model, b["hits"], b["hit_mask"], b["edges"], b["edge_mask"], axis="graph", nodes=nodes
        )
        return out["edge_logits"]

    with jax.default_device(jax.devices()[0]):
        ref_logits = nnx.jit(_one_device)(model, batch)
        ref_loss, ref_grads = nnx.jit(nnx.value_and_grad(_loss(_one_device)))(model, batch)
    with jax.set_mesh(mesh):
        logits = nnx.jit(sharded)(model, batch)
        loss, grads = nnx.jit(nnx.value_and_grad(_loss(sharded)))(model, batch)
        graphdef, state = nnx.split(model)
        hlo = jax.jit(lambda s, b: sharded(nnx.merge(graphdef, s), b)).lower(state, batch).compile().as_text()
    mask = np.asarray(batch["edge_mask"])
    np.testing.assert_allclose(np.asarray(logits)[mask], np.asarray(ref_logits)[mask], atol=2e-6, rtol=1e-5)
    assert np.all(np.asarray(logits)[~mask] == 0)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
    flat, ref_flat = nnx.to_flat_state(grads), dict(nnx.to_flat_state(ref_grads))
    assert len(flat) == len(ref_flat)
    for path, g in flat:
        want = np.asarray(ref_flat[path].get_value())
        got = np.asarray(g.get_value())
        np.testing.assert_allclose(
            got, want, atol=1e-6 * max(np.abs(want).max(), 1e-3), rtol=1e-4, err_msg=path
        )
    # the node exchange is the collective of the chosen form
    collective = "all-reduce" if nodes == "replicated" else "reduce-scatter"
    assert collective in hlo


def test_needs_the_axis_in_a_mesh():
    model, b = _model(False), _graphs()
    with pytest.raises(ValueError, match=r"model\.partition='graph'"):
        partitioned.forward(model, b["hits"], b["hit_mask"], b["edges"], b["edge_mask"], axis="graph")


def test_trains_through_the_framework_step():
    """The framework's train step (steps.build) on a mesh whose ``tensor`` axis partitions the graphs:
    the losses of three steps equal one device's, through the config switch ``model.partition`` (also on an
    axis of size 1, which takes the one-device path). The
    mesh is put in context by the caller here (the framework's steps do not do it yet)."""
    from smilejax.models.tracking import SPEC as spec

    from smilejax import config, steps
    from smilejax import mesh as meshlib
    from smilejax.bench import _synthetic

    overrides = ["model.hidden=16", "model.n_graph_iters=2", "model.max_nodes=64", "model.max_edges=256"]
    overrides += ["model.remat=false", "train.precision=fp32", "data.batch_size=4", "run.steps=3"]

    def losses(n: int, mesh: list[str], partition: str = "", nodes: str = "replicated") -> list[float]:
        switch = [f"model.partition={partition}", f"model.partition_nodes={nodes}"] if partition else []
        cfg = config.load("tracking-ign", [*overrides, *mesh, *switch])
        devices = meshlib.build_mesh(cfg.mesh, jax.devices()[:n])
        batch = _synthetic.batch(spec, cfg.model, 4, seed=0)
        with jax.set_mesh(devices):
            program = steps.build(spec, cfg, devices)
            state, out = program.init(), []
            placed = jax.device_put(batch, program.batch_sharding)
            for _ in range(3):
                state, metrics = program.train_step(state, placed)
                out.append(float(metrics["loss"]))
        return out

    ref = losses(1, ["mesh.data=1"])
    replicated = losses(8, ["mesh.data=4", "mesh.tensor=2"], "tensor")
    sharded = losses(8, ["mesh.data=2", "mesh.tensor=4"], "tensor", "sharded")
    np.testing.assert_allclose(replicated, ref, rtol=2e-6)
    np.testing.assert_allclose(sharded, ref, rtol=2e-6)
    # an axis of size 1 splits nothing: the one-device path (a psum over it failed to compile)
    one_wide = losses(4, ["mesh.data=4", "mesh.tensor=1"], "tensor")
    np.testing.assert_allclose(one_wide, ref, rtol=2e-6)
