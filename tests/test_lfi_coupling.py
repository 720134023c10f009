"""Coupling layers of the LFI flows (models/lfi/coupling.py, ``flow.conditioner: coupling``): which half
moves and what it depends on, one dimension, the identity start, config errors. Invertibility and the
log-determinant against the Jacobian run for both conditioners in test_lfi_flows.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from smilejax.models.lfi import coupling, flows

from tests.helpers_lfi import make_flow

pytestmark = pytest.mark.unit  # make test-fast runs it: one device, seconds


@pytest.mark.parametrize("parity", [0, 1])
def test_mask_moves_one_half_given_the_other_and_the_context(parity):
    """Layer `parity` transforms the indices of that parity: each moved dimension depends on itself, on
    every unchanged dimension and on the context, not on the other moved ones; the rest pass unchanged."""
    flow = make_flow("nsf", dim=5, context=3, jitter=0.1, seed=parity, conditioner="coupling")
    layer = flow.layers[parity]
    assert isinstance(layer, coupling.Coupling)
    moving, fixed = coupling.halves(5, parity)
    np.testing.assert_array_equal(moving, np.arange(parity, 5, 2))
    theta = jax.random.normal(jax.random.key(1), (5,))
    ctx = jax.random.normal(jax.random.key(2), (3,))
    jac = jax.jit(jax.jacfwd(lambda t, c: layer.forward(t, c)[0], argnums=(0, 1)))
    d_theta, d_ctx = (np.asarray(j) for j in jac(theta, ctx))  # [out, in], [out, context]
    np.testing.assert_array_equal(d_theta[fixed], np.eye(5)[fixed])  # the identity half is untouched
    np.testing.assert_array_equal(d_ctx[fixed], 0.0)
    assert np.all(np.abs(d_theta[np.ix_(moving, fixed)]) > 0)  # conditioned on the other half
    assert np.all(np.abs(d_ctx[moving]).sum(-1) > 0)  # and on the context
    off = d_theta[np.ix_(moving, moving)] * (1 - np.eye(len(moving)))
    np.testing.assert_array_equal(off, 0.0)  # elementwise within the moved half
    assert np.all(np.diag(d_theta)[moving] > 0)


def test_one_dimension_is_transformed_given_the_context():
    """With one dimension there is no other half: every layer moves it, from the context alone."""
    flow = make_flow("nsf", dim=1, context=2, jitter=0.1, seed=3, conditioner="coupling", linear=True)
    assert len(flow.layers) == 3  # no LU layer for one dimension
    theta, ctx = jnp.array([0.7]), jnp.array([0.2, -1.0])
    d_ctx = jax.jit(jax.jacfwd(lambda c: [layer.forward(theta, c)[0] for layer in flow.layers]))(ctx)
    assert all(np.abs(np.asarray(d)).sum() > 0 for d in d_ctx)
    z, logdet = nnx.jit(lambda f, t, c: f.forward(t, c))(flow, theta[None], ctx[None])
    back, inv_logdet = nnx.jit(lambda f, t, c: f.inverse(t, c))(flow, z, ctx[None])
    np.testing.assert_allclose(back, theta[None], atol=2e-5)
    np.testing.assert_allclose(inv_logdet, -logdet, atol=2e-5)


@pytest.mark.parametrize("kind", flows.KINDS)
def test_a_new_coupling_flow_is_the_identity(kind):
    cfg = flows.FlowConfig(kind=kind, layers=3, conditioner="coupling", linear=True)
    with nnx.use_eager_sharding(False):
        flow = flows.Flow(3, 2, cfg, rngs=nnx.Rngs(0))
    theta = jax.random.normal(jax.random.key(0), (8, 3))
    z, logdet = nnx.jit(lambda f, t, c: f.forward(t, c))(flow, theta, jnp.ones((8, 2)))
    np.testing.assert_allclose(z, theta, atol=1e-5)
    np.testing.assert_allclose(logdet, 0.0, atol=1e-5)


def test_config_errors():
    with nnx.use_eager_sharding(False):
        with pytest.raises(ValueError, match=r"unknown flow\.conditioner 'resnet'; choose from"):
            flows.Flow(2, 1, flows.FlowConfig(conditioner="resnet"), rngs=nnx.Rngs(0))
        with pytest.raises(ValueError, match="must repeat one width"):
            flows.Flow(2, 1, flows.FlowConfig(conditioner="coupling", hidden=[32, 64]), rngs=nnx.Rngs(0))
