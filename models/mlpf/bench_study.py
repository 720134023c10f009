"""``smilejax bench train mlpf``: one MLPF training step in JAX against particleflow's own, same batches.

For each shape (``--shape ELEMENTSxEVENTS``; default 256x128 and 1024x32) the study makes ``BATCHES``
synthetic batches of CLIC-like events (``synthetic.events``: N/2..N real elements per event,
padded to N) and writes them to an .npz. particleflow 3.1.0 trains on them first, in its own
environment (``peer``, ``reference.py``: eager and ``torch.compile``; its real
``mlpf_loss``; AdamW), and hands back its initial weights. Then the program that ``smilejax train`` runs
(``steps.build``: forward, the ported ``mlpf_loss``, backward, AdamW) loads those weights and trains on
the same batches, already on the devices, once per ``--attention`` implementation. bf16 is the JAX
model's compute dtype (float32 parameters) and autocast on particleflow's side; the learning rate is
``optimizer.lr``, constant, on both sides.

Both sides step through the batches in the same order: ``--warmup`` steps, then ``--repeats`` timed runs
of ``--steps`` steps (the median counts). Rates are events/s and valid (unpadded) elements/s; the ratios
are against particleflow eager and against its best mode at the same shape. ``first_loss`` (batch 0,
untrained weights) and ``last_loss`` (the last timed step) of JAX and particleflow eager are compared in
the JSON (``loss_vs_ref_eager``): in fp32 they agree to float rounding (the port's parity), which shows
that both trained the same model on the same batches. ``mem_gb``: JAX's compiled step (arguments,
outputs, temporaries), PyTorch's peak allocated memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import tempfile
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from smilejax.models.attention import ATTENTION_IMPLEMENTATIONS, resolve_attention

from smilejax.bench import common
from smilejax.config import Config, ConfigError
from smilejax.xla import profile

from . import peer, synthetic

log = logging.getLogger(__name__)

PRESETS = ((256, 128), (1024, 32))  # (max elements, events per batch)
BATCHES = 4  # distinct batches per shape, cycled through
IMPLS = ("jax", "torch-eager", "torch-compile")
COLUMNS = [
    "impl",
    "attention",
    "elements",
    "events",
    "valid_per_event",
    "ms_per_step",
    "events_per_s",
    "valid_elements_per_s",
    "vs_ref_eager",
    "vs_ref_best",
    "first_loss",
    "mem_gb",
    "mfu",
    "note",
]


# generic options of ``bench train`` that this study has no use for: refused rather than ignored
NOT_OPTIONS = ("bucket", "torch_modes", "vary")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This study's options of ``smilejax bench train mlpf`` (beside the generic ones)."""
    group = parser.add_argument_group("mlpf only")
    group.add_argument(
        "--shape",
        nargs="+",
        action="extend",
        metavar="NxB",
        help="max elements x events per batch (default 256x128 1024x32)",
    )
    group.add_argument(
        "--impls", default=",".join(IMPLS), help="of jax,torch-eager,torch-compile (default all three)"
    )
    group.add_argument("--warmup", type=int, default=5, help="untimed steps first, each side (default 5)")
    group.add_argument(
        "--torch-attention",
        choices=("auto", "math", "efficient", "flash"),
        default="auto",
        help="particleflow's attention_type (default auto: flash on CUDA in bf16, efficient in fp32, "
        "math on CPU)",
    )


def _check_options(cfg: Config, args: argparse.Namespace) -> None:
    """Refuses the generic options this study does not take; fills the defaults of ``add_arguments``
    and of ``--out`` where the parser did not."""
    wrong = [f"--{k.replace('_', '-')}" for k in NOT_OPTIONS if getattr(args, k, None) not in (None, [])]
    if wrong:
        raise SystemExit(f"{', '.join(wrong)}: not an option of bench train {cfg.model.name}")
    defaults = {"shape": None, "impls": ",".join(IMPLS), "warmup": 5, "torch_attention": "auto"}
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.out = getattr(args, "out", None) or f"bench-results/train-{cfg.model.name}"


