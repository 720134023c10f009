"""keras-tuner backend: random search, Bayesian optimisation (Gaussian process) and Hyperband.

Runs with ``KERAS_BACKEND=jax`` and no TensorFlow: a ``BaseTuner`` subclass whose ``run_trial`` trains
one smilejax run. The oracle's state lives in ``STUDY_DIR/keras_tuner/`` and is reloaded by a restarted
command; trials that were running go back to the oracle's retry queue under the same trial id, so
their run directories resume from their newest checkpoints.

Under ``srun -n K`` keras-tuner's own gRPC chief/worker protocol coordinates the tasks: task 0 serves
the oracle from a thread (``KERASTUNER_TUNER_ID=chief``) and also trains as ``tuner0``; task i trains
as ``tuner<i>``. ``KERASTUNER_ORACLE_IP`` / ``KERASTUNER_ORACLE_PORT`` default to task 0's host and a
port derived from the job step (set them to override). Hyperband's budget unit ("epoch") is one
evaluation period: a trial given e epochs stops after ``e * run.eval_every`` steps (``run.log_every``
for a training metric), with the learning-rate schedule of the full run.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

from smilejax import host

os.environ.setdefault("KERAS_BACKEND", "jax")  # keras-tuner imports Keras; no TensorFlow needed

try:
    import keras_tuner as kt
    from keras_tuner.src.distribute import oracle_chief
    from keras_tuner.src.engine import base_tuner
    from keras_tuner.src.engine import trial as trial_module
except ImportError as err:  # pragma: no cover - an install problem, named for the user
    raise ImportError(
        "smilejax tune --backend keras-tuner needs keras-tuner (JAX backend, no TensorFlow): "
        + host.pip_install("keras-tuner", "scikit-learn", "six")
    ) from err

from smilejax.config import ConfigError
from smilejax.tune import worker as workers
from smilejax.tune.space import Space

log = logging.getLogger(__name__)

ALGORITHMS = ("random", "bayesian", "hyperband")
PROJECT = "keras_tuner"
IDLE_S = 1.0


def hyperparameters(space: Space) -> kt.HyperParameters:
    """The space as keras-tuner hyperparameters; ``when`` becomes a conditional scope."""
    hp = kt.HyperParameters()
    for p in space.params:
        scope = [hp.conditional_scope(parent, list(allowed)) for parent, allowed in p.when]
        for s in scope:
            s.__enter__()
        try:
            sampling = "log" if p.log else "linear"
            if p.kind == "float":
                hp.Float(p.key, p.low, p.high, step=p.step, sampling=sampling)
            elif p.kind == "int":
                hp.Int(p.key, p.low, p.high, step=p.step or 1, sampling=sampling)
            else:
                if not all(isinstance(v, bool | int | float | str) for v in p.values):
                    raise ConfigError(
                        f"{space.source}: parameters.{p.key}: keras-tuner choices must be scalars"
                    )
                hp.Choice(p.key, list(p.values))
        finally:
            for s in reversed(scope):
                s.__exit__(None, None, None)
    return hp


def oracle(space: Space, algorithm: str, trials: int, seed: int | None, max_epochs: int) -> kt.Oracle:
    objective = kt.Objective(space.objective.metric, direction=space.objective.mode)
    common = {
        "objective": objective,
        "seed": seed,
        "hyperparameters": hyperparameters(space),
        "tune_new_entries": False,
        "allow_new_entries": False,
        "max_consecutive_failed_trials": 5,
    }
    if algorithm == "random":
        return kt.oracles.RandomSearchOracle(max_trials=trials, **common)
    if algorithm == "bayesian":
        return kt.oracles.BayesianOptimizationOracle(max_trials=trials, **common)
    if algorithm == "hyperband":
        if max_epochs < 1:
            raise ConfigError("hyperband needs run.steps of at least one evaluation period (run.eval_every)")
        hb = kt.oracles.HyperbandOracle(max_epochs=max_epochs, factor=3, **common)
        hb.max_trials = trials  # Hyperband plans its own brackets; --trials caps them
        return hb
    raise ConfigError(
        f"--algorithm {algorithm!r} is not a keras-tuner algorithm; choose from {', '.join(ALGORITHMS)}"
    )


class SmilejaxTuner(base_tuner.BaseTuner):
    """``run_trial`` = one smilejax run through the study's runner."""

    def __init__(self, *args, runner=None, space: Space, unit: int, **kwargs):
        self.runner, self.space, self.unit = runner, space, unit
        self.outcomes: dict = {}
        self.fatal: Exception | None = None
        super().__init__(*args, **kwargs)

    def run_trial(self, trial, *args, **kwargs):
        values = self.space.active(trial.hyperparameters.values)
        epochs = trial.hyperparameters.values.get("tuner/epochs")
        stop_at = int(epochs) * self.unit if epochs else None
        try:
            outcome = self.runner.run(int(trial.trial_id), values, stop_at=stop_at)
        except (ConfigError, FileNotFoundError) as err:  # every trial would fail alike: end the study
            self.fatal = err
            raise kt.errors.FatalError(str(err)) from err
        self.outcomes[trial.trial_id] = outcome
        if outcome.state == "failed":
            raise kt.errors.FailedTrialError(outcome.error)
        return {self.space.objective.metric: outcome.value}

    def save_model(self, trial_id, model, step=0):  # the run directory holds the checkpoints
        pass

    def load_model(self, trial):
        raise NotImplementedError("load a trial's model with smilejax.trained.load(run_dir)")


