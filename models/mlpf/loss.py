"""MLPF's loss: particleflow's ``mlpf_loss`` (``mlpf/model/losses.py``) on the outputs of ``model.MLPF``.

Loss (``loss``; ``mlpf_loss`` of particleflow), in float32: 10 x cross-entropy of particle / no particle
averaged over real elements; focal loss (gamma 2) of the particle type over elements with a target
particle, divided by the number of real elements; squared errors of pT and energy (weighted by
sqrt(target pT)) and of eta, sin phi, cos phi (weighted 1e-2) over elements with a target particle,
divided by their number. The total is the sum of the seven terms (metrics: the terms in snake case and
``acc_cls``, the accuracy of particleflow's predicted class). Differences from particleflow only where
it would fail: an empty batch gives 0 rather than NaN, and target particles in padded rows are not
counted.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from ..layers import F32
from .model import MLPF, MOMENTUM, valid_elements


def _safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def loss(model: MLPF, batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    """particleflow's ``mlpf_loss`` (see the module doc); metrics keep its term names in snake case."""
    return loss_from_outputs(model(batch["X"], batch.get("mask")), batch, model.loss_weights)


@jax.named_scope("loss")
def loss_from_outputs(
    out: dict[str, jax.Array], batch, weights: tuple[float, float, float] = (10.0, 2.0, 1e-2)
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The loss of given model outputs; ``weights`` = (binary_weight, focal_gamma, angle_weight)."""
    X = jnp.asarray(batch["X"], F32)
    valid = valid_elements(X, batch.get("mask"))
    binary_weight, gamma, angle_weight = weights

    y = jnp.asarray(batch["ytarget"], F32)
    cls = y[..., 0].astype(jnp.int32)  # PyTorch's .long(): truncation
    particle = valid & (cls != 0)
    w_elem, w_part = valid.astype(F32), particle.astype(F32)
    n_elem, n_part = jnp.sum(w_elem), jnp.sum(w_part)

    binary = optax.softmax_cross_entropy_with_integer_labels(
        out["binary_logits"], (cls != 0).astype(jnp.int32)
    )
    log_p = jax.nn.log_softmax(out["pid_logits"], axis=-1)
    safe_cls = jnp.clip(cls, 0, log_p.shape[-1] - 1)
    log_pt = jnp.take_along_axis(log_p, safe_cls[..., None], axis=-1)[..., 0]
    focal = (1.0 - jnp.exp(log_pt)) ** gamma * -log_pt

    # sqrt(target pT): ytarget's pT is log(pT_target / pT_element)
    pt_weight = jnp.sqrt(jnp.where(particle, jnp.exp(y[..., 2]) * X[..., 1], 0.0))
    angle = jnp.full_like(pt_weight, angle_weight)
    term_weight = jnp.stack([pt_weight, angle, angle, angle, pt_weight], axis=-1)  # MOMENTUM order
    sq_err = jnp.square(out["momentum"] - y[..., 2:7])
    regression = jnp.sum(jnp.where(particle[..., None], sq_err * term_weight, 0.0), axis=(0, 1))

    metrics = {
        "classification_binary": binary_weight * _safe_div(jnp.sum(binary * w_elem), n_elem),
        "classification": _safe_div(jnp.sum(focal * w_part), n_elem),
        **{f"regression_{name}": _safe_div(regression[i], n_part) for i, name in enumerate(MOMENTUM)},
    }
    total = sum(metrics.values())
    # particleflow's predicted class: particle / no particle first, then the type
    pred = jnp.where(jnp.argmax(out["binary_logits"], -1) == 1, jnp.argmax(out["pid_logits"], -1), 0)
    metrics["acc_cls"] = _safe_div(jnp.sum((pred == cls) * w_elem), n_elem)
    return total.astype(F32), metrics
