"""Physics evaluation of a trained run: ``smilejax eval RUN_DIR``.

A model family evaluates its runs through its spec's ``evaluation`` hook (``models.spec.Evaluation``):
``evaluate(trained, opts) -> dict`` (it may write plots into ``opts.out``), an optional
``summary(metrics) -> str`` printed at the end, and the family's own options (``opts.model``). ``run``
writes the returned metrics to ``<out>/metrics.json``.

This package's top level imports no JAX, so the command line stays cheap.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """What ``smilejax eval`` was asked for (the command's flags).

    jets: evaluate the first ``jets`` examples (jets, events, ...) of the split in file order; None = all
        that the split's unshuffled pipeline yields (whole batches).
    model: the family's own options by ``Option.dest`` (``spec.evaluation.options``); ``run`` fills in
        the defaults of those not given and has the family check them.
    """

    out: Path
    split: str = "eval"
    jets: int | None = None
    step: int | None = None
    model: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.split not in ("train", "eval"):
            raise ValueError(f"--split must be 'train' or 'eval', got {self.split!r}")
        if self.jets is not None and self.jets < 1:
            raise ValueError(f"--jets must be at least 1, got {self.jets}")


def evaluators() -> list[str]:
    """The registered model families that have an evaluation (this loads every family)."""
    from smilejax import registry

    found = []
    for name in registry.models():
        try:
            if registry.model(name).evaluation is not None:
                found.append(name)
        except KeyError as err:  # a broken family does not hide the others
            log.warning("%s", err)
    return found


def evaluation_of(model_name: str):
    """The ``Evaluation`` hook of a model; ValueError naming the families that have one when it has none."""
    from smilejax import registry

    spec = registry.model(model_name)
    if spec.evaluation is None:
        known = [n for n in evaluators() if n != model_name]
        raise ValueError(
            f"model {model_name!r} has no evaluation; families with one: {', '.join(known) or 'none'} "
            f"(a family adds one as its ModelSpec's evaluation=Evaluation(evaluate=...))"
        )
    return spec.evaluation


def family_options(evaluation, given: Mapping[str, Any]) -> dict[str, Any]:
    """The family's option values: ``given`` over the options' defaults, checked by the family.
    ValueError for an option the family does not have or a value its ``check`` refuses."""
    defaults = {o.dest: o.default for o in evaluation.options}
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(
            f"unknown evaluation option(s) {', '.join(unknown)}; "
            f"this model's: {', '.join(defaults) or 'none'}"
        )
    values = {**defaults, **given}
    if evaluation.check is not None:
        evaluation.check(values)
    return values


def run(run_dir: str | Path, opts: EvalOptions) -> tuple[dict, Path]:
    """Evaluate ``run_dir``'s model; returns (metrics, path of metrics.json)."""
    from smilejax import config, trained

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a smilejax run directory (no config.yaml)")
    model_name = config.load(run_dir / "config.yaml").model.name
    evaluation = evaluation_of(model_name)  # before the (slow) model load
    opts = dataclasses.replace(opts, model=family_options(evaluation, opts.model))
    model = trained.load(run_dir, step=opts.step)
    opts.out.mkdir(parents=True, exist_ok=True)
    log.info("evaluating %s (%s, step %d) into %s", run_dir, model_name, model.step, opts.out)
    metrics = {
        "model": model_name,
        "run_dir": str(run_dir),
        "step": model.step,
        "split": opts.split,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        **evaluation.evaluate(model, opts),
    }
    path = opts.out / "metrics.json"
    path.write_text(json.dumps(_jsonable(metrics), indent=2, allow_nan=False) + "\n")
    if evaluation.summary is not None:
        print(evaluation.summary(metrics))
    print(f"wrote {path}")
    return metrics, path


def cell(x: float | None, width: int) -> str:
    """A summary-table cell: 3 decimals below 10, 1 above, "-" for a missing or non-finite value."""
    if x is None or not math.isfinite(x):
        return f"{'-':>{width}}"
    return f"{x:>{width}.3f}" if abs(x) < 10 else f"{x:>{width}.1f}"


def _jsonable(x: Any) -> Any:
    """Plain JSON types; non-finite floats (an infinite rejection, an undefined ratio) become null."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if hasattr(x, "tolist"):  # numpy scalars and arrays
        return _jsonable(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
