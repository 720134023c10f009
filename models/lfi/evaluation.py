"""``smilejax eval RUN_DIR`` for an LFI estimator (NPE or NRE): is its posterior right, and calibrated?

* Simulation-based calibration and expected coverage (``calibration``) over ``--sbc-runs`` pairs drawn
  from the task's prior and simulator with a fixed key (``--eval-seed``): rank histograms per parameter
  with the uniform band (``sbc_ranks.png``), coverage against credibility level with the diagonal
  (``coverage.png``). ``--sbc-draws`` posterior draws per pair.
* For each of the task's observations (``--observations``) that has reference posterior samples (the
  benchmark's tasks, the HEP example's likelihood grid): C2ST (``c2st``) of ``--posterior-samples``
  draws against as many reference samples; 0.5 is a perfect posterior.
* A corner plot of the posterior at the first ``--corner`` observations against the true parameters
  (and the reference samples): ``posterior_obs{i}.png``.

Draws outside the prior's support (where the task's ``log_prior`` is -inf) are replaced by later draws,
as the benchmark's NPE does by rejection; ``leakage`` is the fraction that had to be.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..spec import Evaluation, Option

log = logging.getLogger(__name__)

OVERSAMPLE = 2  # draws per kept draw in a pass of the support rejection
PASSES = 4  # passes before the remaining draws outside the support are kept as they are
CHUNK = 65_536  # posterior draws per jitted call


def parse_observations(text: str, available: int) -> list[int]:
    """``all``, ``none``, ``N-M`` or ``i,j,k`` (the benchmark numbers observations from 1)."""
    text = text.strip().lower()
    if text in ("all", ""):
        return list(range(1, available + 1))
    if text in ("none", "0"):
        return []
    chosen: list[int] = []
    for part in text.split(","):
        lo, sep, hi = part.partition("-")
        if not lo.strip().isdigit() or (sep and not hi.strip().isdigit()):
            raise ValueError(f"--observations {text!r}: expected all, none, N-M or a list such as 1,2,5")
        chosen += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
    return list(dict.fromkeys(chosen))


def check(values: Mapping[str, Any]) -> None:
    if values["sbc_runs"] < 0:
        raise ValueError("--sbc-runs must be 0 (no SBC) or more")
    for key in ("sbc_draws", "posterior_samples"):
        if values[key] < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be at least 1")
    if values["sbc_bins"] < 2:
        raise ValueError("--sbc-bins must be at least 2")
    parse_observations(values["observations"], 10**6)


OPTIONS = (
    Option("--sbc-runs", int, 500, "pairs (theta, x) from the prior for SBC and coverage (0: skip)"),
    Option("--sbc-draws", int, 100, "posterior draws per SBC pair (ranks 0..N)"),
    Option("--sbc-bins", int, 20, "bins of the rank histograms"),
    Option("--posterior-samples", int, 10_000, "posterior draws per observation for C2ST and corner plots"),
    Option("--observations", str, "all", "the task's observations to check: all, none, N-M or i,j,k"),
    Option("--corner", int, 3, "corner plots for the first N checked observations"),
    Option("--eval-seed", int, 0, "key of the SBC simulations and of the posterior draws"),
)


def sampler(model):
    """``draw(x [B, x_dim], n, key) -> [B, n, theta_dim]`` and ``density(theta, x) -> [B]``, jitted."""
    from functools import partial

    from flax import nnx

    from . import posterior

    @partial(nnx.jit, static_argnums=2)
    def draw(m, x, n, key):
        return posterior.sample(m, x, n, key)

    @nnx.jit
    def density(m, theta, x):
        return posterior.log_prob(m, theta, x)

    return (lambda x, n, key: np.asarray(draw(model, x, n, key))), (
        lambda theta, x: np.asarray(density(model, theta, x))
    )


def in_support(task, theta: np.ndarray) -> np.ndarray:
    """Boolean mask of rows of ``theta`` [..., dim] inside the task's prior support."""
    if task.log_prior is None:
        return np.ones(theta.shape[:-1], bool)
    flat = theta.reshape(-1, theta.shape[-1])
    with warnings.catch_warnings():  # numpyro warns of the very values this looks for
        warnings.simplefilter("ignore", UserWarning)
        density = np.asarray(task.log_prior(flat))
    return np.isfinite(density).reshape(theta.shape[:-1])


