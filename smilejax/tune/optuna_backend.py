"""Optuna backend: TPE, random or CMA-ES sampling; median, ASHA or Hyperband pruning; ask/tell.

The study lives in ``STUDY_DIR/optuna.journal`` (Optuna's ``JournalStorage``, safe for several
processes on a shared filesystem), so ``srun -n K`` workers share it and a restarted command continues
it. Each worker, under a study-wide file lock, counts the trials that exist and asks for a new one only
while fewer than ``--trials`` do. A trial left RUNNING by a dead worker is failed and enqueued again
with the same values and run directory, so its retry resumes from that run's newest checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from smilejax import host

try:
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage
    from optuna.trial import TrialState
except ImportError as err:  # pragma: no cover - an install problem, named for the user
    raise ImportError(
        f"smilejax tune --backend optuna needs Optuna: {host.pip_install('optuna', 'cmaes')}"
    ) from err

from smilejax.config import ConfigError
from smilejax.tune import worker as workers
from smilejax.tune.objective import Outcome
from smilejax.tune.space import Param, Space

log = logging.getLogger(__name__)

ALGORITHMS = ("tpe", "random", "cmaes")
PRUNERS = ("none", "median", "asha", "hyperband")
_STATES = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL}
POLL_S = 2.0


def sampler(algorithm: str, seed: int | None, trials: int) -> optuna.samplers.BaseSampler:
    if algorithm == "tpe":
        # Optuna's 10 random start-up trials, fewer for small budgets (else TPE would be random search);
        # constant_liar spreads parallel workers out.
        startup = min(10, max(2, trials // 3))
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, constant_liar=True)
    if algorithm == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if algorithm == "cmaes":  # choice parameters fall back to random sampling
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    raise ConfigError(
        f"--algorithm {algorithm!r} is not an Optuna sampler; choose from {', '.join(ALGORITHMS)}"
    )


def pruner(name: str, *, first_report: int, max_steps: int) -> optuna.pruners.BasePruner:
    """Pruners over training steps: ``first_report`` is the first step a value arrives at."""
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first_report, reduction_factor=3)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=first_report, max_resource=max_steps, reduction_factor=3
        )
    raise ConfigError(f"--pruner {name!r} is not an Optuna pruner; choose from {', '.join(PRUNERS)}")


def suggest(trial: optuna.Trial, space: Space) -> dict[str, Any]:
    """The trial's values for the parameters its conditions leave active."""
    values: dict[str, Any] = {}
    for p in space.params:
        if space.is_active(p, values):
            values[p.key] = _suggest_one(trial, p)
    return values


def _suggest_one(trial: optuna.Trial, p: Param) -> Any:
    if p.kind == "float":
        return trial.suggest_float(p.key, p.low, p.high, log=p.log, step=p.step)
    if p.kind == "int":
        return trial.suggest_int(p.key, p.low, p.high, log=p.log, step=p.step or 1)
    if all(v is None or isinstance(v, bool | int | float | str) for v in p.values):
        return trial.suggest_categorical(p.key, list(p.values))
    # Optuna stores scalars only: choose among the values' positions for lists and the like.
    labels = [json.dumps(v) for v in p.values]
    return p.values[labels.index(trial.suggest_categorical(p.key, labels))]


