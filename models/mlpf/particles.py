"""Particle-flow particles per element, and particle-level efficiency and fake rate, counted batch by batch.

Every element (track or cluster) of an event carries at most one particle of each collection: the
*target* (the generator particle assigned to the element), the rule-based PF *candidate* (``ycand``) and
the model's *prediction*. Classes index particleflow's CLIC classes (0 none, 1 charged hadron,
2 neutral hadron, 3 photon, 4 electron, 5 muon). How each collection is read, as particleflow 3.1.0's
``predict_one_batch`` / ``unpack_predictions`` / ``unpack_target`` do:

* prediction: class = argmax of the particle / no-particle logits, and where that says "particle" the
  argmax of the type logits (which may still be 0, "none"); pT = exp(momentum[0]) * element pT
  (``X[..., 1]``), energy = exp(momentum[4]) * element energy (``X[..., 5]``), eta = momentum[1],
  phi = atan2(sin phi, cos phi) of momentum[2:4]; pT and energy are 0 where the class is 0;
* target: class = int(ytarget[..., 0]) (truncation), pT and energy the raw ``ytarget_pt_orig`` /
  ``ytarget_e_orig``, eta and phi from ytarget columns 3..5;
* candidate: class = int(ycand[..., 0]), pT, eta, sin phi, cos phi, energy in ycand columns 2..6.

Only real elements count (element mask, non-zero element type, real event). With ``confusion[t, p]``
the element counts of target class t and predicted class p (c = 1..5; "any" = any particle class):

* efficiency(c) = confusion[c, c] / sum_p confusion[c, p]: of the elements with a target particle of
  class c, the fraction predicted as class c; efficiency(any) = elements with a target particle that
  are predicted as any particle / elements with a target particle;
* fake rate(c) = confusion[0, c] / sum_t confusion[t, c]: of the elements predicted as class c, the
  fraction with no target particle; fake rate(any) likewise over all predicted particles;
* counts: target (elements with a target of class c), predicted, matched (target and prediction c)
  and fake (prediction c, no target).

Efficiency is also binned in the target pT and fake rate in the predicted pT (``PT_EDGES``, GeV;
values outside the edges fall into the first or last bin).
"""

from __future__ import annotations

import dataclasses

import numpy as np

CLASS_KEYS = ("none", "charged_hadron", "neutral_hadron", "photon", "electron", "muon")
N_CLASSES = len(CLASS_KEYS)
PT_EDGES = np.geomspace(0.1, 200.0, 17)  # GeV: 16 log bins


@dataclasses.dataclass(frozen=True)
class Particles:
    """One collection, per element: arrays of one shape ([events, elements]); class 0 = no particle."""

    cls: np.ndarray  # int
    pt: np.ndarray
    eta: np.ndarray
    phi: np.ndarray
    energy: np.ndarray

    def __getitem__(self, rows) -> Particles:
        return Particles(*(getattr(self, f.name)[rows] for f in dataclasses.fields(self)))

    def p4(self) -> np.ndarray:
        """(px, py, pz, E) [..., 4] in float64."""
        pt = self.pt.astype(np.float64)
        px, py, pz = pt * np.cos(self.phi), pt * np.sin(self.phi), pt * np.sinh(self.eta.astype(np.float64))
        return np.stack([px, py, pz, self.energy.astype(np.float64)], axis=-1)


def predicted_class(binary_logits: np.ndarray, pid_logits: np.ndarray) -> np.ndarray:
    """particleflow's predicted class: particle / no particle first, then the particle type."""
    particle = np.argmax(binary_logits, axis=-1) == 1
    return np.where(particle, np.argmax(pid_logits, axis=-1), 0).astype(np.int32)


def from_prediction(
    X: np.ndarray, binary_logits: np.ndarray, pid_logits: np.ndarray, momentum: np.ndarray
) -> Particles:
    """MLPF's particles from its outputs (``model.MLPF``: pT and energy as log ratios to the element's)."""
    cls = predicted_class(binary_logits, pid_logits)
    m = momentum.astype(np.float64)
    with np.errstate(over="ignore"):
        pt = np.exp(m[..., 0]) * X[..., 1]
        energy = np.exp(m[..., 4]) * X[..., 5]
    particle = cls != 0
    return Particles(
        cls=cls,
        pt=np.where(particle, pt, 0.0),
        eta=m[..., 1],
        phi=np.arctan2(m[..., 2], m[..., 3]),
        energy=np.where(particle, energy, 0.0),
    )


