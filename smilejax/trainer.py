"""``smilejax train``: one linear recipe from config to checkpoints.

runtime → mesh → input → run dir → model → restore → loggers → loop (hooks every N steps) → summary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import platform
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from smilejax import (
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
from smilejax.config import Config
from smilejax.inputs import pipeline as pipelines
from smilejax.inputs.spec import BatchSource
from smilejax.xla import profile as profiling

log = logging.getLogger(__name__)

EXIT_PREEMPTED = preemption.EXIT_PREEMPTED


@dataclasses.dataclass
class Hook:
    """Runs ``fn(step)`` after every ``every``-th step (``every <= 0`` disables it)."""

    every: int
    fn: Callable[[int], None]

    def __call__(self, step: int) -> None:
        if self.every > 0 and step % self.every == 0:
            self.fn(step)


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

_accumulate = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b))


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


def to_global(sharding: jax.sharding.Sharding, local: dict) -> dict:
    """This process's rows → one global jax.Array per key (each process feeds an equal shard)."""

    def put(x: np.ndarray) -> jax.Array:
        shape = (x.shape[0] * jax.process_count(), *x.shape[1:])
        return jax.make_array_from_process_local_data(sharding, x, shape)

    return {k: put(v) for k, v in local.items()}


def check_batch(cfg: Config, mesh) -> None:
    config.check_batch_sizes(
        cfg.data,
        processes=jax.process_count(),
        divisor=meshlib.batch_divisor(mesh, cfg.mesh.rules) * cfg.train.grad_accum,
        devices=f"(mesh {meshlib.describe(mesh)})",
    )


# ---------------------------------------------------------------- evaluation


def _shape_label(shapes: tuple) -> str:
    """A compiled program's batch shapes as a profile names them: the largest-rank array, "4000x24x21"."""
    return "x".join(map(str, max((shape for _, shape in shapes), key=len)))


def evaluate(program: steps.Program, state: steps.TrainState, batches: Iterator[dict], cfg: Config) -> dict:
    """Mean eval values over the next ``run.eval_steps`` batches (``Evaluation`` makes them the same ones
    each time)."""
    sums: dict[str, float] = {}
    for _ in range(cfg.run.eval_steps):
        out = program.eval_step(state, to_global(program.batch_sharding, next(batches)))
        for k, v in jax.device_get(out).items():
            sums[k] = sums.get(k, 0.0) + float(v)
    return {f"eval/{k}": v / cfg.run.eval_steps for k, v in sums.items()}


class Evaluation:
    """Every evaluation scores the same held-out batches: the first ``run.eval_steps`` of the eval
    pipeline shuffled with ``SEED``, which restarts from its beginning each time. Shuffled, because the
    eval files follow one another (ttbar, then Z'), so the first batches of their order would all be of
    the first file. So the eval values of a resumed run are those of an uninterrupted one, two evaluations
    of the same parameters agree, and runs and trials with different ``run.seed`` score the same examples."""

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


