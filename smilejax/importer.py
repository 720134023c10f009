"""Run directories from models trained elsewhere: ``smilejax import SOURCE CHECKPOINT``.

A model family declares what it can import in its spec (``ModelSpec.importers``: {source name: importer});
the importer translates the foreign config and weights (``models.spec.Imported``), and this module writes
what ``smilejax train`` would have written: ``config.yaml`` (the model's packaged config under the imported
sections and the user's overrides), ``run.json`` (with the ``imported`` provenance) and an orbax checkpoint
of step 0 holding the imported weights and a fresh optimizer state. ``trained.load`` (eval, export, serve)
restores it like any run, and ``smilejax train RUN_DIR/config.yaml`` trains on from the imported weights
(the learning-rate schedule starts over). When the run's training data can be read, the checkpoint holds its
data position too; otherwise only the weights are saved, and training (given ``data.path=FILES``) starts its
input pipeline from the beginning, which is where step 0 stands anyway.
"""

from __future__ import annotations

import dataclasses
import datetime
import inspect
import json
import logging
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import grain
import jax
from flax import nnx

from smilejax import checkpoint, config, registry, steps, trainer
from smilejax import mesh as meshlib
from smilejax.config import Config, MeshConfig
from smilejax.models.spec import Importer, ModelSpec

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ImportResult:
    run_dir: Path
    model: str
    param_count: int
    trainable: bool  # the checkpoint holds a data position: `smilejax train` needs no data.path


def importers() -> dict[str, tuple[ModelSpec, Importer]]:
    """Every source some model can import from -> (that model's spec, its importer)."""
    found: dict[str, tuple[ModelSpec, Importer]] = {}
    for name in registry.models():
        try:
            spec = registry.model(name)
        except KeyError as err:  # a family that does not load: the others' sources still count
            log.warning("%s", err)
            continue
        for source, importer in spec.importers.items():
            found.setdefault(source, (spec, importer))
    return found


def describe(importer: Importer) -> str:
    """The one-line description an importer carries, its docstring's first paragraph (``smilejax import
    --help`` lists it with the source)."""
    return " ".join((inspect.getdoc(importer) or "").split("\n\n")[0].split())


def find(source: str) -> tuple[ModelSpec, Importer]:
    known = importers()
    if source not in known:
        raise KeyError(f"no model imports {source!r}; sources: {', '.join(sorted(known)) or 'none'}")
    return known[source]


def make_run(
    source: str,
    checkpoint_path: str | Path,
    *,
    config_path: str | Path | None = None,
    out: str | Path | None = None,
    overrides: list[str] | tuple = (),
) -> ImportResult:
    """Writes the run directory of ``checkpoint_path`` (a ``source`` model, with its config file
    ``config_path`` when given) at ``out`` (default ``runs/<model>-<source>-<checkpoint name>``)."""
    spec, importer = find(source)
    checkpoint_path = Path(checkpoint_path)
    if not checkpoint_path.is_file():
        raise FileNotFoundError(f"{checkpoint_path}: no such checkpoint file")
    if config_path is not None and not Path(config_path).is_file():
        raise FileNotFoundError(f"{config_path}: no such config file")
    run_dir = Path(out) if out else Path("runs") / f"{spec.name}-{source}-{checkpoint_path.stem}"
    if (run_dir / "checkpoints").exists() or (run_dir / "config.yaml").exists():
        raise ValueError(f"{run_dir} already holds a run; choose another --out")

    created = not run_dir.exists()
    try:
        return _write_run(spec, importer, source, checkpoint_path, config_path, run_dir, overrides)
    except BaseException:
        if created:  # a failed import leaves no half-written run behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _write_run(
    spec: ModelSpec,
    importer: Importer,
    source: str,
    checkpoint_path: Path,
    config_path: str | Path | None,
    run_dir: Path,
    overrides: list[str] | tuple,
) -> ImportResult:
    """``make_run``'s work once the inputs are checked: the importer, then config, checkpoint, run.json."""
    imported = importer(checkpoint_path, Path(config_path) if config_path else None, run_dir)
    base = config.read_yaml(spec.name) if spec.name in config.packaged() else {}
    tree = config.merge(base, {**imported.config, "run": {**base.get("run", {}), "dir": str(run_dir)}})
    cfg = config.load(tree, list(overrides))

    state, param_count = _imported_state(spec, cfg, imported.params)
    iterator, train_examples = _data_position(cfg)
    ckpt = checkpoint.Checkpointer(run_dir / "checkpoints", keep=cfg.run.keep_checkpoints, async_save=False)
    try:
        ckpt.save(state, iterator, wait=True)
    finally:
        ckpt.close()
    config.save(cfg, run_dir / "config.yaml")
    info = {
        "model": cfg.model.name,
        "param_count": param_count,
        "imported": {"from": source, **imported.source},
        "versions": trainer.versions(),
        "command": sys.argv,
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    if train_examples is not None:
        info["train_examples"] = train_examples
    (run_dir / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    return ImportResult(run_dir, cfg.model.name, param_count, trainable=iterator is not None)


def _imported_state(
    spec: ModelSpec, cfg: Config, params_of: Callable[[nnx.Module], nnx.State]
) -> tuple[steps.TrainState, int]:
    """Step 0 of ``cfg``'s program with the imported parameters (a fresh optimizer state: Adam's and
    Lion's moments start at zero whatever the parameters), on this process's devices."""
    local = dataclasses.replace(cfg, mesh=MeshConfig(data=-1, fsdp=1, tensor=1, rules=cfg.mesh.rules))
    program = steps.build(spec, local, meshlib.build_mesh(local.mesh, jax.local_devices()))
    state = program.init()
    model = nnx.merge(program.graphdef, state.params, state.rest)
    params = nnx.to_pure_dict(params_of(model))
    params = jax.device_put(params, program.state_sharding.params)
    return state.replace(params=params), int(program.param_count)


def _data_position(cfg: Config) -> tuple[grain.DatasetIterator, int] | tuple[None, None]:
    """(a fresh iterator of the training data, its example count), or (None, None) when the data cannot
    be read here: the run then holds the weights alone."""
    try:
        source = registry.dataset(cfg.data.format).source(cfg.data, "train")
    except (FileNotFoundError, ValueError, OSError) as err:
        log.warning(
            "the run's training data cannot be read (%s): the checkpoint holds the weights only; eval, "
            "export, serve and train take data.path=FILES",
            str(err).splitlines()[0],
        )
        return None, None
    return iter(trainer.make_inputs(cfg, "train", source=source)), len(source)