def shapes(args: argparse.Namespace) -> list[tuple[int, int]]:
    """(elements, events) pairs from ``--shape``, or ``--tracks`` / ``--batch``, or the presets."""
    if args.shape and (args.tracks or args.batch):
        raise SystemExit("mlpf: give --shape ELEMENTSxEVENTS or --tracks/--batch, not both")
    if args.tracks or args.batch:
        return [(args.tracks or PRESETS[0][0], args.batch or PRESETS[0][1])]
    out = []
    for text in args.shape or [f"{n}x{b}" for n, b in PRESETS]:
        n, sep, b = text.lower().partition("x")
        if not (sep and n.isdigit() and b.isdigit() and int(n) > 0 and int(b) > 0):
            raise SystemExit(f"--shape {text}: expected ELEMENTSxEVENTS, such as 256x128")
        out.append((int(n), int(b)))
    return list(dict.fromkeys(out))


def impls(text: str) -> list[str]:
    chosen = [i.strip() for i in text.split(",") if i.strip()]
    unknown = [i for i in chosen if i not in IMPLS]
    if unknown or not chosen:
        raise SystemExit(f"--impls {text}: choose from {','.join(IMPLS)}")
    return chosen


def make_batches(shape: tuple[int, int]) -> list[dict[str, np.ndarray]]:
    n, b = shape
    return [synthetic.events(seed=k, events=b, elements=n) for k in range(BATCHES)]


def valid_per_step(batches: list[dict], steps: int) -> float:
    """Mean valid elements per timed step (step i trains on batch i mod BATCHES)."""
    counts = [int(batch["mask"].sum()) for batch in batches]
    return sum(counts[i % len(counts)] for i in range(steps)) / steps


def cases(args: argparse.Namespace) -> list[tuple[dict, dict[str, np.ndarray]]]:
    """(row columns, synthetic host batch) per shape: what ``bench roofline`` compiles and reads."""
    return [
        ({"elements": n, "events": b}, synthetic.events(seed=0, events=b, elements=n))
        for n, b in shapes(args)
    ]


