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
from smilejax.inputs import pipeline as pipelines
from smilejax.trainer import to_global

log = logging.getLogger(__name__)


def load(args: argparse.Namespace) -> tuple[Config, int | None]:
    """The config with ``data.path`` from ``--files``, or a synthetic set of ``--jets`` made in ``OUT/data``;
    also returns the synthetic set's size (None when files were given)."""
    cfg = config.load(args.config, args.overrides)
    made = None
    if args.files:
        path = ",".join(args.files)
    elif cfg.data.path:
        path = cfg.data.path
    elif cfg.data.format == "ftag_h5":
        from smilejax.inputs import ftag_synthetic

        made = args.jets
        target = Path(args.out) / "data" / f"ftag_synthetic_{made}.h5"
        if not target.exists():
            log.info("making a synthetic set of %d jets in %s", made, target)
            ftag_synthetic.make(target, made, seed=0)
        path = str(target)
    else:
        raise SystemExit(f"data.format={cfg.data.format} has no synthetic maker here: pass --files")
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=path)), made


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
        jets += len(next(iter(local.values())))
        mask = local.get("valid", local.get("mask"))  # GN2's tracks, MLPF's elements
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
