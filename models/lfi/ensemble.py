"""Ensembles of K estimators of one config, trained at once as one vmapped program.

``train(cfg, k, out)`` trains K copies of ``cfg`` that differ only in ``run.seed`` (initial parameters
and data order) through the vectorised-trial machinery (``smilejax.tune.vectorised``: one
``jit(vmap(step))`` over a leading trial axis, one compilation for all K), each member into its own run
directory ``OUT/member-I`` (a normal run: ``trained.load`` reads it). ``load(run_dirs)`` gives the
``Ensemble``, and ``save(ensemble, cfg, out)`` writes it as one run of the model ``lfi_ensemble``
that ``smilejax eval`` and ``smilejax export`` take like a single estimator.

The ensemble's posterior (NPE members) is the equal-weight mixture of the K flows: a sample picks a
member per draw, ``log_prob = logsumexp_k log q_k - log K``. NRE members average their ratios:
``log_ratio = logsumexp_k log r_k - log K``, sampled by importance resampling of prior draws as NRE.

Command line: ``smilejax data ensemble CONFIG --members 5 --out runs/ens`` (trains, then saves the
mixture as the run ``OUT``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from smilejax import config, trained
from smilejax.config import Config

from .. import spec as speclib
from . import model as lfimodel
from .evaluation import EVALUATION

log = logging.getLogger(__name__)

NAME = "lfi_ensemble"  # the registered model name of a saved ensemble


@dataclasses.dataclass
class EnsembleConfig(lfimodel.LfiConfig):
    """An LFI config with ``members`` estimators of kind ``member`` (npe or nre)."""

    name: str = NAME
    member: str = "npe"
    members: int = 3


class Ensemble(nnx.Module):
    """K estimators of one task; the posterior of their mixture (NPE) or of their mean ratio (NRE)."""

    def __init__(self, members: list[nnx.Module]):
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nnx.List(members)
        self.is_flow = hasattr(members[0], "flow")
        self.task_name = members[0].task_name
        self.export_samples = members[0].export_samples

    @property
    def task(self):
        return self.members[0].task

    @property
    def k(self) -> int:
        return len(self.members)

    def log_prob(self, theta: jax.Array, x: jax.Array) -> jax.Array:
        """NPE: log of the mixture density [B]; NRE: the mean ratio's log r + log prior."""
        if not self.is_flow:
            prior = self.task.log_prior
            return self.log_ratio(theta, x) + (prior(theta) if prior is not None else 0.0)
        each = jnp.stack([m.log_prob(theta, x) for m in self.members])
        return jax.nn.logsumexp(each, axis=0) - math.log(self.k)

    def log_ratio(self, theta: jax.Array, x: jax.Array) -> jax.Array:
        if self.is_flow:
            raise TypeError("log_ratio needs ratio estimators (NRE members); an NPE ensemble gives log_prob")
        each = jnp.stack([m.log_ratio(theta, x) for m in self.members])
        return jax.nn.logsumexp(each, axis=0) - math.log(self.k)

    def sample_keys(self, x: jax.Array, n: int, keys: jax.Array) -> jax.Array:
        """``n`` draws per observation [B, n, theta_dim], row b from ``keys[b]``: each draw from a member
        picked uniformly (every member draws ``n``, the picks keep one of them)."""
        if not self.is_flow:
            return jax.vmap(lambda k, xb: self._resample(xb[None], n, k)[0])(keys, x)
        draws = jnp.stack(
            [
                m.sample_keys(x, n, jax.vmap(lambda k, i=i: jax.random.fold_in(k, i))(keys))
                for i, m in enumerate(self.members)
            ]
        )  # [K, B, n, d]
        pick = jax.vmap(lambda k: jax.random.randint(jax.random.fold_in(k, self.k), (n,), 0, self.k))(keys)
        return jnp.take_along_axis(draws, pick[None, :, :, None], axis=0)[0]

    def sample(self, x: jax.Array, n: int, key: jax.Array) -> jax.Array:
        return self.sample_keys(x, n, jax.random.split(key, x.shape[0]))

    def _resample(self, x: jax.Array, n: int, key: jax.Array) -> jax.Array:
        """NRE's sampling importance resampling with the mean ratio [B, n, theta_dim]."""
        m = lfimodel.NRE_PROPOSALS * n

        def one(key, xb):
            k_prior, k_pick = jax.random.split(key)
            theta = self.task.prior_sample(k_prior, m)
            w = self.log_ratio(theta, jnp.broadcast_to(xb, (m, xb.shape[-1])))
            # choice by the cumulative weights: categorical(shape=(n,)) would draw n x m Gumbel numbers
            return theta[jax.random.choice(k_pick, m, (n,), p=jax.nn.softmax(w))]

        return jax.vmap(one)(jax.random.split(key, x.shape[0]), x)

    def __call__(self, x: jax.Array, theta: jax.Array, seed: jax.Array | None = None) -> dict[str, jax.Array]:
        """The served forward, as a single estimator's (NPE: samples and log_prob; NRE: log_ratio)."""
        if not self.is_flow:
            return {"log_ratio": self.log_ratio(theta, x)}
        # the single estimator's ONNX-convertible noise (lfimodel.counter_normal), a stream per member
        n = self.export_samples
        draws = jnp.stack(
            [
                m.sample_noise(x, lfimodel.counter_normal(seed, n, m.theta_dim, stream=i))
                for i, m in enumerate(self.members)
            ]
        )  # [K, B, n, d]
        u = lfimodel.counter_uniform(seed, n, stream=self.k)  # the stream after the members'
        pick = jnp.minimum((u * self.k).astype(jnp.int32), self.k - 1)
        samples = jnp.take_along_axis(draws, pick[None, :, :, None], axis=0)[0]
        return {"samples": samples, "log_prob": self.log_prob(theta, x)}


