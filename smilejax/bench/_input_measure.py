"""The measuring half of ``smilejax bench input``: one thread/worker setting of the run's own input path."""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import time
from pathlib import Path

import jax
import psutil

from smilejax import config, host, registry, runtime
from smilejax import mesh as meshlib
from smilejax.config import Config
from smilejax.inputs import packing
from smilejax.inputs import pipeline as pipelines
from smilejax.trainer import to_global

log = logging.getLogger(__name__)


def load(args: argparse.Namespace) -> tuple[Config, int | None]:
    """The config with ``data.path`` from ``--files``, the config's own, or else a default set: a
    synthetic set of ``--jets`` examples made once in ``OUT/data`` by the maker the model family declares
    (``spec.bench.maker``), or the data format's own default set (``data.path`` null, as ``smilejax
    train`` reads it). Also returns the made set's size (None when nothing was made here)."""
    cfg = config.load(args.config, args.overrides)
    if args.files or cfg.data.path:
        path = ",".join(args.files) if args.files else cfg.data.path
        return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=path)), None
    maker = registry.model(cfg.model.name).bench.maker
    if maker is None:
        if args.jets is not None:
            raise SystemExit(
                f"--jets: model {cfg.model.name!r} declares no maker of a synthetic set (its spec's "
                f"bench.maker); pass --files, or leave --jets out to read data.format={cfg.data.format}'s "
                "default set"
            )
        log.info("no files: reading data.format=%s's default set", cfg.data.format)
        return cfg, None
    made = DEFAULT_SIZE if args.jets is None else args.jets
    target = Path(args.out) / "data" / f"{maker}-{made}"
    if not target.exists():
        log.info("making a synthetic set of %d examples in %s (smilejax data make %s)", made, target, maker)
        make(maker, target, made)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(target))), made


DEFAULT_SIZE = 200_000  # examples of the set a maker makes when --jets is not given


def make(name: str, target: Path, size: int) -> None:
    """Runs the registered maker ``name`` (``smilejax data make NAME``) with ``--out target``, its size
    option (its one required integer option besides ``--out``) ``size``, and its defaults otherwise."""
    maker = registry.makers()[name]
    parser = argparse.ArgumentParser(prog=f"smilejax data make {name}")
    maker.add_arguments(parser)
    sizes = [
        a.option_strings[0]
        for a in parser._actions  # argparse has no public list of a parser's options
        if a.required and a.option_strings and a.dest != "out" and a.type is int
    ]
    if len(sizes) != 1:
        raise SystemExit(
            f"maker {name!r}: expected one required integer size option, found {sizes or 'none'}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    status = maker.run(parser.parse_args(["--out", str(target), sizes[0], str(size)]))
    if status:
        raise SystemExit(f"smilejax data make {name} --out {target} {sizes[0]} {size}: exit {status}")


def _cpu_seconds(proc: psutil.Process) -> float:
    # This process (all threads) at nanosecond resolution; psutil's clock ticks (10 ms) only for workers,
    # so that a short measurement never reads as zero CPU time.
    total = time.process_time()
    for p in proc.children(recursive=True):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:  # a worker that just ended
            pass
    return total


def _mask(batch: dict):
    """The batch's boolean [examples, set length] array (which set entries are real), if it has one."""
    return next((v for v in batch.values() if v.dtype == bool and v.ndim == 2), None)


def measure(cfg: Config, *, threads: int, workers: int, batches: int) -> dict:
    runtime.initialize()
    data = dataclasses.replace(cfg.data, read_threads=threads, workers=workers)
    spec = registry.dataset(data.format)
    source = spec.source(data, "train")
    build = spec.pipeline or pipelines.from_config
    stream = build(
        source,
        data,
        seed=cfg.run.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    sharding = meshlib.batch_sharding(meshlib.build_mesh(cfg.mesh), cfg.mesh.rules)

    it = iter(stream)
    for _ in range(data.prefetch + 2):  # start workers and threads, fill the prefetch buffer
        jax.block_until_ready(to_global(sharding, next(it)))
    proc = psutil.Process()
    cpu0, t0 = _cpu_seconds(proc), time.perf_counter()
    jets = used = slots = width = 0
    for _ in range(batches):
        local = next(it)
        jax.block_until_ready(to_global(sharding, local))
        jets += packing.examples(local)
        mask = _mask(local)
        if mask is not None:
            used += int(mask.sum())
            slots += mask.size
            width += mask.shape[1]
    elapsed = time.perf_counter() - t0
    cpu = _cpu_seconds(proc) - cpu0
    del it, stream
    gc.collect()
    if hasattr(source, "close"):
        source.close()
    cores = min(threads * max(workers, 1), host.usable_cpus())  # 16 workers x 16 threads: 16 cores
    return {
        "threads": threads,
        "workers": workers,
        "cores": cores,
        "jets_per_s": jets / elapsed,
        "jets_per_s_per_core": jets / elapsed / cores,
        "cpu_util": cpu / elapsed,
        "jets_per_cpu_s": jets / cpu if cpu > 0 else None,
        "ms_per_batch": 1e3 * elapsed / batches,
        "tracks_mean": width / batches if slots else None,
        "padding": 1 - used / slots if slots else None,
        "batches": batches,
        "processes": jax.process_count(),
    }
