"""Per-track auxiliary tasks: track-origin classification and track-pair vertexing, counted batch by batch.

Origin: a confusion matrix over valid tracks with a known label (0 <= label < n_classes); accuracy is
its trace over its sum, the per-class accuracy is each true class's recall (correct / tracks of that
class).

Vertexing, over the unordered pairs {i, j} (i < j) of valid tracks of a jet:

* a pair is *true* when both tracks carry the same truth vertex index and that index is >= 0
  (the vertex loss's target, salt's definition);
* a pair is *predicted* when its probability, the mean of the model's two ordered-pair probabilities
  (i, j) and (j, i), is > 0.5;
* pair efficiency = true predicted pairs / true pairs; pair purity = true predicted pairs / predicted
  pairs.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class OriginCounts:
    n_classes: int
    confusion: np.ndarray = dataclasses.field(init=False)  # [true, predicted] track counts

    def __post_init__(self):
        self.confusion = np.zeros((self.n_classes, self.n_classes), np.int64)

    def add(self, label: np.ndarray, predicted: np.ndarray, valid: np.ndarray) -> None:
        n = self.n_classes
        keep = valid.astype(bool) & (label >= 0) & (label < n)
        flat = label[keep].astype(np.int64) * n + predicted[keep].astype(np.int64)
        self.confusion += np.bincount(flat, minlength=n * n).reshape(n, n)

    def result(self, names: tuple[str, ...]) -> dict:
        total = self.confusion.sum()
        per_class = self.confusion.sum(axis=1)
        correct = np.diag(self.confusion)
        return {
            "accuracy": float(correct.sum() / total) if total else None,
            "tracks": int(total),
            "per_class_accuracy": {
                name: float(c / t) if t else None
                for name, c, t in zip(names, correct, per_class, strict=True)
            },
            "per_class_tracks": {name: int(t) for name, t in zip(names, per_class, strict=True)},
            "classes": list(names),
            "confusion": self.confusion.tolist(),
        }


@dataclasses.dataclass
class VertexCounts:
    true_pairs: int = 0
    predicted_pairs: int = 0
    matched_pairs: int = 0  # true and predicted

    def add(self, vertex: np.ndarray, probability: np.ndarray, valid: np.ndarray) -> None:
        """vertex [b, t] truth indices, probability [b, t, t] ordered-pair probabilities, valid [b, t]."""
        t = vertex.shape[1]
        upper = np.triu(np.ones((t, t), bool), k=1)
        valid = valid.astype(bool)
        pairs = valid[:, :, None] & valid[:, None, :] & upper
        same = (vertex[:, :, None] == vertex[:, None, :]) & (vertex[:, :, None] >= 0)
        symmetric = 0.5 * (probability + np.swapaxes(probability, 1, 2))
        true = pairs & same
        predicted = pairs & (symmetric > 0.5)
        self.true_pairs += int(true.sum())
        self.predicted_pairs += int(predicted.sum())
        self.matched_pairs += int((true & predicted).sum())

    def result(self) -> dict:
        return {
            "pair_efficiency": self.matched_pairs / self.true_pairs if self.true_pairs else None,
            "pair_purity": self.matched_pairs / self.predicted_pairs if self.predicted_pairs else None,
            "true_pairs": self.true_pairs,
            "predicted_pairs": self.predicted_pairs,
            "matched_pairs": self.matched_pairs,
        }
