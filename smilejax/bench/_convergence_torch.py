"""The PyTorch reference line of ``smilejax bench convergence --torch``: the family's peer trained on the
batches the study's first variant sees (GN2: ``padded``), from its initial weights, with its optimizer
settings and learning rate at every step, evaluated on its held-out batches at the same steps.

Per seed, a child process (JAX on CPUs: ``python -m smilejax.bench._convergence_torch DIR``) writes into
DIR the run's training batches (``run.steps`` of them, in its order, from the same pipeline and seed),
its held-out batches, its initial parameters under the peer's names and ``run.json``
(``models.spec.TorchTraining``); then the reference interpreter runs the family's script once per mode
(``torch-compile``, ``torch-eager``). All of it runs before this process touches an accelerator, so
that PyTorch has the device to itself (JAX preallocates most of a GPU's memory when its backend starts).
The batch files are deleted afterwards; ``points.json`` and the logs stay.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from smilejax.inputs import packing

log = logging.getLogger(__name__)


def run(
    spec,
    chosen_modes: list[str],
    torch_python: str | None,
    seeds: int,
    eval_every: int,
    make_config: Callable[[int, Path], object],
    out: Path,
) -> tuple[list[dict], dict]:
    """The points of the variants ``torch-MODE`` for every seed, and provenance (torch, device).
    ``make_config(seed, run_dir)`` is the first variant's ``Config`` of a seed."""
    from smilejax import config
    from smilejax.bench._train_torch import run_echoing

    hook = spec.bench.convergence.torch
    if hook is None or spec.bench.torch_config is None:
        raise SystemExit(f"bench convergence --torch: model family {spec.name!r} has no PyTorch reference")
    python = hook.python(torch_python)  # a SystemExit naming the environment when it is missing
    points: list[dict] = []
    about: dict = {"torch_python": str(python)}
    for seed in range(seeds):
        work = out / "runs" / f"torch-seed{seed}"
        work.mkdir(parents=True, exist_ok=True)
        cfg = make_config(seed, work)
        if cfg.optimizer.name != "adamw":
            raise SystemExit(
                f"bench convergence --torch: the reference trains with AdamW, not {cfg.optimizer.name}"
            )
        config.save(cfg, work / "config.yaml")
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}  # the device stays free for PyTorch
        log.info("bench convergence: writing seed %d's batches for PyTorch into %s", seed, work)
        subprocess.run([sys.executable, "-m", __name__, str(work), str(eval_every)], check=True, env=env)
        try:
            for mode in chosen_modes:
                log.info("bench convergence: torch-%s, seed %d", mode, seed)
                command = [str(python), str(hook.script), "--work", str(work), "--mode", mode]
                code, tail = run_echoing(command)
                if code:
                    raise SystemExit(
                        f"bench convergence: the PyTorch reference failed (exit {code}): {tail[-1:]}"
                    )
                kept = (work / "points.json").rename(work / f"points-{mode}.json")
                result = json.loads(kept.read_text())
                about.update(torch=result["torch"], torch_device=result["device"])
                for p in result["points"]:
                    with np.load(work / f"eval-{p['step']}.npz") as outputs:
                        quality = spec.bench.convergence.quality({k: outputs[k] for k in outputs.files})
                    points.append({"variant": f"torch-{mode}", "seed": seed, **p, **quality})
        finally:
            for f in [*work.glob("*.npy"), *work.glob("eval-*.npz")]:
                f.unlink()
    return points, about


# ---------------------------------------------------------------- the child: batches, weights, settings


def _write(work: Path, split: str, batches: Iterator[dict], count: int, keys: tuple[str, ...]) -> dict:
    """``count`` batches as ``SPLIT_KEY.npy`` [count, ...] for each of ``keys`` the batches have; returns
    the first batch as written (those keys)."""
    files: dict[str, np.ndarray] = {}
    for i in range(count):
        batch = next(batches)
        if packing.is_packed(batch):
            raise SystemExit("bench convergence --torch: the first variant's batches are packed; it must pad")
        for key in [k for k in keys if k in batch] if i == 0 else files:
            x = np.asarray(batch[key])
            if i == 0:
                path = work / f"{split}_{key}.npy"
                files[key] = np.lib.format.open_memmap(path, "w+", x.dtype, (count, *x.shape))
            elif x.shape != files[key].shape[1:]:
                raise SystemExit(
                    f"bench convergence --torch: {split} batch {i} has {key} {x.shape}, batch 0 "
                    f"{files[key].shape[1:]}: the first variant must pad every batch to one shape"
                )
            files[key][i] = x
    for f in files.values():
        f.flush()
    return {k: f[0] for k, f in files.items()}


def prepare(work: Path, eval_every: int) -> None:
    """Writes the torch run's inputs for the config in ``work/config.yaml`` (``TorchTraining``)."""
    from smilejax import config, optim, registry, steps, trainer

    cfg = config.load(work / "config.yaml")
    spec = registry.model(cfg.model.name)
    hook = spec.bench.convergence.torch
    first = _write(work, "train", iter(trainer.make_inputs(cfg, "train")), cfg.run.steps, hook.keys)
    _write(work, "eval", trainer.Evaluation(cfg).restart(), cfg.run.eval_steps, hook.keys)
    model = steps.build_model(spec, cfg, cfg.run.seed)  # the initial weights of the JAX run with this seed
    np.savez(work / "weights.npz", **hook.weights(model))
    model_cfg = steps.model_config(cfg)
    schedule = optim.schedule(cfg.optimizer, cfg.run.steps)
    o = cfg.optimizer
    settings = {
        "model": {**spec.bench.torch_config(model_cfg), **hook.options(model_cfg, first)},
        "lr": [float(schedule(i)) for i in range(cfg.run.steps)],
        "optimizer": {
            "b1": o.b1,
            "b2": o.b2,
            "eps": o.eps,
            "weight_decay": o.weight_decay,
            "clip_norm": o.clip_norm,
        },
        "steps": cfg.run.steps,
        "eval_every": eval_every,
        "batch_size": cfg.data.batch_size,
        "precision": cfg.train.precision,
    }
    (work / "run.json").write_text(json.dumps(settings, indent=1))


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    prepare(Path(sys.argv[1]), int(sys.argv[2]))