# ---------------------------------------------------------------- the saved ensemble as a model


def _member_config(cfg: EnsembleConfig) -> lfimodel.LfiConfig:
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(lfimodel.LfiConfig)}
    return lfimodel.LfiConfig(**{**fields, "name": cfg.member})


def build(cfg: EnsembleConfig, *, rngs: nnx.Rngs, dtype=jnp.float32) -> Ensemble:
    if cfg.member not in ("npe", "nre"):
        raise ValueError(f"model.member must be npe or nre, got {cfg.member!r}")
    make = lfimodel.NPE if cfg.member == "npe" else lfimodel.NRE
    member = _member_config(cfg)
    return Ensemble([make(member, rngs=rngs, dtype=dtype) for _ in range(cfg.members)])


def loss(model: Ensemble, batch: dict) -> tuple[jax.Array, dict]:
    """The members' mean loss (``smilejax train`` on an ensemble config trains all K in one model)."""
    member_loss = lfimodel.npe_loss if model.is_flow else lfimodel.nre_loss
    losses = [member_loss(m, batch)[0] for m in model.members]
    return jnp.mean(jnp.stack(losses)), {}


def inputs(cfg: EnsembleConfig, batch: int) -> dict[str, jax.ShapeDtypeStruct]:
    return (lfimodel.npe_inputs if cfg.member == "npe" else lfimodel.nre_inputs)(cfg, batch)


SPEC = speclib.ModelSpec(
    name=NAME, config=EnsembleConfig, build=build, loss=loss, input_spec=inputs, evaluation=EVALUATION
)


# ---------------------------------------------------------------- train, load, save


def member_configs(cfg: Config, k: int, out: str | Path) -> list[Config]:
    """K copies of ``cfg`` with seeds ``run.seed + i`` and run directories ``OUT/member-i``."""
    if k < 1:
        raise ValueError(f"an ensemble needs at least one member, got {k}")
    return [
        dataclasses.replace(
            cfg, run=dataclasses.replace(cfg.run, seed=cfg.run.seed + i, dir=str(Path(out) / f"member-{i}"))
        )
        for i in range(k)
    ]


