"""Orbax checkpoints of the train state and the Grain iterator, with fallback past a broken one.

Orbax writes each step into a temporary folder and renames it when complete, so a crash mid-save
leaves the previous step as the latest good checkpoint. If the latest one is unreadable anyway (a
truncated or missing file on a flaky filesystem), ``restore`` says so and takes the one before. A
checkpoint whose arrays have other shapes or dtypes than the model's is not damage (the model changed,
and older steps would not fit either): ``restore`` compares its metadata first and raises
``StateMismatch``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from smilejax.config import ConfigError
from smilejax.steps import TrainState

log = logging.getLogger(__name__)


def _is_key(x) -> bool:
    return isinstance(x, jax.Array | jax.ShapeDtypeStruct) and jax.dtypes.issubdtype(
        x.dtype, jax.dtypes.prng_key
    )


def _keys_to_data(tree):
    """Typed PRNG keys cannot be serialised; store their raw uint32 data."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _abstract_with_data(tree):
    def f(x):
        if _is_key(x):
            return jax.ShapeDtypeStruct(
                jax.eval_shape(jax.random.key_data, x).shape, np.uint32, sharding=x.sharding
            )
        return x

    return jax.tree.map(f, tree)


def _data_to_keys(template, tree):
    return jax.tree.map(lambda t, x: jax.random.wrap_key_data(x) if _is_key(t) else x, template, tree)


def _name(path: tuple) -> str:
    """A tree path as one name, the same for the state and its saved metadata: ``params/up/kernel``."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def _leaves(tree) -> dict[str, tuple[tuple[int, ...], str]]:
    """Each array leaf's name -> (shape, dtype name)."""
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)[0]
    return {_name(path): (tuple(x.shape), np.dtype(x.dtype).name) for path, x in flat if x is not None}


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(map(str, shape)) + "]"


class StateMismatch(ConfigError):
    """A checkpoint whose arrays do not fit the model's state: ``differences`` name them, params first."""

    def __init__(self, directory: Path, step: int, differences: list[str]):
        self.directory, self.step, self.differences = directory, step, differences
        super().__init__(f"checkpoint step {step} in {directory} does not fit the model: {self.describe()}")

    def describe(self, most: int = 4) -> str:
        more = len(self.differences) - most
        return "; ".join(self.differences[:most]) + (f" (and {more} more)" if more > 0 else "")


def differences(saved: dict, wanted: dict) -> list[str]:
    """What differs between the saved arrays and the model's (``_leaves`` of each), parameters first."""
    out = []
    for name in sorted(saved.keys() | wanted.keys(), key=lambda n: (not n.startswith("params/"), n)):
        have, want = saved.get(name), wanted.get(name)
        if have == want:
            continue
        if want is None:
            out.append(f"the checkpoint holds {name} {_shape(have[0])} that the model lacks")
        elif have is None:
            out.append(f"the model has {name} {_shape(want[0])} that the checkpoint lacks")
        elif have[0] != want[0]:
            out.append(
                f"the checkpoint holds {name} {_shape(have[0])} where the model wants {_shape(want[0])}"
            )
        else:
            out.append(f"the checkpoint holds {name} as {have[1]} where the model wants {want[1]}")
    return out


def holds_data(directory: Path, step: int) -> bool:
    """Whether checkpoint ``step`` in ``directory`` holds a data position (an import without its data saves
    the state alone)."""
    return (Path(directory) / str(step) / "data").is_dir()


class Checkpointer:
    def __init__(self, directory: Path, *, keep: int, async_save: bool = True):
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                create=True,
                enable_async_checkpointing=async_save,
            ),
        )

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, state: TrainState, iterator: grain.DatasetIterator | None, *, wait: bool = False) -> None:
        """Saves ``state`` and the data position of ``iterator``; ``None`` saves the state alone (an
        imported model without its data at hand: training on it starts the data from the beginning)."""
        step = int(jax.device_get(state.step))
        if step in self.manager.all_steps():
            return
        items = {"state": ocp.args.StandardSave(_keys_to_data(state))}
        if iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(iterator)
        self.manager.save(step, args=ocp.args.Composite(**items))
        if wait:
            self.manager.wait_until_finished()

    def restore(
        self, abstract: TrainState, iterator: grain.DatasetIterator | None = None, *, step: int | None = None
    ) -> TrainState | None:
        """The newest readable checkpoint's state (or ``step``'s), None if there is none.

        ``iterator``, when given, is restored in place to where that checkpoint's data stream stood; a
        checkpoint without one (an import whose data was out of reach) leaves it at its beginning.
        Raises ``StateMismatch`` for a checkpoint of another model, ``ValueError`` when every checkpoint
        is damaged.
        """
        self.manager.wait_until_finished()
        candidates = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
        wanted = _leaves(_abstract_with_data(abstract))
        failures = []
        for candidate in candidates:
            items = {"state": ocp.args.StandardRestore(_abstract_with_data(abstract))}
            with_data = iterator is not None and holds_data(self.directory, candidate)
            if with_data:
                items["data"] = grain.checkpoint.CheckpointRestore(iterator)
            try:
                saved = self.saved_arrays(candidate)
            except Exception as err:  # damage (a missing or truncated metadata file): try the previous one
                failures.append(self._damaged(candidate, err))
                continue
            if saved != wanted:  # not damage: the model changed since this step was saved
                raise StateMismatch(self.directory, candidate, differences(saved, wanted))
            try:
                restored = self.manager.restore(candidate, args=ocp.args.Composite(**items))
            except Exception as err:  # damage (a truncated or missing array file): try the previous one
                failures.append(self._damaged(candidate, err))
                continue
            if failures:
                log.warning("resumed from step %d; skipped unreadable step(s) %s", candidate, failures)
            if iterator is not None and not with_data:  # said only of the step actually restored
                self._without_data(candidate)
            return _data_to_keys(abstract, restored.state)
        if failures:  # a ValueError, as for a damaged data file: the CLI reports it in one line
            raise ValueError(
                f"no readable checkpoint in {self.directory}: steps {failures} all failed to restore "
                "(damaged files, see the warnings above); move the folder away to start afresh"
            )
        return None

    def _without_data(self, step: int) -> None:
        if step == 0:  # an imported model: step 0 is where a fresh pipeline stands, so training stays exact
            log.info("checkpoint step 0 holds no data position: the input pipeline starts from its beginning")
        else:
            log.warning(
                "checkpoint step %d holds no data position: the input pipeline starts from its beginning, "
                "so the batches after it differ from those of an uninterrupted run",
                step,
            )

    def _damaged(self, step: int, err: Exception) -> int:
        reason = f"{type(err).__name__}: {err}".splitlines()[0]
        log.warning(
            "checkpoint step %s in %s is unreadable (%s); trying an older one", step, self.directory, reason
        )
        return step

    def saved_arrays(self, step: int) -> dict[str, tuple[tuple[int, ...], str]]:
        """The names, shapes and dtypes of step ``step``'s saved state, from its metadata alone."""
        metadata = ocp.StandardCheckpointHandler().metadata(epath.Path(self.directory / str(step) / "state"))
        return _leaves(metadata.tree)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
