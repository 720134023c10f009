"""Inference tasks: a prior, a simulator in JAX, observations and (where known) reference posteriors.

``get(name) -> Task`` gives every task of the simulation-based-inference benchmark (``sbibm-jax``: two_moons,
gaussian_linear, slcp, bernoulli_glm, gaussian_mixture, sir, lotka_volterra, ...; the package's own
names) and the HEP worked example ``hep_resonance`` (``models.lfi.hep``). A config picks one with
``model.task: NAME``, so any task runs by configuration alone.

Shapes: ``prior_sample(key, n) -> [n, theta_dim]``; ``simulate(key, theta [n, theta_dim]) -> [n, x_dim]``;
``log_prior(theta [n, theta_dim]) -> [n]`` (-inf outside the support); ``observation(i) -> [x_dim]``,
``true_parameters(i) -> [theta_dim]`` and ``reference_samples(i) -> [N, theta_dim]`` for the task's
observations i = 1..``num_observations`` (the benchmark numbers them from 1), as numpy float32.
Everything but the files is pure JAX: the training step vmaps ``simulate_one`` over per-example keys on
the device.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
from collections.abc import Callable

import jax
import numpy as np

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Task:
    """An inference problem; see the module docstring for the shapes."""

    name: str
    theta_dim: int
    x_dim: int
    prior_sample: Callable[[Array, int], Array]
    simulate: Callable[[Array, Array], Array]
    observation: Callable[[int], np.ndarray]
    log_prior: Callable[[Array], Array] | None = None
    reference_samples: Callable[[int], np.ndarray] | None = None
    true_parameters: Callable[[int], np.ndarray] | None = None
    num_observations: int = 10
    theta_labels: tuple[str, ...] = ()

    def simulate_one(self, key: Array) -> tuple[Array, Array]:
        """(theta [theta_dim], x [x_dim]) from one key: a prior draw and its simulation (vmap it)."""
        k_theta, k_x = jax.random.split(key)
        theta = self.prior_sample(k_theta, 1)
        return theta[0], self.simulate(k_x, theta)[0]

    def simulate_seeds(self, seeds: Array) -> tuple[Array, Array]:
        """(theta [B, theta_dim], x [B, x_dim]) for per-example uint32 ``seeds`` [B]: example b depends only
        on its seed, wherever in the batch or on whichever device it lands."""
        return jax.vmap(lambda s: self.simulate_one(jax.random.key(s)))(seeds)


def _from_sbibm(name: str) -> Task:
    # A diffrax solve that gives up (lotka_volterra at some prior draws) returns NaN instead of raising
    # inside the step; the losses drop such simulations. Read when equinox is first imported.
    os.environ.setdefault("EQX_ON_ERROR", "nan")
    try:
        import sbibm_jax
    except ImportError as err:
        raise ImportError(
            f"task {name!r} comes from the sbibm-jax package: pip install 'smilejax[lfi]'"
        ) from err
    try:
        bench = sbibm_jax.get_task(name)
    except NotImplementedError:
        known = sorted({*sbibm_jax.get_available_tasks(), *LOCAL})
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"no inference task {name!r}{hint} (tasks: {', '.join(known)})") from None
    simulator = bench.get_simulator(jax.random.key(0))
    prior = bench.get_prior_dist()

    def simulate(key: Array, theta: Array) -> Array:
        return simulator(key, theta)

    @functools.cache
    def reference(i: int) -> np.ndarray:
        return np.asarray(bench.get_reference_posterior_samples(i), np.float32)

    return Task(
        name=name,
        theta_dim=int(bench.dim_theta),
        x_dim=int(bench.dim_x),
        prior_sample=lambda key, n: bench.get_prior(key, n),
        simulate=simulate,
        observation=lambda i: np.asarray(bench.get_observation(i), np.float32).reshape(-1),
        log_prior=jax.jit(prior.log_prob),  # traced: no out-of-support warning on concrete arrays
        reference_samples=reference,
        true_parameters=lambda i: np.asarray(bench.get_true_parameters(i), np.float32).reshape(-1),
        num_observations=int(bench.num_observations),
        theta_labels=tuple(bench.get_labels_parameters()),
    )


def _hep(name: str) -> Task:
    from . import hep

    return hep.task()


# Tasks defined here; every other name is looked up in sbibm-jax.
LOCAL: dict[str, Callable[[str], Task]] = {"hep_resonance": _hep}


@functools.cache
def get(name: str) -> Task:
    """The task called ``name`` (cached: one instance per process). Built eagerly even when first asked
    for inside a traced function (a model built under ``jit``), so the arrays it holds are constants."""
    with jax.ensure_compile_time_eval():
        return LOCAL[name](name) if name in LOCAL else _from_sbibm(name)


def names() -> list[str]:
    """Every task name: this package's and the installed sbibm-jax's."""
    try:
        import sbibm_jax

        bench = list(sbibm_jax.get_available_tasks())
    except ImportError:
        bench = []
    return sorted({*bench, *LOCAL})
