"""The JAX half of ``smilejax bench train``: the model's real train step on device-resident batches."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import logging
import math
import time
from pathlib import Path

import jax

from smilejax import config, registry, runtime, steps, xla
from smilejax import mesh as meshlib
from smilejax.bench import _synthetic, common
from smilejax.config import Config, ConfigError
from smilejax.xla import hlo, profile

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Measured:
    rows: list[dict]
    params: int
    padded: int | None  # the padded set length (None: the model has no known set length)
    widths: list[int | None]  # every length timed, ascending
    flops: dict[int | None, float | None]  # per device and step, by length


def lengths(cfg: Config, args: argparse.Namespace) -> tuple[str | None, int | None, list[int | None]]:
    """(config field, padded length, lengths to time in ascending order) of ``--tracks``/``--bucket``."""
    field = registry.model(cfg.model.name).bench.length_field
    if field is None:
        if args.bucket or args.tracks:
            raise SystemExit(
                f"--tracks/--bucket: no set length is known for model {cfg.model.name!r} "
                "(its spec's bench.length_field names none)"
            )
        return None, None, [None]
    padded = args.tracks or int(getattr(cfg.model, field))
    too_long = [w for w in args.bucket if not 1 <= w <= padded]
    if too_long:
        raise SystemExit(f"--bucket {too_long}: bucket lengths must be in 1..{padded} (the padded length)")
    return field, padded, [*sorted(set(args.bucket) - {padded}), padded]


def length_batches(
    cfg: Config, spec, args: argparse.Namespace, batch: int
) -> tuple[Config, list[tuple[int | None, dict]]]:
    """``cfg`` at the padded length (the program's: every timed length only retraces its step) and a
    synthetic host batch of ``batch`` samples per length to time, ascending (``lengths``); a model
    without a known set length gets ``[(None, batch)]``."""
    field, padded, widths = lengths(cfg, args)
    if not field:
        return cfg, [(None, _synthetic.batch(spec, cfg.model, batch, seed=0))]

    def at(width: int):
        return dataclasses.replace(cfg.model, **{field: width})

    cases = [(w, _synthetic.batch(spec, at(w), batch, seed=0)) for w in widths]
    return dataclasses.replace(cfg, model=at(padded)), cases


# Fields the study sets itself from its options: varying them would time one program twice.
_SET_BY_OPTIONS = {"train.precision": "--precision", "data.batch_size": "--batch"}


def varied_columns(args: argparse.Namespace) -> list[str]:
    """The result columns of ``--vary`` keys: the last part of each key (``remat``)."""
    return [_split_vary(item)[0].rsplit(".", 1)[-1] for item in args.vary or []]


def _split_vary(item: str) -> tuple[str, list[str]]:
    """``KEY=V1,V2`` -> (KEY, [V1, V2]); commas inside brackets belong to a value (``[16,16],[32]``)."""
    key, sep, text = item.partition("=")
    values = hlo.split_top_level(text)
    if not sep or not key or not values:
        raise SystemExit(f"--vary {item!r}: expected KEY=VALUE1,VALUE2 (e.g. model.remat=false,true)")
    return key, values


def variants(cfg: Config, args: argparse.Namespace) -> list[tuple[Config, dict[str, object]]]:
    """Every combination of ``--attention`` and ``--vary KEY=V1,V2`` values: ``[(config, labels)]``.

    ``labels`` names the varied fields and their values, by the last part of the key (``attention``,
    ``remat``, ...), as columns of the results; ``[(cfg, {})]`` without either option.
    """
    choices: list[tuple[str, list[str]]] = []
    if args.attention:
        if not hasattr(cfg.model, "attention"):
            raise SystemExit(f"--attention: model {cfg.model.name!r} has no attention setting")
        choices.append(("model.attention", [v.strip() for v in args.attention.split(",") if v.strip()]))
    field = registry.model(cfg.model.name).bench.length_field
    own = {**_SET_BY_OPTIONS, **({f"model.{field}": "--tracks/--bucket"} if field else {})}
    for item in args.vary or []:
        key, values = _split_vary(item)
        if key in own:
            raise SystemExit(f"--vary {key}: the study sets it from {own[key]}; use that option")
        choices.append((key, values))
    columns = [key.rsplit(".", 1)[-1] for key, _ in choices]
    if len(set(columns)) < len(columns):
        raise SystemExit(f"--attention/--vary: a field is varied twice ({', '.join(columns)})")
    tree = config.to_dict(cfg)
    out = []
    for combo in itertools.product(*(values for _, values in choices)):
        overrides = [f"{key}={value}" for (key, _), value in zip(choices, combo, strict=True)]
        try:
            varied = config.load(copy.deepcopy(tree), overrides)
        except ConfigError as err:
            raise SystemExit(f"--attention/--vary {' '.join(overrides)}: {err}") from None
        labels = {col: _field(varied, key) for col, (key, _) in zip(columns, choices, strict=True)}
        out.append((varied, labels))
    return out


def row_label(cfg: Config, labels: dict[str, object], *lengths: object) -> str:
    """A row's file-name label: model, attention, varied values and lengths (``MODEL-math-pallas-24``)."""
    settings = {"attention": getattr(cfg.model, "attention", None), **labels}
    parts = [cfg.model.name, *(v for v in settings.values() if v is not None), *lengths]
    return "-".join(str(p) for p in parts if p is not None)


def _field(cfg: Config, key: str) -> object:
    node: object = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def measure_variants(cfg: Config, args: argparse.Namespace) -> tuple[list[Measured], list[dict]]:
    """``measure`` once per variant (``variants``): (measured, rows of the failed ones).

    Only the first program reports the device's peak memory (a running maximum, so later ones would
    show the largest so far); each reports its compiled memory. A failing variant (cuDNN refusing a
    shape, say) becomes a row with its error and the others still run; with a single variant a failure
    is raised."""
    measured, failed = [], []
    combos = variants(cfg, args)
    for c, labels in combos:
        try:
            measured.append(measure(c, args, labels, report_peak=not measured))
        except Exception as err:  # reported in the results and the exit status
            if len(combos) == 1:
                raise
            log.exception("jax %s failed", labels)
            row = {"impl": "jax", "mode": c.train.parallel, "attention": getattr(c.model, "attention", None)}
            failed.append({**row, **labels, "note": f"failed: {err}"[:200]})
    if not measured:
        raise SystemExit("--attention/--vary: every variant failed (see the log)")
    return measured, failed


def measure(
    cfg: Config,
    args: argparse.Namespace,
    labels: dict[str, object] | None = None,
    *,
    report_peak: bool = True,
) -> Measured:
    """The train step of ``cfg`` at every length; ``labels`` (the varied fields) go into each row."""
    labels = labels or {}
    runtime.initialize()
    spec = registry.model(cfg.model.name)
    cfg, cases = length_batches(cfg, spec, args, args.batch)
    padded = cases[-1][0]
    cfg = dataclasses.replace(
        cfg,
        data=cfg.data.with_batch_size(args.batch),
        train=dataclasses.replace(cfg.train, precision=args.precision),
    )
    mesh = meshlib.build_mesh(cfg.mesh)
    divisor = meshlib.batch_divisor(mesh, cfg.mesh.rules) * cfg.train.grad_accum
    if args.batch % divisor:
        raise ConfigError(f"--batch {args.batch} must be divisible by {divisor} ({meshlib.describe(mesh)})")
    program = steps.build(spec, cfg, mesh)
    state = program.init()
    peak = xla.peak_flops(jax.devices()[0])
    rows, flops_by_width = [], {}
    # Ascending lengths: the device's peak-memory counter only grows, so each row's peak is its own.
    for width, host in cases:
        batch = {
            k: jax.make_array_from_callback(v.shape, program.batch_sharding, lambda idx, v=v: v[idx])
            for k, v in host.items()
        }
        started = time.perf_counter()
        lowered = program.train_step.lower(state, batch)
        compiled = lowered.compile()
        compile_s = time.perf_counter() - started
        flops = flops_by_width[width] = program.step_flops(batch)
        holder = {"state": state, "out": None}

        def run_steps(compiled=compiled, batch=batch, holder=holder, steps=args.steps):
            for _ in range(steps):  # the state is donated: always step the newest one
                holder["state"], holder["out"] = compiled(holder["state"], batch)
            return holder["state"], holder["out"]

        timing = common.time_call(run_steps, warmup=1, repeats=args.repeats)
        label = row_label(cfg, labels, width)
        if args.profile:
            profile.profile_steps(
                lambda program: run_steps(compiled=program, steps=args.profile),
                lowered,
                compiled,
                args.profile,
                Path(args.out),
                label,
            )
        state, out = holder["state"], jax.device_get(holder["out"])
        if not math.isfinite(float(out["loss"])):
            raise FloatingPointError(f"{cfg.model.name}: loss is {float(out['loss'])} at length {width}")
        per_step = timing["median_s"] / args.steps
        # As it goes: a long study shows its progress, and a run cut short keeps what it measured.
        log.info(
            "jax %s: %.2f ms/step, %.0f samples/s (compiled in %.0f s)",
            label,
            1e3 * per_step,
            args.batch / per_step,
            compile_s,
        )
        rows.append(
            {
                "impl": "jax",
                "mode": cfg.train.parallel,
                "attention": getattr(cfg.model, "attention", None),
                **labels,
                "tracks": width,
                "padding": "padded" if width == padded else "bucket",
                "ms_per_step": 1e3 * per_step,
                "samples_per_s": args.batch / per_step,
                "mfu": flops / per_step / peak if flops and peak else None,
                "tflops_per_s": flops * jax.device_count() / per_step / 1e12 if flops else None,
                "peak_mem_gb": _peak_memory_gb() if report_peak else None,
                "compiled_mem_gb": compiled_memory_gb(compiled),
                "devices": jax.device_count(),
                "note": f"{jax.device_count()} × {jax.devices()[0].device_kind}",
            }
        )
    return Measured(rows, int(program.param_count), padded, [w for w, _ in cases], flops_by_width)


def add_ratios(rows: list[dict], varied: list[str] = ()) -> None:
    """``vs_padded`` (JAX at the padded length, same attention and ``varied`` fields) and
    ``vs_torch_eager`` (PyTorch eager, padded)."""
    keys = ["attention", *varied]

    def base(impl: str, mode: str | None = None, like: dict | None = None) -> float | None:
        for r in rows:
            padded_run = r.get("padding") == "padded" and r.get("samples_per_s")
            same = (mode is None or r["mode"] == mode) and all(r.get(k) == (like or {}).get(k) for k in keys)
            if r["impl"] == impl and padded_run and same:
                return r["samples_per_s"]
        return None

    eager = base("torch", "eager")
    for r in rows:
        speed, padded = r.get("samples_per_s"), base("jax", like=r)
        r["vs_padded"] = speed / padded if speed and padded and r["impl"] == "jax" else None
        r["vs_torch_eager"] = speed / eager if speed and eager else None


def _peak_memory_gb() -> float | None:
    stats = jax.local_devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return peak / 2**30 if peak else None


def compiled_memory_gb(compiled) -> float | None:
    try:
        m = compiled.memory_analysis()
        total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
    except Exception:  # not every backend reports it
        return None
    return total / 2**30