def run(cfg: Config, args: argparse.Namespace) -> int:
    _check_options(cfg, args)
    chosen = impls(args.impls)
    todo = shapes(args)
    attentions = [a.strip() for a in (args.attention or cfg.model.attention).split(",") if a.strip()]
    unknown = [a for a in attentions if a not in ATTENTION_IMPLEMENTATIONS]
    if unknown or not attentions:
        raise SystemExit(f"--attention {args.attention}: choose from {','.join(ATTENTION_IMPLEMENTATIONS)}")
    # rows name the implementation that runs ("auto": cudnn on an NVIDIA GPU in bf16, else chunked)
    dtype = jnp.bfloat16 if args.precision == "bf16" else jnp.float32
    attentions = list(dict.fromkeys(resolve_attention(a, dtype) for a in attentions))
    if args.warmup < 1:
        raise SystemExit("--warmup must be at least 1 (the first step gives the loss check)")
    modes = [i.removeprefix("torch-") for i in chosen if i.startswith("torch-")]
    batches = {shape: make_batches(shape) for shape in todo}
    reference = peer.Reference(None, None, "not requested")
    with tempfile.TemporaryDirectory(prefix="smilejax-mlpf-") as tmp:
        if modes:  # first: the accelerator is PyTorch's alone
            python = peer.python(args.torch_python)
            peer.check_optimizer(cfg)
            npz = Path(tmp) / "batches.npz"
            arrays = {}
            for (n, b), shape_batches in batches.items():
                for key in ("X", "ytarget"):
                    arrays[f"{n}x{b}/{key}"] = np.stack([batch[key] for batch in shape_batches])
            np.savez(npz, **arrays)
            reference = peer.run(python, cfg, args, modes, npz, Path(tmp))
        weights = dict(np.load(reference.weights)) if reference.weights else None
        jax_rows, params, failed = [], None, []
        for attention in attentions if "jax" in chosen else []:
            for n, b in todo:
                try:
                    row, params = _measure_jax(cfg, args, (n, b), attention, batches[(n, b)], weights)
                except ConfigError:
                    raise
                except Exception as err:  # cuDNN refusing a shape, out of memory, ...: the rest still runs
                    log.exception("jax %s %dx%d failed", attention, n, b)
                    failed.append(f"jax {attention} {n}x{b}")
                    note = f"failed: {type(err).__name__}: {str(err)[:100]}"
                    row = {"impl": "jax", "attention": attention, "elements": n, "events": b, "note": note}
                jax_rows.append(row)
    rows = jax_rows + peer.rows(reference, modes, todo, params)
    for row in rows:
        if row.get("ms_per_step"):
            step_valid = valid_per_step(batches[(row["elements"], row["events"])], args.steps)
            row["valid_per_event"] = step_valid / row["events"]
            row["events_per_s"] = row["events"] / (row["ms_per_step"] / 1e3)
            row["valid_elements_per_s"] = step_valid / (row["ms_per_step"] / 1e3)
    add_ratios(rows)
    extra = {
        "model": cfg.model.name,
        "params": params,
        "precision": args.precision,
        "shapes": [f"{n}x{b}" for n, b in todo],
        "batches_per_shape": BATCHES,
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "loss_vs_ref_eager": _loss_check(rows),
    }
    if reference.result:
        keys = ("torch", "particleflow", "device", "python", "attention")
        extra["reference"] = {k: reference.result.get(k) for k in keys}
    problem = peer.problem(reference, modes)
    if problem:
        log.error("%s", problem)
        extra["reference_problem"] = problem
    if failed:
        extra["failed"] = failed
    path = common.write_results(args.out, "train", rows, columns=COLUMNS, extra=extra)
    from smilejax.bench.train_step import plot as _plot

    _plot(
        rows,
        path.with_suffix(".png"),
        f"MLPF, {args.precision}",
        value="events_per_s",
        label=lambda r: f"{r['impl']} {r['attention']}\n{r['elements']}x{r['events']}",
        ylabel="events / s (one training step)",
    )
    return 1 if problem or failed else 0


