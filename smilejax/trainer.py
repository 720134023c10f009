"""``smilejax train``: one linear recipe from config to checkpoints.

runtime → mesh → input → run dir → model → restore → callbacks → loop → summary. The loop
(``smilejax.loop``) only steps the program; logging, evaluation, checkpoints, the profiler, stop
signals and the NaN stop are its callbacks (``smilejax.callbacks``), which vectorised trials share.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import platform
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from smilejax import (
    callbacks,
    checkpoint,
    config,
    host,
    metrics,
    preemption,
    registry,
    resume,
    runtime,
    steps,
    xla,
)
from smilejax import mesh as meshlib
from smilejax.callbacks import Callback, early_stop
from smilejax.config import Config
from smilejax.inputs import pipeline as pipelines
from smilejax.inputs.spec import BatchSource
from smilejax.loop import Batches, Loop, to_global  # to_global: also the trainer's API

log = logging.getLogger(__name__)

EXIT_PREEMPTED = preemption.EXIT_PREEMPTED


@dataclasses.dataclass
class Result:
    run_dir: Path
    step: int
    last_metrics: dict  # the last logged training values
    exit_code: int = 0  # preemption.exit_code: 75 stopped by the scheduler, 130 by Ctrl-C, 0 finished
    last_eval: dict = dataclasses.field(default_factory=dict)  # the last evaluation's eval/ values

    @property
    def preempted(self) -> bool:
        """Stopped early by a signal, after a checkpoint."""
        return self.exit_code != 0


# ---------------------------------------------------------------- helpers


def default_run_dir(cfg: Config) -> Path:
    model = cfg.model.name.rpartition(":")[2].lower() if ":" in cfg.model.name else cfg.model.name
    stamp = int(time.time())
    if jax.process_count() > 1:  # every process must pick the same folder
        stamp = int(multihost_utils.broadcast_one_to_all(np.int64(stamp)))
    when = datetime.datetime.fromtimestamp(stamp).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{model}-{when}"


def versions() -> dict[str, str]:
    return {"python": platform.python_version(), **host.package_versions()}


def topology(cluster: runtime.ClusterEnv, mesh) -> str:
    """What the run found at start: nodes, processes, devices per process and in all, the mesh."""
    local = jax.local_devices()
    return (
        f"{cluster.num_nodes} node(s), {jax.process_count()} process(es) ({cluster.local_size} per node, "
        f"{cluster.launcher}), {len(local)} {local[0].platform} device(s) per process "
        f"(ids {[d.id for d in local]}), {jax.device_count()} in all, mesh {meshlib.describe(mesh)}"
    )


def run_info(cfg: Config, program: steps.Program, cluster: runtime.ClusterEnv) -> dict:
    dev = jax.devices()[0]
    return {
        "model": cfg.model.name,
        "param_count": int(program.param_count),
        "device_kind": dev.device_kind,
        "platform": dev.platform,
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "process_count": jax.process_count(),
        "launcher": cluster.launcher,
        "nodes": cluster.num_nodes,
        "mesh": dict(program.mesh.shape),
        "parallel": cfg.train.parallel,
        "precision": cfg.train.precision,
        "global_batch": cfg.data.batch_size,
        "global_batch_sizes": cfg.data.global_batch_sizes(),  # several with element-budget batching
        "versions": versions(),
        "command": sys.argv,
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def make_inputs(
    cfg: Config,
    split: str,
    *,
    shuffle: bool | None = None,
    source: BatchSource | None = None,
    seed: int | None = None,
):
    """The Grain pipeline of ``split`` (over ``source`` when given, else the format's source of it;
    ``seed`` replaces the one drawn from ``run.seed``)."""
    spec = registry.dataset(cfg.data.format)
    source = spec.source(cfg.data, split) if source is None else source
    build = spec.pipeline or pipelines.from_config
    if seed is None:
        seed = cfg.run.seed if split == "train" else cfg.run.seed + 1
    return build(
        source,
        cfg.data,
        seed=seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        shuffle=shuffle,
    )


def check_batch(cfg: Config, mesh) -> None:
    config.check_batch_sizes(
        cfg.data,
        processes=jax.process_count(),
        divisor=meshlib.batch_divisor(mesh, cfg.mesh.rules) * cfg.train.grad_accum,
        devices=f"(mesh {meshlib.describe(mesh)})",
    )


# ---------------------------------------------------------------- evaluation


def evaluate(program: steps.Program, state: steps.TrainState, batches: Iterator[dict], cfg: Config) -> dict:
    """Mean eval values over the next ``run.eval_steps`` batches (``Evaluation`` makes them the same ones
    each time)."""
    outs = [
        program.eval_step(state, to_global(program.eval_batch_sharding, next(batches)))
        for _ in range(cfg.run.eval_steps)
    ]
    return eval_means(jax.device_get(outs))  # one fetch, after the steps ran back to back


def eval_means(outs: list[dict]) -> dict:
    """``eval/`` means of fetched eval-step outputs, summed in float64 (one value per trial in a program
    of trials: an array)."""
    sums: dict[str, np.ndarray] = {}
    for out in outs:
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + np.asarray(v, np.float64)
    means = {f"eval/{k}": v / len(outs) for k, v in sums.items()}
    return {k: float(v) if np.ndim(v) == 0 else v for k, v in means.items()}


class Evaluation:
    """Every evaluation scores the same held-out batches: the first ``run.eval_steps`` of the eval
    pipeline shuffled with ``SEED``, which restarts from its beginning each time. Shuffled, because the
    eval files follow one another (one physics sample after another, say), so the first batches of their
    order would all be of the first file. So the eval values of a resumed run are those of an
    uninterrupted one, two evaluations of the same parameters agree, and runs and trials with different
    ``run.seed`` score the same examples."""

    SEED = 0x5EED  # not run.seed: eval values stay comparable between runs that differ only in their seed

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self._batches = iter(make_inputs(cfg, "eval", shuffle=True, seed=self.SEED))
        self._start = self._batches.get_state()

    def restart(self) -> Iterator[dict]:
        """The eval batches from their beginning (one iterator, rewound: its read threads stay)."""
        self._batches.set_state(self._start)
        return self._batches

    def __call__(self, program: steps.Program, state: steps.TrainState) -> dict:
        return evaluate(program, state, self.restart(), self.cfg)


def summary(result: Result) -> str:
    """The end of a run in a few lines: where it stopped, its last values, what to run next."""
    how = "stopped early" if result.preempted else "finished"
    values = {**result.last_metrics, **result.last_eval}
    shown = ", ".join(f"{k} {v:.4g}" for k, v in values.items() if k == "loss" or k.startswith("eval/"))
    lines = [
        f"run {how} at step {result.step}" + (f": {shown}" if shown else ""),
        f"  run directory: {result.run_dir}",
        f"  evaluate: smilejax eval {result.run_dir}",
        f"  export:   smilejax export {result.run_dir} --out {result.run_dir / 'triton'}",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- the run


def _restore(
    cfg: Config, run_dir: Path, program: steps.Program, ckpt: checkpoint.Checkpointer, iterator, examples: int
) -> steps.TrainState | None:
    """The newest readable checkpoint's state (and input position), None when there is none; a resume
    that the config rules out fails before restoring."""
    try:
        if ckpt.steps():
            resume.check_data(run_dir, cfg, examples)
        return ckpt.restore(program.abstract_state, iterator)
    except checkpoint.StateMismatch as mismatch:
        ckpt.close()
        raise resume.structure_error(run_dir, cfg, mismatch) from None
    except BaseException:
        ckpt.close()
        raise


def _callbacks(
    cfg: Config,
    run_dir: Path,
    info: dict,
    ckpt: checkpoint.Checkpointer,
    evaluation: Evaluation | None,
    start: int,
    resumed: bool,
    extra: Sequence[Callback],
) -> tuple[callbacks.LogWindow, callbacks.Evaluate, list[Callback]]:
    """The run's callbacks in the order the loop calls them; the log window's and evaluation's, which
    hold the last values, apart as well."""
    lead = jax.process_index() == 0
    window = callbacks.LogWindow(cfg.run.log_every, xla.peak_flops(jax.devices()[0]))
    evaluate = callbacks.Evaluate(evaluation, cfg.run.eval_every if evaluation is not None else 0)
    run = cfg.run
    chain: list[Callback] = [
        callbacks.NanStop(),  # first: a NaN record reaches no other callback
        window,
        evaluate,
        *early_stop.from_config(cfg, run_dir),  # before the checkpoint: the last step saves the best state
        callbacks.Checkpoint(run.checkpoint_every, opened={0: ckpt}),
        *(
            [callbacks.Profile(run.profile_at, run.profile_steps, run_dir, lead=lead)]
            if run.profile_at >= 0
            else []
        ),
        *extra,
        callbacks.Progress(run.steps, start, lead and cfg.logging.progress),
        callbacks.Preemption(run.preemption_check_every, run.steps, lead=lead),
    ]
    if lead:  # records are written by process 0 only
        chain.append(
            callbacks.MetricsFile([metrics.MetricsLog(run_dir / "metrics.jsonl", resume_step=start)])
        )
        chain.append(callbacks.Dashboards(metrics.Loggers(cfg, run_dir, info, resume=resumed)))
    return window, evaluate, chain


def train(cfg: Config, *, callbacks: Sequence[Callback] = ()) -> Result:
    """Trains ``cfg``. ``callbacks`` run after the built-in ones at each point (``callbacks.base``); their
    ``metrics`` sees every record written to ``metrics.jsonl`` (training and ``eval/`` values), on
    every process."""
    # ---- runtime and mesh
    cluster = runtime.initialize()
    lead = jax.process_index() == 0
    run_dir = Path(cfg.run.dir) if cfg.run.dir else default_run_dir(cfg)
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, dir=str(run_dir)))
    mesh = meshlib.build_mesh(cfg.mesh)
    check_batch(cfg, mesh)
    if lead:
        log.info("topology: %s", topology(cluster, mesh))

    # ---- input (fails here, before any compilation and before the run directory, on a missing or
    # malformed file)
    train_source = registry.dataset(cfg.data.format).source(cfg.data, "train")
    iterator = iter(make_inputs(cfg, "train", source=train_source))
    evaluation = Evaluation(cfg) if cfg.run.eval_every > 0 else None

    # ---- model, run directory and train state
    program = steps.build(registry.model(cfg.model.name), cfg, mesh)
    run_dir.mkdir(parents=True, exist_ok=True)  # after the build: a model it refuses leaves no directory
    ckpt = checkpoint.Checkpointer(run_dir / "checkpoints", keep=cfg.run.keep_checkpoints)
    state = _restore(cfg, run_dir, program, ckpt, iterator, len(train_source))
    resumed = state is not None
    state = state if resumed else program.init()
    start = int(jax.device_get(state.step))
    info = {**run_info(cfg, program, cluster), "train_examples": len(train_source)}
    if lead:
        config.save(cfg, run_dir / "config.yaml")
        (run_dir / "run.json").write_text(json.dumps(info, indent=2) + "\n")
        log.info(
            "mesh %s, %s parameters, run dir %s", meshlib.describe(mesh), f"{program.param_count:,}", run_dir
        )
        if resumed:
            log.info("resumed from step %d", start)

    # ---- the loop
    window, evaluate, chain = _callbacks(cfg, run_dir, info, ckpt, evaluation, start, resumed, callbacks)
    count_flops = xla.peak_flops(jax.devices()[0]) is not None  # no peak: no MFU, so no FLOPs to count
    loop = Loop(
        cfg, program, Batches(iterator, program.batch_sharding), state, chain, count_flops=count_flops
    )
    loop.run(cfg.run.steps)
    result = Result(
        run_dir=run_dir,
        step=loop.step,
        last_metrics={k: float(v) for k, v in window.last.items()},
        exit_code=loop.exit_code,
        last_eval=dict(evaluate.last),
    )
    if lead and loop.finished:  # not after a callback ended it (a pruned trial)
        log.info("%s", summary(result))
    return result
