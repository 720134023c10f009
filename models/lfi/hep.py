"""The family's worked example from HEP: a resonance in a binned invariant-mass spectrum.

A search for a narrow resonance X -> two objects (a diphoton or dimuon bump) over a smoothly falling
background. Parameters theta = (mu, m_X): the signal strength (the signal yield over its nominal one) and
the resonance mass in GeV. The observation is the histogram of the invariant mass: ``BINS`` bins over
[``LOW``, ``HIGH``] GeV, Poisson counts around

    expected_i = B * int_bin exp(-(m - LOW) / SLOPE) dm  +  mu * S * int_bin Normal(m; m_X, RESOLUTION) dm

with a known background shape and normalisation (a fit to the sidebands would fix them) and a detector
mass resolution of ``RESOLUTION``. Priors are flat: mu in [0, 4], m_X in [110, 150] GeV.

Its likelihood is known (a product of Poissons), so its reference posterior needs no neural network: a
grid over the prior box, refined on the region that holds the posterior, sampled cell by cell (uniform
within a cell). So the estimator of ``npe-hep-resonance`` is checked against the exact answer, like the
benchmark's tasks. The ten observations are simulated at prior draws with fixed seeds.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr

from .tasks import Task

BINS, LOW, HIGH = 30, 100.0, 160.0  # GeV
B_PER_GEV, SLOPE = 400.0, 25.0  # background density at LOW (events/GeV) and its falling slope (GeV)
SIGNAL, RESOLUTION = 200.0, 2.0  # nominal signal events (mu = 1) and the mass resolution (GeV)
PRIOR_LOW = np.array([0.0, 110.0], np.float32)
PRIOR_HIGH = np.array([4.0, 150.0], np.float32)
OBSERVATIONS = 10
REFERENCE_SAMPLES = 10_000
EDGES = np.linspace(LOW, HIGH, BINS + 1)


def background() -> jax.Array:
    """Expected background counts per bin [BINS]."""
    cdf = -SLOPE * np.exp(-(EDGES - LOW) / SLOPE)
    return jnp.asarray(B_PER_GEV * (cdf[1:] - cdf[:-1]), jnp.float32)


def expected(theta: jax.Array) -> jax.Array:
    """Expected counts [..., BINS] at theta [..., 2] = (mu, m_X)."""
    mu, mass = theta[..., :1], theta[..., 1:2]
    edges = jnp.asarray(EDGES, jnp.float32)
    shape = ndtr((edges[1:] - mass) / RESOLUTION) - ndtr((edges[:-1] - mass) / RESOLUTION)
    return background() + mu * SIGNAL * shape


def prior_sample(key: jax.Array, n: int) -> jax.Array:
    return jax.random.uniform(key, (n, 2), jnp.float32, PRIOR_LOW, PRIOR_HIGH)


def log_prior(theta: jax.Array) -> jax.Array:
    inside = jnp.all((theta >= PRIOR_LOW) & (theta <= PRIOR_HIGH), axis=-1)
    return jnp.where(inside, -float(np.log(np.prod(PRIOR_HIGH - PRIOR_LOW))), -jnp.inf)


def simulate(key: jax.Array, theta: jax.Array) -> jax.Array:
    """Poisson counts [n, BINS] at theta [n, 2]."""
    return jax.random.poisson(key, expected(theta)).astype(jnp.float32)


def log_likelihood(theta: jax.Array, x: jax.Array) -> jax.Array:
    """log p(x | theta) [...] of counts x [BINS] (without the theta-independent log x!)."""
    lam = expected(theta)
    return jnp.sum(x * jnp.log(lam) - lam, axis=-1)


@functools.cache
def _observation(i: int) -> tuple[np.ndarray, np.ndarray]:
    """(true theta [2], counts [BINS]) of observation i (1..10)."""
    if not 1 <= i <= OBSERVATIONS:
        raise ValueError(f"hep_resonance has observations 1..{OBSERVATIONS}, got {i}")
    key = jax.random.key(1_000_000 + i)
    theta = prior_sample(jax.random.fold_in(key, 0), 1)
    x = simulate(jax.random.fold_in(key, 1), theta)
    return np.asarray(theta[0]), np.asarray(x[0])


def _grid(x: jax.Array, lo: np.ndarray, hi: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cell centres [n*n, 2], their log posterior (flat prior inside the box) and the cell size [2]."""
    size = (hi - lo) / n
    axes = [lo[d] + size[d] * (np.arange(n) + 0.5) for d in range(2)]
    centres = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2).astype(np.float32)
    logp = np.asarray(jax.jit(log_likelihood)(jnp.asarray(centres), x), np.float64)
    return centres, logp, size


@functools.cache
def _reference(i: int) -> np.ndarray:
    """Posterior samples [10000, 2] of observation i: a 200^2 grid over the prior finds the region that
    holds the posterior, a 400^2 grid over that region gives the samples (uniform within their cell)."""
    x = jnp.asarray(_observation(i)[1])
    centres, logp, size = _grid(x, PRIOR_LOW.astype(np.float64), PRIOR_HIGH.astype(np.float64), 200)
    keep = centres[logp > logp.max() - 25.0]  # e^-25: nothing of the posterior's mass is left out
    lo = np.maximum(keep.min(0) - 2 * size, PRIOR_LOW)
    hi = np.minimum(keep.max(0) + 2 * size, PRIOR_HIGH)
    centres, logp, size = _grid(x, lo, hi, 400)
    p = np.exp(logp - logp.max())
    rng = np.random.default_rng(i)
    cells = rng.choice(len(p), size=REFERENCE_SAMPLES, p=p / p.sum())
    jitter = rng.uniform(-0.5, 0.5, size=(REFERENCE_SAMPLES, 2)) * size
    return (centres[cells] + jitter).astype(np.float32)


def task() -> Task:
    return Task(
        name="hep_resonance",
        theta_dim=2,
        x_dim=BINS,
        prior_sample=prior_sample,
        simulate=simulate,
        observation=lambda i: _observation(i)[1],
        log_prior=log_prior,
        reference_samples=_reference,
        true_parameters=lambda i: _observation(i)[0],
        num_observations=OBSERVATIONS,
        theta_labels=("mu", "m_X [GeV]"),
    )
