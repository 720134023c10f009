"""GN2's part of ``smilejax bench convergence``: the batching variants it compares and its quality metric,
light and c rejection at the 77 % b-efficiency working point (D_b with ATLAS GN2v01's fractions)."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ..spec import Convergence
from . import flavour
from .model import JET_CLASSES

WORKING_POINT = 0.77
FC, FTAU = 0.2, 0.01  # the default fractions of ``smilejax eval`` (ATLAS GN2v01)

# The first is the reference: the others are timed to its final validation loss.
VARIANTS: dict[str, tuple[str, ...]] = {
    # as salt: every batch padded to data.max_tracks
    "padded": ("data.bucket_tracks=[]", "data.bucket_window=1"),
    # the same batches, each padded only to the smallest width that holds its longest jet
    "bucketed": ("data.bucket_tracks=[16,24]", "data.bucket_window=1"),
    # the jets of 16 batches sorted by track count first: less padding, multiplicity-correlated batches
    "window16": ("data.bucket_tracks=[16,24]", "data.bucket_window=16"),
    # several jets per row of track slots (inputs/packing.py), a uniform random sample of jets per batch
    "packed": ("data.bucket_tracks=[]", "data.pack_tracks=80", "data.pack_jets=16"),
}


def predict(model, batch: dict) -> dict[str, jax.Array]:
    """Per-jet flavour log-probabilities (float32) and the truth flavour of an unpacked batch."""
    logits = model(batch["tracks"], batch["valid"], tasks=("jet",))["jet_logits"]
    return {"log_probs": jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), "flavour": batch["flavour"]}


def quality(outputs: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Light and c rejection at 77 % b-efficiency of D_b, with their binomial errors; NaN for a flavour
    the held-out jets lack."""
    probs = np.exp(np.asarray(outputs["log_probs"], np.float64))
    labels = np.asarray(outputs["flavour"])
    db = flavour.discriminant(probs, FC, FTAU)
    b = db[labels == JET_CLASSES.index("b")]
    result: dict[str, float] = {}
    for name in ("light", "c"):
        bkg = db[labels == JET_CLASSES.index(name)]
        if b.size and bkg.size:
            (rej,) = flavour.rejections(b, bkg, [WORKING_POINT])
            value, error = rej["rejection"], rej["stat_err"]
        else:
            value = error = float("nan")
        key = f"{name}_rej_{round(100 * WORKING_POINT)}"
        result[key], result[f"{key}_err"] = value, error
    return result


CONVERGENCE = Convergence(variants=VARIANTS, predict=predict, quality=quality, headline="light_rej_77")
