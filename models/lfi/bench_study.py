"""``smilejax bench train npe-...``: the simulation-based-inference benchmark, smilejax's NPE against `sbi`'s.

For each task (``--tasks``, the benchmark's names; default two_moons, gaussian_linear, slcp,
bernoulli_glm) and simulation budget (``--budgets``, default 10^3, 10^4, 10^5) the study simulates one
fixed set of that many pairs (theta, x) from the prior and the task's JAX simulator, with a key fixed by
task and budget. On that same set, in the same session, for each of ``--seeds`` seeds:

* `sbi` (PyTorch, its own environment: ``sbi_peer``, ``sbi_run.py``) trains its NPE with its own loop
  (validation-based early stopping on 10% of the set), with the flow smilejax's config names (maf or nsf,
  width, transforms, bins), the same batch size and learning rate; it runs first, alone on the machine.
* smilejax trains the config's NPE (``smilejax train``'s trainer, format ``stored_simulations``) the
  same way by default: ``--patience`` 20 (sbi's ``stop_after_epochs``) holds 10% out
  (``split_validation``), evaluates once per epoch and stops with the best parameters
  (``train.early_stop_patience``) within at most ``--epochs`` passes; ``--patience 0`` trains
  ``--epochs`` passes over all of the set.

``--no-smilejax`` / ``--no-sbi`` run one side alone (e.g. sbi started early in the background), and
``--add-runs`` joins an earlier run's per-seed rows into this table; ``--first-seed`` shifts the seeds;
``--label`` names this run's smilejax variant (its rows stay apart from other smilejax rows);
``--config-for TASK=CONFIG`` trains a task with another config, both sides (``bench_options``).
Each run's draws are saved in ``OUT/draws`` before scoring and each score as it ends (``bench_draws``):
``--rescore OUT`` finishes a run stopped while scoring, without training.

Each then draws ``--posterior-samples`` samples at each of the task's reference observations
(``--observations``), draws outside the prior's support rejected alike on both sides (as the benchmark's
NPE does), and the study scores them with the benchmark's C2ST (``c2st``) against the reference
posterior samples. Rows: per task, budget, implementation and seed, the C2ST mean over observations and
the wall time to train (simulations in memory; smilejax's includes compilation, its checkpoint and the
model's standardisation). ``lfi.md`` is the table (with the per-seed C2ST and epochs), ``lfi-runs.md``
the per-seed rows (with the C2ST per observation); ``lfi.png`` the paper's C2ST-against-budget panels
with the wall time below.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from smilejax.bench import common
from smilejax.config import Config

from . import bench_draws, sbi_peer
from .bench_options import add_arguments as add_arguments  # the CLI asks the study module for it
from .bench_options import check, numbers, task_configs
from .bench_report import added_rows, per_observation, plot, summarise

log = logging.getLogger(__name__)

SIMULATION_KEY = 20_21  # with the task and budget: one fixed set of simulations per (task, budget)
VALIDATION_KEY = 0x7A11  # with the seed: which simulations smilejax holds out for early stopping
VALIDATION = 0.1  # the held-out fraction, sbi's validation_fraction
COLUMNS = [
    "task",
    "budget",
    "impl",
    "variant",
    "seed",
    "c2st",
    "per_observation",
    "train_s",
    "steps",
    "epochs",
]
COLUMNS += ["note"]
SUMMARY_COLUMNS = ["task", "budget", "impl", "seeds", "c2st", "c2st_seed_std", "c2st_per_seed"]
SUMMARY_COLUMNS += ["epochs_per_seed", "train_s", "train_s_std"]


def simulate(task, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """The fixed set of ``budget`` pairs (theta, x) of ``task`` (same key for every seed and side)."""
    import jax

    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(SIMULATION_KEY), budget), _crc(task.name))
    seeds = np.asarray(jax.random.randint(key, (budget,), 0, np.iinfo(np.int32).max), np.uint32)
    theta, x = [], []
    for start in range(0, budget, 50_000):  # bounded memory for the larger budgets
        t, s = jax.jit(task.simulate_seeds)(seeds[start : start + 50_000])
        theta.append(np.asarray(t, np.float32))
        x.append(np.asarray(s, np.float32).reshape(len(t), -1))
    return np.concatenate(theta), np.concatenate(x)


def _crc(name: str) -> int:
    import zlib

    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def _seeds(args: argparse.Namespace) -> range:
    return range(args.first_seed, args.first_seed + args.seeds)


def sbi_settings(cfg: Config, args: argparse.Namespace) -> sbi_peer.Settings:
    """sbi's NPE with smilejax's flow kind, width, depth and bins, batch size and learning rate."""
    flow = cfg.model.flow
    return sbi_peer.Settings(
        density_estimator=flow.kind,
        hidden_features=int(flow.hidden[0]),
        num_transforms=int(flow.layers),
        num_bins=int(getattr(flow, "bins", 10)),
        training_batch_size=int(args.batch or cfg.data.batch_size),
        learning_rate=float(cfg.optimizer.lr),
        num_samples=args.posterior_samples * 2,  # room for the support rejection
        threads=args.torch_threads,
        max_num_epochs=args.sbi_max_epochs or sbi_peer.Settings.max_num_epochs,
        stop_after_epochs=args.patience or sbi_peer.Settings.stop_after_epochs,
    )


def split_validation(path: Path, batch: int, seed: int, tmp: Path) -> tuple[Path, Path, int]:
    """The set at ``path`` split as sbi splits it for early stopping: about ``VALIDATION`` of it held out
    (a random choice per seed; rounded to a multiple of a quarter batch), the rest to train on. The
    evaluation pipeline reads whole batches only, so the held-out file repeats the held-out examples
    (each equally often) to a whole number of batches: an evaluation's mean is their mean. Returns the
    training file, the held-out file and the evaluation batches that cover it once."""
    with np.load(path) as f:
        theta, x = f["theta"], f["x"]
    unit = max(1, batch // 4)
    held = max(unit, round(VALIDATION * len(theta) / unit) * unit)
    if len(theta) - held < batch:
        raise SystemExit(f"a budget of {len(theta)} leaves less than one batch of {batch} to train on")
    order = np.random.default_rng([VALIDATION_KEY, seed]).permutation(len(theta))
    rows = math.lcm(held, batch)
    val = np.tile(order[:held], rows // held)
    train, valid = tmp / f"{path.stem}-{seed}-train.npz", tmp / f"{path.stem}-{seed}-validation.npz"
    np.savez(train, theta=theta[order[held:]], x=x[order[held:]])
    np.savez(valid, theta=theta[val], x=x[val])
    return train, valid, rows // batch


def train_smilejax(cfg: Config, args, task, budget: int, seed: int, path: Path, tmp: Path):
    """Trains the config's NPE on the stored set at ``path``; (trained model, wall seconds, steps run,
    epochs run). With ``--patience``, on 90% of it with early stopping on the rest (``split_validation``,
    evaluated once per epoch) for at most ``--epochs``; else on all of it for ``--epochs``."""
    from smilejax import registry, trained, trainer

    batch = int(args.batch or cfg.data.batch_size)
    data_cls = registry.dataset("stored_simulations").config
    run_dir = tmp / f"smilejax-{task.name}-{budget}-{seed}"
    start = time.perf_counter()  # the split is part of training, as sbi's is
    if args.patience:
        train_path, eval_path, eval_steps = split_validation(path, batch, seed, tmp)
        with np.load(train_path) as f:
            per_epoch = len(f["theta"]) // batch  # the pipeline drops an incomplete last batch
        every, patience = per_epoch, args.patience
    else:
        train_path, eval_path, eval_steps, per_epoch = path, None, 1, budget / batch
        every, patience = 0, 0
    steps = max(1, math.ceil(args.epochs * per_epoch))
    run_cfg = dataclasses.replace(
        cfg,
        data=data_cls(
            format="stored_simulations",
            path=str(train_path),
            eval_path=str(eval_path) if eval_path else None,
            batch_size=batch,
            read_threads=1,
        ),
        model=dataclasses.replace(
            cfg.model, task=task.name, theta_loc=None, theta_scale=None, x_loc=None, x_scale=None
        ),
        run=dataclasses.replace(
            cfg.run,
            dir=str(run_dir),
            steps=steps,
            seed=seed,
            eval_every=every,
            eval_steps=eval_steps,
            checkpoint_every=0,
            log_every=max(1, steps // 5),
        ),
        logging=dataclasses.replace(cfg.logging, wandb="off", tensorboard=False, progress=False),
        train=dataclasses.replace(cfg.train, precision="fp32", early_stop_patience=patience),
        optimizer=_optimizer(cfg, patience),
    )
    result = trainer.train(run_cfg)
    seconds = time.perf_counter() - start
    return trained.load(run_dir), seconds, result.step, result.step / per_epoch


def _optimizer(cfg: Config, patience: int):
    """The config's optimizer; with early stopping at its peak learning rate throughout, as sbi trains:
    a warm-up and decay spread over the ``--epochs`` cap would follow a clock that the stop ignores (a
    run stopped at epoch 140 of 1000 never decays). On two_moons at 10^3 this gave a lower held-out loss
    (-2.61 against -2.56, seed 0)."""
    if not patience:
        return cfg.optimizer
    return dataclasses.replace(cfg.optimizer, schedule="constant", warmup=0.0)


def keep_in_support(task, draws: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` draws of each observation inside the prior's support (draws outside it fill up
    the rest only when too few are inside)."""
    from .evaluation import in_support

    ok = in_support(task, draws)
    order = np.argsort(~ok, axis=1, kind="stable")
    return np.take_along_axis(draws, order[..., None], axis=1)[:, :n]


