"""The LFI benchmark's saved posterior draws: scoring that survives an interruption.

Each trained posterior's draws are written to ``OUT/draws/`` before the C2ST scores them (``NAME.npy``,
[observations, samples, dim]) with a record (``NAME.json``: the row's fields known before scoring and
the observations), and each observation's score is written as it ends (``NAME.oI.c2st``). The C2ST of
a 10-dimensional task takes minutes an observation on a loaded CPU, longer than the training; a
benchmark stopped while scoring is finished by ``--rescore OUT`` (``rescored``), which scores only what
is missing and trains nothing. A score per file lets several ``--rescore OUT --observations I`` run at
once, one observation each.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np

DIR = "draws"


def row(meta: dict, scores: list[float]) -> dict:
    """A per-seed row: ``meta`` (task, budget, impl, seed, train_s and the rest) with the C2ST mean over
    the observations, their spread and the per-observation values."""
    return {
        **meta,
        "c2st": float(np.mean(scores)),
        "c2st_obs_std": float(np.std(scores)),
        "c2st_per_observation": [float(s) for s in scores],
    }


def save(out: str | Path, meta: dict, draws: np.ndarray, observations: list[int]) -> Path:
    """Writes ``draws`` [K, n, dim] (observation k is ``observations[k]``) and their record; the record's
    path. A run's files are named by implementation, variant, task, budget and seed."""
    folder = Path(out) / DIR
    folder.mkdir(parents=True, exist_ok=True)
    parts = [meta["impl"], meta.get("variant") or "", meta["task"], str(meta["budget"]), str(meta["seed"])]
    name = re.sub(r"[^A-Za-z0-9_.+=-]", "_", "-".join(p for p in parts if p))
    if len(draws) != len(observations):
        raise ValueError(f"{name}: {len(draws)} sets of draws for {len(observations)} observations")
    draws = np.asarray(draws, np.float32)
    np.save(folder / f"{name}.npy", draws)
    record = folder / f"{name}.json"
    _write(record, {"meta": meta, "observations": [int(i) for i in observations], "draws": _digest(draws)})
    return record


def score(task, draws: np.ndarray, observation: int) -> float:
    """The benchmark's C2ST of one observation's draws [n, dim] against its reference samples."""
    from .c2st import c2st

    reference = task.reference_samples(observation)
    n = min(len(reference), len(draws))
    return c2st(reference[:n], draws[:n])


def finish(record: Path, only: str = "all") -> dict:
    """Scores the observations ``record`` lacks among ``only`` (``--observations``: all, N-M or i,j,k;
    each score kept as it ends) and returns the run's row over those observations."""
    from . import tasks
    from .evaluation import parse_observations

    state = json.loads(record.read_text())
    meta, saved = state["meta"], state["observations"]
    task = tasks.get(meta["task"])
    wanted = set(parse_observations(only, task.num_observations))
    chosen = [(k, i) for k, i in enumerate(saved) if i in wanted]
    if not chosen:
        raise SystemExit(f"{record}: none of --observations {only} saved (it has {saved})")
    draws = np.load(record.with_suffix(".npy"))
    if _digest(draws) != state["draws"]:
        raise SystemExit(f"{record}: its draws ({record.stem}.npy) are not the ones it records: rerun it")
    scores = {}
    for k, i in chosen:
        path = record.parent / f"{record.stem}.o{i}.c2st"  # JSON, named apart from the records
        # a score is kept with the draws it scored: a later run saved under the same name scores afresh
        kept = json.loads(path.read_text()) if path.exists() else {}
        if kept.get("draws") == state["draws"]:
            scores[i] = kept["c2st"]
            continue
        scores[i] = score(task, draws[k], i)
        _write(path, {"c2st": scores[i], "draws": state["draws"]})
    return row(meta, [scores[i] for _, i in chosen])


def rescored(folder: str | Path, only: str = "all") -> list[dict]:
    """The rows of every run saved under ``folder`` (an earlier ``--out``), finishing their scores of the
    observations in ``only``."""
    records = sorted((Path(folder) / DIR).glob("*.json"))
    if not records:
        raise SystemExit(f"--rescore {folder}: no saved draws in {Path(folder) / DIR}")
    return [finish(r, only) for r in records]


def _digest(draws: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(draws, np.float32).tobytes()).hexdigest()[:16]


def _write(path: Path, state: dict) -> None:
    """Replaces ``path`` whole (an interruption leaves the old record or the new one, never half)."""
    part = path.with_suffix(".part")
    part.write_text(json.dumps(state, indent=1))
    os.replace(part, path)
