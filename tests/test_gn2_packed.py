"""Packed GN2 batches (several jets per row of track slots, ``inputs/packing.py``): attention within a
segment, per-segment pooling and heads; loss, metrics, gradients and per-jet outputs equal the padded
batch's on the same jets (math, chunked and the fused pair head in Pallas's interpreter); the cuDNN
path lowered for an H100 (no GPU needed)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from smilejax.inputs import packing
from smilejax.models import attention, gn2

from tests.helpers_gn2 import (
    JETS_PER_ROW,
    LENGTHS,
    SLOTS,
    TINY,
    loss_and_grads,
    packed_batch,
    padded_batch,
    tiny_model,
)


def assert_same_loss_and_grads(model: gn2.GN2, padded: dict, packed: dict, rtol: float = 1e-5) -> None:
    (loss, metrics), grads = loss_and_grads(model, padded)
    (loss_p, metrics_p), grads_p = loss_and_grads(model, packed)
    assert set(metrics) == set(metrics_p) == {"loss_jet", "acc_jet", "loss_origin", "loss_vertex"}
    assert float(metrics["loss_vertex"]) > 0 and float(metrics["loss_origin"]) > 0
    np.testing.assert_allclose(float(loss_p), float(loss), rtol=rtol)
    for name in metrics:
        np.testing.assert_allclose(float(metrics_p[name]), float(metrics[name]), rtol=rtol, err_msg=name)
    flat, flat_p = nnx.to_flat_state(grads), nnx.to_flat_state(grads_p)
    assert len(flat) == len(flat_p) > 20
    for (path, want), (path_p, got) in zip(flat, flat_p, strict=True):
        assert path == path_p
        want, got = np.asarray(want.get_value()), np.asarray(got.get_value())
        assert np.isfinite(got).all(), path  # empty rows and padded queries: no NaN
        # atol floor: the pooling gate's bias has a zero gradient (a softmax ignores a shift), up to rounding
        atol = max(1e-5 * float(np.abs(want).max()), 1e-7)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=atol, err_msg=str(path))


WEIGHTED = dict(
    class_weights={"jet": [1.0, 2.0, 0.5, 3.0], "origin": [1.0, 0.5, 2.0, 1.0, 1.5, 1.0, 3.0, 1.0]},
    vertex_loss_norm="pairs",
)


@pytest.mark.parametrize(
    "impl,options", [("math", dict(layers=2)), ("chunked", dict(remat=True, **WEIGHTED))]
)
def test_packed_loss_metrics_and_gradients_equal_padded(impl, options):
    """Two layers (padding must not reach the second layer's keys); chunk 4: the packed rows (12 tracks +
    6 registers) and the padded jets (8 + 2) both run in blocks, rematerialised per layer, with class
    weights and the vertex loss over all pairs."""
    padded = padded_batch()
    packed, _ = packed_batch(padded)
    assert_same_loss_and_grads(tiny_model(attention=impl, attention_chunk=4, **options), padded, packed)


def test_packed_per_jet_and_per_track_outputs_equal_padded():
    padded = padded_batch(1)
    packed, plan = packed_batch(padded)
    model = tiny_model()
    out = jax.jit(lambda b: model(b["tracks"], b["valid"]))(padded)
    out_p = jax.jit(lambda b: model(b["tracks"], b["valid"], segment=b["segment"], jet_valid=b["jet_valid"]))(
        packed
    )
    assert out_p["jet_logits"].shape == (4, JETS_PER_ROW, 4)
    np.testing.assert_allclose(packing.unpack_jets(out_p["jet_logits"], plan), out["jet_logits"], atol=1e-5)
    assert not np.asarray(out_p["jet_logits"])[~packed["jet_valid"]].any()  # empty jet slots: 0
    for jet in range(len(LENGTHS)):  # each jet's valid tracks, in order, from its offset
        src = np.flatnonzero(padded["valid"][jet])
        dst = plan.offset[jet] + np.arange(src.size)
        row = plan.row[jet]
        np.testing.assert_allclose(
            out_p["origin_logits"][row, dst], out["origin_logits"][jet, src], atol=1e-5, err_msg=str(jet)
        )
        np.testing.assert_allclose(
            out_p["vertex_logits"][row][np.ix_(dst, dst)],
            out["vertex_logits"][jet][np.ix_(src, src)],
            atol=1e-5,
        )
    # pairs across jets of a row carry no logit
    seg = packed["segment"]
    across = (seg[:, :, None] != seg[:, None, :]) | ~packed["valid"][:, :, None]
    assert not np.asarray(out_p["vertex_logits"])[across].any()


def test_packed_fused_pair_head_in_interpreter_equals_padded_jnp_head():
    """``vertex_kernel="pallas"`` (Pallas's interpreter off a GPU): its rows input is each track's own
    jet context plus x_i; one hidden layer of 16, to keep the interpreter quick."""
    padded = padded_batch(2)
    packed, _ = packed_batch(padded)
    fused = tiny_model(vertex_kernel="pallas")
    xla = tiny_model(vertex_kernel="xla")
    nnx.update(fused, nnx.state(xla))
    (loss, metrics), grads = loss_and_grads(xla, padded)
    (loss_p, metrics_p), grads_p = loss_and_grads(fused, packed)
    np.testing.assert_allclose(float(loss_p), float(loss), rtol=1e-5)
    np.testing.assert_allclose(float(metrics_p["loss_vertex"]), float(metrics["loss_vertex"]), rtol=1e-5)
    for (path, want), (_, got) in zip(nnx.to_flat_state(grads), nnx.to_flat_state(grads_p), strict=True):
        want, got = np.asarray(want.get_value()), np.asarray(got.get_value())
        atol = max(1e-5 * float(np.abs(want).max()), 1e-7)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=atol, err_msg=str(path))


def test_segment_attention_is_each_segment_alone_and_padding_stays_finite():
    """Rows of two segments, padding between and after them, and a row without any valid element: each
    segment's rows equal attention over that segment alone (math, chunked), padded rows and all
    gradients are finite, and padding never reaches a valid element's output."""
    rng = np.random.default_rng(3)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 9, 2, 4)), jnp.float32) for _ in range(3))
    segment = jnp.asarray([[0, 0, 0, 1, 1, -1, 1, -1, -1], [-1] * 9], jnp.int32)
    valid = segment >= 0
    for impl in ("math", "chunked"):
        out = attention.dot_product_attention(
            q, k, v, valid, segment=segment, implementation=impl, chunk_size=4
        )
        assert np.isfinite(np.asarray(out)).all()
        for s, idx in ((0, [0, 1, 2]), (1, [3, 4, 6])):
            alone = attention._math_attention(q[:1, idx], k[:1, idx], v[:1, idx], None, None)
            np.testing.assert_allclose(out[:1, idx], alone, rtol=1e-6, atol=1e-6, err_msg=f"{impl} {s}")

        def f(v, impl=impl):
            o = attention.dot_product_attention(
                q, k, v, valid, segment=segment, implementation=impl, chunk_size=4
            )
            return jnp.sum(jnp.where(valid[..., None, None], o, 0.0))

        dv = np.asarray(jax.grad(f)(v))
        assert np.isfinite(dv).all() and not dv[~np.asarray(valid)].any()  # padding gets no gradient


