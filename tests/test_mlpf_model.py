"""MLPF port: the contract, parameter count against particleflow, padding, the loss definition, the
memory-efficient attention, a training step and bf16. (Parity with particleflow itself:
tests/test_mlpf_parity.py.)

Speed: tiny configurations; each program is jitted once per graph and shape.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from smilejax.models import layers, mlpf
from smilejax.models.spec import ModelSpec

from smilejax import registry
from tests.mlpf_reference.events import random_events
from tests.model_contract import checked_parameters

PARTICLEFLOW_CLIC_PARAMS = 3_250_450  # particleflow 3.1.0's CLIC attention model (count_parameters)
TINY = mlpf.MLPFConfig(num_convs=2, num_heads=2, head_dim=4)
TOL = dict(rtol=1e-5, atol=1e-5)
# LLVM -O0 for the test programs: the same XLA graph, half the CPU compile time
FAST_COMPILE = {"xla_backend_optimization_level": 0}


@functools.cache
def _tiny_params(num_convs: int) -> nnx.State:
    """Parameters of TINY with ``num_convs`` layers, initialised in one jitted program."""
    cfg = dataclasses.replace(TINY, num_convs=num_convs)
    with nnx.use_eager_sharding(False):
        return jax.jit(lambda: nnx.state(mlpf.build(cfg, rngs=nnx.Rngs(0))), compiler_options=FAST_COMPILE)()


def tiny_model(dtype=jnp.float32, **kw) -> mlpf.MLPF:
    """A tiny MLPF; options that keep parameter shapes (dtype, attention, remat, ...) share parameters."""
    cfg = dataclasses.replace(TINY, **kw)
    with nnx.use_eager_sharding(False):
        graphdef = nnx.graphdef(nnx.eval_shape(lambda: mlpf.build(cfg, rngs=nnx.Rngs(0), dtype=dtype)))
    return nnx.merge(graphdef, _tiny_params(cfg.num_convs))


@functools.partial(jax.jit, static_argnums=0, compiler_options=FAST_COMPILE)
def _run(graphdef, state, batch):
    model = nnx.merge(graphdef, state)
    out = model(batch["X"], batch["mask"])
    return out, *mlpf.loss_from_outputs(out, batch, model.loss_weights)


@functools.partial(jax.jit, static_argnums=0, compiler_options=FAST_COMPILE)
def _value_and_grad(graphdef, params, batch):
    return jax.value_and_grad(lambda p: mlpf.loss(nnx.merge(graphdef, p), batch)[0])(params)


def run(model, X, ytarget=None, mask=None) -> tuple[dict[str, np.ndarray], float, dict[str, float]]:
    """Outputs, loss and metrics (one forward pass); ``mask`` defaults to X[..., 0] != 0."""
    batch = {
        "X": X,
        "ytarget": np.zeros((*X.shape[:2], 13), np.float32) if ytarget is None else ytarget,
        "mask": X[..., 0] != 0 if mask is None else mask,
    }
    out, total, metrics = _run(*nnx.split(model), {k: jnp.asarray(v) for k, v in batch.items()})
    return {k: np.asarray(v) for k, v in out.items()}, float(total), {k: float(v) for k, v in metrics.items()}


def test_spec_contract_and_config_errors():
    assert registry.model("mlpf") is mlpf.SPEC
    assert isinstance(mlpf.SPEC, ModelSpec) and mlpf.SPEC.config is mlpf.MLPFConfig
    cfg = mlpf.MLPFConfig()
    assert cfg.name == "mlpf" and cfg.embed == 256 and cfg.num_convs == 3 and cfg.num_classes == 6
    for f in dataclasses.fields(cfg):  # plain field types, so that a YAML mapping fills the config
        assert isinstance(getattr(cfg, f.name), int | float | str | bool | list), f.name
    spec = mlpf.SPEC.input_spec(cfg, 3)
    assert spec["X"].shape == (3, 512, 17) and spec["X"].dtype == jnp.float32
    assert spec["mask"].shape == (3, 512) and spec["mask"].dtype == jnp.bool_
    for bad, field in [
        (dict(pt_mode="log"), "pt_mode"),
        (dict(activation="swish"), "activation"),
        (dict(input_encoding="mixed"), "input_encoding"),
        (dict(attention="flash"), "attention"),
        (dict(attention_chunk=0), "attention_chunk"),
        (dict(elemtypes_nonzero=[0, 1]), "elemtypes_nonzero"),
        (dict(num_convs=0, learned_representation_mode="concat"), "concat"),
        (dict(dropout_ff=1.5), "dropout_ff"),
        (dict(dropout_conv_reg_mha=0.1, attention="chunked"), "dropout_conv_reg_mha.*attention='math'"),
    ]:
        with pytest.raises(ValueError, match=field):
            mlpf.MLPFConfig(**bad)
    hash(nnx.graphdef(tiny_model()))  # usable as a static jit argument


def test_param_count_matches_particleflow_and_axes_are_named():
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: mlpf.build(mlpf.MLPFConfig(), rngs=nnx.Rngs(0)))
    # only tiny dimensions (head outputs, the fused q/k/v index) stay unnamed
    count = checked_parameters(model, largest_unnamed=6)
    print(f"MLPF (CLIC) parameters: {count:,} (particleflow: {PARTICLEFLOW_CLIC_PARAMS:,})")
    assert count == PARTICLEFLOW_CLIC_PARAMS
    params = jax.tree.leaves(nnx.state(model, nnx.Param), is_leaf=lambda x: isinstance(x, nnx.Variable))
    assert len(params) == 142  # particleflow's state_dict holds 142 tensors


def test_outputs_and_garbage_in_padded_rows():
    model = tiny_model()
    ev = random_events(0, 3, 24)
    valid = ev["X"][..., 0] != 0
    assert not valid.all()
    out, total, metrics = run(model, ev["X"], ev["ytarget"])
    assert out["binary_logits"].shape == (3, 24, 2)
    assert out["pid_logits"].shape == (3, 24, 6)
    assert out["momentum"].shape == (3, 24, 5)
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in out.values())

    # garbage in every padded row (huge values, NaN, inf, an element type) with mask=False there
    rng = np.random.default_rng(1)
    X = ev["X"].copy()
    X[~valid] = rng.normal(scale=1e4, size=X[~valid].shape)
    X[~valid, 0] = 2.0
    (b0, i0), (b1, i1) = np.argwhere(~valid)[[0, -1]]
    X[b0, i0, 3] = np.nan
    X[b1, i1, 5] = np.inf
    y = ev["ytarget"].copy()
    y[~valid] = rng.integers(0, 6, size=y[~valid].shape)
    garbage, total_g, metrics_g = run(model, X, y, mask=valid)
    for k in out:
        assert np.isfinite(garbage[k]).all()
        np.testing.assert_allclose(garbage[k][valid], out[k][valid], **TOL)
    np.testing.assert_allclose(total_g, total, rtol=1e-6)
    assert metrics_g == pytest.approx(metrics, rel=1e-6)


def test_padded_keys_as_particleflow_or_masked():
    """particleflow lets padded elements be attention keys: more padding changes valid outputs.
    ``mask_padded_keys=True`` removes them: outputs are then padding- and permutation-invariant."""
    ev = random_events(2, 2, 16, full_first=True)
    X = ev["X"][:1]  # one full event of 16 elements
    padded = np.concatenate([X, np.zeros((1, 8, 17), np.float32)], axis=1)
    for mask_keys in (False, True):
        model = tiny_model(mask_padded_keys=mask_keys)
        ref = run(model, X)[0]
        more = run(model, padded)[0]
        same = np.allclose(more["momentum"][:, :16], ref["momentum"], **TOL)
        assert same == mask_keys, mask_keys
    perm = np.random.default_rng(3).permutation(24)
    shuffled = run(model, padded[:, perm])[0]
    for k in ref:
        np.testing.assert_allclose(shuffled[k], more[k][:, perm], **TOL)


def test_chunked_attention_is_math_attention_with_little_memory():
    rng = np.random.default_rng(4)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 50, 3, 4)), jnp.float32) for _ in range(3))
    valid = jnp.asarray(np.arange(50)[None, :] < np.array([[50], [31]]))

    def attend(impl, valid, q, k, v):
        out = layers.dot_product_attention(q, k, v, valid, implementation=impl, chunk_size=16)
        return jnp.sum(jnp.sin(out))

    for key_mask in (None, valid):  # 50 queries = 16 + 16 + 16 + 2
        f = {
            impl: jax.jit(
                jax.value_and_grad(functools.partial(attend, impl, key_mask), argnums=(0, 1, 2)),
                compiler_options=FAST_COMPILE,
            )
            for impl in ("math", "chunked")
        }
        (m, gm), (c, gc) = f["math"](q, k, v), f["chunked"](q, k, v)
        np.testing.assert_allclose(float(c), float(m), rtol=1e-6)
        for a, b in zip(gc, gm, strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="dropout"):
        layers.dot_product_attention(q, k, v, None, implementation="chunked", dropout=nnx.Dropout(0.1))

    # the compiled gradient of a 4096-element event holds no [N, N] attention matrix
    n, heads = 4096, 2
    cfg = mlpf.MLPFConfig(num_convs=1, num_heads=heads, head_dim=4, attention="chunked", attention_chunk=256)
    with nnx.use_eager_sharding(False):
        graphdef, params = nnx.split(nnx.eval_shape(lambda: mlpf.build(cfg, rngs=nnx.Rngs(0))))
    batch = {
        "X": jax.ShapeDtypeStruct((1, n, 17), jnp.float32),
        "ytarget": jax.ShapeDtypeStruct((1, n, 13), jnp.float32),
    }
    grad = jax.jit(jax.grad(lambda p, b: mlpf.loss(nnx.merge(graphdef, p), b)[0]))
    compiled = grad.lower(params, batch).compile(compiler_options=FAST_COMPILE)
    temp = compiled.memory_analysis().temp_size_in_bytes
    scores = n * n * heads * 4
    print(
        f"chunked attention, {n} elements: {temp / 2**20:.0f} MiB temporaries; one score matrix "
        f"{scores / 2**20:.0f} MiB"
    )
    assert temp < scores / 2


def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_loss_terms_match_particleflow_definitions():
    """Each term recomputed in numpy, element by element, as particleflow's mlpf_loss defines it."""
    rng = np.random.default_rng(5)
    ev = random_events(5, 2, 12)
    X, y = ev["X"], ev["ytarget"]
    out = {
        "binary_logits": rng.normal(size=(2, 12, 2)).astype(np.float32),
        "pid_logits": rng.normal(size=(2, 12, 6)).astype(np.float32),
        "momentum": rng.normal(size=(2, 12, 5)).astype(np.float32),
    }
    loss_from_outputs = jax.jit(mlpf.loss_from_outputs, compiler_options=FAST_COMPILE)
    total, m = loss_from_outputs(out, ev)

    valid = X[..., 0] != 0
    cls = y[..., 0].astype(int)
    lp_bin = _np_log_softmax(out["binary_logits"].astype(np.float64))
    lp_pid = _np_log_softmax(out["pid_logits"].astype(np.float64))
    sums = dict.fromkeys(("binary", "pid", *mlpf.MOMENTUM), 0.0)
    n_elem = n_part = 0
    for b, i in zip(*np.nonzero(valid), strict=True):
        n_elem += 1
        sums["binary"] -= 10.0 * lp_bin[b, i, int(cls[b, i] != 0)]
        if cls[b, i] == 0:
            continue
        n_part += 1
        p_true = np.exp(lp_pid[b, i, cls[b, i]])
        sums["pid"] -= (1 - p_true) ** 2 * np.log(p_true)
        w_pt = np.sqrt(np.exp(y[b, i, 2]) * X[b, i, 1])
        for j, (name, w) in enumerate(zip(mlpf.MOMENTUM, (w_pt, 1e-2, 1e-2, 1e-2, w_pt), strict=True)):
            sums[name] += w * (out["momentum"][b, i, j] - y[b, i, 2 + j]) ** 2
    assert 0 < n_part < n_elem < X.shape[0] * X.shape[1]
    expected = {
        "classification_binary": sums["binary"] / n_elem,
        "classification": sums["pid"] / n_elem,
        **{f"regression_{k}": sums[k] / n_part for k in mlpf.MOMENTUM},
    }
    for k, v in expected.items():
        np.testing.assert_allclose(float(m[k]), v, rtol=1e-5, err_msg=k)
    np.testing.assert_allclose(float(total), sum(expected.values()), rtol=1e-5)

    # no target particle: regression and type terms vanish; no real element at all: everything is 0
    no_part = {"X": X, "ytarget": np.zeros_like(y)}
    _, m0 = loss_from_outputs(out, no_part)
    assert all(float(m0[f"regression_{k}"]) == 0.0 for k in mlpf.MOMENTUM)
    assert float(m0["classification"]) == 0.0 and float(m0["classification_binary"]) > 0
    total_e, m_e = loss_from_outputs(out, {"X": np.zeros_like(X), "ytarget": y})
    assert float(total_e) == 0.0 and all(np.isfinite(float(v)) for v in m_e.values())


