"""``models.attention``'s implementations: math and chunked give GN2 the same outputs, cuDNN off a GPU
or in float32 is a clear error, cuDNN's even-length padding and JAX's own cuDNN shape checks at GN2's
shapes, and what ``"auto"`` picks. (The fused short-set kernel: test_set_attention.py.)"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.helpers_gn2 import TOL, forward, make_batch, small_cfg, small_model


def test_attention_implementations_agree_and_bad_ones_are_named():
    batch = make_batch(9)
    batch["valid"][1, -1] = False
    batch["tracks"][1, -1] = 1e3  # garbage in a padded slot stays out of every implementation
    math_out = forward(small_model(), batch["tracks"], batch["valid"])
    # chunked in blocks of 3 queries (11 with the register: four blocks, the last one short)
    chunked = small_model(attention="chunked", attention_chunk=3)
    for key, value in forward(chunked, batch["tracks"], batch["valid"]).items():
        np.testing.assert_allclose(value, math_out[key], **TOL, err_msg=key)
    with pytest.raises(ValueError, match="attention: unknown attention implementation 'flash'"):
        small_cfg(attention="flash")
    with pytest.raises(ValueError, match="attention_chunk must be >= 1"):
        small_cfg(attention_chunk=0)
    # cuDNN attention: a clear error instead of cuDNN's own, in float32 and off the GPU
    with pytest.raises(ValueError, match="needs bf16 or fp16 compute"):
        forward(small_model(attention="cudnn"), batch["tracks"], batch["valid"])
    with pytest.raises(ValueError, match="needs an NVIDIA GPU, and this run's backend is 'cpu'"):
        forward(small_model(jnp.bfloat16, attention="cudnn"), batch["tracks"], batch["valid"])


def test_odd_sets_are_padded_to_an_even_length_for_cudnn_without_changing_attention():
    from smilejax.models.attention import _math_attention, pad_to_even_length

    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 5, 2, 8)), jnp.float32) for _ in range(3))
    valid = jnp.asarray([[True, True, False, True, True], [True] * 5])
    qp, kp, vp, validp = pad_to_even_length(q, k, v, valid)
    assert qp.shape == (2, 6, 2, 8) and validp.shape == (2, 6) and not bool(validp[:, 5].any())
    padded = _math_attention(qp, kp, vp, validp, None)[:, :5]
    np.testing.assert_allclose(padded, _math_attention(q, k, v, valid, None), rtol=1e-6, atol=1e-6)
    assert pad_to_even_length(qp, kp, vp, validp)[0] is qp  # even: unchanged


def test_cudnn_inputs_pass_jax_s_own_cudnn_shape_checks_at_gn2_shapes():
    """The cuDNN path cannot run off a GPU, so its inputs are checked here with the checks JAX runs
    before calling cuDNN: a shape cuDNN refuses would otherwise show only in a GPU session."""
    from jax._src.cudnn import fused_attention_stablehlo as cudnn
    from smilejax.models.attention import _math_attention, cudnn_masked_inputs

    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(3, 41, 8, 32)), jnp.bfloat16) for _ in range(3))  # 40 + register
    valid = jnp.asarray(rng.random((3, 41)) < 0.4).at[:, -1].set(True)
    qp, kp, vp, mask = cudnn_masked_inputs(q, k, v, valid)
    assert qp.shape == (3, 42, 8, 32) and mask.shape == (3, 1, 42, 42) and mask.dtype == jnp.bool_

    def checks(mask):
        bias = cudnn.combine_bias_and_mask(None, mask, qp.dtype)
        layout = cudnn.AttentionLayout.BTNH.value
        cudnn.check_layout(qp, kp, vp, bias, None, None, None, None, None, None, cudnn.AttentionLayout.BTNH)
        cudnn.check_is_flash_attention(qp, kp, vp, layout, 90000, has_bias=True, is_training=True)

    checks(mask)
    with pytest.raises(ValueError, match="Bias must have same seq length"):
        checks(mask[:, :, :1, :])  # the [B, 1, 1, S] mask this path passed before: refused
    # the same function as masked attention on the unpadded set
    f32 = [x.astype(jnp.float32) for x in (q, k, v, qp, kp, vp)]
    padded = _math_attention(*f32[3:], mask[:, 0, 0], None)
    exact = _math_attention(*f32[:3], valid, None)
    np.testing.assert_allclose(padded[:, :41], exact, rtol=1e-5, atol=1e-5)


def test_auto_attention_picks_cudnn_where_it_can_run(monkeypatch):
    """``attention="auto"``: cuDNN when tracing for an NVIDIA GPU with bf16/fp16 compute and no attention
    dropout, else chunked (math with dropout); portable programs take chunked, the FLOP-counting
    reference math."""
    from smilejax.models import attention, kernel_mode

    chosen = []
    for name in ("_chunked_attention", "_math_attention"):  # recorded, then run
        real = getattr(attention, name)
        monkeypatch.setattr(attention, name, lambda *a, _n=name, _f=real: chosen.append(_n) or _f(*a))
    # recorded only: cuDNN cannot run on this CPU
    monkeypatch.setattr(attention, "_cudnn_attention", lambda *a: chosen.append("_cudnn_attention") or a[0])
    q = jnp.ones((2, 6, 2, 8), jnp.bfloat16)
    valid = jnp.ones((2, 6), bool)

    def pick(dtype=jnp.bfloat16, dropout=None) -> str:
        chosen.clear()
        x = q.astype(dtype)
        attention.dot_product_attention(x, x, x, valid, implementation="auto", dropout=dropout)
        return chosen[0]

    assert pick() == "_chunked_attention"  # this CPU
    monkeypatch.setattr(kernel_mode, "nvidia_gpu", lambda: True)
    assert pick() == "_cudnn_attention"
    assert pick(jnp.float16) == "_cudnn_attention"
    assert pick(jnp.float32) == "_chunked_attention"
    assert pick(dropout=nnx.Dropout(0.1, rngs=nnx.Rngs(0))) == "_math_attention"
    with kernel_mode.portable():
        assert pick() == "_chunked_attention"
    with kernel_mode.reference():
        assert pick() == "_math_attention"