class KerasTunerBackend:
    def __init__(
        self,
        space: Space,
        *,
        directory: Path,
        trials: int,
        algorithm: str,
        seed: int | None,
        worker: workers.Worker,
        unit: int,
        max_steps: int,
    ):
        self.space, self.dir, self.worker, self.unit = space, directory, worker, unit
        self.max_epochs = max_steps // unit
        self.algorithm, self.trials, self.seed = algorithm, trials, seed
        self.distributed = worker.size > 1
        self.tuner = None

    def make_oracle(self) -> kt.Oracle:
        made = oracle(self.space, self.algorithm, self.trials, self.seed, self.max_epochs)
        made.verbose = 0  # the study prints one line per trial
        return made

    def _env(self) -> None:
        os.environ.setdefault("KERASTUNER_ORACLE_IP", self.worker.chief_host)
        os.environ.setdefault("KERASTUNER_ORACLE_PORT", str(self.worker.chief_port or 8000))

    def optimize(self, runner, *, batch: int = 1) -> None:
        if batch > 1:
            raise ConfigError("vectorised trials (--vectorise) need --backend optuna")
        chief = None
        if self.distributed:
            self._env()
            if self.worker.lead:
                chief = self._start_chief()
            os.environ["KERASTUNER_TUNER_ID"] = f"tuner{self.worker.rank}"
        tuner = SmilejaxTuner(
            self.make_oracle(),
            runner=runner,
            space=self.space,
            unit=self.unit,
            directory=str(self.dir),
            project_name=PROJECT,
            overwrite=False,
        )
        tuner.save()  # a restart then reloads the oracle, running trials included
        self.tuner = tuner
        while True:  # BaseTuner.search, with a pause while the oracle is IDLE (waiting on other workers)
            trial = tuner.oracle.create_trial(tuner.tuner_id)
            if trial.status == trial_module.TrialStatus.STOPPED:
                break
            if trial.status == trial_module.TrialStatus.IDLE:
                time.sleep(IDLE_S)
                continue
            tuner.on_trial_begin(trial)
            try:
                tuner._try_run_and_update_trial(trial)
            except kt.errors.FatalError:
                raise tuner.fatal or ConfigError(trial.message) from None
            tuner.on_trial_end(trial)
        if chief is not None:
            chief.join()  # the oracle is done once every worker has been told to stop

    def _start_chief(self) -> threading.Thread:
        """keras-tuner's chief: serves the oracle over gRPC from a thread of task 0."""
        os.environ["KERASTUNER_TUNER_ID"] = "chief"
        chief = SmilejaxTuner(
            self.make_oracle(),
            space=self.space,
            unit=self.unit,
            directory=str(self.dir),
            project_name=PROJECT,
            overwrite=False,
        )
        chief.oracle.verbose = 0
        chief.save()
        self.chief_oracle = chief.oracle
        thread = threading.Thread(target=oracle_chief.start_server, args=(chief.oracle,), daemon=True)
        thread.start()
        return thread

    def records(self) -> list[dict]:
        """The oracle's trials (read from the project directory) in the study's common form."""
        oracle = self.chief_oracle if self.distributed else self.tuner.oracle
        outcomes = getattr(self.tuner, "outcomes", {})
        states = {"COMPLETED": "complete", "FAILED": "failed", "INVALID": "failed", "STOPPED": "pruned"}
        out = []
        for trial_id, trial in sorted(oracle.trials.items()):
            number = int(trial_id)
            outcome = outcomes.get(trial_id)
            run_dir = self.dir / f"trial-{number:04d}"
            values = {k: v for k, v in trial.hyperparameters.values.items() if not k.startswith("tuner/")}
            out.append(
                {
                    "number": number,
                    "state": states.get(trial.status, "running"),
                    "value": trial.score,
                    "params": self.space.active(values),
                    "step": outcome.step if outcome else _trained_steps(run_dir),
                    "seconds": round(outcome.seconds, 3) if outcome else None,
                    "run_dir": str(run_dir),
                    "worker": _worker_of(run_dir),
                    "budget": trial.hyperparameters.values.get("tuner/epochs"),
                    "error": (trial.message or "").strip().splitlines()[-1] if trial.message else None,
                }
            )
        return out


def _worker_of(run_dir: Path) -> str | None:
    label = run_dir / "trial.json"
    return json.loads(label.read_text()).get("worker") if label.exists() else None


def _trained_steps(run_dir: Path) -> int | None:
    from smilejax import metrics

    path = run_dir / "metrics.jsonl"
    records = metrics.read(path) if path.exists() else []
    return max((r["step"] for r in records), default=None)
