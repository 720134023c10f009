"""Likelihood-free (simulation-based) inference as a smilejax model family: amortised posteriors from
simulations, two model specs registered under ``smilejax.models``:

* ``npe`` (``NPE_SPEC``): neural posterior estimation with a conditional normalising flow (``flows``:
  masked autoregressive, affine or rational-quadratic spline) given an embedding of the observation
  (``embedding``: an MLP or a set transformer from ``models.layers``);
* ``nre`` (``NRE_SPEC``): neural ratio estimation, a classifier of joint against marginal pairs.

``tasks``: the problems (``sbibm-jax``'s benchmark tasks and ``hep``, the worked example), with simulators
in JAX that the loss runs on the device from per-example seeds (data format ``simulations``) or pairs
read from a file (``stored_simulations``). ``posterior``: the public interface of a trained estimator
(sample, log_prob, log_ratio). ``configs/``: npe-two-moons, npe-hep-resonance, nre-two-moons.
"""

from __future__ import annotations

from ..spec import Bench, ModelSpec
from .embedding import EmbeddingConfig
from .evaluation import EVALUATION
from .flows import FlowConfig
from .model import (
    NPE,
    NRE,
    LfiConfig,
    build_npe,
    build_nre,
    npe_inputs,
    npe_loss,
    nre_inputs,
    nre_loss,
)

__all__ = [
    "NPE",
    "NPE_SPEC",
    "NRE",
    "NRE_SPEC",
    "EmbeddingConfig",
    "FlowConfig",
    "LfiConfig",
]

NPE_SPEC = ModelSpec(
    name="npe",
    config=LfiConfig,
    build=build_npe,
    loss=npe_loss,
    input_spec=npe_inputs,
    evaluation=EVALUATION,
    bench=Bench(study="smilejax.models.lfi.bench_study"),
)
NRE_SPEC = ModelSpec(
    name="nre", config=LfiConfig, build=build_nre, loss=nre_loss, input_spec=nre_inputs, evaluation=EVALUATION
)
