"""The LFI family's normalising flows (models/lfi/flows.py, spline.py): invertible, their log-determinant
is the Jacobian's, and they fit a 2-D density; the embeddings' shapes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from smilejax.models.lfi import embedding, flows, spline

from tests.helpers_lfi import make_flow

KINDS = ("maf", "nsf")
LAYOUTS = [(kind, conditioner) for conditioner in flows.CONDITIONERS for kind in KINDS]


@pytest.mark.parametrize(("kind", "conditioner"), LAYOUTS)
def test_inverse_undoes_forward_and_log_dets_cancel(kind, conditioner):
    flow = make_flow(kind, dim=3, context=2, jitter=0.3 if kind == "maf" else 0.1, conditioner=conditioner)
    theta = 1.5 * jax.random.normal(jax.random.key(2), (64, 3))
    theta = theta.at[0].set(jnp.array([6.0, -7.0, 0.5]))  # past the spline's bound: the linear tails
    ctx = jax.random.normal(jax.random.key(3), (64, 2))
    z, logdet = nnx.jit(lambda f, t, c: f.forward(t, c))(flow, theta, ctx)
    back, inv_logdet = nnx.jit(lambda f, t, c: f.inverse(t, c))(flow, z, ctx)
    tol = 2e-4  # float32 (exact in float64: test_spline_inverse_is_exact_in_float64)
    np.testing.assert_allclose(back, theta, atol=tol, rtol=tol)
    np.testing.assert_allclose(inv_logdet, -logdet, atol=tol, rtol=tol)
    assert not np.allclose(z, theta, atol=1e-2)  # the jitter made it a real transform


@pytest.mark.parametrize(("kind", "conditioner"), LAYOUTS)
def test_log_det_is_the_jacobians(kind, conditioner):
    flow = make_flow(kind, dim=3, context=2, seed=4, conditioner=conditioner)
    theta = jax.random.normal(jax.random.key(5), (16, 3))
    ctx = jax.random.normal(jax.random.key(6), (16, 2))
    _, logdet = nnx.jit(lambda f, t, c: f.forward(t, c))(flow, theta, ctx)
    jac = jax.jit(jax.vmap(jax.jacfwd(lambda t, c: flow.forward(t[None], c[None])[0][0])))(theta, ctx)
    sign, expected = jnp.linalg.slogdet(jac)
    assert np.all(np.asarray(sign) > 0)  # monotone in each autoregressive or coupling step
    np.testing.assert_allclose(logdet, expected, atol=1e-4, rtol=1e-4)


def test_lu_linear_layers_invert_and_their_log_det_is_the_jacobians():
    flow = make_flow("nsf", dim=3, context=2, jitter=0.1, seed=12, linear=True)
    assert sum(isinstance(layer, flows.LinearLU) for layer in flow.layers) == 3
    theta = jax.random.normal(jax.random.key(13), (32, 3))
    ctx = jax.random.normal(jax.random.key(14), (32, 2))
    z, logdet = nnx.jit(lambda f, t, c: f.forward(t, c))(flow, theta, ctx)
    back, inv_logdet = nnx.jit(lambda f, t, c: f.inverse(t, c))(flow, z, ctx)
    np.testing.assert_allclose(back, theta, atol=2e-4, rtol=2e-4)
    np.testing.assert_allclose(inv_logdet, -logdet, atol=2e-4, rtol=2e-4)
    jac = jax.jit(jax.vmap(jax.jacfwd(lambda t, c: flow.forward(t[None], c[None])[0][0])))(theta, ctx)
    np.testing.assert_allclose(logdet, jnp.linalg.slogdet(jac)[1], atol=1e-4, rtol=1e-4)
    lu = flow.layers[1]
    assert np.abs(np.asarray(lu._factors()[0] @ lu._factors()[1]) - np.eye(3)).max() > 0.05  # mixes
    with nnx.use_eager_sharding(False):
        fresh = flows.LinearLU(3)
    np.testing.assert_allclose(fresh.forward(theta, ctx)[0], theta)  # starts at the identity


def test_autoregressive_structure():
    """Output i of a MADE depends on inputs < i only (and on all the context)."""
    flow = make_flow("nsf", dim=4, context=1, seed=7)
    made = flow.layers[0].made
    theta, ctx = jax.random.normal(jax.random.key(8), (4,)), jnp.ones((1,))
    jac = jax.jacfwd(lambda t: made(t, ctx).sum(-1))(theta)  # [4 outputs, 4 inputs]
    assert np.all(np.abs(np.triu(np.asarray(jac))) == 0.0)
    assert np.all(np.abs(np.tril(np.asarray(jac), -1))[np.tril_indices(4, -1)] > 0)


@pytest.mark.parametrize("dim", [1, 2, 4])
def test_every_output_of_a_made_sees_the_context(dim):
    """The first dimension's transform too depends on the observation (units of degree 0 feed it): with
    hidden degrees from 1 up, output 1 was a constant bias in every layer, blind to x."""
    flow = make_flow("nsf", dim=dim, context=3, seed=9)
    made = flow.layers[0].made
    theta = jax.random.normal(jax.random.key(10), (dim,))
    ctx = jax.random.normal(jax.random.key(11), (3,))
    jac = jax.jacfwd(lambda c: made(theta, c))(ctx)  # [dim, per_dim, 3 context]
    assert np.all(np.abs(np.asarray(jac)).sum(axis=(1, 2)) > 0)


def test_masks_are_built_once_as_constants_not_state():
    """A MaskedDense's mask is made at construction and held as static structure: the flow's state is its
    kernels and biases only, and a traced forward embeds the mask as a constant."""
    flow = make_flow("maf", dim=3, context=2, seed=1)
    layer = flow.layers[0].made.layers[0]
    assert isinstance(layer.mask, flows.Constant) and layer.mask.array.shape == layer.kernel[...].shape
    assert not layer.mask.array.flags.writeable
    # hidden unit j of degree d_j sees inputs of degree <= d_j and all of the context (degree 0)
    degrees = flows._degrees(3, [16, 16])
    inputs = np.concatenate([degrees[0], np.zeros(2, int)])
    np.testing.assert_array_equal(layer.mask.array, degrees[1][None, :] >= inputs[:, None])
    _, state = nnx.split(flow)
    names = {path[-1] for path, _ in nnx.to_flat_state(state)}
    assert names == {"kernel", "bias"}, names
    graph, _ = nnx.split(flow)
    assert hash(graph) == hash(nnx.split(make_flow("maf", dim=3, context=2, seed=2))[0])


def test_a_new_flow_is_the_identity():
    with nnx.use_eager_sharding(False):
        flow = flows.Flow(2, 3, flows.FlowConfig(kind="nsf", layers=2), rngs=nnx.Rngs(0))
    theta = jax.random.normal(jax.random.key(0), (8, 2))
    z, logdet = flow.forward(theta, jnp.zeros((8, 3)))
    np.testing.assert_allclose(z, theta, atol=1e-5)
    np.testing.assert_allclose(logdet, 0.0, atol=1e-5)


def test_spline_is_monotone_with_identity_tails():
    params = jax.random.normal(jax.random.key(1), (3 * 5 - 1,))
    x = jnp.linspace(-6.0, 6.0, 2001)
    y, logdet = spline.forward(x, jnp.broadcast_to(params, (x.size, params.size)), bins=5, bound=3.0)
    assert np.all(np.diff(np.asarray(y)) > 0)
    outside = np.abs(np.asarray(x)) >= 3.0
    np.testing.assert_allclose(np.asarray(y)[outside], np.asarray(x)[outside])
    np.testing.assert_allclose(np.asarray(logdet)[outside], 0.0)
    np.testing.assert_allclose(np.asarray(y)[[0, -1]], [-6.0, 6.0])


def test_spline_inverse_is_exact_in_float64():
    """Far-from-identity splines (steep and flat bins): the inverse's root is the forward's input."""
    with jax.enable_x64(True):
        params = 2.0 * jax.random.normal(jax.random.key(0), (4000, 3 * 8 - 1), jnp.float64)
        x = jax.random.uniform(jax.random.key(1), (4000,), jnp.float64, -6.0, 6.0)
        y, logdet = spline.forward(x, params, bins=8, bound=5.0)
        back, inv_logdet = spline.inverse(y, params, bins=8, bound=5.0)
        assert back.dtype == jnp.float64
        np.testing.assert_allclose(back, x, atol=1e-9)
        np.testing.assert_allclose(inv_logdet, -logdet, atol=1e-9)


def _mixture_log_prob(theta: jax.Array) -> jax.Array:
    """Two separated, correlated Gaussians, equal weights: a bimodal 2-D target."""
    means = jnp.array([[-2.0, 0.0], [2.0, 1.0]])
    cov = jnp.array([[0.5, 0.3], [0.3, 0.5]])
    prec = jnp.linalg.inv(cov)
    d = theta[:, None, :] - means[None]
    quad = jnp.einsum("bki,ij,bkj->bk", d, prec, d)
    log_norm = -jnp.log(2 * jnp.pi) - 0.5 * jnp.log(jnp.linalg.det(cov))
    return jax.nn.logsumexp(-0.5 * quad + log_norm, axis=1) - jnp.log(2.0)


def _mixture_sample(key: jax.Array, n: int) -> jax.Array:
    k1, k2 = jax.random.split(key)
    means = jnp.array([[-2.0, 0.0], [2.0, 1.0]])
    chol = jnp.linalg.cholesky(jnp.array([[0.5, 0.3], [0.3, 0.5]]))
    pick = jax.random.bernoulli(k1, 0.5, (n,)).astype(int)
    return means[pick] + jax.random.normal(k2, (n, 2)) @ chol.T


@pytest.mark.parametrize("kind", KINDS)
def test_fits_a_two_dimensional_target(kind):
    """Maximum likelihood on samples of a bimodal target: KL(p || q) small, samples in the right modes."""
    cfg = flows.FlowConfig(kind=kind, layers=4 if kind == "nsf" else 6, hidden=[32, 32], bins=8)
    with nnx.use_eager_sharding(False):
        flow = flows.Flow(2, 1, cfg, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(flow, optax.adam(3e-3), wrt=nnx.Param)

    @nnx.jit
    def step(flow, opt, key):
        theta = _mixture_sample(key, 512)
        ctx = jnp.zeros((512, 1))
        loss, grads = nnx.value_and_grad(lambda f: -f.log_prob(theta, ctx).mean())(flow)
        opt.update(flow, grads)
        return loss

    for i in range(800):
        step(flow, opt, jax.random.key(i))
    theta = _mixture_sample(jax.random.key(10_000), 4096)
    log_q = nnx.jit(lambda f, t: f.log_prob(t, jnp.zeros((4096, 1))))(flow, theta)
    kl = float(jnp.mean(_mixture_log_prob(theta) - log_q))
    assert kl < (0.05 if kind == "nsf" else 0.25), kl  # an affine MAF bends less easily
    drawn = nnx.jit(lambda f, k: f.sample(k, jnp.zeros((4096, 1))))(flow, jax.random.key(1))
    right = np.mean(np.asarray(drawn[:, 0]) > 0)
    assert 0.4 < right < 0.6 and abs(float(drawn[:, 1].mean()) - 0.5) < 0.15


@pytest.mark.parametrize("kind", ["mlp", "set", "none"])
def test_embeddings(kind):
    cfg = embedding.EmbeddingConfig(kind=kind, hidden=[16], out=8, set_features=2, set_embed=16, set_heads=2)
    with nnx.use_eager_sharding(False):
        net = embedding.Embedding(cfg, 10, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (4, 10))
    out = net(x)
    assert out.shape == (4, embedding.out_size(cfg, 10)) and np.all(np.isfinite(out))
    if kind == "set":  # the order of the elements does not matter; NaN elements are padding
        perm = x.reshape(4, 5, 2)[:, ::-1].reshape(4, 10)
        np.testing.assert_allclose(net(perm), out, atol=1e-5)
        padded = jnp.concatenate([x, jnp.full((4, 0), jnp.nan)], 1)
        assert np.all(np.isfinite(net(padded.at[:, 8:].set(jnp.nan))))
    with pytest.raises(ValueError, match="set_features=3 must divide"):
        embedding.check(embedding.EmbeddingConfig(kind="set", set_features=3), 10)