def test_cudnn_attention_lowers_for_cuda_with_the_segment_mask(monkeypatch):
    """The cuDNN path cannot run here; traced as for an NVIDIA GPU and lowered for CUDA, the packed
    model's loss gradient calls cuDNN's fused attention, forward and backward, with a bias from the
    [R, 1, T, T] same-segment mask (jax.nn's cuDNN path takes a mask, not segment ids). cuDNN's lowering
    needs a device under an abstract mesh and JAX reads cuDNN's version from the CUDA plugin, so the
    test says it traces for a GPU and names a version (9.8)."""
    from jax._src.cudnn import fused_attention_stablehlo as cudnn
    from smilejax.models import kernel_mode

    monkeypatch.setattr(cudnn, "check_cudnn_version", lambda: 90800)
    monkeypatch.setattr(kernel_mode, "nvidia_gpu", lambda: True)
    packed, _ = packed_batch(padded_batch())
    model = tiny_model(jnp.bfloat16, attention="cudnn", vertex_kernel="xla")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    batch = {k: jnp.asarray(v) for k, v in packed.items()}
    grad = jax.grad(lambda p: gn2.SPEC.loss(nnx.merge(graphdef, p, rest), batch)[0])
    text = jax.jit(grad).trace(params).lower(lowering_platforms=("cuda",)).as_text()
    calls = [line for line in text.splitlines() if "custom_call @__cudnn$fmha" in line]
    forward = [c for c in calls if "Backward" not in c]
    assert len(forward) == TINY["layers"] and len(calls) == 2 * TINY["layers"], calls
    assert all("fmhaScaleBiasSoftmax" in c for c in calls)  # the mask, as cuDNN's bias
    # the packed rows (12 tracks + 3 slots x 2 registers = 18, even) enter cuDNN at full length
    assert "tensor<4x18x2x8xbf16>" in text


def test_packed_rows_sharded_over_8_devices_equal_one_device():
    """Rows split over the data axis of 8 devices: the same loss, metrics and gradients as on one device,
    and nothing gathered (the fused pair head's partitioning by row is tests/test_pair_mlp.py's; its
    rows input keeps its shape when packed)."""
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    packed, _ = packing.pack_padded(padded_batch(), SLOTS, JETS_PER_ROW, row_multiple=8)
    model = tiny_model()
    (loss, metrics), grads = loss_and_grads(model, packed)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    assert mesh.size == 8
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    batch = {k: jax.device_put(jnp.asarray(v), NamedSharding(mesh, P("data"))) for k, v in packed.items()}
    step = jax.jit(
        jax.value_and_grad(lambda p, b: gn2.SPEC.loss(nnx.merge(graphdef, p, rest), b), has_aux=True)
    )
    compiled = step.lower(params, batch).compile()
    assert "all-gather" not in compiled.as_text()
    (loss8, metrics8), grads8 = compiled(params, batch)
    np.testing.assert_allclose(float(loss8), float(loss), rtol=1e-5)
    for name in metrics:
        np.testing.assert_allclose(float(metrics8[name]), float(metrics[name]), rtol=1e-5, err_msg=name)
    for got, want in zip(jax.tree.leaves(grads8), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=max(1e-5 * float(jnp.abs(want).max()), 1e-7))
