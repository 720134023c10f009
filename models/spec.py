"""The contract between a model module and the framework."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

Batch = dict[str, jax.Array]
LossFn = Callable[[nnx.Module, Batch], tuple[jax.Array, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class Imported:
    """A model trained elsewhere, as an importer hands it to ``smilejax import``.

    config: config sections (``model``, ``data``, ``optimizer``, ...) laid over the model's packaged
        config; files they name (a norm dict) are already written into the run directory.
    params(model) -> the foreign weights as ``model``'s ``nnx.Param`` state (``model`` is built from
        ``config``, possibly abstract); raises naming any weight that does not fit.
    source: provenance for ``run.json`` (the files read, the foreign framework's version, ...).
    """

    config: dict
    params: Callable[[nnx.Module], nnx.State]
    source: dict


# importer(checkpoint, foreign config or None, run directory) -> Imported; its docstring's first paragraph
# describes the source for the user (`smilejax import --help`)
Importer = Callable[[Path, Path | None, Path], Imported]


@dataclasses.dataclass(frozen=True)
class Option:
    """A family's own command-line option, e.g. GN2's ``smilejax eval RUN_DIR --fc 0.2``; its value reaches
    the hook as ``opts.model[dest]`` (``dest``: the flag without dashes, ``-`` as ``_``)."""

    flag: str
    type: Callable[[str], Any]
    default: Any
    help: str

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """A family's physics evaluation, run by ``smilejax eval RUN_DIR``.

    evaluate(trained, opts) -> {name: value} of metrics (JSON types, numpy allowed); writes its plots into
        ``opts.out``. ``trained`` is ``smilejax.trained.TrainedModel``, ``opts`` is
        ``smilejax.evaluation.EvalOptions`` (``opts.model`` holds this family's ``options``).
    summary(metrics) -> text printed at the end (a table), optional.
    options: the family's flags of ``smilejax eval``; ``check(values)`` raises ValueError naming a bad one.
    about: what it measures, for ``smilejax eval --help``.
    """

    evaluate: Callable[[Any, Any], dict]
    summary: Callable[[dict], str] | None = None
    options: tuple[Option, ...] = ()
    check: Callable[[Mapping[str, Any]], None] | None = None
    about: str = ""


@dataclasses.dataclass(frozen=True)
class TorchTraining:
    """A family's PyTorch reference line in ``bench convergence --torch``: its peer trained on the very
    batches the study's first variant sees.

    script: run by the reference interpreter as ``script --work DIR --mode compile|eager``. DIR holds
        ``run.json`` (``model``: ``Bench.torch_config`` with ``options``, ``lr``: the learning rate of
        every step, ``optimizer``, ``steps``, ``eval_every``, ``precision``, ``batch_size``),
        ``train_KEY.npy`` [steps, ...] and ``eval_KEY.npy`` [eval batches, ...] for each of ``keys``, and
        ``weights.npz``; the script writes ``points.json`` (``torch``, ``device``, ``points``: step, jets,
        train_s, compile_s, eval_s, val_loss) and, per point, ``eval-STEP.npz`` with the outputs of
        ``Convergence.predict`` for ``quality``.
    python(explicit) -> the reference interpreter (``explicit``: ``--torch-python``); a SystemExit naming
        the environment when it is missing.
    keys: the batch keys the script reads.
    options(model_cfg, batch) -> the loss settings laid over ``Bench.torch_config`` (task weights, the
        trained tasks, ...); ``batch``: the first training batch as written (``keys``), so that what the
        family decides from a batch's keys (GN2's auxiliary tasks) is decided by the family, not the script.
    weights(model) -> {peer state_dict name: array}: the model's parameters as the peer names them, so
        both start from the same weights.
    """

    script: Path
    python: Callable[[str | None], Path]
    keys: tuple[str, ...]
    options: Callable[[Any, Mapping[str, np.ndarray]], dict]
    weights: Callable[[nnx.Module], dict[str, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Convergence:
    """A family's part of ``bench convergence``: the training variants it compares and its quality metric.

    variants: {name: ("key=value", ...)} the default variants, config overrides laid over the study's
        config (e.g. GN2's ``padded``, ``bucketed``, ``window16``, ``packed``); the first is the reference
        whose final validation loss the others are timed to.
    predict(model, batch) -> {name: [jets, ...] array}: traced (jitted by the study) on each held-out
        batch with the model in eval mode; per-jet outputs and the labels ``quality`` needs.
    quality(outputs) -> {name: float}: the quality metric from ``predict``'s outputs of every held-out jet,
        concatenated (GN2: light and c rejection at 77 % b-efficiency), higher is better.
    headline: the quality value plotted against jets seen and wall time.
    torch: the PyTorch reference line (``--torch``), optional.
    """

    variants: Mapping[str, tuple[str, ...]]
    predict: Callable[[nnx.Module, Batch], dict[str, jax.Array]]
    quality: Callable[[Mapping[str, np.ndarray]], dict[str, float]]
    headline: str
    torch: TorchTraining | None = None


@dataclasses.dataclass(frozen=True)
class Bench:
    """What the performance studies need beyond the spec (all optional).

    length_field: model config field of the padded set length (``bench train --tracks``, buckets).
    torch_peer: a PyTorch peer run as a script by another interpreter, imported only in its own process
        (``--help`` gives its arguments); ``torch_config(model_cfg) -> dict`` is its ``--model`` JSON.
    study: module whose ``add_arguments(parser)`` and ``run(cfg, args)`` replace ``bench train``'s generic
        study for this family (a family with shapes of its own or a reference of its own); with
        ``cases(args)`` it also gives ``bench roofline`` its shapes.
    maker: the maker (``smilejax data make NAME``) of a synthetic set that ``bench input --jets N`` makes
        and reads when a config names no files.
    convergence: ``bench convergence``'s variants and quality metric.
    """

    length_field: str | None = None
    torch_peer: Path | None = None
    torch_config: Callable[[Any], dict] | None = None
    study: str | None = None
    maker: str | None = None
    convergence: Convergence | None = None


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What the framework needs from a model family; a model knows nothing of meshes, files or loggers.

    A family registers ``SPEC = ModelSpec(...)`` under the entry-point group ``smilejax.models`` (see the
    README's "Adding a model"); ``module:ATTR`` in a config names one without registering it.

    config: dataclass of hyperparameters; it must have a ``name: str`` field (the registry key).
    build(cfg, *, rngs, dtype) -> nnx.Module whose parameters carry logical axis names through
        ``nnx.with_partitioning`` (``batch``, ``embed``, ``mlp``, ``heads``, ...); ``dtype`` is the
        compute dtype, parameters stay float32.
    loss(model, batch) -> (scalar float32 loss, {name: scalar metric}); ``batch`` is the dict of
        arrays the dataset yields.
    input_spec(cfg, batch_size) -> {name: jax.ShapeDtypeStruct} of the forward inputs (export).

    Optional hooks; the framework calls them and never names a family:
    importers: {source: Importer} for ``smilejax import SOURCE CHECKPOINT`` (e.g. GN2's ``"salt"``).
    evaluation: ``smilejax eval``'s metrics and plots.
    synthetic_labels(model_cfg, inputs, rng) -> {name: np.ndarray}: the targets of a synthetic batch whose
        inputs follow ``input_spec`` (benchmarks and tests without files).
    portable(model_cfg) -> model_cfg with GPU-only choices (cuDNN attention, Pallas kernels) made portable,
        same parameters: evaluation and export run it on any device.
    element_axes: {input name: axis} of the set axis (tracks, particles) that an export leaves symbolic;
        None: axis 1 where the inputs agree on it.
    bench: what the performance studies need.
    """

    name: str
    config: type
    build: Callable[..., nnx.Module]
    loss: LossFn
    input_spec: Callable[[Any, int], dict[str, jax.ShapeDtypeStruct]]
    importers: Mapping[str, Importer] = dataclasses.field(default_factory=dict)
    evaluation: Evaluation | None = None
    synthetic_labels: Callable[[Any, Mapping[str, np.ndarray], np.random.Generator], dict] | None = None
    portable: Callable[[Any], Any] | None = None
    element_axes: Mapping[str, int] | None = None
    bench: Bench = Bench()


@dataclasses.dataclass(frozen=True)
class Maker:
    """A generator of a dataset, ``smilejax data make NAME`` (entry-point group ``smilejax.makers``).

    Kept light: the module that defines it imports no JAX and no generator, so listing makers is cheap;
    ``run`` imports what it needs.
    about: one line for ``smilejax data make --help``; description: the paragraph of ``NAME --help``.
    add_arguments(parser): its options (``--out``, sizes, seed, ...).
    run(args) -> exit status; prints what it wrote and how to train on it.
    """

    about: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str = ""
