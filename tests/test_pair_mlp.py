"""The fused pair MLP (``models.pair_mlp``): values and every gradient against jnp, in Pallas's
interpreter; its Triton lowering for an H100 (no GPU needed); GN2's ``vertex_kernel="pallas"``."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractDevice, AbstractMesh, AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from smilejax.models import gn2, kernel_mode, pair_mlp

from tests.helpers_gn2 import SMALL, loss_and_grads, make_batch

H100 = AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=132, platform="cuda")  # for lowering


def _weights(seed: int, widths: list[int], dtype=jnp.float32):
    """(kernels, biases, last kernel [H, 1], last bias [1]) of an MLP with hidden ``widths``."""
    keys = iter(jax.random.split(jax.random.key(seed), 2 * len(widths) + 2))
    kernels = [jax.random.normal(next(keys), (a, b)) / np.sqrt(a) for a, b in itertools.pairwise(widths)]
    biases = [0.1 * jax.random.normal(next(keys), (b,)) for b in widths[1:]]
    last = jax.random.normal(next(keys), (widths[-1], 1)) / np.sqrt(widths[-1])
    cast = lambda xs: [x.astype(dtype) for x in xs]  # noqa: E731
    return cast(kernels), cast(biases), last.astype(dtype), jnp.array([0.3], dtype)


def _inputs(seed: int, b: int, t: int, width: int, dtype=jnp.float32):
    ku, kv, kg = jax.random.split(jax.random.key(seed), 3)
    u = jax.random.normal(ku, (b, t, width)).astype(dtype)
    v = jax.random.normal(kv, (b, t, width)).astype(dtype)
    return u, v, jax.random.normal(kg, (b, t, t))


@pytest.mark.parametrize(
    "activation,widths,t",
    [("relu", [32, 16, 16], 7), ("silu", [16, 32], 16), ("relu", [16], 17)],
)
def test_values_and_gradients_equal_jnp(activation, widths, t):
    """Odd lengths (7 -> a 16-wide block, 17 -> 32), 0 to 2 hidden layers, both activations."""
    u, v, g = _inputs(0, 3, t, widths[0])
    args = (u, v, *_weights(1, widths))

    def weighted(fn):
        return lambda *a: jnp.sum(fn(*a, activation=activation) * g)

    fused = pair_mlp.pair_logits(*args, activation=activation)
    reference = pair_mlp.pair_logits_reference(*args, activation=activation)
    assert fused.shape == (3, t, t)
    np.testing.assert_allclose(fused, reference, rtol=1e-5, atol=1e-5)
    argnums = tuple(range(len(args)))
    grads = jax.grad(weighted(pair_mlp.pair_logits), argnums)(*args)
    expected = jax.grad(weighted(pair_mlp.pair_logits_reference), argnums)(*args)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected), strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(jnp.abs(want).max()))


def test_bf16_follows_float32():
    u, v, g = _inputs(2, 2, 9, 32)
    args = (u, v, *_weights(3, [32, 16]))
    bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), args)
    out = pair_mlp.pair_logits(*bf16)
    assert out.dtype == jnp.bfloat16
    exact = pair_mlp.pair_logits_reference(*args)
    np.testing.assert_allclose(np.asarray(out, np.float32), exact, rtol=0.05, atol=0.05)

    def weighted(fn):
        return lambda *a: jnp.sum(fn(*a).astype(jnp.float32) * g)

    argnums = tuple(range(len(args)))
    grads = jax.grad(weighted(pair_mlp.pair_logits), argnums)(*bf16)
    expected = jax.grad(weighted(pair_mlp.pair_logits_reference), argnums)(*args)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected), strict=True):
        assert got.dtype == jnp.bfloat16  # gradients in the parameters' and inputs' dtype
        # as a whole: a pre-activation that bf16 rounds across 0 flips one ReLU, and one element
        error = np.linalg.norm(np.asarray(got, np.float32) - np.asarray(want))
        assert error < 0.05 * np.linalg.norm(np.asarray(want))  # bf16: about 1-4 % here


def test_triton_lowering_for_h100_at_gn2_shapes():
    """Pallas lowers both kernels to Triton for an H100 (an abstract device: no GPU needed). This is the
    step that refuses unsupported operations and non-power-of-two tiles; XLA's compilation of the Triton
    module is tested by tests/test_bench_roofline.py (JAX's CUDA plugin, still without a GPU)."""
    bf = jnp.bfloat16
    spec = lambda *shape: jax.ShapeDtypeStruct(shape, bf)  # noqa: E731
    sets = (spec(4000, 40, 128), spec(4000, 40, 128))
    weights = (spec(128, 64), spec(64, 32), spec(64), spec(32), spec(32))

    def both(u, v, g, *weights):  # the kernels themselves (pair_logits adds their partitioning)
        logits = pair_mlp._forward_sets("relu", False, 2, u, v, *weights)
        return logits, pair_mlp._backward_sets("relu", False, 2, u, v, g, *weights)

    mesh = AbstractMesh((1,), ("x",), axis_types=(AxisType.Explicit,), abstract_device=H100)
    with jax.sharding.use_abstract_mesh(mesh):
        traced = jax.jit(both).trace(*sets, jax.ShapeDtypeStruct((4000, 40, 40), jnp.float32), *weights)
        text = traced.lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("__gpu$xla.gpu.triton") == 2  # forward and backward kernels
    assert 'name = "pair_mlp_forward"' in text and 'name = "pair_mlp_backward"' in text
    assert "grid_x = 4000" in text  # one program per jet


def test_jit_sharded_over_devices_each_device_runs_its_own_sets():
    """XLA cannot split a custom kernel: left alone it would gather the whole batch onto each of the 8
    devices. Partitioned by the set axis, each device runs its own sets; values and gradients are those
    of one device, the batch gradients stay sharded, and nothing is gathered."""
    mesh = Mesh(np.array(jax.devices()), ("data",))
    assert mesh.size == 8
    u, v, g = _inputs(5, 16, 7, 32)
    weights = _weights(6, [32, 16])

    def loss(u, v, *weights):
        return jnp.sum(pair_mlp.pair_logits(u, v, *weights) * g)

    grad = jax.value_and_grad(loss, argnums=tuple(range(6)))
    value, grads = grad(u, v, *weights)
    shard = NamedSharding(mesh, P("data"))
    sharded = jax.jit(grad)
    args = (jax.device_put(u, shard), jax.device_put(v, shard), *weights)
    compiled = sharded.lower(*args).compile().as_text()
    assert "all-gather" not in compiled and "all-reduce" in compiled  # only weight gradients are summed
    value8, grads8 = sharded(*args)
    np.testing.assert_allclose(float(value8), float(value), rtol=1e-5)
    for got, want in zip(jax.tree.leaves(grads8), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert grads8[0].sharding.spec == P("data") and grads8[1].sharding.spec == P("data")


def test_unsupported_shapes_and_activations_are_refused():
    with pytest.raises(ValueError, match="powers of two"):
        pair_mlp.check_supported("relu", [128, 48])
    with pytest.raises(ValueError, match="powers of two"):
        pair_mlp.check_supported("relu", [8])
    with pytest.raises(ValueError, match="activations"):
        pair_mlp.check_supported("gelu", [32])


def _gn2_pair(**kw) -> tuple[gn2.GN2, gn2.GN2]:
    """Small GN2s with the jnp and the fused vertex head, sharing parameters."""
    cfg = {**SMALL, "head_hidden": [16, 16], **kw}
    with nnx.use_eager_sharding(False):
        xla = gn2.SPEC.build(gn2.GN2Config(**cfg, vertex_kernel="xla"), rngs=nnx.Rngs(0), dtype=jnp.float32)
        fused_cfg = gn2.GN2Config(**cfg, vertex_kernel="pallas")
        fused = gn2.SPEC.build(fused_cfg, rngs=nnx.Rngs(0), dtype=jnp.float32)
    nnx.update(fused, nnx.state(xla))
    return xla, fused


def test_gn2_fused_vertex_head_same_outputs_loss_and_gradients():
    xla, fused = _gn2_pair()
    batch = {k: jnp.asarray(v) for k, v in make_batch(4).items()}
    assert not bool(batch["valid"].all())  # padded tracks: masked pairs must give no gradient

    def logits(model):
        graphdef, state = nnx.split(model)
        return jax.jit(lambda s: nnx.merge(graphdef, s)(batch["tracks"], batch["valid"]))(state)

    np.testing.assert_allclose(
        logits(fused)["vertex_logits"], logits(xla)["vertex_logits"], rtol=1e-5, atol=1e-5
    )

    (loss_ref, m_ref), g_ref = loss_and_grads(xla, batch)
    (loss_fused, m_fused), g_fused = loss_and_grads(fused, batch)
    assert float(m_ref["loss_vertex"]) > 0
    np.testing.assert_allclose(float(loss_fused), float(loss_ref), rtol=1e-6)
    np.testing.assert_allclose(float(m_fused["loss_vertex"]), float(m_ref["loss_vertex"]), rtol=1e-6)
    flat_ref, flat_fused = nnx.to_flat_state(g_ref), nnx.to_flat_state(g_fused)
    vertex = [path for path, _ in flat_ref if "vertex_head" in path]
    assert len(vertex) == 6  # 3 layers' kernels and biases: each must match, not only the sum
    for (path, want), (_, got) in zip(flat_ref, flat_fused, strict=True):
        want, got = np.asarray(want.get_value()), np.asarray(got.get_value())
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=str(path))


def _gn2_fused_pairs(cfg: gn2.GN2Config, mesh: AbstractMesh | None) -> int:
    """Pallas kernels in GN2's loss gradient, traced for ``mesh``'s device (None: this CPU)."""
    with nnx.use_eager_sharding(False):
        model = gn2.SPEC.build(cfg, rngs=nnx.Rngs(0), dtype=jnp.bfloat16)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    batch = {k: jnp.asarray(v) for k, v in make_batch(4).items()}
    grad = jax.grad(lambda p: gn2.SPEC.loss(nnx.merge(graphdef, p, rest), batch)[0])
    if mesh is None:
        return str(jax.make_jaxpr(grad)(params)).count("pallas_call")
    with jax.sharding.use_abstract_mesh(mesh):
        return str(jax.make_jaxpr(grad)(params)).count("pallas_call")


def test_gn2_auto_vertex_kernel_fuses_when_tracing_for_an_nvidia_gpu():
    """The default ``vertex_kernel="auto"``: the fused kernels (forward and backward) in a program for an
    H100, the jnp head on this CPU, and the jnp head for an H100 when the head's settings rule the
    kernel out (GELU here) instead of an error."""
    h100 = AbstractMesh((1,), ("x",), axis_types=(AxisType.Explicit,), abstract_device=H100)
    auto = gn2.GN2Config(**{**SMALL, "head_hidden": [16, 16]})
    assert auto.vertex_kernel == "auto"
    assert _gn2_fused_pairs(auto, h100) == 2
    assert _gn2_fused_pairs(auto, None) == 0
    gelu = gn2.GN2Config(**{**SMALL, "head_hidden": [16, 16], "activation": "gelu"})
    assert "activations" in gelu.pallas_problem()
    assert _gn2_fused_pairs(gelu, h100) == 0
    assert gn2.GN2Config(**{**SMALL, "dropout": 0.1}).pallas_problem() == "has no dropout (set dropout=0)"
    # a program that vmaps the model (vectorised trials) asks for portable code: the kernels have no
    # batching rule, so auto picks the jnp head, and an explicit pallas is refused by name
    with kernel_mode.portable():
        assert _gn2_fused_pairs(auto, h100) == 0
        pallas = gn2.GN2Config(**{**SMALL, "head_hidden": [16, 16], "vertex_kernel": "pallas"})
        with pytest.raises(ValueError, match=r"portable code.*use vertex_kernel=auto or xla"):
            _gn2_fused_pairs(pallas, h100)
    with kernel_mode.reference():  # the FLOP-counting program: the jnp head, explicit pallas included
        assert _gn2_fused_pairs(auto, h100) == 0 and _gn2_fused_pairs(pallas, h100) == 0
    assert _gn2_fused_pairs(auto, h100) == 2  # only inside


def test_gn2_fused_vertex_head_config_errors():
    base = {**SMALL, "head_hidden": [16, 16], "vertex_kernel": "pallas"}
    with pytest.raises(ValueError, match="vertex_kernel"):
        gn2.GN2Config(**{**base, "vertex_kernel": "triton"})
    with pytest.raises(ValueError, match="dropout"):
        gn2.GN2Config(**{**base, "dropout": 0.1})
    with pytest.raises(ValueError, match="powers of two"):
        gn2.GN2Config(**{**base, "head_hidden": [16, 8]})
    with pytest.raises(ValueError, match="activations"):
        gn2.GN2Config(**{**base, "activation": "gelu"})


def test_gn2_training_step_with_fsdp_over_8_devices_equals_one_device():
    """GN2's real train step (steps.build) with the fused head, FSDP over 8 devices, against the jnp head
    on one device: the same loss after two steps."""
    import dataclasses

    from smilejax import mesh as meshlib
    from smilejax import registry, steps
    from smilejax.bench import _synthetic
    from smilejax.bench._target import load_config

    small = ["model.embed=16", "model.init_hidden=[16]", "model.layers=1", "model.heads=2", "model.ff=32"]
    small += ["model.out=16", "model.head_hidden=[16]", "model.max_tracks=8", "mesh.data=1"]
    losses = []
    for extra, devices in (
        (["model.vertex_kernel=xla"], jax.devices()[:1]),
        (["model.vertex_kernel=pallas", "mesh.fsdp=8"], None),
    ):
        cfg = load_config("gn2", [*small, *extra])
        cfg = dataclasses.replace(cfg, data=cfg.data.with_batch_size(16))
        mesh = meshlib.build_mesh(cfg.mesh, devices=devices)
        spec = registry.model("gn2")
        program = steps.build(spec, cfg, mesh)
        host = _synthetic.batch(spec, cfg.model, 16, seed=0)
        batch = {k: jax.device_put(v, program.batch_sharding) for k, v in host.items()}
        state = program.init()
        for _ in range(2):
            state, out = program.train_step(state, batch)
        losses.append((mesh.size, float(out["loss"]), float(out["loss_vertex"])))
    (one, loss1, vertex1), (eight, loss8, vertex8) = losses
    assert (one, eight) == (1, 8) and vertex1 > 0
    np.testing.assert_allclose([loss8, vertex8], [loss1, vertex1], rtol=1e-4)  # float32, two AdamW steps


def test_only_cuda_counts_as_an_nvidia_gpu(monkeypatch):
    """ROCm's backend is also named "gpu": its platform version tells it apart from CUDA's, and the fused
    Triton kernels are picked for CUDA alone."""

    class Backend:
        platform_version = ""

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(jax.extend.backend, "get_backend", lambda *a: Backend())
    for version, nvidia in (("PJRT C API\ncuda 12080", True), ("PJRT C API\nrocm 60342", False)):
        Backend.platform_version = version
        assert kernel_mode.nvidia_gpu() is nvidia and kernel_mode.fused_kernels() is nvidia
        with kernel_mode.portable():
            assert kernel_mode.nvidia_gpu() is nvidia and not kernel_mode.fused_kernels()
