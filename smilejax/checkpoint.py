"""Orbax checkpoints of the train state and the Grain iterator, with fallback past a broken one.

Orbax writes each step into a temporary folder and renames it when complete, so a crash mid-save
leaves the previous step as the latest good checkpoint. If the latest one is unreadable anyway (a
truncated file on a flaky filesystem), ``restore`` says so and takes the one before.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

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

    def save(
        self, state: TrainState, iterator: grain.DatasetIterator | None, *, wait: bool = False
    ) -> None:
        """Saves ``state`` and the data position of ``iterator``; ``None`` saves the state alone (an
        imported model without its data at hand: evaluation and export restore it, training cannot)."""
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

        ``iterator``, when given, is restored in place to where that checkpoint's data stream stood.
        """
        self.manager.wait_until_finished()
        candidates = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
        failures = []
        for candidate in candidates:
            items = {"state": ocp.args.StandardRestore(_abstract_with_data(abstract))}
            if iterator is not None:
                items["data"] = grain.checkpoint.CheckpointRestore(iterator)
            try:
                restored = self.manager.restore(candidate, args=ocp.args.Composite(**items))
            except Exception as err:  # any unreadable checkpoint: try the previous one
                reason = f"{type(err).__name__}: {err}".splitlines()[0]
                log.warning(
                    "checkpoint step %s in %s is unreadable (%s); trying an older one",
                    candidate,
                    self.directory,
                    reason,
                )
                failures.append(candidate)
                continue
            if failures:
                log.warning("resumed from step %d; skipped unreadable step(s) %s", candidate, failures)
            return _data_to_keys(abstract, restored.state)
        if failures:
            raise RuntimeError(
                f"no readable checkpoint in {self.directory}: steps {failures} all failed to restore; "
                "move the folder away to start afresh"
            )
        return None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
