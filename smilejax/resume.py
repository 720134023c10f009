"""Whether a run directory can resume with the config at hand: one comparison with the run's config.yaml.

A resumed run continues its batch sequence only with the data settings, seed and training-set size it
had, and its checkpoint restores only into a model of the same shapes. A change to either is the user's
choice, not damage: it fails as a ``ConfigError`` naming the fields (``old -> new``), before anything
is restored, and leaves the run directory as it was.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from smilejax import checkpoint, config
from smilejax.config import Config, ConfigError

log = logging.getLogger(__name__)

# The sections whose values shape the train state: a changed one explains a checkpoint that will not fit.
STATE_SECTIONS = ("model", "optimizer", "train")


def _flat(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{name}."))
        else:
            out[name] = value
    return out


def changes(
    before: Config, now: Config, sections: tuple[str, ...], free: frozenset[str] = frozenset()
) -> list[str]:
    """``"section.field: old -> new"`` for each field of ``sections`` that differs, except ``free`` ones
    (dotted names)."""
    old = _flat({s: config.to_dict(before)[s] for s in sections})
    new = _flat({s: config.to_dict(now)[s] for s in sections})
    names = [*new, *(k for k in old if k not in new)]
    differ = [k for k in names if k not in free and old.get(k) != new.get(k)]
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differ]


def saved_config(run_dir: Path) -> Config | None:
    """The config the run was started with (its config.yaml), None if absent or unreadable."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return None
    try:
        return config.load(saved)
    except (ConfigError, ValueError, KeyError) as err:  # written by an older smilejax
        log.warning("cannot compare with the earlier config %s (%s); resuming anyway", saved, err)
        return None


def check_data(run_dir: Path, cfg: Config, train_examples: int) -> None:
    """Refuses settings that would continue another batch sequence from the restored input position: a
    new batch size, element budget, file list or seed, or a training set of another size. Checkpoints
    without a data position (an import whose data was out of reach) have none to continue: any settings do."""
    checkpoints = run_dir / "checkpoints"
    steps = [int(p.name) for p in checkpoints.glob("[0-9]*") if p.name.isdigit()]
    if not any(checkpoint.holds_data(checkpoints, step) for step in steps):
        return
    info = run_dir / "run.json"
    before_examples = json.loads(info.read_text()).get("train_examples") if info.is_file() else None
    if before_examples is not None and before_examples != train_examples:
        raise ConfigError(
            f"{run_dir} was trained on {before_examples:,} training examples and its data now holds "
            f"{train_examples:,}, so its restored input position would continue another batch sequence; "
            "restore the files it trained on or start a new run.dir"
        )
    before = saved_config(run_dir)
    if before is None:
        return
    free = frozenset(f"data.{k}" for k in cfg.data.resume_free)
    changed = changes(before, cfg, ("data",), free)
    if before.run.seed != cfg.run.seed:
        changed.append(f"run.seed: {before.run.seed} -> {cfg.run.seed}")
    if changed:
        raise ConfigError(
            f"{run_dir} was trained with other data settings, so its restored input position would "
            f"continue another batch sequence ({'; '.join(changed)}); restore them or start a new run.dir"
        )


def structure_error(run_dir: Path, cfg: Config, mismatch: checkpoint.StateMismatch) -> ConfigError:
    """The error for a checkpoint that does not fit the model: the config fields that changed since the
    run began (the likely cause) and the arrays that differ."""
    before = saved_config(run_dir)
    changed = changes(before, cfg, STATE_SECTIONS) if before is not None else []
    cause = (
        f"the config differs from the run's config.yaml ({'; '.join(changed)}), so "
        if changed
        else "the model differs from the one it was trained with, so "
    )
    return ConfigError(
        f"{run_dir} cannot resume with this config: {cause}checkpoint step {mismatch.step} does not fit "
        f"the model: {mismatch.describe()}; use another run.dir, or set the run's values again"
    )