def test_adamw_step_decreases_loss_and_remat_matches():
    batch = {k: jnp.asarray(v) for k, v in random_events(6, 2, 20).items()}
    graphdef, params = nnx.split(tiny_model())
    before, grads = _value_and_grad(graphdef, params, batch)
    leaves = jax.tree.leaves(grads)
    assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
    assert all(float(jnp.abs(g).sum()) > 0 for g in leaves)  # every parameter is trained
    tx = optax.adamw(1e-3)
    step = jax.jit(
        lambda g, p: optax.apply_updates(p, tx.update(g, tx.init(p), p)[0]), compiler_options=FAST_COMPILE
    )
    after, _ = _value_and_grad(graphdef, step(grads, params), batch)
    assert float(after) < float(before), (float(before), float(after))

    graphdef_r, _ = nnx.split(tiny_model(remat=True))
    value_r, grads_r = _value_and_grad(graphdef_r, params, batch)
    np.testing.assert_allclose(float(value_r), float(before), rtol=1e-6)
    for a, b in zip(leaves, jax.tree.leaves(grads_r), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)


def test_bf16_forward_is_finite_with_float32_params():
    ev = random_events(7, 3, 24)
    model = tiny_model(dtype=jnp.bfloat16)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert model.conv_id[0].mha.dtype == jnp.bfloat16
    out, total, metrics = run(model, ev["X"], ev["ytarget"])
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in out.values())
    assert np.isfinite(total) and all(np.isfinite(v) for v in metrics.values())
    _, total32, _ = run(tiny_model(), ev["X"], ev["ytarget"])  # same parameters, float32 compute
    np.testing.assert_allclose(total, total32, rtol=5e-2)
