"""A finished run's model comes back from its run directory with the trained parameters."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from smilejax import config, trained, trainer
from tests import toy


def test_load_returns_trained_model_in_eval_mode(tmp_path):
    run_dir = tmp_path / "run"
    cfg = config.load(
        toy.config(run={"dir": str(run_dir), "steps": 4, "checkpoint_every": 2}, mesh={"data": 8})
    )
    result = trainer.train(cfg)
    loaded = trained.load(run_dir)
    assert loaded.step == 4 and loaded.cfg.model.hidden == 32
    source = toy.ToySource(loaded.cfg.data, "eval")
    batch = source.read(np.arange(16))
    loss, _ = loaded.spec.loss(loaded.model, batch)
    earlier = trained.load(run_dir, step=2)
    assert earlier.step == 2
    loss2, _ = earlier.spec.loss(earlier.model, batch)
    assert float(loss) != float(loss2)
    assert np.isfinite(float(loss)) and result.step == 4
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(nnx.state(loaded.model, nnx.Param)))


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a smilejax run directory"):
        trained.load(tmp_path)


@pytest.mark.parametrize(("run", "default"), [("tiny_gn2_run", "math"), ("tiny_mlpf_run", "auto")])
def test_a_cudnn_trained_model_loads_with_its_float32_attention(request, run, default):
    run_dir = request.getfixturevalue(run)
    # Trained with cuDNN attention on a GPU, evaluated or exported on a CPU: the same parameters with
    # the model's default attention, which computes in float32 anywhere.
    loaded = trained.load(run_dir, overrides=["model.attention=cudnn"])
    assert loaded.cfg.model.attention == default
    reference = trained.load(run_dir)
    same = [
        np.array_equal(a, b)
        for a, b in zip(
            jax.tree.leaves(nnx.state(loaded.model, nnx.Param)),
            jax.tree.leaves(nnx.state(reference.model, nnx.Param)),
            strict=True,
        )
    ]
    assert same and all(same)


def test_a_fused_kernel_run_loads_with_auto_and_exports_portable_code(tiny_gn2_run):
    """Trained with ``vertex_kernel=pallas``: loaded with ``auto`` (fused on a GPU, jnp elsewhere), and its
    export traces the jnp head even for an H100 (an abstract device), so the artifact runs anywhere,
    while the model itself would pick the fused kernel there."""
    from jax.sharding import AbstractDevice, AbstractMesh, AxisType

    from smilejax.serve import export

    loaded = trained.load(tiny_gn2_run, overrides=["model.vertex_kernel=pallas"])
    assert loaded.cfg.model.vertex_kernel == "auto"
    fwd = export.forward(loaded, symbolic_elements=False)
    inputs = export.example_inputs(fwd, batch=2)
    device = AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=132, platform="cuda")
    h100 = AbstractMesh((1,), ("x",), axis_types=(AxisType.Explicit,), abstract_device=device)
    with jax.sharding.use_abstract_mesh(h100):
        assert "pallas_call" not in str(jax.make_jaxpr(fwd.fn)(*inputs))
        graphdef, state = nnx.split(loaded.model)
        model = nnx.merge(graphdef, jax.device_get(state))  # host copies, as the export's
        assert "pallas_call" in str(jax.make_jaxpr(lambda *xs: model(*xs))(*inputs))


# The toy with a portable hook: its (pretend) GPU-only choice is a dropout rate, on which no parameter
# depends.
PORTABLE = dataclasses.replace(
    toy.MODEL,
    name="tests.test_trained:PORTABLE",
    portable=lambda cfg: dataclasses.replace(cfg, dropout=0.0) if cfg.dropout == 0.25 else cfg,
)


def test_the_family_portable_hook_chooses_the_settings_it_loads_with(tmp_path, caplog):
    run_dir = tmp_path / "run"
    tree = toy.config(
        run={"dir": str(run_dir), "steps": 2, "checkpoint_every": 2},
        model={"name": "tests.test_trained:PORTABLE", "dropout": 0.25},
    )
    trainer.train(config.load(tree))
    with caplog.at_level("INFO", logger="smilejax.trained"):
        loaded = trained.load(run_dir)
    assert loaded.cfg.model.dropout == 0.0 and "dropout: 0.25 -> 0.0" in caplog.text
    assert trained.load(run_dir, overrides=["model.dropout=0.1"]).cfg.model.dropout == 0.1
    cfg = loaded.cfg.model
    assert trained.portable(toy.MODEL, cfg) is cfg  # no hook: the settings as they are
