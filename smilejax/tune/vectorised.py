"""K trials in one ``jit(vmap(...))`` program: trials that differ only in values that keep array shapes.

What may differ between the trials of one program:

- ``optimizer.lr``, ``initial_lr``, ``final_lr``, ``warmup``, ``schedule``: each trial's learning rate
  per step comes from a table made with ``optim.schedule`` (so schedules stay those of ``optim.make``);
- ``optimizer.weight_decay``, ``b1``, ``b2``, ``eps``: traced scalars in the optimizer that
  ``optim.make`` builds inside the program (one source of truth for the optimizer);
- ``run.seed``: initial parameters, dropout streams and data order (one input pipeline per seed);
- ``model.<field>`` for float fields that a model keeps as plain numbers on its modules (dropout rates,
  loss weights): they are found by building the model with two values and comparing, then set as
  traced scalars on the merged module while the loss runs (``nnx.Dropout`` gets a traced-rate call).

Everything else (shapes, batch size, steps, model structure) must be equal; a space or a set of
configs that breaks this fails before training with the field named. Each trial gets a normal run
directory (``config.yaml``, ``run.json``, ``metrics.jsonl``, a final checkpoint that ``trained.load``
reads) and, after the program ends, its metrics replayed into TensorBoard/W&B; its results equal
training it alone within float tolerance. The trial axis is sharded over ``gcd(K, local devices)``
devices, so K per device. Not resumable mid-program: a killed program's trials are retried whole.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import jax
import numpy as np

from smilejax import callbacks, checkpoint, config, metrics, registry, steps, trainer
from smilejax.config import Config
from smilejax.inputs import packing
from smilejax.loop import Loop, Trial
from smilejax.tune.objective import Outcome, Pruning, Report, missing_metric, report_every
from smilejax.tune.vector_fields import (  # noqa: F401 (re-exported: their home was here)
    ALLOWED,
    PER_TRIAL,
    SCHEDULE_FIELDS,
    TRACED_OPTIMIZER_FIELDS,
    Slot,
    VectoriseError,
    check_space,
    differing,
    model_slots,
    traced_errors,
    trial_axis,
)

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- the loop


class _Inputs:
    """One input pipeline per distinct seed; batches stacked along the trial axis when seeds differ."""

    def __init__(self, cfgs: list[Config], program: steps.Program):
        self.sharding = program.batch_sharding
        seeds = [c.run.seed for c in cfgs]
        self.groups = sorted(set(seeds))
        self.of_trial = [self.groups.index(s) for s in seeds]
        self.examples = 0  # the last batch's, one trial's
        self.iters = [iter(trainer.make_inputs(cfgs[seeds.index(s)], "train")) for s in self.groups]

    def next(self) -> dict:
        batches = [next(it) for it in self.iters]
        self.examples = packing.examples(batches[0]) * jax.process_count()  # one trial's (a group's)
        if len(batches) == 1:
            return jax.device_put(batches[0], self.sharding)
        shapes = {tuple(np.shape(b[key]) for key in sorted(b)) for b in batches}
        if len(shapes) > 1:  # e.g. packed sets: each seed's batch packs into its own number of rows
            raise ValueError(
                "vectorised trials with different run.seed values need batches of one shape from every "
                f"seed's input, got {len(shapes)} shapes (bucketed or packed batches vary their shape "
                "per step); give the trials one seed or turn bucketing and packing off"
            )
        stacked = {key: np.stack([batches[g][key] for g in self.of_trial]) for key in batches[0]}
        return jax.device_put(stacked, self.sharding)

    def rows(self, batch: dict) -> int:
        return self.examples

    def position(self, trial: int):
        return self.iters[self.of_trial[trial]]


def _start_runs(cfgs: list[Config], info: dict) -> list[metrics.MetricsLog]:
    """Each trial's run directory: its config, run.json, and a fresh metrics.jsonl and checkpoints."""
    files = []
    for c in cfgs:
        d = Path(c.run.dir)
        d.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(d / "checkpoints", ignore_errors=True)  # a retried program starts afresh
        config.save(c, d / "config.yaml")
        (d / "run.json").write_text(json.dumps(info, indent=2) + "\n")
        files.append(metrics.MetricsLog(d / "metrics.jsonl", resume_step=0))
    return files