def train(cfg: Config, k: int, out: str | Path) -> list[Path]:
    """Trains K members of ``cfg`` as one vectorised program; their run directories."""
    from smilejax.tune import vectorised

    cfgs = member_configs(cfg, k, out)
    outcomes = vectorised.train(cfgs, "loss")
    failed = [str(o.run_dir) for o in outcomes if o.state != "complete"]
    if failed:
        raise FloatingPointError(f"ensemble members did not complete (non-finite loss): {', '.join(failed)}")
    return [o.run_dir for o in outcomes]


def load(run_dirs: list[str | Path]) -> Ensemble:
    """The ensemble of the trained runs ``run_dirs`` (each a member: an NPE or NRE run of one task)."""
    members = [trained.load(d).model for d in run_dirs]
    if len({m.task_name for m in members}) > 1 or len({hasattr(m, "flow") for m in members}) > 1:
        raise ValueError(
            f"ensemble members must be estimators of one kind and task: {list(map(str, run_dirs))}"
        )
    return Ensemble(members)


def save(ensemble: Ensemble, cfg: Config, out: str | Path, *, step: int = 0) -> Path:
    """Writes ``ensemble`` as the run ``out`` of the model ``lfi_ensemble`` (config.yaml and a checkpoint
    of ``step``, the members'), which ``trained.load``, ``smilejax eval`` and ``smilejax export`` read."""
    from smilejax import checkpoint, steps
    from smilejax import mesh as meshlib

    out = Path(out)
    member = "npe" if ensemble.is_flow else "nre"
    fields = {f.name: getattr(cfg.model, f.name) for f in dataclasses.fields(lfimodel.LfiConfig)}
    model_cfg = EnsembleConfig(**{**fields, "name": NAME, "member": member, "members": ensemble.k})
    ens_cfg = dataclasses.replace(cfg, model=model_cfg, run=dataclasses.replace(cfg.run, dir=str(out)))
    program = steps.build(SPEC, ens_cfg, meshlib.build_mesh(ens_cfg.mesh, jax.local_devices()))
    _, params, rest = nnx.split(ensemble, nnx.Param, ...)
    state = program.init()
    state = state.replace(
        step=jax.device_put(jnp.asarray(step, jnp.int32), program.state_sharding.step),
        params=jax.device_put(nnx.to_pure_dict(params), program.state_sharding.params),
        rest=jax.device_put(nnx.to_pure_dict(rest), program.state_sharding.rest),
    )
    if jax.process_index() == 0:
        out.mkdir(parents=True, exist_ok=True)
        config.save(ens_cfg, out / "config.yaml")
    ckpt = checkpoint.Checkpointer(out / "checkpoints", keep=1, async_save=False)
    try:
        ckpt.save(state, None, wait=True)
    finally:
        ckpt.close()
    return out


# ---------------------------------------------------------------- smilejax data ensemble


def register(sub: argparse._SubParsersAction) -> None:
    """``smilejax data ensemble`` (entry-point group ``smilejax.data_commands``)."""
    from smilejax.commands.common import add_config_args

    p = sub.add_parser(
        "ensemble",
        help="LFI: train K estimators of one config at once (one vmapped program) and save their mixture",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(p)
    p.add_argument("--members", type=int, default=5, metavar="K", help="estimators (seeds run.seed + i)")
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="the ensemble's run (members in DIR/member-I); eval and export take DIR",
    )
    p.set_defaults(run=_main)


def _main(args: argparse.Namespace) -> int:
    cfg = config.load(args.config, args.overrides)
    run_dirs = train(cfg, args.members, args.out)
    out = save(load(run_dirs), cfg, args.out, step=cfg.run.steps)
    print(
        f"ensemble of {args.members}: {out}\n  evaluate: smilejax eval {out}\n"
        f"  export:   smilejax export {out}"
    )
    return 0