def _meta(task: str, budget: int, impl: str, seed: int, seconds: float, **more) -> dict:
    """A run's row before scoring (``bench_draws.row`` adds the C2ST)."""
    return {"task": task, "budget": budget, "impl": impl, "seed": seed, "train_s": seconds, **more}


def run(cfg: Config, args: argparse.Namespace) -> int:
    from . import tasks as tasklib
    from .evaluation import parse_observations

    check(cfg, args)
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    budgets = numbers(args.budgets, "budgets")
    cfgs = task_configs(cfg, args, names)
    chosen = {name: tasklib.get(name) for name in names}
    missing = [n for n, t in chosen.items() if t.reference_samples is None]
    if missing:
        raise SystemExit(f"--tasks: {', '.join(missing)} have no reference posterior samples")
    obs = {n: parse_observations(args.observations, t.num_observations) for n, t in chosen.items()}
    if args.rescore:  # an earlier run's saved draws, scored where they are not yet: nothing trains
        rows, problem, info = bench_draws.rescored(args.rescore, args.observations), None, {}
    else:
        rows, problem, info = _trained_rows(cfgs, args, budgets, chosen, obs)
    rows += added_rows(args.add_runs)
    table = summarise(rows)
    extra = {
        "model": cfg.model.name,
        "flow": dataclasses.asdict(cfg.model.flow),
        "embedding": dataclasses.asdict(cfg.model.embedding),
        "batch": int(args.batch or cfg.data.batch_size),
        "lr": cfg.optimizer.lr,
        "epochs": args.epochs,
        "posterior_samples": args.posterior_samples,
        "observations": f"as saved in {args.rescore}" if args.rescore else obs,
        "sbi": info,
        "summary": table,
    }
    if args.config_for:  # the tasks that trained with another config, both sides
        extra["config_for"] = {
            n: {"flow": dataclasses.asdict(c.model.flow), "embedding": dataclasses.asdict(c.model.embedding)}
            for n, c in cfgs.items()
            if c is not cfg
        }
    if problem:
        extra["sbi_problem"] = problem
    notes = [
        "c2st: mean over the observations of the benchmark's C2ST (0.5: the reference posterior); "
        "train_s: wall time to train on simulations in memory (smilejax: with compilation).",
    ]
    path = common.write_results(args.out, "lfi-runs", per_observation(rows), columns=COLUMNS, extra=extra)
    summary_path = common.write_results(
        args.out, "lfi", table, columns=SUMMARY_COLUMNS, extra=extra, notes=notes
    )
    plot(table, summary_path.with_suffix(".png"))
    log.info("per-seed rows: %s", path)
    return 1 if problem else 0