def from_target(ytarget: np.ndarray, pt: np.ndarray, energy: np.ndarray) -> Particles:
    """Target particles: ``ytarget``'s class and direction with the raw pT and energy (``*_orig``)."""
    y = ytarget.astype(np.float64)
    return Particles(
        cls=y[..., 0].astype(np.int32),
        pt=pt.astype(np.float64),
        eta=y[..., 3],
        phi=np.arctan2(y[..., 4], y[..., 5]),
        energy=energy.astype(np.float64),
    )


def from_candidates(ycand: np.ndarray) -> Particles:
    """Rule-based PF candidates from the raw ``ycand`` (columns as ytarget's, pT and energy not ratios)."""
    y = ycand.astype(np.float64)
    return Particles(
        cls=y[..., 0].astype(np.int32),
        pt=y[..., 2],
        eta=y[..., 3],
        phi=np.arctan2(y[..., 4], y[..., 5]),
        energy=y[..., 6],
    )


def _pt_bin(pt: np.ndarray) -> np.ndarray:
    return np.clip(np.searchsorted(PT_EDGES, pt, side="right") - 1, 0, len(PT_EDGES) - 2)


@dataclasses.dataclass
class ClassCounts:
    """Element counts [target class, predicted class, pT bin], binned by target pT (``by_target``) and
    by predicted pT (``by_predicted``); ``confusion`` sums over the bins."""

    by_target: np.ndarray = dataclasses.field(init=False)
    by_predicted: np.ndarray = dataclasses.field(init=False)

    def __post_init__(self):
        shape = (N_CLASSES, N_CLASSES, len(PT_EDGES) - 1)
        self.by_target = np.zeros(shape, np.int64)
        self.by_predicted = np.zeros(shape, np.int64)

    @property
    def confusion(self) -> np.ndarray:
        return self.by_target.sum(axis=-1)

    def add(self, target: Particles, predicted: Particles, valid: np.ndarray) -> None:
        """Count the ``valid`` elements; a class outside 0..5 is an error (a malformed batch)."""
        valid = np.asarray(valid, bool)
        t, p = target.cls[valid], predicted.cls[valid]
        for name, c in (("target", t), ("predicted", p)):
            if c.size and (c.min() < 0 or c.max() >= N_CLASSES):
                raise ValueError(f"{name} class index outside 0..{N_CLASSES - 1}: {sorted(set(c.tolist()))}")
        nb = len(PT_EDGES) - 1
        for counts, pt in ((self.by_target, target.pt[valid]), (self.by_predicted, predicted.pt[valid])):
            flat = (t.astype(np.int64) * N_CLASSES + p) * nb + _pt_bin(pt)
            counts += np.bincount(flat, minlength=counts.size).reshape(counts.shape)

    def efficiency_binned(self) -> tuple[np.ndarray, np.ndarray]:
        """(matched, target) [6 = any + 5 classes, bins], binned in target pT."""
        c = self.by_target
        matched = np.stack([c[1:, 1:].sum(axis=(0, 1)), *(c[k, k] for k in range(1, N_CLASSES))])
        total = np.stack([c[1:].sum(axis=(0, 1)), *(c[k].sum(axis=0) for k in range(1, N_CLASSES))])
        return matched, total

    def fake_rate_binned(self) -> tuple[np.ndarray, np.ndarray]:
        """(fake, predicted) [6 = any + 5 classes, bins], binned in predicted pT."""
        c = self.by_predicted
        fake = np.stack([c[0, 1:].sum(axis=0), *(c[0, k] for k in range(1, N_CLASSES))])
        total = np.stack([c[:, 1:].sum(axis=(0, 1)), *(c[:, k].sum(axis=0) for k in range(1, N_CLASSES))])
        return fake, total

    def result(self) -> dict:
        conf = self.confusion
        matched, target = (x.sum(axis=-1) for x in self.efficiency_binned())
        fake, predicted = (x.sum(axis=-1) for x in self.fake_rate_binned())
        keys = ("any", *CLASS_KEYS[1:])
        return {
            "elements": int(conf.sum()),
            "efficiency": {k: _ratio(matched[i], target[i]) for i, k in enumerate(keys)},
            "fake_rate": {k: _ratio(fake[i], predicted[i]) for i, k in enumerate(keys)},
            "counts": {
                k: {
                    "target": int(target[i]),
                    "predicted": int(predicted[i]),
                    "matched": int(matched[i]),
                    "fake": int(fake[i]),
                }
                for i, k in enumerate(keys)
            },
            "classes": list(CLASS_KEYS),
            "confusion": conf.tolist(),  # [target class, predicted class]
        }


def _ratio(num, den) -> float | None:
    return float(num / den) if den else None
