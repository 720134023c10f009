"""The classifier two-sample test (C2ST) as the simulation-based-inference benchmark defines it.

Lueckmann et al. 2021 ("Benchmarking simulation-based inference", sbibm's ``metrics/c2st.py``): both
samples are z-scored by the reference sample's mean and standard deviation, an MLP classifier
(scikit-learn's ``MLPClassifier``, ReLU, two hidden layers of ``10 * dim`` units, Adam, up to 10,000
iterations) learns to tell them apart, and the score is its accuracy over 5-fold cross-validation with
shuffled folds. 0.5: the classifier cannot tell them apart (the posterior matches the reference); 1.0:
it always can. The benchmark uses 10,000 samples from each side.

Only numpy and scikit-learn: the benchmark's peer results are scored by the same function.
"""

from __future__ import annotations

import numpy as np

FOLDS = 5
SAMPLES = 10_000  # the benchmark's sample count per side


def c2st(reference: np.ndarray, samples: np.ndarray, *, seed: int = 1, folds: int = FOLDS) -> float:
    """Cross-validated accuracy of a classifier of ``reference`` against ``samples`` (both ``[n, dim]``).

    sbibm's definition: z-scored by the reference's mean and std, MLP of two ``10 * dim`` hidden layers,
    ``folds``-fold shuffled cross-validation (sklearn's KFold, as sbibm; the classes are balanced when
    both sides have as many samples).
    """
    from sklearn.model_selection import KFold, cross_val_score
    from sklearn.neural_network import MLPClassifier

    reference = _matrix(reference, "reference")
    samples = _matrix(samples, "samples")
    if reference.shape[1] != samples.shape[1]:
        raise ValueError(f"c2st: dimensions differ: {reference.shape[1]} and {samples.shape[1]}")
    mean, std = reference.mean(axis=0), reference.std(axis=0, ddof=1)
    std = np.where(std > 0, std, 1.0)  # a constant coordinate (degenerate reference) stays as it is
    data = np.concatenate([(reference - mean) / std, (samples - mean) / std])
    target = np.concatenate([np.zeros(len(reference)), np.ones(len(samples))])
    dim = reference.shape[1]
    classifier = MLPClassifier(
        activation="relu",
        hidden_layer_sizes=(10 * dim, 10 * dim),
        max_iter=10_000,
        solver="adam",
        random_state=seed,
    )
    cv = KFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_score(classifier, data, target, cv=cv, scoring="accuracy")
    return float(np.mean(scores))


def _matrix(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or len(x) < FOLDS:
        raise ValueError(f"c2st: {what} must be [n >= {FOLDS}, dim], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"c2st: {what} holds non-finite values")
    return x
