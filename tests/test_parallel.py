"""Data parallel, FSDP and tensor parallel on 8 CPU devices against one device."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from smilejax import config, registry, steps
from smilejax import mesh as meshlib
from smilejax.config import ConfigError, MeshConfig
from tests import toy

STEPS = 6


def train_losses(devices: int = 8, **sections):
    cfg = config.load(toy.config(**sections))
    mesh = meshlib.build_mesh(cfg.mesh, jax.devices()[:devices])
    program = steps.build(registry.model(cfg.model.name), cfg, mesh)
    state = program.init()
    source = toy.ToySource(cfg.data, "train")
    b = cfg.data.batch_size
    losses = []
    for i in range(STEPS):
        batch = jax.device_put(source.read(np.arange(i * b, (i + 1) * b)), program.batch_sharding)
        state, out = program.train_step(state, batch)
        losses.append(float(out["loss"]))
    return np.array(losses), state


@pytest.fixture(scope="module")
def reference():
    return train_losses(devices=1)


def test_eight_devices_present():
    assert jax.device_count() == 8


@pytest.mark.parametrize(
    ("mesh", "shard_shape"),
    [
        ({"data": 8}, (32, 32)),
        ({"data": 2, "fsdp": 4}, (32, 8)),  # FSDP: 'embed' over fsdp
        ({"data": 4, "tensor": 2}, (16, 32)),  # tensor parallel: 'mlp' over tensor
        ({"data": 2, "fsdp": 2, "tensor": 2}, (16, 16)),
    ],
)
def test_strategies_match_one_device(reference, mesh, shard_shape):
    ref_losses, ref_state = reference
    losses, state = train_losses(mesh=mesh)
    np.testing.assert_allclose(losses, ref_losses, rtol=2e-5, atol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), state.params, ref_state.params
    )
    # parameters and their optimizer moments are sharded the way the rules say ('mid' is mlp × embed)
    kernel = state.params["mid"]["kernel"]
    assert kernel.addressable_shards[0].data.shape == shard_shape
    assert state.opt_state[0].mu["mid"]["kernel"].sharding == kernel.sharding


def test_jit_and_shard_map_data_parallel_agree():
    jit_losses, jit_state = train_losses(mesh={"data": 8}, train={"parallel": "jit"})
    sm_losses, sm_state = train_losses(mesh={"data": 8}, train={"parallel": "shard_map"})
    np.testing.assert_allclose(sm_losses, jit_losses, rtol=2e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), sm_state.params, jit_state.params
    )


def test_gradient_accumulation_matches_full_batch(reference):
    losses, _ = train_losses(mesh={"data": 2, "fsdp": 4}, train={"grad_accum": 2})
    np.testing.assert_allclose(losses, reference[0], rtol=2e-5, atol=1e-6)


def test_bf16_compute_keeps_fp32_params_and_trains(reference):
    losses, state = train_losses(mesh={"data": 8}, train={"precision": "bf16"})
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(state.params))
    assert np.all(np.isfinite(losses))
    np.testing.assert_allclose(losses, reference[0], rtol=0.05)
    assert not np.allclose(losses, reference[0], rtol=1e-6)  # really computed in bf16


def test_shard_map_refuses_sharded_parameters():
    with pytest.raises(ConfigError, match=r"mesh\.fsdp=1"):
        train_losses(mesh={"data": 2, "fsdp": 4}, train={"parallel": "shard_map"})


def test_mesh_shape_errors_name_the_problem():
    assert meshlib.mesh_shape(MeshConfig(data=-1, fsdp=2), 8) == {"data": 4, "fsdp": 2, "tensor": 1}
    with pytest.raises(ConfigError, match="needs 16 devices, but 8"):
        meshlib.mesh_shape(MeshConfig(data=4, fsdp=4), 8)
    with pytest.raises(ConfigError, match="only one mesh axis may be -1"):
        meshlib.mesh_shape(MeshConfig(data=-1, fsdp=-1), 8)
    with pytest.raises(ConfigError, match="3 does not divide"):
        meshlib.mesh_shape(MeshConfig(data=-1, fsdp=3), 8)


def test_indivisible_dimension_stays_replicated():
    mesh = meshlib.build_mesh(MeshConfig(data=1, fsdp=8))
    rules = MeshConfig().rules
    assert meshlib.logical_spec(("mlp", "embed"), (32, 12), mesh, rules) == jax.sharding.PartitionSpec(
        None, None
    )
    assert meshlib.logical_spec(("mlp", "embed"), (32, 16), mesh, rules) == jax.sharding.PartitionSpec(
        None, ("fsdp",)
    )


def _flops_per_device(devices: int, **sections) -> float:
    cfg = config.load(toy.config(data={"batch_size": 4096}, **sections))
    mesh = meshlib.build_mesh(cfg.mesh, jax.devices()[:devices])
    program = steps.build(registry.model(cfg.model.name), cfg, mesh)
    rows = toy.ToySource(cfg.data, "train").read(np.arange(4096) % 512)
    batch = jax.device_put(rows, program.batch_sharding)
    return program.step_flops(batch)


def test_step_flops_are_per_device_for_jit_and_shard_map_steps():
    one = _flops_per_device(1)
    # the toy's matrix products on 4096 rows: forward, weight gradients, and input gradients but the first
    dense = 2 * 4096 * (8 * 32 + 32 * 32 + 32)
    assert 3 * dense - 2 * 4096 * 8 * 32 < one < 1.5 * 3 * dense
    for sections in ({"train": {"parallel": "jit"}}, {"train": {"parallel": "shard_map"}}):
        assert _flops_per_device(8, mesh={"data": 8}, **sections) == pytest.approx(one / 8, rel=0.05)
    assert _flops_per_device(8, mesh={"data": 2, "fsdp": 4}) == pytest.approx(one / 8, rel=0.05)
    # gradient accumulation: the same work in a loop, whose body XLA's cost analysis counts once
    assert _flops_per_device(1, train={"grad_accum": 4}) == pytest.approx(one, rel=0.05)


def test_step_flops_where_the_backend_cannot_analyse_lowered_programs(monkeypatch):
    """GPU plugins (PJRT C API) do not implement the lowered cost analysis; the CPU backend counts."""
    from jax._src import xla_bridge

    one = _flops_per_device(1)
    monkeypatch.setattr(xla_bridge, "using_pjrt_c_api", lambda backend=None: True)
    lowered = jax.jit(lambda a: a @ a).lower(np.ones((64, 64), np.float32))
    assert lowered.cost_analysis() is None  # what a GPU gives
    assert _flops_per_device(1) == one


def test_step_flops_are_the_models_whichever_kernels_run():
    """MFU's FLOPs come from the step as the model's plain jnp implementations compute it: cuDNN and
    chunked attention and the fused pair kernel count as math attention and the jnp head do. Counted on
    the step itself, the pair kernel (here in Pallas's interpreter: a loop) and the chunked attention's
    loop of query blocks count their loop body once."""
    from smilejax import xla
    from smilejax.bench import _synthetic
    from smilejax.bench._target import load_config

    small = ["model.embed=16", "model.init_hidden=[16]", "model.layers=1", "model.heads=2", "model.ff=32"]
    small += ["model.out=16", "model.head_hidden=[16]", "model.max_tracks=12", "train.precision=bf16"]
    variants = {
        "reference": ["model.attention=math", "model.vertex_kernel=xla"],
        "cudnn": ["model.attention=cudnn", "model.vertex_kernel=xla"],  # cannot even run on a CPU
        "chunked": ["model.attention=chunked", "model.attention_chunk=4", "model.vertex_kernel=xla"],
        "pallas": ["model.attention=math", "model.vertex_kernel=pallas"],
    }
    counted, on_the_step = {}, {}
    for name, overrides in variants.items():
        cfg = load_config("gn2", [*small, *overrides, "mesh.data=1"])
        program = steps.build(registry.model("gn2"), cfg, meshlib.build_mesh(cfg.mesh, jax.devices()[:1]))
        batch = _synthetic.batch(registry.model("gn2"), cfg.model, 16, seed=0)
        counted[name] = program.step_flops(batch)
        if name != "cudnn":
            lowered = program.train_step.lower(program.abstract_state, batch)
            on_the_step[name] = xla.step_flops(lowered)
    assert counted["reference"] == pytest.approx(on_the_step["reference"], rel=1e-9)
    for name in ("cudnn", "chunked", "pallas"):
        assert counted[name] == pytest.approx(counted["reference"], rel=1e-9), name
    for name in ("chunked", "pallas"):  # what MFU counted before: less than the model computes
        assert on_the_step[name] < 0.99 * counted["reference"], name
