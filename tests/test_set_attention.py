"""The fused short-set attention (``models.set_attention``): values and q/k/v gradients against math
attention in Pallas's interpreter (padding, fully padded rows, packed segments); its Triton lowering for
an H100 (no GPU needed); its partitioning over devices; the shapes it refuses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractDevice, AbstractMesh, AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from smilejax.models import gn2, kernel_mode, set_attention
from smilejax.models.attention import dot_product_attention

H100 = AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=132, platform="cuda")  # for lowering


def _math(q, k, v, valid, segment):
    """Math attention (``models.attention``), packed sets included."""
    return dot_product_attention(q, k, v, valid, implementation="math", segment=segment)


def _inputs(seed: int, b: int, t: int, heads: int, dim: int, dtype=jnp.float32):
    keys = jax.random.split(jax.random.key(seed), 4)
    q, k, v, g = (jax.random.normal(key, (b, t, heads, dim)) for key in keys)
    return q.astype(dtype), k.astype(dtype), v.astype(dtype), g


def _masks(t: int) -> tuple[jax.Array, jax.Array]:
    """valid and segment of 3 rows: a padded set (and one track not in it), an empty row, a row packed
    with three jets and padding at its end."""
    valid = np.zeros((3, t), bool)
    segment = np.full((3, t), -1, np.int32)
    valid[0, :4], segment[0, :3], segment[0, 3] = True, 0, 1
    a, b = t // 3, 2 * t // 3
    valid[2, : t - 1] = True
    segment[2, :a], segment[2, a:b], segment[2, b : t - 1] = 0, 1, 2
    return jnp.asarray(valid), jnp.asarray(segment)


def _grads(fn, q, k, v, g):
    return jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32) * g), (0, 1, 2))(q, k, v)


@pytest.mark.parametrize("t,masking", [(7, "none"), (7, "valid"), (17, "segment")])
def test_values_and_gradients_equal_math_attention(t, masking):
    """Lengths 7 (a 16-row block) and 17 (32): rows past the set's end are out of the arrays' bounds
    (the interpreter fills them with NaN); a fully padded row gets math's uniform weights, not NaN."""
    q, k, v, g = _inputs(0, 3, t, 2, 16)
    valid, segment = _masks(t)
    valid = None if masking == "none" else valid
    segment = segment if masking == "segment" else None
    fused = lambda q, k, v: set_attention.attention(q, k, v, valid, segment)  # noqa: E731
    exact = lambda q, k, v: _math(q, k, v, valid, segment)  # noqa: E731
    out = fused(q, k, v)
    assert out.shape == q.shape and not bool(jnp.isnan(out).any())
    np.testing.assert_allclose(out, exact(q, k, v), rtol=1e-5, atol=1e-6)
    if masking == "valid":  # a row with no valid key: uniform weights over the row's keys
        np.testing.assert_allclose(out[1], jnp.broadcast_to(v[1].mean(0), out[1].shape), atol=1e-6)
    for got, want in zip(_grads(fused, q, k, v, g), _grads(exact, q, k, v, g), strict=True):
        assert not bool(jnp.isnan(got).any())
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_packed_rows_equal_each_jet_alone():
    """A row packing two jets attends as each jet alone: block-diagonal attention."""
    q, k, v, _ = _inputs(1, 1, 9, 2, 16)
    segment = jnp.asarray([[0, 0, 0, 0, 1, 1, 1, 1, -1]], jnp.int32)
    valid = segment >= 0
    packed = set_attention.attention(q, k, v, valid, segment)
    for jet in (slice(0, 4), slice(4, 8)):
        alone = set_attention.attention(q[:, jet], k[:, jet], v[:, jet], None)
        np.testing.assert_allclose(packed[:, jet], alone, rtol=1e-5, atol=1e-6)


def test_bf16_follows_float32():
    q, k, v, g = _inputs(2, 2, 9, 2, 16)
    valid, _ = _masks(9)
    valid = valid[:2]
    bf16 = [x.astype(jnp.bfloat16) for x in (q, k, v)]
    out = set_attention.attention(*bf16, valid)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), _math(q, k, v, valid, None), atol=0.03)
    fused = lambda q, k, v: set_attention.attention(q, k, v, valid)  # noqa: E731
    exact = lambda q, k, v: _math(q, k, v, valid, None)  # noqa: E731
    for got, want in zip(_grads(fused, *bf16, g), _grads(exact, q, k, v, g), strict=True):
        assert got.dtype == jnp.bfloat16
        error = np.linalg.norm(np.asarray(got, np.float32) - np.asarray(want))
        assert error < 0.03 * np.linalg.norm(np.asarray(want))


