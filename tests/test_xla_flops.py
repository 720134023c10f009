"""``smilejax.xla``: the FLOP count read from HLO text equals XLA's own cost analysis, and the device
table serves MFU and the roofline alike."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smilejax import xla
from smilejax.xla import devices, flops

pytestmark = pytest.mark.unit  # make test-fast runs it: one device, seconds

X = np.ones((64, 8), np.float32)
IMAGES, KERNEL = np.ones((2, 3, 16, 16), np.float32), np.ones((4, 3, 3, 3), np.float32)


def _mlp(w, x):
    def loss(w):
        h = jnp.tanh(x @ w)
        return jnp.mean(h**2) + jnp.max(h) + jnp.argmax(h).astype(jnp.float32)

    return jax.grad(loss)(w)


def _scan(x):
    return jax.lax.scan(lambda c, r: (c + jnp.sin(r) @ jnp.ones((8, 8)), None), jnp.zeros(8), x)[0]


def _pool_grad(i):
    pool = lambda i: jax.lax.reduce_window(i, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")  # noqa: E731
    return jax.grad(lambda i: pool(i).sum())(i)


PROGRAMS = {
    "mlp gradient": (_mlp, (np.ones((8, 32), np.float32), X)),
    "softmax": (lambda x: jax.nn.softmax(x @ x.T, axis=-1), (X,)),
    "cumsum": (lambda x: jnp.cumsum(x, axis=0), (X,)),
    "sort": (lambda x: jnp.sort(x, axis=0), (X,)),
    "scatter-add": (lambda x: x.at[jnp.array([1, 2, 2])].add(1.0), (X,)),
    "convolution": (lambda i, k: jax.lax.conv(i, k, (1, 1), "SAME"), (IMAGES, KERNEL)),
    "strided dilated convolution": (
        lambda i, k: jax.lax.conv_general_dilated(i, k, (2, 2), "VALID", rhs_dilation=(2, 1)),
        (IMAGES, KERNEL),
    ),
    "convolution gradient": (
        lambda i, k: jax.grad(lambda k: jax.lax.conv(i, k, (2, 2), "SAME").sum())(k),
        (IMAGES, KERNEL),
    ),
    "max-pool gradient": (_pool_grad, (IMAGES,)),
    "scan": (_scan, (X,)),
    "cond": (lambda x: jax.lax.cond(x.sum() > 0, lambda: x @ x.T, lambda: x @ x.T * 2), (X,)),
    "transcendental": (
        lambda x: jax.scipy.special.erf(x) + jnp.exp(x) * jnp.log1p(x) + jnp.clip(x, 0, 1),
        (X,),
    ),
    "remat": (jax.grad(lambda x: jax.checkpoint(lambda y: jnp.sin(y @ y.T).sum())(x)), (X,)),
    "random": (lambda k: jax.random.normal(k, (64, 8)), (jax.random.key(0),)),
    "top-k": (lambda x: jax.lax.top_k(x, 3)[0] * 2, (X,)),
}


@pytest.mark.parametrize("name", PROGRAMS)
def test_hlo_text_count_is_xlas_cost_analysis(name):
    fn, args = PROGRAMS[name]
    lowered = jax.jit(fn).lower(*args)
    assert flops.count(lowered.as_text(dialect="hlo")) == lowered.cost_analysis()["flops"]


class _NoAnalysis:
    """A lowered program as a GPU plugin gives it: no cost analysis, its text still there."""

    def __init__(self, lowered):
        self.lowered = lowered

    def cost_analysis(self):
        return None

    def as_text(self, dialect: str):
        return self.lowered.as_text(dialect=dialect)


def test_step_flops_where_the_backend_has_no_cost_analysis():
    lowered = jax.jit(_mlp).lower(*PROGRAMS["mlp gradient"][1])
    counted = xla.step_flops(lowered, devices=2, repeats=3)
    assert counted == lowered.cost_analysis()["flops"] * 3 / 2
    assert xla.step_flops(_NoAnalysis(lowered), devices=2, repeats=3) == counted


def test_one_device_table_for_mfu_and_roofline():
    h100 = devices.find("NVIDIA H100 80GB HBM3")
    assert h100 is devices.TARGETS["h100"] and h100.peak("bf16") == 989e12 and h100.peak("fp32") == 494e12
    assert devices.find("NVIDIA GH200 480GB") is devices.DEVICES["GH200"]  # not taken for an H200
    assert devices.find("TPU v4").peak("fp32") == devices.find("TPU v4").peak_bf16  # no TF32 listed
    assert devices.find("cpu") is None and xla.peak_flops(jax.devices("cpu")[0]) is None
    assert 'device_description_str: "NVIDIA H100 80GB HBM3"' in h100.target_config()
    assert "memory_bandwidth: 3350000000000" in h100.target_config()
    with pytest.raises(ValueError, match="no GPU description"):
        devices.DEVICES["V100"].target_config()
