"""``smilejax bench convergence CONFIG``: training variants from the same seeds on the same sample, judged
by the quality they reach against jets seen and against training time.

A variant is a named set of config overrides (GN2's: ``padded`` as salt pads every batch to max_tracks,
``bucketed`` the same batches each padded to its longest jet, ``window16`` jets of 16 batches sorted by
track count first, ``packed`` several jets per row of track slots); the model family declares its
defaults and its quality metric (``Bench.convergence``; GN2: light and c rejection at 77 % b-efficiency).
Every (variant, seed) is one ``smilejax train`` run (``trainer.train``) with ``run.seed`` = seed, so
variants with the same seed start from the same weights and draw the same jets. Before the first step,
every ``--eval-every`` steps and after the last, the run is scored on the same held-out batches
(``run.eval_steps`` of them):
validation loss and the quality metric, with the jets seen and the training seconds so far (steps only,
blocked before each evaluation: device time on a GPU; evaluations and compilation left out).

Results in --out (written by ``_convergence_report``): ``convergence.json`` (every point and the
per-variant summary), ``convergence.md`` (per variant: final validation loss and quality, mean ± sd over
seeds, jets/s, the training time and jets to reach the first variant's final validation loss with the
same seed, and whether its validation loss curve equals the first variant's within seed spread: the
largest |difference of the means over seeds| over the first variant's seed standard deviation at any
evaluation, at most 1; ``_convergence_spread``) and ``convergence.png`` (validation loss and the headline
quality against jets seen and against training time, one line per variant, a band over the seeds). On
CPUs the study runs reduced and says so in every output.

``--torch`` adds the family's PyTorch peer (``Convergence.torch``; GN2: ``models/gn2/torch_train.py`` in
the salt reference environment) as variants ``torch-compile`` / ``torch-eager``: per seed it trains on the
first variant's very batches, from that run's initial weights, with its AdamW settings and learning rate
at every step, and is scored on the same held-out batches at the same steps (``_convergence_torch``).
"""

from __future__ import annotations

import argparse
import copy
import logging
import shlex
import shutil
from pathlib import Path

from smilejax.bench._convergence_report import CPU_MODE, report
from smilejax.commands.common import OVERRIDES_HELP, add_command, choice_list

log = logging.getLogger(__name__)

TORCH_MODES = ("compile", "eager")  # of the PyTorch reference line (--torch)