def _trained_rows(cfgs: dict, args, budgets: list[int], chosen: dict, obs: dict) -> tuple:
    """Both sides' trainings on each task's fixed sets, scored: (rows, sbi's failure or None, sbi's info)."""
    rows, problem, info = [], None, {}
    if args.no_sbi and args.no_smilejax:  # a table of --add-runs alone: nothing to simulate
        return rows, problem, info
    with tempfile.TemporaryDirectory(prefix="smilejax-lfi-") as tmp_name:
        tmp = Path(tmp_name)
        sets: dict[tuple[str, int], Path] = {}
        jobs = []
        for name, task in chosen.items():
            observed = np.stack([task.observation(i) for i in obs[name]])
            for budget in budgets:
                theta, x = simulate(task, budget)
                sets[(name, budget)] = tmp / f"{name}-{budget}.npz"
                np.savez(sets[(name, budget)], theta=theta, x=x)
                jobs += [sbi_peer.Job(f"{name}-{budget}", s, theta, x, observed) for s in _seeds(args)]
        if not args.no_sbi:  # first: the machine is sbi's alone
            try:
                info = sbi_rows(cfgs, args, jobs, chosen, obs, tmp, rows)
            except RuntimeError as err:
                problem = str(err)
                log.error("%s", problem)
        for (name, budget), path in sets.items() if not args.no_smilejax else ():
            for seed in _seeds(args):
                rows.append(smilejax_row(cfgs[name], args, chosen[name], budget, seed, path, tmp, obs[name]))
    return rows, problem, info


