"""The one tuner interface: ``tune(base, space, options)`` runs (or continues) a study with either backend.

A study is a directory: the backend's state (``optuna.journal`` or ``keras_tuner/``), one run directory
per trial (``trial-XXXX``), ``study.json`` (every trial's values, state, objective and compute) and
``study.png`` (objective per trial and the best so far). Running the same command again continues the
study; under ``srun -n K`` every task is a worker of the same study.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Literal

import yaml
from tqdm import tqdm

from smilejax.tune import metric_names
from smilejax.tune import objective as objectives
from smilejax.tune import worker as workers
from smilejax.tune.space import Space

log = logging.getLogger(__name__)

BACKENDS = ("optuna", "keras-tuner")
DEFAULT_ALGORITHM = {"optuna": "tpe", "keras-tuner": "bayesian"}


@dataclasses.dataclass
class Options:
    dir: Path
    backend: Literal["optuna", "keras-tuner"] = "optuna"
    algorithm: str | None = None  # default per backend: tpe / bayesian
    pruner: str = "none"  # Optuna only: none, median, asha, hyperband
    trials: int = 20
    seed: int | None = 0
    vectorise: int = 1  # trials per jit(vmap) program (Optuna); 1: one run per trial
    stale_after: float = 300.0  # seconds without a heartbeat before a worker's trial is retried
    name: str | None = None  # default: the directory's name

    @property
    def study_name(self) -> str:
        return self.name or Path(self.dir).name


@dataclasses.dataclass
class Summary:
    name: str
    metric: str
    mode: str
    trials: list[dict]
    best: dict | None

    def table(self) -> str:
        keys = sorted({k for t in self.trials for k in t["params"]})
        head = ["trial", "state", self.metric, "steps", *keys]
        rows = [
            [
                str(t["number"]),
                t["state"],
                "" if t["value"] is None else f"{t['value']:.5g}",
                "" if t.get("step") is None else str(t["step"]),
                *(_short(t["params"].get(k, "")) for k in keys),
            ]
            for t in sorted(self.trials, key=lambda t: t["number"])
        ]
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [head, *rows]
        ]
        return "\n".join(lines)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class Runner:
    """What a backend calls to run trials: configs, run directories, progress."""

    def __init__(self, base: dict, space: Space, options: Options, bar: tqdm, worker: workers.Worker):
        self.base, self.space, self.options, self.bar, self.worker = base, space, options, bar, worker
        self.best: float | None = None

    def run_dir(self, number: int) -> Path:
        return Path(self.options.dir) / f"trial-{number:04d}"

    def config(self, values: dict, run_dir: Path):
        return objectives.trial_config(self.base, self.space, values, run_dir, study=self.options.study_name)

    def _label(self, number: int, values: dict, run_dir: Path) -> None:
        """``trial.json``: which study, trial and worker a run directory belongs to."""
        _set_aside_if_other(run_dir, values)
        run_dir.mkdir(parents=True, exist_ok=True)
        label = {
            "study": self.options.study_name,
            "number": number,
            "values": values,
            "worker": self.worker.id,
        }
        (run_dir / "trial.json").write_text(json.dumps(label, indent=2, default=str) + "\n")

    def run(self, number: int, values: dict, *, run_dir: Path | None = None, report=None, stop_at=None):
        run_dir = run_dir or self.run_dir(number)
        cfg = self.config(values, run_dir)
        self._label(number, values, run_dir)
        log.info("trial %d: %s", number, ", ".join(f"{k}={_short(v)}" for k, v in values.items()))
        outcome = objectives.run(cfg, self.space.objective.metric, report=report, stop_at=stop_at)
        self._done(number, outcome)
        return outcome

    def run_vectorised(self, trials: list[tuple[int, dict, Path]], reports: list) -> list:
        from smilejax.tune import vectorised

        for number, values, run_dir in trials:
            self._label(number, values, run_dir)
        cfgs = [self.config(values, run_dir) for _, values, run_dir in trials]
        log.info("trials %s: one vectorised program", ", ".join(str(n) for n, _, _ in trials))
        outcomes = vectorised.train(cfgs, self.space.objective.metric, reports=reports)
        for (number, _, _), outcome in zip(trials, outcomes, strict=True):
            self._done(number, outcome)
        return outcomes

    def _done(self, number: int, outcome: objectives.Outcome) -> None:
        value = outcome.value
        improved = self.best is None or (value is not None and self.space.objective.better(value, self.best))
        if outcome.state == "complete" and value is not None and improved:
            self.best = value
        log.info(
            "trial %d %s after %d steps: %s = %s",
            number,
            outcome.state,
            outcome.step,
            self.space.objective.metric,
            "-" if value is None else f"{value:.5g}",
        )
        self.bar.update(1)
        if self.best is not None:
            self.bar.set_postfix(best=f"{self.best:.4g}")


def _set_aside_if_other(run_dir: Path, values: dict) -> None:
    """A run directory that holds another configuration (a study restarted with a changed space) is
    moved aside rather than resumed with the wrong values."""
    saved = run_dir / "config.yaml"
    if not saved.exists():
        return
    tree = yaml.safe_load(saved.read_text()) or {}
    for key, value in values.items():
        node: Any = tree
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        same = node == value or (isinstance(value, tuple) and node == list(value))
        if not same and not (
            isinstance(value, float) and isinstance(node, float) and abs(node - value) < 1e-12
        ):
            aside = run_dir.with_name(f"{run_dir.name}.old-{int(time.time())}")
            log.warning("%s holds %s=%r, not %r: moved to %s", run_dir, key, node, value, aside)
            shutil.move(str(run_dir), str(aside))
            return


def make_backend(space: Space, options: Options, worker: workers.Worker, base_cfg):
    algorithm = options.algorithm or DEFAULT_ALGORITHM[options.backend]
    unit = objectives.report_every(base_cfg, space.objective.metric)
    if options.backend == "optuna":
        from smilejax.tune.optuna_backend import OptunaBackend

        return OptunaBackend(
            space,
            directory=Path(options.dir),
            name=options.study_name,
            trials=options.trials,
            algorithm=algorithm,
            pruner_name=options.pruner,
            seed=options.seed,
            worker=worker,
            first_report=max(unit, 1),
            max_steps=base_cfg.run.steps,
            stale_after=options.stale_after,
        )
    from smilejax.config import ConfigError

    if options.pruner != "none":
        raise ConfigError("pruners are Optuna's; keras-tuner stops trials early with --algorithm hyperband")
    from smilejax.tune.keras_tuner_backend import KerasTunerBackend

    return KerasTunerBackend(
        space,
        directory=Path(options.dir),
        trials=options.trials,
        algorithm=algorithm,
        seed=options.seed,
        worker=worker,
        unit=max(unit, 1),
        max_steps=base_cfg.run.steps,
    )


def check_options(options: Options, space: Space) -> None:
    from smilejax.config import ConfigError

    if options.backend not in BACKENDS:
        raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, got {options.backend!r}")
    if options.trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {options.trials}")
    if options.vectorise > 1:
        if options.backend != "optuna":
            raise ConfigError("vectorised trials (--vectorise K) need --backend optuna")
        from smilejax.tune import vectorised

        vectorised.check_space(space)


def tune(base: dict, space: Space, options: Options, worker: workers.Worker | None = None) -> Summary | None:
    """Runs this process's share of the study; the lead worker returns the summary (others None)."""
    from smilejax import config

    worker = worker or workers.start()
    check_options(options, space)
    space.check(base)  # every value the space can produce makes a valid config, before any trial
    base_cfg = config.from_dict(copy.deepcopy(base))
    metric_names.check(space.objective.metric, base_cfg, space.source)  # a misspelled objective, too
    study_dir = Path(options.dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    if worker.lead and Path(space.source).is_file():
        shutil.copyfile(space.source, study_dir / "space.yaml")  # the study's record of what it searched
    backend = make_backend(space, options, worker, base_cfg)
    heartbeat = workers.Heartbeat(study_dir / "workers", worker)
    bar = tqdm(total=options.trials, desc=f"tune {options.study_name}", unit="trial", disable=not worker.lead)
    try:
        backend.optimize(Runner(base, space, options, bar, worker), batch=max(options.vectorise, 1))
    finally:
        bar.close()
        heartbeat.close()
    if not worker.lead:
        return None
    summary = summarize(backend.records(), space, options)
    write(summary, options, study_dir)
    return summary


def summarize(records: list[dict], space: Space, options: Options) -> Summary:
    done = [r for r in records if r["state"] == "complete" and r["value"] is not None]
    sign = 1 if space.objective.mode == "min" else -1
    best = min(done, key=lambda r: sign * r["value"]) if done else None
    return Summary(options.study_name, space.objective.metric, space.objective.mode, records, best)


def write(summary: Summary, options: Options, study_dir: Path) -> None:
    payload = {
        "name": summary.name,
        "backend": options.backend,
        "algorithm": options.algorithm or DEFAULT_ALGORITHM[options.backend],
        "pruner": options.pruner,
        "metric": summary.metric,
        "mode": summary.mode,
        "best": summary.best,
        "trials": summary.trials,
        "written": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    tmp = study_dir / "study.json.tmp"
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    tmp.replace(study_dir / "study.json")
    from smilejax.tune import plots

    plots.study(summary, study_dir / "study.png")