def posterior_draws(draw, task, x: np.ndarray, n: int, key) -> tuple[np.ndarray, float]:
    """``n`` draws per row of ``x`` inside the prior's support [B, n, dim] and the leakage (fraction of
    draws outside it). Rows are drawn in chunks of about ``CHUNK`` draws."""
    import jax

    x = np.asarray(x, np.float32)
    rows = max(1, CHUNK // max(n * OVERSAMPLE, 1))
    out, total, outside = [], 0, 0
    for start in range(0, len(x), rows):
        xb = x[start : start + rows]
        kept: list[list[np.ndarray]] = [[] for _ in xb]
        for p in range(PASSES):
            key, sub = jax.random.split(key)
            theta = draw(xb, n * OVERSAMPLE, sub)
            ok = in_support(task, theta)
            total, outside = total + ok.size, outside + int((~ok).sum())
            last = p == PASSES - 1
            for b in range(len(xb)):
                have = sum(len(k) for k in kept[b])
                if have < n:
                    kept[b].append(theta[b] if last else theta[b][ok[b]])
            if all(sum(len(k) for k in kb) >= n for kb in kept):
                break
        out.append(np.stack([np.concatenate(kb)[:n] for kb in kept]))
    return np.concatenate(out), outside / max(total, 1)


def simulate_pairs(task, n: int, key) -> tuple[np.ndarray, np.ndarray]:
    """``n`` pairs (theta, x) from the prior and the simulator (one vmapped call per chunk)."""
    import jax

    seeds = np.asarray(jax.random.randint(key, (n,), 0, np.iinfo(np.int32).max), np.uint32)
    theta, x = jax.jit(task.simulate_seeds)(seeds)
    return np.asarray(theta, np.float32), np.asarray(x, np.float32)


def sbc(model, task, opts, draw, density, key) -> dict:
    """SBC ranks and expected coverage over ``--sbc-runs`` prior pairs; writes their plots."""
    from . import calibration

    runs, draws, bins = opts["sbc_runs"], opts["sbc_draws"], opts["sbc_bins"]
    theta, x = simulate_pairs(task, runs, key)
    samples, leakage = posterior_draws(draw, task, x, draws, key)
    ranks = calibration.sbc_ranks(samples, theta)
    flat_x = np.repeat(x, draws, axis=0)
    log_q = np.concatenate(
        [
            density(samples.reshape(-1, task.theta_dim)[i : i + CHUNK], flat_x[i : i + CHUNK])
            for i in range(0, runs * draws, CHUNK)
        ]
    ).reshape(runs, draws)
    alphas = calibration.coverage_alphas(log_q, density(theta, x))
    coverage = calibration.coverage_metrics(alphas)
    return {
        "sbc_runs": runs,
        "sbc_draws": draws,
        "sbc_leakage": leakage,
        **calibration.sbc_metrics(ranks, draws, bins),
        **coverage,
        "_ranks": ranks,
    }


def observations(task, opts, draw, key) -> dict:
    """Posterior draws at each chosen observation, their C2ST against the reference and corner plots."""
    import jax

    from . import c2st as c2stlib
    from . import calibration

    chosen = parse_observations(opts["observations"], task.num_observations)
    bad = [i for i in chosen if not 1 <= i <= task.num_observations]
    if bad:
        raise ValueError(f"--observations: {bad} out of 1..{task.num_observations} ({task.name})")
    if not chosen:
        return {}
    x = np.stack([task.observation(i) for i in chosen])
    samples, leakage = posterior_draws(draw, task, x, opts["posterior_samples"], jax.random.fold_in(key, 1))
    per: dict[str, dict] = {}
    for k, i in enumerate(chosen):
        row: dict[str, Any] = {"mean": samples[k].mean(0), "std": samples[k].std(0)}
        truth = task.true_parameters(i) if task.true_parameters is not None else None
        if truth is not None:
            row["true_parameters"] = truth
        reference = task.reference_samples(i) if task.reference_samples is not None else None
        if reference is not None:
            n = min(len(reference), len(samples[k]))
            start = time.perf_counter()
            row["c2st"] = c2stlib.c2st(reference[:n], samples[k][:n])
            log.info(
                "observation %d: C2ST %.3f (%d samples, %.1f s)",
                i,
                row["c2st"],
                n,
                time.perf_counter() - start,
            )
        per[str(i)] = row
        if k < opts["corner"]:
            calibration.plot_corner(
                samples[k],
                truth,
                task.theta_labels,
                opts["out"] / f"posterior_obs{i}.png",
                f"{task.name}, observation {i}",
                reference=reference,
            )
    scores = [r["c2st"] for r in per.values() if "c2st" in r]
    return {
        "observations": per,
        "posterior_leakage": leakage,
        "c2st_mean": float(np.mean(scores)) if scores else None,
        "c2st_std": float(np.std(scores)) if scores else None,
    }


def evaluate(trained, opts) -> dict:
    import jax

    from . import calibration, tasks

    task = tasks.get(trained.cfg.model.task)
    values = {**opts.model, "out": opts.out}
    draw, density = sampler(trained.model)
    key = jax.random.key(values["eval_seed"])
    metrics: dict[str, Any] = {"task": task.name, "theta_dim": task.theta_dim, "x_dim": task.x_dim}
    title = f"{trained.cfg.model.name} on {task.name}"
    labels = task.theta_labels or tuple(f"theta[{d}]" for d in range(task.theta_dim))
    if values["sbc_runs"] > 0:
        found = sbc(trained.model, task, values, draw, density, key)
        ranks = found.pop("_ranks")
        calibration.plot_ranks(
            ranks, values["sbc_draws"], values["sbc_bins"], labels, opts.out / "sbc_ranks.png", title
        )
        calibration.plot_coverage(
            np.asarray(found["coverage_levels"]),
            np.asarray(found["coverage_empirical"]),
            values["sbc_runs"],
            opts.out / "coverage.png",
            title,
        )
        metrics.update(found)
    metrics.update(observations(task, values, draw, key))
    return metrics


def summary(metrics: dict) -> str:
    lines = [f"{metrics.get('model')} on {metrics.get('task')} (step {metrics.get('step')})"]
    if "sbc_ks_pvalue" in metrics:
        ks = ", ".join(f"{p:.2f}" for p in metrics["sbc_ks_pvalue"])
        lines.append(f"  SBC ({metrics['sbc_runs']} runs): KS p-values per parameter {ks}")
        lines.append(
            f"  coverage: largest shortfall {metrics['coverage_max_under']:.3f} (over-confident), "
            f"largest excess {metrics['coverage_max_over']:.3f} (conservative)"
        )
    for i, row in (metrics.get("observations") or {}).items():
        score = row.get("c2st")
        text = "-" if score is None or not math.isfinite(score) else f"{score:.3f}"
        lines.append(f"  observation {i:>3}: C2ST {text}")
    if metrics.get("c2st_mean") is not None:
        lines.append(f"  C2ST mean {metrics['c2st_mean']:.3f} ± {metrics['c2st_std']:.3f} (0.5: exact)")
    return "\n".join(lines)


EVALUATION = Evaluation(
    evaluate=evaluate,
    summary=summary,
    options=OPTIONS,
    check=check,
    about="posterior checks of an LFI estimator: simulation-based calibration (rank histograms) and "
    "expected coverage over prior simulations, C2ST against the task's reference posterior samples at "
    "each observation, corner plots of the posterior against the true parameters.",
)
