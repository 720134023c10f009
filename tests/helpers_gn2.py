"""Small GN2 models and batches that several test modules use (tests/test_gn2_model.py, test_gn2_packed.py,
test_attention_dispatch.py, test_pair_mlp.py, test_set_attention.py, the convergence bench tests).

Speed: the small models share one jitted initialisation (configs that differ only in static options
reuse its parameters) and forward programs are jitted once per graphdef and shape."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from smilejax.inputs import packing
from smilejax.models import gn2

# ---------------------------------------------------------------- the small model (test_gn2_model.py)

SMALL = dict(
    track_features=21,
    max_tracks=10,
    embed=32,
    init_hidden=[32],
    layers=2,
    heads=4,
    ff=64,
    out=16,
    head_hidden=[16, 8],
)
TOL = dict(rtol=1e-5, atol=1e-5)
B, T = 4, 10


def small_cfg(**kw) -> gn2.GN2Config:
    return gn2.GN2Config(**{**SMALL, **kw})


def _init(cfg: gn2.GN2Config, dtype):
    return nnx.split(gn2.SPEC.build(cfg, rngs=nnx.Rngs(0), dtype=dtype))


@functools.cache
def _small_state():
    """Parameters of the small config, initialised as the framework does (one jitted init)."""
    with nnx.use_eager_sharding(False):
        return jax.jit(lambda: _init(small_cfg(), jnp.float32)[1])()


def small_model(dtype=jnp.float32, **kw) -> gn2.GN2:
    """A small GN2; options that keep parameter shapes (aux_tasks, weights, remat, dtype) share params."""
    with nnx.use_eager_sharding(False):
        graphdef, _ = nnx.eval_shape(lambda: _init(small_cfg(**kw), dtype))
    return nnx.merge(graphdef, _small_state())


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, tracks, valid):
    return nnx.merge(graphdef, state)(tracks, valid)


def forward(model, tracks, valid) -> dict[str, np.ndarray]:
    out = _forward(*nnx.split(model), jnp.asarray(tracks), jnp.asarray(valid))
    return {k: np.asarray(v) for k, v in out.items()}


def make_batch(seed: int, b: int = B, t: int = T, labels: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_valid = rng.integers(2, t + 1, size=b)
    n_valid[0] = t  # one full jet
    valid = np.arange(t)[None, :] < n_valid[:, None]
    tracks = rng.normal(size=(b, t, 21)).astype(np.float32)
    tracks[~valid] = 0.0
    batch = {"tracks": tracks, "valid": valid, "flavour": rng.integers(0, 4, size=b).astype(np.int32)}
    if labels:
        batch["track_origin"] = np.where(valid, rng.integers(0, 8, size=(b, t)), -1).astype(np.int32)
        batch["track_vertex"] = np.where(valid, rng.integers(-1, 3, size=(b, t)), -1).astype(np.int32)
    return batch


# ---------------------------------------------------------------- packed batches (test_gn2_packed.py)

TINY = dict(
    track_features=21,
    max_tracks=8,
    embed=16,
    init_hidden=[16],
    layers=1,
    heads=2,
    ff=32,
    out=8,
    registers=2,  # two per jet: their slot-major order in a row is exercised
    head_hidden=[16],
    aux_tasks="on",
)
LENGTHS = [8, 0, 3, 5, 1, 6]  # a full jet and a jet without tracks
SLOTS, JETS_PER_ROW = 12, 3


def padded_batch(seed: int = 0) -> dict[str, np.ndarray]:
    """Jets of ``LENGTHS`` tracks in 8 slots, one with a hole (valid False inside the jet)."""
    rng = np.random.default_rng(seed)
    b, t = len(LENGTHS), TINY["max_tracks"]
    valid = np.arange(t)[None, :] < np.asarray(LENGTHS)[:, None]
    valid[3, 1] = False  # a hole
    tracks = np.where(valid[..., None], rng.normal(size=(b, t, 21)), 0).astype(np.float32)
    return {
        "tracks": tracks,
        "valid": valid,
        "flavour": np.array([0, 1, 2, 3, 0, 2], np.int32),
        "track_origin": np.where(valid, rng.integers(0, 8, size=(b, t)), -1).astype(np.int32),
        "track_vertex": np.where(valid, rng.integers(-1, 3, size=(b, t)), -1).astype(np.int32),
    }


def packed_batch(batch: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], packing.Packing]:
    """Rounded to 4 rows: two filled (one with all 12 slots used), two empty."""
    packed, plan = packing.pack_padded(batch, SLOTS, JETS_PER_ROW, row_multiple=4)
    assert plan.rows == 4 and plan.used_rows == 2 and not packed["valid"][2:].any()
    assert packed["valid"].sum(1).max() == SLOTS and packed["segment"].shape == (4, SLOTS)
    return packed, plan


def tiny_model(dtype=jnp.float32, **kw) -> gn2.GN2:
    with nnx.use_eager_sharding(False):
        return gn2.SPEC.build(gn2.GN2Config(**{**TINY, **kw}), rngs=nnx.Rngs(1), dtype=dtype)


def loss_and_grads(model: gn2.GN2, batch: dict[str, np.ndarray]):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    batch = {k: jnp.asarray(v) for k, v in batch.items()}

    def f(p):
        return gn2.SPEC.loss(nnx.merge(graphdef, p, rest), batch)

    return jax.jit(jax.value_and_grad(f, has_aux=True))(params)


# ---------------------------------------------------------------- the convergence bench's model

# a tiny GN2 without auxiliary tasks (test_bench_convergence.py, test_convergence_probe.py)
CONVERGENCE_TINY = dict(
    embed=16, init_hidden=[16], layers=1, heads=2, ff=32, out=8, head_hidden=[8], aux_tasks="off"
)
