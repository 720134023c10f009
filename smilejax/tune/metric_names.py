"""The metrics a run of a config will log, known before it starts: a study refuses a misspelled
objective (``eval/los``) before its first trial instead of after it.

A run logs its loss, the loss's own metrics and what the training loop measures (``smilejax.trainer``'s
log hook) every ``run.log_every`` steps, and ``eval/`` + the loss and its metrics every
``run.eval_every`` steps. The loss's metric names come from an abstract evaluation of the model's loss
(``jax.eval_shape``: nothing is computed) on a few examples of the training data.
"""

from __future__ import annotations

import difflib

import jax
import numpy as np

from smilejax import registry, steps, xla
from smilejax.config import Config
from smilejax.tune.space import SpaceError

# What the loop logs beside the loss and its metrics; mfu only on a device whose peak FLOP/s is known.
LOOP = ("lr", "grad_norm", "samples_per_s", "step_time_s", "data_wait_frac")
MFU = "mfu"


def loss_metrics(cfg: Config) -> list[str]:
    """``loss`` and the names of the metrics the model's loss returns beside it."""
    spec = registry.model(cfg.model.name)
    source = registry.dataset(cfg.data.format).source(cfg.data, "train")
    batch = source.read(np.arange(min(len(source), 2)))

    def loss(batch: dict):
        return spec.loss(steps.build_model(spec, cfg, 0), batch)

    _, named = jax.eval_shape(loss, batch)
    return ["loss", *named]


def reported(cfg: Config) -> list[str]:
    """Every metric name a run of ``cfg`` logs (sorted)."""
    losses = loss_metrics(cfg)
    names = {*losses, *LOOP}
    if xla.peak_flops(jax.devices()[0]):
        names.add(MFU)
    if cfg.run.eval_every > 0:
        names |= {f"eval/{name}" for name in losses}
    return sorted(names)


def check(metric: str, cfg: Config, source: str = "<space>") -> None:
    """Raises SpaceError, with the closest names, unless a run of ``cfg`` logs ``metric``."""
    names = reported(cfg)
    if metric in names:
        return
    close = difflib.get_close_matches(metric, names, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
    raise SpaceError(
        f"{source}: objective metric {metric!r} is not logged by a run of this config; {hint}"
        f"it logs {', '.join(names)}"
    )