class OptunaBackend:
    def __init__(
        self,
        space: Space,
        *,
        directory: Path,
        name: str,
        trials: int,
        algorithm: str,
        pruner_name: str,
        seed: int | None,
        worker: workers.Worker,
        first_report: int,
        max_steps: int,
        stale_after: float,
    ):
        self.space, self.dir, self.trials, self.worker = space, directory, trials, worker
        self.stale_after = stale_after
        directory.mkdir(parents=True, exist_ok=True)
        storage = JournalStorage(JournalFileBackend(str(directory / "optuna.journal")))
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study = optuna.create_study(
            storage=storage,
            study_name=name,
            direction="minimize" if space.objective.mode == "min" else "maximize",
            sampler=sampler(algorithm, None if seed is None else seed + worker.rank, trials),
            pruner=pruner(pruner_name, first_report=first_report, max_steps=max_steps),
            load_if_exists=True,
        )
        self._lock = JournalFileOpenLock(str(directory / "study"))
        self._mine: set[int] = set()  # trial numbers this process is running

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._lock.acquire()
        try:
            yield
        finally:
            self._lock.release()

    # ---------------------------------------------------------------- the worker loop

    def optimize(self, runner, *, batch: int = 1) -> None:
        """Runs trials until the study holds ``trials`` of them; ``batch`` > 1 runs them vectorised."""
        while True:
            with self._locked():
                self._recover_stale()
                asked = self._ask(batch)
            if asked:
                self._run(runner, asked)
                continue
            if self.worker.lead and self._running():
                time.sleep(POLL_S)  # other workers are finishing (or died: recovered above)
                continue
            return

    def _budget_left(self) -> tuple[int, int]:
        """(trials that may still be created, trials waiting in the queue)."""
        trials = self.study.get_trials(deepcopy=False)
        retried = {t.user_attrs.get("retry_of") for t in trials}
        counted = [t for t in trials if not (t.state == TrialState.FAIL and t.number in retried)]
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        return max(self.trials - len(counted), 0), waiting

    def _ask(self, n: int) -> list[tuple[optuna.Trial, dict, Path]]:
        new, waiting = self._budget_left()
        out = []
        for _ in range(min(n, new + waiting)):
            trial = self.study.ask()
            values = suggest(trial, self.space)
            run_dir = Path(trial.user_attrs.get("run_dir") or self.dir / f"trial-{trial.number:04d}")
            trial.set_user_attr("run_dir", str(run_dir))
            trial.set_user_attr(
                "worker", {"id": self.worker.id, "host": self.worker.host, "pid": self.worker.pid}
            )
            self._mine.add(trial.number)
            out.append((trial, values, run_dir))
        return out

    def _run(self, runner, asked: list[tuple[optuna.Trial, dict, Path]]) -> None:
        def report_for(trial: optuna.Trial):
            def report(step: int, value: float) -> bool:
                trial.report(value, step)
                return trial.should_prune()

            return report

        try:
            if len(asked) == 1:
                trial, values, run_dir = asked[0]
                outcomes = [runner.run(trial.number, values, run_dir=run_dir, report=report_for(trial))]
            else:
                outcomes = runner.run_vectorised(
                    [(t.number, v, d) for t, v, d in asked], [report_for(t) for t, _, _ in asked]
                )
        except BaseException:
            for trial, _, _ in asked:  # a study-ending error: leave no trial RUNNING behind
                self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            raise
        for (trial, _, _), outcome in zip(asked, outcomes, strict=True):
            self._tell(trial, outcome)

    def _tell(self, trial: optuna.Trial, outcome: Outcome) -> None:
        trial.set_user_attr("step", outcome.step)
        trial.set_user_attr("seconds", round(outcome.seconds, 3))
        if outcome.error:
            trial.set_user_attr("error", outcome.error[:500])
        if outcome.state == "complete":
            self.study.tell(trial, outcome.value)
        else:
            self.study.tell(trial, state=_STATES[outcome.state])
        self._mine.discard(trial.number)

    # ---------------------------------------------------------------- dead workers

    def _running(self) -> bool:
        return bool(self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)))

    def _recover_stale(self) -> None:
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            owner = t.user_attrs.get("worker") or {}
            if t.number in self._mine:
                continue
            mine_before = owner.get("id") == self.worker.id  # this process id, left by an earlier run
            gone = mine_before or workers.is_gone(
                self.dir / "workers",
                owner.get("id", ""),
                owner.get("host", ""),
                int(owner.get("pid", -1)),
                stale_after=self.stale_after,
            )
            if not gone:
                continue
            log.warning("trial %d was left running by %s; it will be retried", t.number, owner.get("id"))
            self.study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            self.study.enqueue_trial(
                t.params, user_attrs={"run_dir": t.user_attrs.get("run_dir"), "retry_of": t.number}
            )

    # ---------------------------------------------------------------- results

    def records(self) -> list[dict]:
        """Every finished or running trial, in the study's common form (see ``study.TrialRecord``)."""
        retried = {t.user_attrs.get("retry_of") for t in self.study.get_trials(deepcopy=False)}
        out = []
        for t in self.study.get_trials(deepcopy=False):
            if t.state == TrialState.WAITING or (t.state == TrialState.FAIL and t.number in retried):
                continue
            state = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}
            value = t.value
            if t.state == TrialState.PRUNED and t.intermediate_values:
                value = t.intermediate_values[max(t.intermediate_values)]
            out.append(
                {
                    "number": t.number,
                    "state": state.get(t.state, "running"),
                    "value": value,
                    "params": dict(t.params),
                    "step": t.user_attrs.get("step"),
                    "seconds": t.user_attrs.get("seconds"),
                    "run_dir": t.user_attrs.get("run_dir"),
                    "worker": (t.user_attrs.get("worker") or {}).get("id"),
                    "intermediate": {int(k): v for k, v in sorted(t.intermediate_values.items())},
                    "error": t.user_attrs.get("error"),
                }
            )
        return out
