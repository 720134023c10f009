"""GN2's losses (``loss``): the weighted task losses and metrics of a padded or packed batch.

Losses (``loss``), averaged in float32:

* jet: cross-entropy over jets, with optional class weights (PyTorch's weighted mean); jets with a
  negative label are ignored;
* origin: cross-entropy over valid tracks with a label >= 0 (salt ignores -1 and masks -2), optional
  class weights; weight 0.5. Class weights come from ``class_weights``, which the ``ftag_h5`` format
  fills from its ``data.class_dict`` (salt's ``use_class_dict``);
* vertex: binary cross-entropy over all ordered pairs (i, j), i != j, of valid tracks; the target is 1
  when both tracks carry the same vertex index and that index is >= 0 (salt's definition). When
  ``track_origin`` is present the pair weight is salt's: with ``w = [origin in {fromB, fromBC, fromC}]
  - [origin == fake]`` per track, a pair weighs ``1 + (w_i & w_j)`` (a bitwise and, as in salt: two
  heavy-flavour tracks, or one heavy-flavour and one fake, weigh 2; two fakes 0; all other pairs 1; a
  track of origin -2 keeps its pairs, with w = 0, as in salt, whose origin mask does not reach the
  vertexing task). The weighted sum is divided, as salt's ``VertexingTask`` does, by the number of
  matching pairs (``vertex_loss_norm="matches"``, default; 0 rather than salt's inf or NaN for a batch
  without one) or by the number of valid pairs (``"pairs"``: a smaller loss, by matches/pairs, whose
  scale does not depend on how many tracks share vertices); weight 1.5.

Packed batches: see ``models/gn2/model.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import optax

from .tasks import FAKE, HEAVY_FLAVOUR, active_tasks, pair_mask

if TYPE_CHECKING:
    from .model import GN2


def _safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def _cross_entropy(
    logits: jax.Array, labels: jax.Array, mask: jax.Array, class_weights: tuple[float, ...] | None
) -> jax.Array:
    """Mean cross-entropy over ``mask``; with class weights, PyTorch's sum(w_y * l) / sum(w_y)."""
    n = logits.shape[-1]
    labels = labels.astype(jnp.int32)
    mask = mask & (labels >= 0) & (labels < n)
    safe = jnp.where(mask, labels, 0)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe)
    w = mask.astype(jnp.float32)
    if class_weights is not None:
        w = w * jnp.asarray(class_weights, jnp.float32)[safe]
    return _safe_div(jnp.sum(w * nll), jnp.sum(w))


def _pair_weights(origin: jax.Array) -> jax.Array:
    """salt's VertexingTask.get_weights: 1 + (w_i & w_j), w = [heavy flavour] - [fake] (bitwise and)."""
    hf = jnp.isin(origin, jnp.asarray(HEAVY_FLAVOUR)).astype(jnp.int32)
    w = hf - (origin == FAKE).astype(jnp.int32)
    return (1 + jnp.bitwise_and(w[:, :, None], w[:, None, :])).astype(jnp.float32)


def loss(model: GN2, batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The weighted task losses and metrics of a batch, padded or packed (``"segment" in batch``)."""
    tasks = active_tasks(model.aux_tasks, batch)
    valid = jnp.asarray(batch["valid"]).astype(bool)
    if "segment" not in batch:
        out = model(batch["tracks"], valid, tasks=tasks)
        return _task_losses(model, batch, out, tasks, valid)
    segment = jnp.asarray(batch["segment"]).astype(jnp.int32)
    jet_valid = jnp.asarray(batch["jet_valid"]).astype(bool)
    out = model(batch["tracks"], valid, tasks=tasks, segment=segment, jet_valid=jet_valid)
    return _task_losses(model, batch, out, tasks, valid, segment, jet_valid)


@jax.named_scope("loss")
def _task_losses(
    model: GN2,
    batch,
    out: dict[str, jax.Array],
    tasks: tuple[str, ...],
    valid: jax.Array,
    segment: jax.Array | None = None,
    jet_valid: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Packed (``segment``, ``jet_valid``): jets are the valid jet slots, pairs those within a jet, so
    every value is the padded batch's with the same jets."""
    w_jet, w_origin, w_vertex = model.task_weights

    flavour = jnp.asarray(batch["flavour"]).astype(jnp.int32)
    jet_logits = out["jet_logits"].astype(jnp.float32)
    correct = (jnp.argmax(jet_logits, axis=-1) == flavour).astype(jnp.float32)
    if jet_valid is None:
        loss_jet = _cross_entropy(jet_logits, flavour, jnp.ones_like(valid[:, 0]), model.jet_class_weights)
        acc_jet = jnp.mean(correct)
    else:
        loss_jet = _cross_entropy(jet_logits, flavour, jet_valid, model.jet_class_weights)
        acc_jet = _safe_div(jnp.sum(correct * jet_valid), jnp.sum(jet_valid.astype(jnp.float32)))
    metrics = {"loss_jet": loss_jet, "acc_jet": acc_jet}
    total = w_jet * loss_jet

    if "origin" in tasks:
        loss_origin = _cross_entropy(
            out["origin_logits"], jnp.asarray(batch["track_origin"]), valid, model.origin_class_weights
        )
        metrics["loss_origin"] = loss_origin
        total = total + w_origin * loss_origin

    if "vertex" in tasks:
        vertex = jnp.asarray(batch["track_vertex"]).astype(jnp.int32)
        n = vertex.shape[1]
        pairs = pair_mask(valid, segment) & ~jnp.eye(n, dtype=bool)
        target = (
            (vertex[:, :, None] == vertex[:, None, :]) & (vertex[:, :, None] >= 0) & (vertex[:, None, :] >= 0)
        )
        bce = optax.sigmoid_binary_cross_entropy(
            out["vertex_logits"].astype(jnp.float32), target.astype(jnp.float32)
        )
        weight = pairs.astype(jnp.float32)
        if model.vertex_origin_weighting and "track_origin" in batch:
            weight = weight * _pair_weights(jnp.asarray(batch["track_origin"]).astype(jnp.int32))
        norm = pairs & target if model.vertex_loss_norm == "matches" else pairs
        loss_vertex = _safe_div(jnp.sum(weight * bce), jnp.sum(norm.astype(jnp.float32)))
        metrics["loss_vertex"] = loss_vertex
        total = total + w_vertex * loss_vertex

    return total.astype(jnp.float32), metrics
