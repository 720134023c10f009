"""A finished run's model comes back from its run directory with the trained parameters."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from smilejax import config, train, trained
from tests import toy


def test_load_returns_trained_model_in_eval_mode(tmp_path):
    run_dir = tmp_path / "run"
    cfg = config.load(
        toy.config(run={"dir": str(run_dir), "steps": 4, "checkpoint_every": 2}, mesh={"data": 8})
    )
    result = train.train(cfg)
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


@pytest.mark.parametrize(("run", "default"), [("tiny_gn2_run", "math"), ("tiny_mlpf_run", "chunked")])
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