def register(sub) -> None:
    parser = add_command(
        sub,
        "convergence",
        help="training variants (padded, bucketed, packed, ...) judged by quality vs jets seen and time",
        description=__doc__,
    )
    parser.add_argument("config", metavar="CONFIG", help="packaged config (e.g. gn2) or YAML config")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)
    parser.add_argument(
        "--variants",
        help="comma list of the variants to train, the first the reference (default: all the family's, "
        "in its order; GN2: padded,bucketed,window16,packed)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="'NAME KEY=VALUE ...'",
        help="define (or redefine) a variant, its name and overrides in one quoted argument, e.g. "
        "--variant 'window4 data.bucket_tracks=[16,24] data.bucket_window=4' (repeatable; name it in "
        "--variants too when --variants is given)",
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds per variant: run.seed 0..N-1 (default 3)")
    parser.add_argument("--steps", type=int, default=2000, help="training steps of every run (default 2000)")
    parser.add_argument("--eval-every", type=int, default=200, help="steps between evaluations (default 200)")
    parser.add_argument(
        "--eval-batches",
        type=int,
        help="held-out batches per evaluation (run.eval_steps; default: the config's)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.005,
        help="a run reaches its target within this fraction of it (default 0.005: 0.5 %%, so that the "
        "reference itself reaches it before its last, flat, evaluations)",
    )
    parser.add_argument("--out", default="bench-results/convergence", help="folder for JSON, table and plot")
    parser.add_argument(
        "--torch",
        action="store_true",
        help="add the family's PyTorch peer as a variant per --torch-modes ('torch-compile'): trained on the "
        "first variant's very batches, from its initial weights, with its optimizer and learning rate "
        "at every step, evaluated on the same held-out batches; run first, before JAX takes the device. "
        "Needs the family's reference environment (GN2: .salt-ref, `make reference`; or --torch-python)",
    )
    parser.add_argument(
        "--torch-modes",
        type=choice_list(TORCH_MODES),
        default=["compile"],
        help="with --torch: comma list of compile (torch.compile) and eager (default compile)",
    )
    parser.add_argument(
        "--torch-python", help="with --torch: the interpreter with torch (default: the family's)"
    )
    parser.set_defaults(run=run)


# ---------------------------------------------------------------- variants and configs


def variants(args: argparse.Namespace, family: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """The variants to train, in order: --variants' names among the family's and --variant's."""
    defined = dict(family)
    for text in args.variant:
        name, *overrides = shlex.split(text) or [""]
        if not name or "=" in name:
            raise SystemExit(f"bench convergence: --variant {text!r} must start with the variant's name")
        defined[name] = tuple(overrides)
    names = [n.strip() for n in args.variants.split(",") if n.strip()] if args.variants else list(defined)
    unknown = [n for n in names if n not in defined]
    if unknown:
        raise SystemExit(
            f"bench convergence: unknown variant(s) {unknown}; known: {', '.join(defined)} "
            "(define one with --variant 'NAME KEY=VALUE ...')"
        )
    if not names or len(set(names)) != len(names):
        raise SystemExit(f"bench convergence: --variants needs distinct names, got {names}")
    return {n: defined[n] for n in names}


def check_keys(tree: dict, chosen: dict[str, tuple[str, ...]], config_name: str) -> None:
    """Refuses, before any training, a variant that sets a key the config's sections do not have."""
    from smilejax import config

    known = set(config.field_keys(tree))
    problems = []
    for name, overrides in chosen.items():
        for item in overrides:
            key = item.partition("=")[0]
            if key not in known:
                problems.append(f"variant {name!r} sets {key!r}, which config {config_name!r} does not know")
    if problems:
        raise SystemExit(
            "bench convergence: " + "; ".join(problems) + " (this build's config has no such field: leave "
            "the variant out of --variants or redefine it with --variant)"
        )


def run_config(args: argparse.Namespace, base: dict, overrides: tuple[str, ...], seed: int, run_dir: Path):
    """The ``Config`` of one (variant, seed) run."""
    from smilejax import config

    fixed = [  # after the user's overrides: the probe's timing and a fresh run depend on them
        f"run.steps={args.steps}",
        "run.eval_every=0",  # the probe evaluates, outside the timed steps
        f"run.log_every={args.eval_every}",
        "run.checkpoint_every=0",
        "run.keep_checkpoints=1",
        f"run.seed={seed}",
        f"run.dir={run_dir}",
        "logging.progress=false",
        "logging.tensorboard=false",
        "train.early_stop_patience=0",  # every variant trains all its steps
    ]
    if args.eval_batches:
        fixed.append(f"run.eval_steps={args.eval_batches}")
    return config.load(copy.deepcopy(base), [*args.overrides, *overrides, *fixed])


# ---------------------------------------------------------------- the study


def run(args: argparse.Namespace) -> int:
    import jax

    from smilejax import config, registry, trainer
    from smilejax.bench import _convergence_probe

    if args.seeds < 1 or args.steps < 1 or args.eval_every < 1:
        raise SystemExit("bench convergence: --seeds, --steps and --eval-every must be at least 1")
    base = config.apply_overrides(config.read_yaml(args.config), args.overrides)
    probe_cfg = config.from_dict(copy.deepcopy(base))
    spec = registry.model(probe_cfg.model.name)
    hook = spec.bench.convergence
    if hook is None:
        raise SystemExit(f"bench convergence: model family {spec.name!r} declares no convergence hook")
    chosen = variants(args, hook.variants)
    check_keys(base, chosen, args.config)
    out = Path(args.out)

    points: list[dict] = []
    torch_points, torch_about = [], {}
    if args.torch:  # before JAX touches the device (_convergence_torch)
        from smilejax.bench import _convergence_torch

        torch_modes = args.torch_modes
        reference = next(iter(chosen.values()))

        def reference_config(seed: int, run_dir: Path):
            return run_config(args, base, reference, seed, run_dir)

        torch_points, torch_about = _convergence_torch.run(
            spec, torch_modes, args.torch_python, args.seeds, args.eval_every, reference_config, out
        )
    mode = CPU_MODE if jax.devices()[0].platform == "cpu" else jax.devices()[0].platform.upper()

    # seed-major: a seed's variants run back to back, so a drift in the machine's load (a shared node)
    # falls on every variant alike
    for seed in range(args.seeds):
        for name, overrides in chosen.items():
            run_dir = out / "runs" / f"{name}-seed{seed}"
            shutil.rmtree(run_dir, ignore_errors=True)  # a rerun into the same --out trains afresh
            cfg = run_config(args, base, overrides, seed, run_dir)
            log.info("bench convergence: %s, seed %d (%s)", name, seed, " ".join(overrides) or "no overrides")
            probe = _convergence_probe.Probe(cfg, hook, args.eval_every)
            result = trainer.train(cfg, callbacks=[probe])
            if result.exit_code:  # a stop signal (preemption): no more runs, nothing half reported
                raise SystemExit(result.exit_code)
            points += [{"variant": name, "seed": seed, **p} for p in probe.points]

    points += torch_points
    settings = {"steps": args.steps, "eval_every": args.eval_every, "seeds": args.seeds}
    settings["tolerance"] = args.tolerance
    if args.torch:
        first = next(iter(chosen))
        for m in torch_modes:  # listed after the JAX variants; trained on the first one's batches
            chosen[f"torch-{m}"] = (f"PyTorch peer, torch {m}, on the batches of {first!r}",)
        settings.update(torch_about)
    report(out, points, chosen, hook.headline, mode, settings)
    return 0