def _measure_jax(cfg, args, shape, attention, host_batches, weights) -> tuple[dict, int]:
    """The JAX row of one (attention, shape) and the parameter count."""
    import jax

    from smilejax import mesh as meshlib
    from smilejax import registry, runtime, steps, xla
    from smilejax.bench._train_jax import compiled_memory_gb as _compiled_memory_gb

    runtime.initialize()
    spec = registry.model(cfg.model.name)
    n, b = shape
    cfg = dataclasses.replace(
        cfg,
        data=cfg.data.with_batch_size(b),
        train=dataclasses.replace(cfg.train, precision=args.precision),
        model=dataclasses.replace(cfg.model, attention=attention, max_elements=n),
        # particleflow's side runs at a constant learning rate: so do we, so that both train alike
        optimizer=dataclasses.replace(cfg.optimizer, schedule="constant", warmup=0.0),
    )
    mesh = meshlib.build_mesh(cfg.mesh)
    divisor = meshlib.batch_divisor(mesh, cfg.mesh.rules) * cfg.train.grad_accum
    if b % divisor:
        where = meshlib.describe(mesh)
        raise ConfigError(f"--shape {n}x{b}: {b} events must be divisible by {divisor} ({where})")
    program = steps.build(spec, cfg, mesh)
    state = program.init()
    if weights is not None:
        state = state.replace(params=_particleflow_params(spec, cfg, weights, program))
    device_batches = [
        {
            k: jax.make_array_from_callback(v.shape, program.batch_sharding, lambda idx, v=v: v[idx])
            for k, v in batch.items()
        }
        for batch in host_batches
    ]
    lowered = program.train_step.lower(state, device_batches[0])
    compiled = lowered.compile()
    t0 = time.perf_counter()
    state, out = compiled(state, device_batches[0])
    first = float(out["loss"])
    for i in range(1, args.warmup):
        state, out = compiled(state, device_batches[i % BATCHES])
    jax.block_until_ready(state)
    warmup_s = time.perf_counter() - t0
    holder = {"state": state, "out": out}

    def run_steps(steps=args.steps, program=compiled):
        for i in range(steps):  # the state is donated: always step the newest one
            holder["state"], holder["out"] = program(holder["state"], device_batches[i % BATCHES])
        return holder["state"], holder["out"]

    per_step = common.time_call(run_steps, warmup=0, repeats=args.repeats)["median_s"] / args.steps
    last = float(holder["out"]["loss"])
    if not (math.isfinite(first) and math.isfinite(last)):
        raise FloatingPointError(f"mlpf {n}x{b} ({attention}): the loss is {first} (first), {last} (last)")
    if args.profile:  # after the last loss is read: the loss check compares equal step counts
        label = f"mlpf-{attention}-{n}x{b}"
        profile.profile_steps(
            lambda program: run_steps(args.profile, program),
            lowered,
            compiled,
            args.profile,
            Path(args.out),
            label,
        )
    flops, peak = program.step_flops(device_batches[0]), xla.peak_flops(jax.devices()[0])
    log.info(
        "jax %s %dx%d: %.2f ms/step, %.0f events/s (%d warm-up steps in %.1f s)",
        attention,
        n,
        b,
        1e3 * per_step,
        b / per_step,
        args.warmup,
        warmup_s,
    )
    row = {
        "impl": "jax",
        "attention": attention,
        "elements": n,
        "events": b,
        "ms_per_step": 1e3 * per_step,
        "first_loss": first,
        "last_loss": last,
        "warmup_s": warmup_s,
        "mem_gb": _compiled_memory_gb(compiled),
        "mfu": flops / per_step / peak if flops and peak else None,
        "devices": jax.device_count(),
        "params": int(program.param_count),
        "note": f"{jax.device_count()} × {jax.devices()[0].device_kind}; "
        + ("particleflow's initial weights" if weights is not None else "own initial weights"),
    }
    return row, int(program.param_count)


def _particleflow_params(spec, cfg: Config, state_dict: dict, program):
    """particleflow's initial weights as the train state's parameters, placed as the state is."""
    import jax
    from flax import nnx

    from smilejax import steps

    from .torch_weights import convert_particleflow_state_dict

    abstract = nnx.eval_shape(lambda: steps.build_model(spec, cfg, 0))
    params = nnx.to_pure_dict(convert_particleflow_state_dict(abstract, state_dict))
    return jax.device_put(params, program.state_sharding.params)


def _shape(row: dict) -> tuple[int, int]:
    return row["elements"], row["events"]


def _reference_at(rows: list[dict], shape: tuple[int, int]) -> dict[str, dict]:
    """particleflow's measured rows at ``shape``, by impl (torch-eager, torch-compile)."""
    return {
        r["impl"]: r
        for r in rows
        if r["impl"].startswith("torch-") and r.get("events_per_s") and _shape(r) == shape
    }


def add_ratios(rows: list[dict]) -> None:
    """``vs_ref_eager`` / ``vs_ref_best``: events/s over particleflow eager's and its best mode's at the
    same shape."""
    for row in rows:
        ref = _reference_at(rows, _shape(row))
        speed, eager = row.get("events_per_s"), ref.get("torch-eager")
        best = max((r["events_per_s"] for r in ref.values()), default=None)
        row["vs_ref_eager"] = speed / eager["events_per_s"] if speed and eager else None
        row["vs_ref_best"] = speed / best if speed and best else None


def _loss_check(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per JAX row (``jax ATTENTION NxB``): the relative difference of its first and last step's loss
    from particleflow eager's. Both start from the same weights and step through the same batches."""
    out = {}
    for row in rows:
        eager = _reference_at(rows, _shape(row)).get("torch-eager")
        if row["impl"] == "jax" and eager and row.get("first_loss") is not None:
            key = f"jax {row['attention']} {row['elements']}x{row['events']}"
            out[key] = {k: abs(row[k] - eager[k]) / abs(eager[k]) for k in ("first_loss", "last_loss")}
    return out