def sbi_rows(cfgs: dict, args, jobs: list, chosen: dict, obs: dict, tmp: Path, rows: list[dict]) -> dict:
    """sbi's trainings of every job, one subprocess per distinct flow (tasks' configs, ``--config-for``),
    scored; appends their rows, returns sbi's info."""
    groups: dict[sbi_peer.Settings, list] = {}
    for job in jobs:
        groups.setdefault(sbi_settings(cfgs[job.key.rsplit("-", 1)[0]], args), []).append(job)
    interpreter, info = sbi_peer.python(args.torch_python), {}
    for settings, group in groups.items():
        result = sbi_peer.run(interpreter, group, settings, tmp)
        rows += _sbi_scored(result, args, group, chosen, obs)
        info = result.info  # versions and device: the same for every group
    return info


def _sbi_scored(result: sbi_peer.Result, args, jobs: list, chosen: dict, obs: dict) -> list[dict]:
    """Rows of sbi's trained ``jobs``: their draws kept in the prior's support and scored."""
    rows = []
    for job in jobs:
        name, budget = job.key.rsplit("-", 1)
        task, k = chosen[name], (job.key, job.seed)
        draws = keep_in_support(task, result.samples[k], args.posterior_samples)
        r = result.rows[k]
        note = f"sbi {result.info.get('sbi')} ({result.info.get('device')}), early stopping"
        meta = _meta(name, int(budget), "sbi", job.seed, r["train_s"], epochs=r["epochs"], note=note)
        rows.append(bench_draws.finish(bench_draws.save(args.out, meta, draws, obs[name])))
        log.info("sbi %s seed %d: C2ST %.3f", job.key, job.seed, rows[-1]["c2st"])
    return rows


def smilejax_row(
    cfg, args, task, budget: int, seed: int, path: Path, tmp: Path, observations: list[int]
) -> dict:
    """smilejax's training of one seed on the set at ``path``, scored."""
    import jax

    from .evaluation import posterior_draws, sampler

    model, seconds, steps, epochs = train_smilejax(cfg, args, task, budget, seed, path, tmp)
    draw, _ = sampler(model.model)
    observed = np.stack([task.observation(i) for i in observations])
    draws, _leak = posterior_draws(draw, task, observed, args.posterior_samples, jax.random.key(seed))
    note = f"{jax.device_count()} × {jax.devices()[0].device_kind}"
    more = {"steps": steps, "epochs": round(epochs, 1), "note": note}
    if args.label:  # a variant apart (another flow, embedding): its own rows in the table
        more["variant"] = args.label
    meta = _meta(task.name, budget, "smilejax", seed, seconds, **more)
    row = bench_draws.finish(bench_draws.save(args.out, meta, np.asarray(draws), observations))
    log.info("smilejax %s-%d seed %d: C2ST %.3f, %.1f s", task.name, budget, seed, row["c2st"], seconds)
    return row
