"""GN2 port: parameter count against salt, masking invariances, losses, a training step, bf16.

Speed: the small models share one jitted initialisation (configs that differ only in static options
reuse its parameters) and forward / loss / gradient programs are jitted once per graphdef and shape.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import yaml
from flax import nnx
from smilejax.inputs import ftag_h5 as fh
from smilejax.models import gn2
from smilejax.models.spec import ModelSpec

from tests.helpers_gn2 import TOL, B, T, forward, make_batch, small_cfg, small_model
from tests.model_contract import checked_parameters

SALT_GN2_PARAMS = 2_339_150  # salt's configs/GN2/GN2.yaml as built by salt.models.SaltModel


@functools.partial(jax.jit, static_argnums=0)
def _loss(graphdef, state, batch):
    return gn2.SPEC.loss(nnx.merge(graphdef, state), batch)


@functools.partial(jax.jit, static_argnums=0)
def _value_and_grad(graphdef, params, rest, batch):
    def f(p):
        return gn2.SPEC.loss(nnx.merge(graphdef, p, rest), batch)[0]

    return jax.value_and_grad(f)(params)


def loss(model, batch):
    return _loss(*nnx.split(model), {k: jnp.asarray(v) for k, v in batch.items()})


def test_spec_contract():
    assert isinstance(gn2.SPEC, ModelSpec)
    assert gn2.SPEC.name == "gn2" and gn2.SPEC.config is gn2.GN2Config
    cfg = gn2.GN2Config()
    assert cfg.name == "gn2"
    spec = gn2.SPEC.input_spec(cfg, 5)
    assert spec["tracks"].shape == (5, 40, 21) and spec["tracks"].dtype == jnp.float32
    assert spec["valid"].shape == (5, 40) and spec["valid"].dtype == jnp.bool_
    with pytest.raises(ValueError, match="aux_tasks"):
        gn2.GN2Config(aux_tasks="maybe")
    with pytest.raises(ValueError, match="origin"):
        gn2.GN2Config(class_weights={"origin": [1.0, 2.0]})
    with pytest.raises(ValueError, match="vertex"):
        gn2.GN2Config(class_weights={"vertex": [1.0]})
    with pytest.raises(ValueError, match="vertex_loss_norm"):
        gn2.GN2Config(vertex_loss_norm="mean")
    # plain field types, so that a YAML mapping fills the config
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        assert value is None or isinstance(value, int | float | str | bool | list | dict), f.name
    # the graphdef holds only hashable values: usable as a static jit argument
    graphdef, _ = nnx.split(small_model(class_weights={"jet": [1.0, 2.0, 3.0, 4.0]}))
    hash(graphdef)


def test_param_count_matches_salt_and_axes_are_named():
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: gn2.SPEC.build(gn2.GN2Config(), rngs=nnx.Rngs(0), dtype=jnp.float32))
    # only tiny dimensions (class logits, the pooling gate, the register count) stay unnamed
    count = checked_parameters(model, largest_unnamed=8)
    print(f"GN2 parameters: {count:,} (salt: {SALT_GN2_PARAMS:,})")
    assert abs(count - SALT_GN2_PARAMS) / SALT_GN2_PARAMS < 0.01
    assert count == SALT_GN2_PARAMS  # the port is exact


def test_output_shapes_and_padded_entries():
    batch = make_batch(0)
    out = forward(small_model(), batch["tracks"], batch["valid"])
    assert out["jet_logits"].shape == (B, 4)
    assert out["origin_logits"].shape == (B, T, 8)
    assert out["vertex_logits"].shape == (B, T, T)
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in out.values())
    valid = batch["valid"]
    assert not valid.all()
    assert np.all(out["origin_logits"][~valid] == 0)
    pair = valid[:, :, None] & valid[:, None, :]
    assert np.all(out["vertex_logits"][~pair] == 0)
    assert np.all(out["vertex_logits"][pair] != 0)


def test_padding_with_garbage_changes_nothing():
    model = small_model()
    batch = make_batch(1, t=6)
    ref = forward(model, batch["tracks"], batch["valid"])
    # 4 more padded slots, and garbage (huge values, NaN, inf) in every padded slot
    rng = np.random.default_rng(1)
    tracks = np.concatenate([batch["tracks"], np.zeros((B, T - 6, 21), np.float32)], axis=1)
    valid = np.concatenate([batch["valid"], np.zeros((B, T - 6), bool)], axis=1)
    tracks[~valid] = rng.normal(scale=1e4, size=tracks[~valid].shape)
    tracks[1, -1, 3] = np.nan
    tracks[2, -2, 0] = np.inf
    out = forward(model, tracks, valid)
    assert all(np.isfinite(v).all() for v in out.values())
    np.testing.assert_allclose(out["jet_logits"], ref["jet_logits"], **TOL)
    v0 = batch["valid"]
    np.testing.assert_allclose(out["origin_logits"][:, :6][v0], ref["origin_logits"][v0], **TOL)
    pair = v0[:, :, None] & v0[:, None, :]
    np.testing.assert_allclose(out["vertex_logits"][:, :6, :6][pair], ref["vertex_logits"][pair], **TOL)


def test_permuting_tracks_and_holes_in_mask():
    model = small_model()
    rng = np.random.default_rng(2)
    n = 6
    tracks = rng.normal(size=(B, n, 21)).astype(np.float32)
    ref = forward(model, tracks, np.ones((B, n), bool))

    perm = rng.permutation(n)
    out = forward(model, tracks[:, perm], np.ones((B, n), bool))
    np.testing.assert_allclose(out["jet_logits"], ref["jet_logits"], **TOL)
    np.testing.assert_allclose(out["origin_logits"], ref["origin_logits"][:, perm], **TOL)
    np.testing.assert_allclose(out["vertex_logits"], ref["vertex_logits"][:, perm][:, :, perm], **TOL)

    # the same tracks scattered over T slots with garbage in the holes: valid tracks need not come first
    slots = np.sort(rng.choice(T, size=n, replace=False))
    holey = rng.normal(scale=50.0, size=(B, T, 21)).astype(np.float32)
    holey[:, slots] = tracks
    valid = np.zeros((B, T), bool)
    valid[:, slots] = True
    assert not np.all(valid[:, :n])  # really has holes
    out = forward(model, holey, valid)
    np.testing.assert_allclose(out["jet_logits"], ref["jet_logits"], **TOL)
    np.testing.assert_allclose(out["origin_logits"][:, slots], ref["origin_logits"], **TOL)
    np.testing.assert_allclose(out["vertex_logits"][:, slots][:, :, slots], ref["vertex_logits"], **TOL)


def test_fully_padded_jet_is_finite():
    model = small_model()
    batch = make_batch(3)
    batch["valid"][1] = False
    batch["tracks"][1] = np.random.default_rng(3).normal(scale=1e3, size=(T, 21))
    batch["track_origin"][1] = -1
    batch["track_vertex"][1] = -1
    out = forward(model, batch["tracks"], batch["valid"])
    assert all(np.isfinite(v).all() for v in out.values())
    total, metrics = loss(model, batch)
    assert np.isfinite(float(total)) and all(np.isfinite(float(v)) for v in metrics.values())
    # every jet empty: still finite, and the aux losses are 0 (nothing to average)
    batch["valid"][:] = False
    total, metrics = loss(model, batch)
    assert np.isfinite(float(total))
    assert float(metrics["loss_origin"]) == 0.0 and float(metrics["loss_vertex"]) == 0.0


def test_losses_and_aux_task_modes():
    model = small_model()
    batch = make_batch(4)
    total, m = loss(model, batch)
    assert set(m) == {"loss_jet", "loss_origin", "loss_vertex", "acc_jet"}
    assert all(v.dtype == jnp.float32 and v.shape == () for v in [total, *m.values()])
    assert all(float(v) > 0 for k, v in m.items() if k.startswith("loss"))
    assert 0.0 <= float(m["acc_jet"]) <= 1.0
    expected = float(m["loss_jet"]) + 0.5 * float(m["loss_origin"]) + 1.5 * float(m["loss_vertex"])
    np.testing.assert_allclose(float(total), expected, rtol=1e-6)

    # auto without labels: jet only
    jet_only = {k: batch[k] for k in ("tracks", "valid", "flavour")}
    total_j, m_j = loss(model, jet_only)
    assert set(m_j) == {"loss_jet", "acc_jet"}
    np.testing.assert_allclose(float(total_j), float(m["loss_jet"]), rtol=1e-6)
    # auto with one aux label: only that task
    _, m_o = loss(model, {**jet_only, "track_origin": batch["track_origin"]})
    assert set(m_o) == {"loss_jet", "loss_origin", "acc_jet"}

    # "on" demands the labels and names the missing key
    on = small_model(aux_tasks="on")
    with pytest.raises(ValueError, match="track_origin"):
        gn2.SPEC.loss(on, jet_only)
    with pytest.raises(ValueError, match="track_vertex"):
        gn2.SPEC.loss(on, {**jet_only, "track_origin": batch["track_origin"]})
    np.testing.assert_allclose(float(loss(on, batch)[0]), float(total), rtol=1e-6)

    # "off" ignores labels that are present
    total_off, m_off = loss(small_model(aux_tasks="off"), batch)
    assert set(m_off) == {"loss_jet", "acc_jet"}
    np.testing.assert_allclose(float(total_off), float(m["loss_jet"]), rtol=1e-6)


def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_loss_values_match_reference_definitions(tmp_path):
    """Recompute each task loss in plain numpy from the model outputs, pair by pair as salt does, with
    the class weights of a salt class dict (``data.class_dict``)."""
    batch = make_batch(5)
    batch["track_origin"][0, :4] = [3, 4, 1, 1]  # heavy-flavour and fake tracks for the pair weights
    batch["track_vertex"][0, :4] = [0, 0, -1, -1]
    batch["track_origin"][0, 4] = -2  # salt masks it in the origin loss; its pairs stay, weight 1
    batch["track_vertex"][0, 4] = 0
    batch["flavour"][2] = -1  # an ignored jet
    jet_w = [1.0, 2.0, 0.5, 3.0]
    origin_w = [3.96, 104.05, 1.0, 8.32, 5.98, 10.22, 1.0, 21.54]
    class_dict = tmp_path / "class_dict.yaml"
    class_dict.write_text(
        yaml.safe_dump({"jets": {"flavour_label": jet_w}, "tracks": {"ftagTruthOriginLabel": origin_w}})
    )
    model_weights = fh.model_config(fh.FtagConfig(class_dict=str(class_dict)), small_cfg()).class_weights
    model = small_model(class_weights=model_weights)
    out = forward(model, batch["tracks"], batch["valid"])
    _, m = loss(model, batch)

    lp = _np_log_softmax(out["jet_logits"].astype(np.float64))
    num = den = 0.0
    for i, y in enumerate(batch["flavour"]):
        if y >= 0:
            num -= jet_w[y] * lp[i, y]
            den += jet_w[y]
    np.testing.assert_allclose(float(m["loss_jet"]), num / den, rtol=1e-5)

    lp = _np_log_softmax(out["origin_logits"].astype(np.float64))
    num = den = 0.0
    for j, t in zip(*np.nonzero(batch["valid"]), strict=True):
        y = batch["track_origin"][j, t]
        if y >= 0:
            num -= origin_w[y] * lp[j, t, y]
            den += origin_w[y]
    np.testing.assert_allclose(float(m["loss_origin"]), num / den, rtol=1e-5)

    vtx, org, valid = batch["track_vertex"], batch["track_origin"], batch["valid"]
    logits = out["vertex_logits"].astype(np.float64)
    wt = np.isin(org, [3, 4, 5]).astype(int) - (org == 1).astype(int)
    num, n_pairs, n_match = 0.0, 0, 0
    for j in range(B):
        for a in range(T):
            for c in range(T):
                if a == c or not (valid[j, a] and valid[j, c]):
                    continue
                target = float(vtx[j, a] == vtx[j, c] and vtx[j, a] >= 0)
                x = logits[j, a, c]
                bce = max(x, 0) - x * target + np.log1p(np.exp(-abs(x)))
                num += (1 + (wt[j, a] & wt[j, c])) * bce
                n_pairs += 1
                n_match += target
    assert 0 < n_match < n_pairs
    # salt's normalisation (the default): by the number of matching pairs
    np.testing.assert_allclose(float(m["loss_vertex"]), num / n_match, rtol=1e-5)
    # the other: by the number of valid pairs
    _, m_pairs = loss(small_model(class_weights=model_weights, vertex_loss_norm="pairs"), batch)
    np.testing.assert_allclose(float(m_pairs["loss_vertex"]), num / n_pairs, rtol=1e-5)
    np.testing.assert_allclose(float(m_pairs["loss_jet"]), float(m["loss_jet"]), rtol=1e-6)

    # the class weights matter
    _, m_plain = loss(small_model(), batch)
    assert not np.isclose(float(m_plain["loss_jet"]), float(m["loss_jet"]))


def test_adamw_step_decreases_loss_and_remat_matches():
    batch = {k: jnp.asarray(v) for k, v in make_batch(6).items()}
    graphdef, params, rest = nnx.split(small_model(), nnx.Param, ...)
    before, grads = _value_and_grad(graphdef, params, rest, batch)
    grad_leaves = jax.tree.leaves(grads)
    assert all(np.isfinite(np.asarray(g)).all() for g in grad_leaves)
    assert sum(float(jnp.abs(g).sum()) for g in grad_leaves) > 0

    tx = optax.adamw(1e-3, weight_decay=1e-5)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    new_params = jax.jit(optax.apply_updates)(params, updates)
    after, _ = loss(nnx.merge(graphdef, new_params, rest), batch)
    assert float(after) < float(before), (float(before), float(after))

    # per-layer rematerialisation: same loss and gradients
    graphdef_r, params_r, rest_r = nnx.split(small_model(remat=True), nnx.Param, ...)
    value_r, grads_r = _value_and_grad(graphdef_r, params_r, rest_r, batch)
    np.testing.assert_allclose(float(value_r), float(before), rtol=1e-6)
    for a, b in zip(grad_leaves, jax.tree.leaves(grads_r), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)


def test_bf16_compute_is_finite_with_float32_params():
    batch = make_batch(8)
    batch["valid"][3] = False  # and a fully padded jet
    model = small_model(dtype=jnp.bfloat16)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    total, metrics = loss(model, batch)
    assert total.dtype == jnp.float32 and np.isfinite(float(total))
    assert all(v.dtype == jnp.float32 and np.isfinite(float(v)) for v in metrics.values())
    # close to float32 compute with the same parameters
    total32, _ = loss(small_model(), batch)
    np.testing.assert_allclose(float(total), float(total32), rtol=5e-2)
    out = forward(model, batch["tracks"], batch["valid"])
    assert out["jet_logits"].dtype == jnp.bfloat16
    assert all(np.isfinite(v.astype(np.float32)).all() for v in out.values())


def test_init_matches_pytorch_linear_defaults():
    """salt's layers start as PyTorch's: every Linear kernel and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
    the fused q/k/v projection Xavier-uniform with a zero bias; the shared layers' default stays a zero
    bias (MLPF's init is unchanged)."""
    from smilejax.models import layers

    with nnx.use_eager_sharding(False):
        model = gn2.SPEC.build(gn2.GN2Config(), rngs=nnx.Rngs(0), dtype=jnp.float32)
        default = layers.MLP([8, 16, 4], rngs=nnx.Rngs(0))
        attention = layers.SelfAttention(16, 2, rngs=nnx.Rngs(0))
    linears = attentions = 0
    for path, node in nnx.iter_graph(model):
        if isinstance(node, layers.Dense):
            kernel, bias = np.asarray(node.kernel[...]), np.asarray(node.bias[...])
            bound = 1 / np.sqrt(kernel.shape[0])
            assert np.abs(kernel).max() <= bound and np.abs(bias).max() <= bound, path
            if bias.size >= 64:  # enough draws to see the uniform's spread and mean |b| = bound / 2
                assert np.abs(bias).max() > 0.9 * bound, path
                np.testing.assert_allclose(np.abs(bias).mean(), bound / 2, rtol=0.25, err_msg=str(path))
            linears += 1
        elif isinstance(node, layers.SelfAttention):
            embed = node.out_kernel.shape[-1]
            out_bias = np.abs(np.asarray(node.out_bias[...]))
            assert 0.9 / np.sqrt(embed) < out_bias.max() <= 1 / np.sqrt(embed)
            assert not np.asarray(node.qkv_bias[...]).any()
            qkv_bound = np.sqrt(6 / (embed + 3 * embed))  # Xavier over salt's [3 * embed, embed] in_proj
            assert np.abs(np.asarray(node.qkv_kernel[...])).max() <= qkv_bound
            attentions += 1
    # init net 2, 4 x feed-forward 2, output projection, pooling gate, heads 4 + 4 + 4
    assert linears == 2 + 8 + 1 + 1 + 12 and attentions == 4

    # the layers' default: zero biases
    assert all(not np.asarray(d.bias[...]).any() for d in default.layers)
    assert not np.asarray(attention.out_bias[...]).any()
    with pytest.raises(ValueError, match="unknown bias_init 'ones'"):
        layers.bias_initializer("ones", 4)
