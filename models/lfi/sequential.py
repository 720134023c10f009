"""Sequential rounds for one measurement: simulate where the current posterior lives, train, repeat.

Truncated sequential NPE (TSNPE, Deistler et al. 2022): round 1 simulates from the prior; each later
round simulates from the prior *truncated* to the highest-probability region of the last round's
posterior at the observation x_o, {theta : log q(theta | x_o) >= the ``quantile`` (1e-4) quantile of
log q over q's own samples}, drawn by rejection from the prior. Inside that region the proposal is the
prior up to a constant, so the plain NPE loss needs no proposal correction, and every round trains
afresh on all simulations so far. NRE rounds use the same truncation (the ratio estimator's posterior,
log r + log prior, gives the region): its ratio is then right up to a constant inside it.

Each round is an ordinary run: its simulations are written in the stored-simulation format
(``OUT/round-R/simulations.npz``, all rounds pooled) and trained by ``smilejax.trainer.train`` with the
config's model and training settings (``data`` becomes ``stored_simulations``; its batch size and
reader settings stay), into ``OUT/round-R/`` which ``smilejax eval`` and ``smilejax export`` take as
any run. ``OUT/rounds.json`` lists the rounds (simulations, acceptance of the truncation, threshold).

Command line: ``smilejax data sequential CONFIG --rounds 3 --simulations 1000 --observation 1``.
Under ``srun`` every process draws the same simulations (the same keys), process 0 writes them, and
the training of each round is spread over all processes as any run's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

import jax
import numpy as np
from smilejax.inputs.stored_simulations import StoredSimulationsConfig

from smilejax import config, trained, trainer
from smilejax.config import Config

from . import evaluation, posterior, tasks

log = logging.getLogger(__name__)

QUANTILE = 1e-4  # TSNPE's truncation: the region holding 1 - 1e-4 of the posterior's mass
THRESHOLD_SAMPLES = 10_000  # posterior draws whose log q set the threshold
PROPOSALS = 65_536  # prior draws per rejection pass
NRE_PASSES = 16  # batches of ``THRESHOLD_SAMPLES`` prior draws weighting a ratio estimator's quantile
MIN_ACCEPTANCE = 1e-4  # below it, the rejection would take too long: fail with the numbers


@dataclasses.dataclass
class Round:
    """One round: its run, its pooled simulations, and the truncation that drew its new ones."""

    index: int
    run_dir: Path
    simulations: Path
    total_simulations: int
    acceptance: float  # fraction of prior draws inside the truncation (1.0 for the first round)
    threshold: float | None  # log q bound of the truncation (None: the prior)
    last_eval: dict = dataclasses.field(default_factory=dict)


def threshold(
    model, x_o: np.ndarray, key: jax.Array, *, quantile: float = QUANTILE, samples: int = THRESHOLD_SAMPLES
) -> float:
    """The ``quantile`` quantile of log q(theta | x_o) under q(. | x_o): over ``samples`` draws of an NPE's
    flow; for a ratio estimator, over prior draws weighted by the ratio (what its importance resampling
    would draw, without drawing)."""
    _, density = evaluation.sampler(model)
    x_rep = np.repeat(x_o[None], samples, axis=0)
    if posterior.is_npe(model):
        draw, _ = evaluation.sampler(model)
        log_q = density(draw(x_o[None], samples, key)[0], x_rep)
        return float(np.quantile(log_q[np.isfinite(log_q)], quantile))
    task = tasks.get(model.task_name)
    log_q, log_w = [], []
    for k in jax.random.split(key, NRE_PASSES):
        theta = np.asarray(task.prior_sample(k, samples), np.float32)
        lq = density(theta, x_rep)
        log_q.append(lq)
        log_w.append(lq - np.asarray(task.log_prior(theta)) if task.log_prior is not None else lq)
    return _weighted_quantile(np.concatenate(log_q), np.concatenate(log_w), quantile)


def _weighted_quantile(values: np.ndarray, log_w: np.ndarray, q: float) -> float:
    ok = np.isfinite(values) & np.isfinite(log_w)
    values, w = values[ok], np.exp(log_w[ok] - log_w[ok].max())
    order = np.argsort(values)
    cdf = np.cumsum(w[order]) / w.sum()
    return float(values[order][np.searchsorted(cdf, q)])


def truncated_prior(
    model,
    task: tasks.Task,
    x_o: np.ndarray,
    bound: float,
    n: int,
    key: jax.Array,
    *,
    proposals: int = PROPOSALS,
) -> tuple[np.ndarray, float]:
    """``n`` prior draws with log q(theta | x_o) >= ``bound`` (rejection) and the acceptance rate."""
    _, density = evaluation.sampler(model)
    prior = jax.jit(task.prior_sample, static_argnums=1)
    x_rep = np.repeat(x_o[None], proposals, axis=0)
    kept, drawn, accepted = [], 0, 0
    while accepted < n:
        key, sub = jax.random.split(key)
        theta = np.asarray(prior(sub, proposals), np.float32)
        ok = density(theta, x_rep) >= bound
        kept.append(theta[ok])
        drawn, accepted = drawn + proposals, accepted + int(ok.sum())
        if drawn >= proposals * 4 and accepted / drawn < MIN_ACCEPTANCE:
            raise RuntimeError(
                f"the truncated prior accepts {accepted} of {drawn} prior draws (< {MIN_ACCEPTANCE}); "
                "the posterior is far narrower than the prior: fewer rounds or a larger first round"
            )
    return np.concatenate(kept)[:n], accepted / drawn


def simulate(task: tasks.Task, theta: np.ndarray, key: jax.Array) -> np.ndarray:
    """x [n, x_dim] for ``theta`` [n, theta_dim] from the task's simulator (one jitted call)."""
    return np.asarray(jax.jit(task.simulate)(key, theta), np.float32).reshape(len(theta), -1)


