"""Every config the LFI family packages loads, builds its model and trains on its task's simulations;
the per-task benchmark configs (npe-gaussian-linear, npe-bernoulli-glm) have sbi's coupling + LU layout
on their own task, so ``bench train --config-for TASK=CONFIG`` trains that task with it."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from smilejax.models.lfi import coupling, flows, posterior

from smilejax import config, metrics, registry, trained, trainer

LFI_CONFIGS = sorted(name for name, path in registry.configs().items() if path.parent.parent.name == "lfi")
STEPS = 40


def test_the_family_packages_the_per_task_configs():
    assert {"npe-two-moons", "nre-two-moons", "npe-gaussian-linear", "npe-bernoulli-glm"} <= set(LFI_CONFIGS)


PER_TASK = [("npe-gaussian-linear", "gaussian_linear"), ("npe-bernoulli-glm", "bernoulli_glm")]


@pytest.mark.parametrize(("name", "task"), PER_TASK)
def test_per_task_configs_are_the_coupling_lu_layout_on_their_task(name, task):
    """Only the task and the conditioner differ from npe-two-moons: the benchmark's comparison with
    sbi (same width, depth, bins, batch, learning rate) holds for both."""
    cfg, base = config.load(name, []), config.load("npe-two-moons", [])
    assert cfg.model.task == task
    assert cfg.model.flow.conditioner == "coupling" and cfg.model.flow.linear is True
    assert base.model.flow.conditioner != "coupling" and base.model.flow.linear is False
    for key in ("kind", "layers", "hidden", "bins", "bound"):
        assert getattr(cfg.model.flow, key) == getattr(base.model.flow, key), key
    assert cfg.model.embedding == base.model.embedding
    assert (cfg.data.batch_size, cfg.optimizer.lr) == (base.data.batch_size, base.optimizer.lr)


@pytest.mark.parametrize("name", LFI_CONFIGS)
def test_every_packaged_config_trains_on_its_task(name, tmp_path):
    """A few dozen steps on fresh simulations of the config's own task: the loss is finite and falls,
    and the saved run draws posterior samples of the task's dimension."""
    run = tmp_path / name
    cfg = config.load(
        name,
        [
            f"run.dir={run}",
            f"run.steps={STEPS}",
            "run.log_every=1",
            "run.eval_every=0",
            "run.checkpoint_every=0",
            "logging.progress=false",
            "data.batch_size=64",
            "data.read_threads=1",
            "optimizer.lr=3e-3",
        ],
    )
    result = trainer.train(cfg)
    assert result.exit_code == 0 and result.step == STEPS
    losses = [r["loss"] for r in metrics.read(run / "metrics.jsonl") if "loss" in r]
    assert len(losses) == STEPS and np.all(np.isfinite(losses))
    assert np.mean(losses[-10:]) < np.mean(losses[:10]), losses
    model = trained.load(run).model
    task = model.task
    assert task.name == cfg.model.task
    if cfg.model.name == "npe":  # the layout the config names is the one built
        kinds = {type(layer) for layer in model.flow.layers}
        expect = coupling.Coupling if cfg.model.flow.conditioner == "coupling" else flows.Autoregressive
        assert expect in kinds and (flows.LinearLU in kinds) == cfg.model.flow.linear
    draws = np.asarray(posterior.sample(model, task.observation(1)[None], 32, jax.random.key(0)))
    assert draws.shape == (1, 32, task.theta_dim) and np.all(np.isfinite(draws))
