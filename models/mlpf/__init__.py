"""MLPF, particleflow's machine-learned particle-flow transformer, as a smilejax model family (``SPEC``,
entry-point group ``smilejax.models``).

* ``model``: the network and its config (``MLPF``, ``MLPFConfig``; re-exported here); ``loss``:
  particleflow's ``mlpf_loss``; ``torch_weights``: particleflow's PyTorch weights as parameters;
* ``evaluation`` (``particles``, ``jets``, ``response``, ``plots``): ``smilejax eval``'s particle
  efficiency and fake rate, jet and missing-pT response against rule-based PF;
* ``synthetic``: synthetic events and the labels of synthetic batches;
* ``bench_study``: ``smilejax bench train mlpf`` against particleflow itself, which trains in its own
  environment (``peer``; ``reference.py``, a script run by that environment's Python, never imported);
* ``features``: fastjet and the particleflow environment for ``smilejax doctor``;
* ``configs/``: the packaged config ``mlpf``.

Importing this package stays light beyond the model: the evaluation loads its modules when called.
"""

from __future__ import annotations

import dataclasses

from ..spec import Bench, Evaluation, ModelSpec
from .loss import loss, loss_from_outputs
from .model import (
    CLASS_LABELS,
    MLPF,
    MOMENTUM,
    REGRESSION_MODES,
    MLPFConfig,
    build,
    input_spec,
)
from .synthetic import labels as synthetic_labels
from .torch_weights import convert_particleflow_state_dict, load_particleflow_state_dict

__all__ = [
    "CLASS_LABELS",
    "MLPF",
    "MOMENTUM",
    "REGRESSION_MODES",
    "SPEC",
    "MLPFConfig",
    "build",
    "convert_particleflow_state_dict",
    "input_spec",
    "load_particleflow_state_dict",
    "loss",
    "loss_from_outputs",
    "portable",
    "synthetic_labels",
]


def portable(cfg: MLPFConfig) -> MLPFConfig:
    """``cfg`` with cuDNN's fused attention (bf16, NVIDIA GPUs only) replaced by the default implementation
    (``auto``: cuDNN where it can run, else chunked), same parameters (``ModelSpec.portable``)."""
    if cfg.attention != "cudnn":
        return cfg
    return dataclasses.replace(cfg, attention=MLPFConfig.attention)


def _evaluate(trained, opts) -> dict:
    from . import evaluation  # matplotlib, fastjet and the trained-model machinery, on use

    return evaluation.evaluate(trained, opts)


def _summary(metrics: dict) -> str:
    from . import evaluation

    return evaluation.summary(metrics)


EVALUATION = Evaluation(
    evaluate=_evaluate,
    summary=_summary,
    about="particle efficiency and fake rate per class with confusion matrices, jet response (ee-genkt "
    "R=0.4 against generator jets) and missing-pT response, of MLPF against rule-based PF candidates "
    "and the target particles.",
)

SPEC = ModelSpec(
    name="mlpf",
    config=MLPFConfig,
    build=build,
    loss=loss,
    input_spec=input_spec,
    evaluation=EVALUATION,
    synthetic_labels=synthetic_labels,
    portable=portable,
    element_axes={"X": 1, "mask": 1},
    bench=Bench(length_field="max_elements", study="smilejax.models.mlpf.bench_study"),
)
