"""The public interface of a trained likelihood-free-inference estimator (NPE or NRE), for evaluation,
benchmarks and sequential rounds; nothing here knows about files or meshes.

``model`` is the ``nnx.Module`` a run trains (``smilejax.trained.load(run).model``, or
``spec.build(cfg, ...)``): ``lfi.model.NPE`` or ``lfi.model.NRE``. Arrays are float32, batch first;
``theta`` is in the task's parameter space and ``x`` in its observation space (each model standardises
inside). Functions are pure JAX: jit or vmap them as you like.

* ``sample(model, x [B, x_dim], n, key) -> [B, n, theta_dim]``: ``n`` posterior draws per observation
  (NPE: the flow's samples, ``within_prior=True`` keeps only those inside the prior's support; NRE:
  importance-resampled prior draws weighted by the learned ratio).
* ``log_prob(model, theta [B, theta_dim], x [B, x_dim]) -> [B]``: NPE's log q(theta | x) (normalised);
  NRE's log r(theta, x) + log p(theta) (unnormalised: a constant per x away from the posterior).
* ``log_ratio(model, theta, x) -> [B]``: NRE's log p(x | theta) / p(x) (classifier logit).
* ``tasks.get(name) -> Task`` (re-exported as ``posterior.task``): priors, simulators, observations and
  reference posterior samples of a benchmark task or of the HEP worked example.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import tasks

__all__ = ["is_npe", "log_prob", "log_ratio", "sample", "task"]

task = tasks.get


def is_npe(model) -> bool:
    """Whether ``model`` is a posterior estimator (a flow) rather than a ratio estimator."""
    return hasattr(model, "flow")


def sample(
    model, x: jax.Array, n: int, key: jax.Array, *, within_prior: bool = False, oversample: int = 4
) -> jax.Array:
    """``n`` posterior samples for each observation of ``x`` [B, x_dim] -> [B, n, theta_dim].

    within_prior (NPE): a flow puts some mass outside a bounded prior's support ("leakage"); with it,
    draw ``oversample * n`` and keep the first ``n`` inside, as ``sbi`` rejects them (where fewer than
    ``n`` fall inside, the rest are outside ones). Off by default: the flow's own draws, so that a caller
    can measure the leakage. NRE draws from the prior anyway.
    """
    x = jnp.asarray(x, jnp.float32)
    if x.ndim == 1:
        raise ValueError(f"x must be a batch [B, x_dim]; got shape {x.shape} (use x[None])")
    log_prior = model.task.log_prior
    if not (is_npe(model) and within_prior and log_prior is not None):
        return model.sample(x, n, key)
    draws = model.sample(x, oversample * n, key)  # [B, m, d]
    inside = jnp.isfinite(log_prior(draws.reshape(-1, draws.shape[-1]))).reshape(draws.shape[:2])
    first = jnp.argsort(~inside, axis=1, stable=True)[:, :n]  # inside ones first, in their order
    return jnp.take_along_axis(draws, first[..., None], axis=1)


def log_prob(model, theta: jax.Array, x: jax.Array) -> jax.Array:
    """log q(theta | x) for rows of ``theta`` [B, theta_dim] and ``x`` [B, x_dim] -> [B].

    NPE: the normalised log density of the flow. NRE: log r(theta, x) + log prior(theta), the posterior
    up to a normaliser per observation.
    """
    return model.log_prob(jnp.asarray(theta, jnp.float32), jnp.asarray(x, jnp.float32))


def log_ratio(model, theta: jax.Array, x: jax.Array) -> jax.Array:
    """NRE's log p(x | theta) / p(x) for rows of ``theta`` and ``x`` -> [B] (the classifier's logit)."""
    if is_npe(model):
        raise TypeError("log_ratio needs a ratio estimator (NRE); an NPE gives log_prob")
    return model.log_ratio(jnp.asarray(theta, jnp.float32), jnp.asarray(x, jnp.float32))
