"""Random CLIC-like MLPF events in particleflow's layout (numpy only; see ``models/mlpf/model.py``)."""

from __future__ import annotations

import numpy as np

N_FEATURES, N_TARGET = 17, 13


def random_events(seed: int, batch: int, n: int, *, full_first: bool = True) -> dict[str, np.ndarray]:
    """``X`` [batch, n, 17] and ``ytarget`` [batch, n, 13]; events have n/2..n real elements (tracks and
    clusters, zero rows after them), about 70% of them with a target particle."""
    rng = np.random.default_rng(seed)
    X = np.zeros((batch, n, N_FEATURES), np.float32)
    y = np.zeros((batch, n, N_TARGET), np.float32)
    n_real = rng.integers(max(1, n // 2), n + 1, size=batch)
    if full_first:
        n_real[0] = n
    for b, k in enumerate(n_real):
        pt = rng.lognormal(0.0, 1.0, size=k)
        eta = rng.normal(0.0, 1.5, size=k)
        phi = rng.uniform(-np.pi, np.pi, size=k)
        X[b, :k, 0] = rng.choice([1.0, 2.0], size=k)  # track / cluster
        X[b, :k, 1:5] = np.stack([pt, eta, np.sin(phi), np.cos(phi)], axis=-1)
        X[b, :k, 5] = pt * np.cosh(eta) * rng.uniform(1.0, 1.2, size=k)  # p or E
        X[b, :k, 6:] = rng.normal(size=(k, N_FEATURES - 6))

        cls = rng.choice(6, size=k, p=[0.3, 0.3, 0.1, 0.2, 0.05, 0.05])
        part = cls != 0
        phi_t = phi + rng.normal(0.0, 0.05, size=k)
        target = np.stack(
            [
                cls,
                rng.integers(-1, 2, size=k),  # charge
                rng.normal(0.0, 0.2, size=k),  # log(pT_target / pT_element)
                eta + rng.normal(0.0, 0.05, size=k),
                np.sin(phi_t),
                np.cos(phi_t),
                rng.normal(0.0, 0.2, size=k),  # log(E_target / E_element)
            ],
            axis=-1,
        )
        y[b, :k, :7] = np.where(part[:, None], target, 0.0)  # no target particle: zeros, as particleflow
    return {"X": X, "ytarget": y}
