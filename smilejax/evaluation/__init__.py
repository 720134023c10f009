"""Physics evaluation of a trained run: ``smilejax eval RUN_DIR``.

A model named ``<model>`` in the run's config is evaluated by the module
``smilejax.evaluation.<model>``, which exposes ``evaluate(trained, opts) -> dict`` (it may write plots
into ``opts.out``) and optionally ``summary(metrics) -> str`` (printed at the end). Adding an evaluator
for a model is adding that module. ``run`` writes the returned metrics to ``<out>/metrics.json``.

This package's top level imports no JAX, so listing evaluators stays cheap.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import json
import logging
import math
import pkgutil
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_HELPERS = {
    "flavour",
    "ip_baseline",
    "jets",
    "particles",
    "pf_plots",
    "plots",
    "predict",
    "response",
    "tracks",
}  # modules that are not evaluators


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """What ``smilejax eval`` was asked for (the command's flags).

    jets: evaluate the first ``jets`` examples (jets; MLPF: events) of the split in file order; None =
        all that the split's unshuffled pipeline yields (whole batches).
    fc, ftau: background fractions of the b-tagging discriminant (ATLAS GN2v01: 0.2, 0.01).
    ip_fit_jets: training jets that fill the impact-parameter baseline's templates.
    """

    out: Path
    split: str = "eval"
    jets: int | None = None
    step: int | None = None
    fc: float = 0.2
    ftau: float = 0.01
    ip_fit_jets: int = 5000

    def __post_init__(self):
        if self.split not in ("train", "eval"):
            raise ValueError(f"--split must be 'train' or 'eval', got {self.split!r}")
        if self.jets is not None and self.jets < 1:
            raise ValueError(f"--jets must be at least 1, got {self.jets}")
        if self.ip_fit_jets < 1:
            raise ValueError(f"--ip-fit-jets must be at least 1, got {self.ip_fit_jets}")
        if not (self.fc >= 0 and self.ftau >= 0 and self.fc + self.ftau < 1):
            raise ValueError(
                f"--fc and --ftau must be >= 0 with fc + ftau < 1 (the light fraction is 1 - fc - ftau), "
                f"got fc={self.fc}, ftau={self.ftau}"
            )


def evaluators() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _HELPERS)


def evaluator(model_name: str):
    """The evaluation module of a model name; ValueError listing the known ones when there is none."""
    known = evaluators()
    if model_name not in known:
        raise ValueError(
            f"no evaluator for model {model_name!r}; evaluators exist for: {', '.join(known) or 'none'} "
            f"(add smilejax/evaluation/<model>.py with evaluate(trained, opts) -> dict)"
        )
    return importlib.import_module(f"{__name__}.{model_name}")


def run(run_dir: str | Path, opts: EvalOptions) -> tuple[dict, Path]:
    """Evaluate ``run_dir``'s model; returns (metrics, path of metrics.json)."""
    from smilejax import config, trained

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a smilejax run directory (no config.yaml)")
    model_name = config.load(run_dir / "config.yaml").model.name
    module = evaluator(model_name)  # before the (slow) model load
    model = trained.load(run_dir, step=opts.step)
    opts.out.mkdir(parents=True, exist_ok=True)
    log.info("evaluating %s (%s, step %d) into %s", run_dir, model_name, model.step, opts.out)
    metrics = {
        "model": model_name,
        "run_dir": str(run_dir),
        "step": model.step,
        "split": opts.split,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        **module.evaluate(model, opts),
    }
    path = opts.out / "metrics.json"
    path.write_text(json.dumps(_jsonable(metrics), indent=2, allow_nan=False) + "\n")
    if hasattr(module, "summary"):
        print(module.summary(metrics))
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
