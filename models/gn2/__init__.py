"""GN2, ATLAS's transformer jet-flavour tagger, as a smilejax model family (``SPEC``, entry-point group
``smilejax.models``).

* ``model``: the network and its config (``GN2``, ``GN2Config``; re-exported here); ``losses``: the
  task losses of a padded or packed batch; ``tasks``: the classes, auxiliary tasks and which a batch
  trains; ``convergence``: the variants of ``bench convergence``; ``torch_train``: the PyTorch peer's
  training for its reference line;
* ``make_pythia``, ``pileup``, ``tracker``, ``multiplicity``: the Pythia sample with pile-up (``smilejax
  data make ftag-pythia``);
* ``salt`` (``salt_config``, ``salt_weights``): ``smilejax import salt``, salt's GN2 as a run;
* ``evaluation`` (``flavour``, ``ip_baseline``, ``tracks``, ``plots``): ``smilejax eval``'s flavour tagging
  against an impact-parameter baseline, track origin and vertexing;
* ``synthetic``: the labels of synthetic batches; ``torch_peer``: the PyTorch peer of ``bench train``
  (a script, never imported); ``features``: the salt reference environment for ``smilejax doctor``;
* ``configs/``: the packaged configs ``gn2`` and ``hpo-study``.

Importing this package stays light: the importer and the evaluation load their modules when called.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..spec import Bench, Evaluation, Imported, ModelSpec, Option
from .convergence import CONVERGENCE
from .model import (
    AUX_KEYS,
    GN2,
    JET_CLASSES,
    ORIGIN_CLASSES,
    TASKS,
    GN2Config,
    build,
    input_spec,
    loss,
    portable,
)
from .synthetic import labels as synthetic_labels

__all__ = [
    "AUX_KEYS",
    "GN2",
    "JET_CLASSES",
    "ORIGIN_CLASSES",
    "SPEC",
    "TASKS",
    "GN2Config",
    "build",
    "input_spec",
    "loss",
    "portable",
    "synthetic_labels",
]


def _import_salt(checkpoint: Path, config_path: Path | None, run_dir: Path) -> Imported:
    """ATLAS salt's GN2: a Lightning .ckpt or a SaltModel state-dict .pt, with salt's training YAML (--config;
    default: the config.yaml salt writes next to its checkpoints or one folder up). The variables,
    normalisation (from the checkpoint, else data.norm_dict), class names and weights, task weights and
    learning-rate schedule are carried over.

    The work is ``salt``'s, loaded on use.
    """
    from . import salt

    return salt.import_salt(checkpoint, config_path, run_dir)


def _evaluate(trained, opts) -> dict:
    from . import evaluation  # matplotlib and the trained-model machinery, on use

    return evaluation.evaluate(trained, opts)


def _summary(metrics: dict) -> str:
    from . import evaluation

    return evaluation.summary(metrics)


def _check_eval(values: Mapping[str, Any]) -> None:
    """The evaluation options' values: a positive template sample, background fractions that leave a light
    fraction."""
    if values["ip_fit_jets"] < 1:
        raise ValueError(f"--ip-fit-jets must be at least 1, got {values['ip_fit_jets']}")
    fc, ftau = values["fc"], values["ftau"]
    if not (fc >= 0 and ftau >= 0 and fc + ftau < 1):
        raise ValueError(
            f"--fc and --ftau must be >= 0 with fc + ftau < 1 (the light fraction is 1 - fc - ftau), "
            f"got fc={fc}, ftau={ftau}"
        )


EVALUATION = Evaluation(
    evaluate=_evaluate,
    summary=_summary,
    options=(
        Option("--fc", float, 0.2, "c fraction in D_b's denominator (default 0.2, ATLAS GN2v01)"),
        Option("--ftau", float, 0.01, "tau fraction in D_b's denominator (default 0.01, GN2v01)"),
        Option(
            "--ip-fit-jets",
            int,
            5000,
            "training jets that fill the impact-parameter baseline's templates (default 5000)",
        ),
    ),
    check=_check_eval,
    about="b-tagging discriminant D_b = ln(p_b / (fc p_c + ftau p_tau + (1 - fc - ftau) p_light)), "
    "b-efficiency vs light- and c-rejection against an impact-parameter baseline, rejections at the "
    "70/77/85% working points, ROC AUC, track-origin accuracy, vertex pair efficiency/purity.",
)


def _torch_config(cfg: GN2Config) -> dict:
    """The PyTorch peer's ``--model`` JSON: the fields that shape its network."""
    keys = ("track_features", "embed", "init_hidden", "layers", "heads", "ff", "out", "registers")
    keys += ("head_hidden", "jet_classes", "origin_classes", "activation")
    return {k: getattr(cfg, k) for k in keys}


SPEC = ModelSpec(
    name="gn2",
    config=GN2Config,
    build=build,
    loss=loss,
    input_spec=input_spec,
    importers={"salt": _import_salt},
    evaluation=EVALUATION,
    synthetic_labels=synthetic_labels,
    portable=portable,
    bench=Bench(
        length_field="max_tracks",
        torch_peer=Path(__file__).with_name("torch_peer.py"),
        torch_config=_torch_config,
        maker="ftag-synthetic",
        convergence=CONVERGENCE,
    ),
)