def test_triton_lowering_for_h100_at_gn2_shapes():
    """Both kernels lower to Triton for an H100 (an abstract device: no GPU needed) at GN2's shapes: 4000
    jets of 24 tracks and a register, 8 heads of 32. XLA's compilation of the Triton modules is checked
    by ``smilejax bench roofline gn2 model.attention=pallas`` (JAX's CUDA plugin, still without a GPU)."""
    qkv = jax.ShapeDtypeStruct((4000, 25, 3, 8, 32), jnp.bfloat16)
    x = jax.ShapeDtypeStruct((4000, 25, 8, 32), jnp.bfloat16)
    ids = jax.ShapeDtypeStruct((4000, 25), jnp.int32)

    def both(qkv, do, qg, kg):
        out = set_attention._forward_sets("set_attention_forward", False, 4, qkv, qg, kg)
        return out, set_attention._backward_sets("set_attention_backward", False, 4, qkv, do, qg, kg)

    mesh = AbstractMesh((1,), ("x",), axis_types=(AxisType.Explicit,), abstract_device=H100)
    with jax.sharding.use_abstract_mesh(mesh):
        text = jax.jit(both).trace(qkv, x, ids, ids).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("__gpu$xla.gpu.triton") == 2
    assert 'name = "set_attention_forward"' in text and 'name = "set_attention_backward"' in text
    assert "grid_x = 4000" in text and "grid_y = 8" in text  # one program per (jet, head)


def test_jit_sharded_over_devices_each_device_runs_its_own_sets():
    mesh = Mesh(np.array(jax.devices()), ("data",))
    assert mesh.size == 8
    q, k, v, g = _inputs(3, 16, 5, 2, 16)
    valid = jnp.arange(5)[None, :] < (jnp.arange(16) % 6)[:, None]

    def loss(q, k, v, valid):
        return jnp.sum(set_attention.attention(q, k, v, valid) * g)

    grad = jax.value_and_grad(loss, argnums=(0, 1, 2))
    value, grads = grad(q, k, v, valid)
    shard = NamedSharding(mesh, P("data"))
    args = [jax.device_put(x, shard) for x in (q, k, v, valid)]
    sharded = jax.jit(grad)
    assert "all-gather" not in sharded.lower(*args).compile().as_text()
    value8, grads8 = sharded(*args)
    np.testing.assert_allclose(float(value8), float(value), rtol=1e-5)
    for got, want in zip(grads8, grads, strict=True):
        assert got.sharding.spec == P("data")
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_unsupported_shapes_and_portable_programs_are_refused():
    set_attention.check_supported(128, 32)
    with pytest.raises(ValueError, match="short sets"):
        set_attention.check_supported(129, 32)
    with pytest.raises(ValueError, match="power of two"):
        set_attention.check_supported(16, 24)
    with pytest.raises(ValueError, match="power of two"):
        set_attention.check_supported(16, 8)
    q = jnp.zeros((1, 4, 1, 16))
    with kernel_mode.portable(), pytest.raises(ValueError, match="portable code"):
        set_attention.attention(q, q, q, None)


def test_gn2_pallas_attention_equals_math_on_padded_and_packed_batches():
    """GN2 with ``attention="pallas"`` (the interpreter here): loss, metrics and every gradient equal math
    attention's on the padded batch, and on the same jets packed several to a row (segment ids)."""
    from tests.helpers_gn2 import loss_and_grads, packed_batch, padded_batch, tiny_model

    wide = dict(embed=32, init_hidden=[32])  # 2 heads of 16: the kernels' smallest head dimension
    padded = padded_batch()
    packed, _ = packed_batch(padded)
    (loss, metrics), grads = loss_and_grads(tiny_model(**wide), padded)
    model = tiny_model(**wide, attention="pallas")
    for batch in (padded, packed):
        (loss_p, metrics_p), grads_p = loss_and_grads(model, batch)
        np.testing.assert_allclose(float(loss_p), float(loss), rtol=1e-5)
        for name in metrics:
            np.testing.assert_allclose(float(metrics_p[name]), float(metrics[name]), rtol=1e-5, err_msg=name)
        for (path, want), (_, got) in zip(nnx.to_flat_state(grads), nnx.to_flat_state(grads_p), strict=True):
            want, got = np.asarray(want.get_value()), np.asarray(got.get_value())
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=str(path))


def test_gn2_pallas_attention_traces_both_kernels_per_layer_for_an_h100():
    from tests.helpers_gn2 import padded_batch, tiny_model

    batch = {k: jnp.asarray(v) for k, v in padded_batch().items()}
    mesh = AbstractMesh((1,), ("x",), axis_types=(AxisType.Explicit,), abstract_device=H100)

    def kernels(layers: int) -> tuple[int, int]:
        model = tiny_model(jnp.bfloat16, embed=32, init_hidden=[32], layers=layers, attention="pallas")
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        grad = jax.grad(lambda p: gn2.SPEC.loss(nnx.merge(graphdef, p, rest), batch)[0])
        with jax.sharding.use_abstract_mesh(mesh):
            jaxpr = str(jax.make_jaxpr(grad)(params))
        with kernel_mode.reference():  # the FLOP-counting program: math attention
            assert "set_attention" not in str(jax.make_jaxpr(grad)(params))
        return jaxpr.count("set_attention_forward"), jaxpr.count("set_attention_backward")

    one = kernels(1)
    assert min(one) > 0 and kernels(2) == (2 * one[0], 2 * one[1])  # a forward and a backward per layer