def round_config(cfg: Config, simulations: Path, run_dir: Path) -> Config:
    """``cfg`` training on a stored file: the data section's batch and reader settings are kept."""
    keep = {
        f.name: getattr(cfg.data, f.name)
        for f in dataclasses.fields(StoredSimulationsConfig)
        if f.name not in ("format", "path", "eval_path") and hasattr(cfg.data, f.name)
    }
    data = StoredSimulationsConfig(path=str(simulations), **keep)
    return dataclasses.replace(cfg, data=data, run=dataclasses.replace(cfg.run, dir=str(run_dir)))


def _write(path: Path, theta: np.ndarray, x: np.ndarray) -> None:
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, theta=theta, x=x)
        tmp.replace(path)
    if jax.process_count() > 1:  # the others read it once it is there
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"lfi-sequential {path}")


def run(
    cfg: Config,
    rounds: int,
    sims_per_round: int,
    observation: int,
    *,
    out: str | Path,
    seed: int = 0,
    quantile: float = QUANTILE,
) -> list[Round]:
    """Trains ``rounds`` rounds of ``sims_per_round`` new simulations each for the task's observation
    ``observation`` (numbered from 1); the rounds in order (the last one's run is the result)."""
    if rounds < 1 or sims_per_round < 1:
        raise ValueError(f"rounds and simulations per round must be >= 1, got {rounds} and {sims_per_round}")
    task = tasks.get(cfg.model.task)
    if not 1 <= observation <= task.num_observations:
        raise ValueError(f"observation {observation}: {task.name} has 1..{task.num_observations}")
    x_o = np.asarray(task.observation(observation), np.float32)
    out = Path(out)
    if any(out.glob("round-*/checkpoints")):  # a round's run would resume another sequence's training
        raise ValueError(f"{out} holds the rounds of an earlier sequence; give another --out")
    key = jax.random.key(seed)
    theta_all, x_all, done = (
        np.zeros((0, task.theta_dim), np.float32),
        np.zeros((0, task.x_dim), np.float32),
        [],
    )
    model, bound, acceptance = None, None, 1.0
    for r in range(1, rounds + 1):
        k_trunc, k_prior, k_sim, k_thr = jax.random.split(jax.random.fold_in(key, r), 4)
        if model is None:
            theta = np.asarray(task.prior_sample(k_prior, sims_per_round), np.float32)
        else:
            bound = threshold(model, x_o, k_thr, quantile=quantile)
            theta, acceptance = truncated_prior(model, task, x_o, bound, sims_per_round, k_trunc)
        x = simulate(task, theta, k_sim)
        theta_all, x_all = np.concatenate([theta_all, theta]), np.concatenate([x_all, x])
        path = out / f"round-{r}" / "simulations.npz"
        _write(path, theta_all, x_all)
        log.info(
            "round %d/%d: %d new simulations (acceptance %.3g), %d in all",
            r,
            rounds,
            len(theta),
            acceptance,
            len(theta_all),
        )
        result = trainer.train(round_config(cfg, path, out / f"round-{r}"))
        model = trained.load(result.run_dir).model
        done.append(Round(r, result.run_dir, path, len(theta_all), acceptance, bound, result.last_eval))
        if jax.process_index() == 0:
            listing = [
                {**dataclasses.asdict(d), "run_dir": str(d.run_dir), "simulations": str(d.simulations)}
                for d in done
            ]
            (out / "rounds.json").write_text(json.dumps(listing, indent=2) + "\n")
    return done


# ---------------------------------------------------------------- smilejax data sequential


def register(sub: argparse._SubParsersAction) -> None:
    """``smilejax data sequential`` (entry-point group ``smilejax.data_commands``)."""
    from smilejax.commands.common import add_config_args

    p = sub.add_parser(
        "sequential",
        help="LFI: sequential rounds (TSNPE) for one observation: simulate at the posterior, train, repeat",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(p)
    p.add_argument("--rounds", type=int, default=3, help="rounds, the first from the prior (default 3)")
    p.add_argument("--simulations", type=int, default=1000, metavar="N", help="new simulations per round")
    p.add_argument(
        "--observation",
        type=int,
        default=1,
        metavar="I",
        help="the task's observation to infer, numbered from 1 as the benchmark does (default 1)",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="where the rounds go (default runs/sequential-<task>-obs<I>)",
    )
    p.add_argument("--seed", type=int, default=0, help="key of the simulations and truncations")
    p.add_argument(
        "--quantile",
        type=float,
        default=QUANTILE,
        help="posterior mass left outside the truncation (default 1e-4, as TSNPE)",
    )
    p.set_defaults(run=_main)


def _main(args: argparse.Namespace) -> int:
    cfg = config.load(args.config, args.overrides)
    out = args.out or f"runs/sequential-{cfg.model.task}-obs{args.observation}"
    done = run(
        cfg, args.rounds, args.simulations, args.observation, out=out, seed=args.seed, quantile=args.quantile
    )
    if jax.process_index() == 0:
        for d in done:
            print(
                f"round {d.index}: {d.total_simulations} simulations, acceptance {d.acceptance:.3g}, "
                f"run {d.run_dir}"
            )
        print(f"posterior: smilejax eval {done[-1].run_dir} --observations {args.observation}")
    return 0