def train(
    cfgs: list[Config], metric: str, *, reports: list[Report | None] | None = None, save: bool = True
) -> list[Outcome]:
    """Trains the configs together; one ``Outcome`` per config, in order."""
    k, cfg0 = len(cfgs), cfgs[0]
    reports = reports or [None] * k
    t_start = time.perf_counter()
    spec = registry.model(cfg0.model.name)
    axis, mesh = trial_axis(spec, cfgs)
    program = steps.build(spec, cfg0, mesh, trials=axis)
    inputs = _Inputs(cfgs, program)
    # the same batches each time, and for every trial whatever its seed, as sequential runs score them
    evaluation = trainer.Evaluation(cfg0) if cfg0.run.eval_every > 0 else None
    run_dirs = [Path(c.run.dir) for c in cfgs]
    info = {
        "model": cfg0.model.name,
        "param_count": int(program.param_count),
        "device_kind": jax.local_devices()[0].device_kind,
        "platform": jax.local_devices()[0].platform,
        "vectorised": {"trials": k, "devices": mesh.size},
        "global_batch": cfg0.data.batch_size,
        "versions": trainer.versions(),
    }
    files = _start_runs(cfgs, info)
    pruning = Pruning(metric, report_every(cfg0, metric), reports)

    def opener(i: int) -> checkpoint.Checkpointer:
        return checkpoint.Checkpointer(
            run_dirs[i] / "checkpoints", keep=cfgs[i].run.keep_checkpoints, async_save=False
        )

    chain = [
        callbacks.NanStop([d.name for d in run_dirs]),
        callbacks.LogWindow(cfg0.run.log_every, peak=None),
        *([callbacks.Evaluate(evaluation, cfg0.run.eval_every)] if evaluation is not None else []),
        *([callbacks.Checkpoint(0, opener=opener)] if save else []),  # the final state only
        pruning,
        callbacks.Progress(cfg0.run.steps, 0, cfg0.logging.progress),
        callbacks.MetricsFile(files),
    ]
    with traced_errors():
        loop = Loop(cfg0, program, inputs, program.init(), chain, trial_axis=k)
        loop.run(cfg0.run.steps)
    seconds = (time.perf_counter() - t_start) / k  # the program's time, shared by its trials
    for c, d in zip(cfgs, run_dirs, strict=True):
        _replay(c, d, info)
    return [
        _outcome(loop.trials[i], run_dirs[i], metric, pruning.history[i], seconds, cfg0.run.steps)
        for i in range(k)
    ]


def _outcome(trial: Trial, run_dir: Path, metric: str, history: list, seconds: float, steps_: int) -> Outcome:
    value = None
    if trial.state != "failed":
        found = [r[metric] for r in metrics.read(run_dir / "metrics.jsonl") if metric in r]
        value = float(found[-1]) if found else None
        if value is None and trial.state == "complete":
            raise missing_metric(run_dir, metric)
    error = "non-finite loss" if trial.state == "failed" else None
    step = steps_ if trial.stopped_at is None else trial.stopped_at
    return Outcome(trial.state, value, step, seconds, run_dir, history, error)


def _replay(cfg: Config, run_dir: Path, info: dict) -> None:
    """The trial's metrics.jsonl into its TensorBoard / W&B run (written after the program ends)."""
    if cfg.logging.wandb == "off" and not cfg.logging.tensorboard:
        return
    loggers = metrics.Loggers(cfg, run_dir, info, resume=False)
    try:
        for record in metrics.read(run_dir / "metrics.jsonl"):
            loggers.log(record["step"], {k: v for k, v in record.items() if k != "step"})
    finally:
        loggers.close()
