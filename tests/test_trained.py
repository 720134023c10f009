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