def train(
    cfg: Config,
    *,
    extra_hooks: tuple[Hook, ...] = (),
    on_metrics: Callable[[int, dict], None] | None = None,
) -> Result:
    """Trains ``cfg``. ``extra_hooks`` run after the built-in ones each step; ``on_metrics(step, values)``
    sees every record written to ``metrics.jsonl`` (training and ``eval/`` values), on every process."""
    # ---- runtime
    cluster = runtime.initialize()
    lead = jax.process_index() == 0
    run_dir = Path(cfg.run.dir) if cfg.run.dir else default_run_dir(cfg)
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, dir=str(run_dir)))

    # ---- mesh
    mesh = meshlib.build_mesh(cfg.mesh)
    check_batch(cfg, mesh)
    if lead:
        log.info("topology: %s", topology(cluster, mesh))

    # ---- input (fails here, before any compilation and before the run directory, on a missing or
    # malformed file)
    train_source = registry.dataset(cfg.data.format).source(cfg.data, "train")
    batches = iter(make_inputs(cfg, "train", source=train_source))
    evaluation = Evaluation(cfg) if cfg.run.eval_every > 0 else None

    # ---- model, run directory and train state (a resume that the config rules out fails before restoring)
    program = steps.build(registry.model(cfg.model.name), cfg, mesh)
    run_dir.mkdir(parents=True, exist_ok=True)  # after the build: a model it refuses leaves no directory
    ckpt = checkpoint.Checkpointer(run_dir / "checkpoints", keep=cfg.run.keep_checkpoints)
    try:
        if ckpt.steps():
            resume.check_data(run_dir, cfg, len(train_source))
        state = ckpt.restore(program.abstract_state, batches)
    except checkpoint.StateMismatch as mismatch:
        ckpt.close()
        raise resume.structure_error(run_dir, cfg, mismatch) from None
    except BaseException:
        ckpt.close()
        raise
    resumed = state is not None
    if not resumed:
        state = program.init()
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

    # ---- loggers (process 0 only)
    record = metrics.MetricsLog(run_dir / "metrics.jsonl", resume_step=start) if lead else None
    loggers = metrics.Loggers(cfg, run_dir, info, resume=resumed) if lead else None

    def emit(step: int, values: dict) -> None:
        if on_metrics is not None:
            on_metrics(step, values)
        if lead:
            record.write({"step": step, **values})
            loggers.log(step, values)

    # ---- compile ahead of time, once per batch shape (bucketed inputs have a few), with its FLOPs for MFU
    compiled: dict[tuple, tuple[Callable, float | None]] = {}
    # A run that asks for a trace keeps each step's lowered program, for its traceable compile.
    lowered_steps: dict[tuple, jax.stages.Lowered] = {}
    traceable: dict[tuple, Callable] = {}  # the profiler window's programs (profiling.compile_traceable)
    peak = xla.peak_flops(jax.devices()[0])  # None: no MFU, so no FLOPs to count

    def compiled_for(state: steps.TrainState, batch: dict) -> tuple[tuple, Callable, float | None]:
        """(the batch's shapes, the step compiled for them, its FLOPs)."""
        shapes = tuple((k, v.shape) for k, v in sorted(batch.items()))
        if shapes not in compiled:
            lowered = program.train_step.lower(state, batch)
            if cfg.run.profile_at >= 0:
                lowered_steps[shapes] = lowered
            compiled[shapes] = lowered.compile(), program.step_flops(batch) if peak else None
        return shapes, *compiled[shapes]

    def traceable_for(shapes: tuple) -> Callable:
        """The step for ``shapes`` as the profiler window runs it: on a GPU, compiled without CUDA graphs,
        so that the trace times each kernel (only inside the window: the run's speed is the default's)."""
        if shapes not in traceable:
            traceable[shapes] = profiling.compile_traceable(lowered_steps[shapes], compiled[shapes][0])
        return traceable[shapes]

    first_global = to_global(program.batch_sharding, next(batches))
    compiled_for(state, first_global)

    # ---- hooks
    window = {"steps": 0, "samples": 0, "data_s": 0.0, "t0": time.perf_counter(), "sums": None, "flops": 0.0}
    last: dict = {}
    last_eval: dict = {}

    def log_hook(step: int) -> None:
        sums = jax.device_get(window["sums"])
        elapsed = time.perf_counter() - window["t0"]
        n = window["steps"]
        values = {k: float(v) / n for k, v in sums.items()}
        step_time = elapsed / n
        values.update(
            samples_per_s=window["samples"] / elapsed,
            step_time_s=step_time,
            data_wait_frac=min(window["data_s"] / elapsed, 1.0),
        )
        if window["flops"] and peak:
            values["mfu"] = window["flops"] / elapsed / peak
        if not np.isfinite(values["loss"]):
            raise FloatingPointError(
                f"loss is {values['loss']} at step {step}; stopping (last checkpoint kept)"
            )
        emit(step, values)
        last.clear()
        last.update(values)
        bar.set_postfix(loss=f"{values['loss']:.4g}", samples_s=f"{values['samples_per_s']:.4g}")
        window.update(steps=0, samples=0, data_s=0.0, t0=time.perf_counter(), sums=None, flops=0.0)

    def eval_hook(step: int) -> None:
        last_eval.clear()
        last_eval.update(evaluation(program, state))
        emit(step, last_eval)

    def checkpoint_hook(step: int) -> None:
        ckpt.save(state, batches)

    # the profiler window: its first and last step so far, and the batch shapes (programs) it ran
    tracing = {"on": False, "first": 0, "last": 0, "shapes": set()}

    def begin_profile(first: int) -> None:
        for shapes in compiled:  # the shapes seen so far compile outside the trace
            traceable_for(shapes)
        jax.block_until_ready(state)  # the window holds its own steps only
        jax.profiler.start_trace(str(run_dir / "profile"))
        tracing.update(on=True, first=first, last=first - 1, shapes=set())

    def end_profile() -> None:
        try:
            jax.block_until_ready(state)
        finally:
            jax.profiler.stop_trace()
            tracing["on"] = False
        if lead and tracing["shapes"]:  # bucketed batches: one compiled program per width
            first, last = tracing["first"], tracing["last"]
            programs = {_shape_label(shapes): traceable[shapes] for shapes in tracing["shapes"]}
            title = f"training steps {first}-{last}"
            profiling.write_summary(run_dir / "profile", programs, last - first + 1, title)

    def profile_hook(step: int) -> None:
        if step == cfg.run.profile_at:
            begin_profile(step + 1)
        elif step == cfg.run.profile_at + cfg.run.profile_steps and tracing["on"]:
            end_profile()

    hooks = [
        Hook(cfg.run.log_every, log_hook),
        Hook(cfg.run.eval_every if evaluation is not None else 0, eval_hook),
        Hook(cfg.run.checkpoint_every, checkpoint_hook),
        Hook(1 if cfg.run.profile_at >= 0 else 0, profile_hook),
        *extra_hooks,
    ]

    # ---- loop
    watch = preemption.StopWatch(cfg.run.preemption_check_every, announce=lead)
    bar = tqdm(
        total=cfg.run.steps,
        initial=start,
        disable=not (lead and cfg.logging.progress),
        desc="train",
        unit="step",
        dynamic_ncols=True,
    )
    exit_code = 0
    pending = first_global
    if cfg.run.profile_at == start:  # profile_at=0: from the first step
        begin_profile(start + 1)
    try:
        for step in range(start + 1, cfg.run.steps + 1):
            t_data = time.perf_counter()
            batch = pending if pending is not None else to_global(program.batch_sharding, next(batches))
            pending = None
            window["data_s"] += time.perf_counter() - t_data
            shapes, step_fn, flops = compiled_for(state, batch)
            if tracing["on"]:
                tracing["shapes"].add(shapes)
                tracing["last"] = step
                step_fn = traceable_for(shapes)
            state, out = step_fn(state, batch)
            unknown = flops is None or window["flops"] is None
            window["flops"] = None if unknown else window["flops"] + flops
            window["sums"] = out if window["sums"] is None else _accumulate(window["sums"], out)
            window["steps"] += 1
            window["samples"] += next(iter(batch.values())).shape[0]
            for hook in hooks:
                hook(step)
            bar.update(1)
            if step < cfg.run.steps and watch.should_stop(step):
                exit_code = watch.exit_code
                if lead:
                    log.warning("stop requested (%s): checkpointing step %d", watch.requested, step)
                break
        if window["steps"]:
            log_hook(int(jax.device_get(state.step)))
        ckpt.save(state, batches, wait=True)
    finally:
        if tracing["on"]:  # the run ended (finished, preempted, failed) inside the profiler window
            log.warning("the profiler window ended early, after step %s", tracing["last"])
            with contextlib.suppress(Exception):  # a failed run's own error matters more
                end_profile()
        bar.close()
        watch.restore()
        ckpt.wait()
        ckpt.close()
        if lead:
            record.close()
            loggers.close()
    result = Result(
        run_dir=run_dir,
        step=int(jax.device_get(state.step)),
        last_metrics=last,
        exit_code=exit_code,
        last_eval=last_eval,
    )
    if lead:
        log.info("%s", summary(result))
    return result
