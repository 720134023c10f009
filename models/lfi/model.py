"""The two estimators, their configs, losses and forward passes.

* ``NPE`` (neural posterior estimation): a conditional flow q(theta | embed(x)); loss -log q(theta | x)
  over (theta, x) ~ p(theta) p(x | theta).
* ``NRE`` (neural ratio estimation, Hermans et al. 2020): a classifier d(theta, x) of joint pairs
  (theta, x) ~ p(theta, x) against marginal pairs ~ p(theta) p(x), made by pairing each x with the theta
  of another example of the batch (a random permutation); its logit estimates log p(x | theta) / p(x).

Batches: ``{"seed": uint32 [B]}`` (format ``simulations``: each example's theta and x are drawn on the
device from its seed, inside the loss) or ``{"theta", "x"}`` (format ``stored_simulations``).

Both models standardise theta and x with fixed locations and scales (``Standardization`` variables, not
trained): the model config's ``theta_loc`` etc. when given (a stored file's, filled in by its format),
else the moments of ``model.standardize`` simulations of the task drawn at build with a fixed key.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from .. import layers
from . import tasks as tasklib
from .embedding import Embedding, EmbeddingConfig, out_size
from .flows import Flow, FlowConfig

STATS_KEY = 0x57A7  # the fixed key of the standardisation simulations
NRE_PROPOSALS = 64  # prior draws per posterior sample when NRE samples by importance resampling


class Standardization(nnx.Variable):
    """Fixed shift and scale of theta or x (state that the optimizer does not touch)."""


@dataclasses.dataclass
class LfiConfig:
    """A likelihood-free estimator of ``task`` (``models.lfi.tasks``: a benchmark task or hep_resonance).

    name: npe or nre. embedding: the observation's network. flow (npe): the conditional density.
    classifier (nre): hidden widths of the classifier of (theta, embed(x)).
    standardize: simulations whose moments standardise theta and x (0: none); theta_loc, theta_scale,
        x_loc, x_scale: given moments instead (a stored dataset's).
    export_samples: posterior samples per observation that the exported forward returns.
    """

    name: str = "npe"
    task: str = "two_moons"
    embedding: EmbeddingConfig = dataclasses.field(default_factory=EmbeddingConfig)
    flow: FlowConfig = dataclasses.field(default_factory=FlowConfig)
    classifier: list[int] = dataclasses.field(default_factory=lambda: [128, 128])
    activation: str = "gelu"
    standardize: int = 4096
    theta_loc: list[float] | None = None
    theta_scale: list[float] | None = None
    x_loc: list[float] | None = None
    x_scale: list[float] | None = None
    export_samples: int = 1000


def valid_rows(theta: jax.Array, x: jax.Array, *, sets: bool) -> jax.Array:
    """Rows of a simulation that succeeded: finite theta and x; with a set embedding NaN in x is padding
    (an element that is not there), so only inf marks a failure."""
    x_ok = ~jnp.any(jnp.isinf(x), -1) if sets else jnp.all(jnp.isfinite(x), -1)
    return jnp.all(jnp.isfinite(theta), -1) & x_ok


def _moments(cfg: LfiConfig, task: tasklib.Task) -> dict[str, jax.Array]:
    given = {k: getattr(cfg, k) for k in ("theta_loc", "theta_scale", "x_loc", "x_scale")}
    sizes = {"theta": task.theta_dim, "x": task.x_dim}
    out = {}
    if any(v is None for v in given.values()) and cfg.standardize > 0:
        keys = jax.random.split(jax.random.key(STATS_KEY), cfg.standardize)
        theta, x = jax.vmap(task.simulate_one)(keys)
        ok = valid_rows(theta, x, sets=cfg.embedding.kind == "set")[:, None]  # failed simulations out
        for name, v in (("theta", theta), ("x", x)):
            v = jnp.where(ok, v, jnp.nan)  # NaN entries (failed rows, set padding) do not count
            mean, std = jnp.nanmean(v, axis=0), jnp.nanstd(v, axis=0)
            out[f"{name}_loc"] = jnp.where(jnp.isfinite(mean), mean, 0.0)
            out[f"{name}_scale"] = jnp.where(std > 1e-6, std, 1.0)
    for key, value in given.items():
        size = sizes[key.split("_")[0]]
        if value is not None:
            if len(value) != size:
                raise ValueError(
                    f"model.{key} has {len(value)} numbers (given, or a stored file's moments), the task "
                    f"{task.name!r} (model.task) has {size}"
                )
            out[key] = jnp.asarray(value, jnp.float32)
        elif key not in out:
            out[key] = jnp.zeros(size) if key.endswith("loc") else jnp.ones(size)
    return {k: jnp.asarray(v, jnp.float32) for k, v in out.items()}


class _Estimator(nnx.Module):
    """What NPE and NRE share: the task, the standardisation and the embedding."""

    def __init__(self, cfg: LfiConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.task_name = cfg.task
        task = self.task
        self.theta_dim, self.x_dim = task.theta_dim, task.x_dim
        self.export_samples = cfg.export_samples
        moments = _moments(cfg, task)
        self.theta_loc = Standardization(moments["theta_loc"])
        self.theta_scale = Standardization(moments["theta_scale"])
        self.x_loc = Standardization(moments["x_loc"])
        self.x_scale = Standardization(moments["x_scale"])
        self.embed = Embedding(cfg.embedding, task.x_dim, rngs=rngs, dtype=dtype)

    @property
    def task(self) -> tasklib.Task:
        return tasklib.get(self.task_name)

    def context(self, x: jax.Array) -> jax.Array:
        return self.embed((x.astype(jnp.float32) - self.x_loc[...]) / self.x_scale[...])

    def pairs(self, batch: dict) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(theta, x, valid) of a batch: simulated from its seeds, or as stored. A simulation that failed
        (NaN or inf: an ODE solver that gave up; ``valid_rows``) is not valid; its row is set to the
        standardisation's centre so that it stays finite, and the losses leave it out, as ``sbi`` drops
        such simulations."""
        if "seed" in batch:
            theta, x = self.task.simulate_seeds(batch["seed"])
        else:
            theta, x = batch["theta"].astype(jnp.float32), batch["x"].astype(jnp.float32)
        valid = valid_rows(theta, x, sets=self.embed.kind == "set")
        theta = jnp.where(valid[:, None], theta, self.theta_loc[...])
        return theta, jnp.where(valid[:, None], x, self.x_loc[...]), valid


class NPE(_Estimator):
    """q(theta | x): a conditional flow over standardised theta, given embed(standardised x)."""

    def __init__(self, cfg: LfiConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        super().__init__(cfg, rngs=rngs, dtype=dtype)
        self.flow = Flow(self.theta_dim, out_size(cfg.embedding, self.x_dim), cfg.flow, rngs=rngs)

    def log_prob(self, theta: jax.Array, x: jax.Array) -> jax.Array:
        """log q(theta | x) [B] in the task's parameter space (the standardisation's Jacobian included)."""
        z = (theta - self.theta_loc[...]) / self.theta_scale[...]
        return self.flow.log_prob(z, self.context(x)) - jnp.sum(jnp.log(self.theta_scale[...]))

    def sample_keys(self, x: jax.Array, n: int, keys: jax.Array) -> jax.Array:
        """``n`` draws per observation [B, n, theta_dim], row b from its own key ``keys[b]``."""
        noise = jax.vmap(lambda k: jax.random.normal(k, (n, self.theta_dim)))(keys)
        return self.sample_noise(x, noise)

    def sample(self, x: jax.Array, n: int, key: jax.Array) -> jax.Array:
        return self.sample_keys(x, n, jax.random.split(key, x.shape[0]))

    def sample_noise(self, x: jax.Array, noise: jax.Array) -> jax.Array:
        """The flow's draws [B, n, theta_dim] from standard-normal ``noise`` [B, n, theta_dim]."""
        n = noise.shape[1]
        ctx = jnp.repeat(self.context(x), n, axis=0)
        z = self.flow.inverse(noise.reshape(-1, self.theta_dim), ctx)[0]
        theta = z * self.theta_scale[...] + self.theta_loc[...]
        return theta.reshape(x.shape[0], n, self.theta_dim)

    def __call__(self, x: jax.Array, theta: jax.Array, seed: jax.Array) -> dict[str, jax.Array]:
        """The served forward: ``export_samples`` posterior draws per observation (row b drawn from
        ``seed[b]``, int32, whatever else shares its batch) and log q(theta | x) of the given ``theta``.
        The noise is ``counter_normal``'s (integer ops only), so the ONNX artifact draws it too."""
        noise = counter_normal(seed, self.export_samples, self.theta_dim)
        return {"samples": self.sample_noise(x, noise), "log_prob": self.log_prob(theta, x)}


def _mix32(x: jax.Array) -> jax.Array:
    """A 32-bit integer hash (lowbias32: xor-shift-multiply), uint32 -> uint32."""
    for mul in (0x7FEB352D, 0x846CA68B):
        x = (x ^ (x >> 16)) * jnp.uint32(mul)
    return x ^ (x >> 16)


def counter_uniform(seed: jax.Array, count: int, stream: int = 0) -> jax.Array:
    """Uniforms in (0, 1) [B, count], row b a function of ``seed[b]`` and ``stream`` alone: a counter-based
    generator (a hash of the hashed seed and the hashed counter, so no two seeds share a shifted
    stream; 24-bit uniforms) in integer and float ops that ONNX has, where jax.random's keys do not
    convert (jax2onnx 0.17). For served forwards only; training and in-process sampling use jax.random."""
    # streams apart in the counter's high byte (a row draws fewer than 2^24 numbers)
    counter = jnp.arange(count, dtype=jnp.int32).astype(jnp.uint32) + jnp.uint32(stream << 24)
    bits = _mix32(_mix32(seed.astype(jnp.uint32))[:, None] ^ _mix32(counter)[None, :])
    return (bits >> 8).astype(jnp.float32) * (1.0 / (1 << 24)) + (0.5 / (1 << 24))


def counter_normal(seed: jax.Array, n: int, d: int, stream: int = 0) -> jax.Array:
    """Standard-normal draws [B, n, d] from ``counter_uniform`` (Box-Muller)."""
    u = counter_uniform(seed, 2 * n * d, stream)
    u1, u2 = u[:, : n * d], u[:, n * d :]
    z = jnp.sqrt(-2.0 * jnp.log(u1)) * jnp.cos(2.0 * jnp.pi * u2)
    return z.reshape(seed.shape[0], n, d)


class NRE(_Estimator):
    """d(theta, x) = logit of "joint pair": an estimate of log p(x | theta) / p(x)."""

    def __init__(self, cfg: LfiConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        super().__init__(cfg, rngs=rngs, dtype=dtype)
        widths = [self.theta_dim + out_size(cfg.embedding, self.x_dim), *cfg.classifier, 1]
        self.classifier = layers.MLP(widths, activation=cfg.activation, in_axis=None, rngs=rngs, dtype=dtype)

    def log_ratio(self, theta: jax.Array, x: jax.Array) -> jax.Array:
        return self.logits((theta - self.theta_loc[...]) / self.theta_scale[...], self.context(x))

    def logits(self, z: jax.Array, ctx: jax.Array) -> jax.Array:
        return self.classifier(jnp.concatenate([z, ctx], axis=-1))[..., 0].astype(jnp.float32)

    def log_prob(self, theta: jax.Array, x: jax.Array) -> jax.Array:
        """log r(theta, x) + log p(theta): the posterior up to a constant per observation."""
        log_prior = self.task.log_prior
        prior = log_prior(theta) if log_prior is not None else 0.0
        return self.log_ratio(theta, x) + prior

    def sample(self, x: jax.Array, n: int, key: jax.Array) -> jax.Array:
        """Sampling importance resampling: ``NRE_PROPOSALS * n`` prior draws per observation, ``n`` of
        them drawn with probabilities proportional to the ratio [B, n, theta_dim]."""
        m = NRE_PROPOSALS * n

        def one(key, xb):
            k_prior, k_pick = jax.random.split(key)
            theta = self.task.prior_sample(k_prior, m)
            w = self.log_ratio(theta, jnp.broadcast_to(xb, (m, xb.shape[-1])))
            # an index draw of size n, not categorical's [n, m] Gumbel noise (10^4 draws: 10^8 x 64 floats)
            return theta[jax.random.choice(k_pick, m, (n,), p=jax.nn.softmax(w))]

        return jax.vmap(one)(jax.random.split(key, x.shape[0]), x)

    def __call__(self, x: jax.Array, theta: jax.Array) -> dict[str, jax.Array]:
        return {"log_ratio": self.log_ratio(theta, x)}


def _mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def npe_loss(model: NPE, batch: dict) -> tuple[jax.Array, dict[str, jax.Array]]:
    """-log q(theta | x), averaged over the valid simulations; ``valid``: their fraction."""
    theta, x, valid = model.pairs(batch)
    valid = valid.astype(jnp.float32)
    return -_mean(model.log_prob(theta, x), valid), {"valid": jnp.mean(valid)}


def nre_loss(model: NRE, batch: dict) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Binary cross-entropy of joint pairs (label 1) against marginal pairs (label 0): each x meets the
    theta of another example, by a permutation of the batch drawn from its seeds (fresh simulations), or
    the shift by one row for stored pairs.

    The shift is sound for stored pairs because the training pipeline draws each batch as a uniform
    random sample of the file (a new permutation every epoch, ``data.shuffle``, on by default): the rows
    are exchangeable, so pairing row i's x with row i-1's theta pairs independent examples, a draw of
    p(theta) p(x), and over the epochs each x meets many thetas. A random permutation of the rows
    would add no randomness the batch does not already have, only fixed points (an x meeting its own
    theta, a joint pair labelled marginal). With ``data.shuffle=false`` the same neighbours would meet in
    every epoch (and, in a file ordered by theta or by round, correlated ones): keep shuffling on."""
    theta, x, valid = model.pairs(batch)
    z = (theta - model.theta_loc[...]) / model.theta_scale[...]
    ctx = model.context(x)
    if "seed" in batch:
        perm = jax.random.permutation(jax.random.key(batch["seed"][0]), theta.shape[0])
    else:
        perm = jnp.roll(jnp.arange(theta.shape[0]), 1)
    joint, marginal = model.logits(z, ctx), model.logits(z[perm], ctx)
    w_joint, w_marginal = valid.astype(jnp.float32), (valid & valid[perm]).astype(jnp.float32)
    loss = _mean(optax.sigmoid_binary_cross_entropy(joint, 1.0), w_joint)
    loss += _mean(optax.sigmoid_binary_cross_entropy(marginal, 0.0), w_marginal)
    accuracy = 0.5 * (_mean(joint > 0, w_joint) + _mean(marginal < 0, w_marginal))
    return loss, {"accuracy": accuracy, "valid": jnp.mean(w_joint)}


def build_npe(cfg: LfiConfig, *, rngs: nnx.Rngs, dtype=jnp.float32) -> NPE:
    return NPE(cfg, rngs=rngs, dtype=dtype)


def build_nre(cfg: LfiConfig, *, rngs: nnx.Rngs, dtype=jnp.float32) -> NRE:
    return NRE(cfg, rngs=rngs, dtype=dtype)


def npe_inputs(cfg: LfiConfig, batch: int) -> dict[str, jax.ShapeDtypeStruct]:
    task = tasklib.get(cfg.task)
    return {
        "x": jax.ShapeDtypeStruct((batch, task.x_dim), jnp.float32),
        "theta": jax.ShapeDtypeStruct((batch, task.theta_dim), jnp.float32),
        "seed": jax.ShapeDtypeStruct((batch,), jnp.int32),  # Triton carries int32, not uint32
    }


def nre_inputs(cfg: LfiConfig, batch: int) -> dict[str, jax.ShapeDtypeStruct]:
    specs = npe_inputs(cfg, batch)
    return {"x": specs["x"], "theta": specs["theta"]}
