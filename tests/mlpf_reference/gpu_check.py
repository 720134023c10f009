"""MLPF on one GPU (not a test): attention implementations against float32 math attention, then one
AdamW train step of the CLIC model on a single event of N elements (default 8,000) per implementation,
with step time, compiled temporaries and peak device memory.

    PYTHONPATH=. python tests/mlpf_reference/gpu_check.py [N]

Needs a CUDA build of jax on the GPU machine; on a CPU it runs everything but ``cudnn``.
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from smilejax.models import mlpf

from tests.mlpf_reference.events import random_events

N = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
GPU = jax.devices()[0].platform == "gpu"
IMPLS = [("chunked", jnp.float32), ("chunked", jnp.bfloat16), ("math", jnp.bfloat16)]
IMPLS += [("cudnn", jnp.bfloat16)] if GPU else []


def model(attention: str, dtype) -> mlpf.MLPF:
    with nnx.use_eager_sharding(False):
        return mlpf.build(mlpf.MLPFConfig(attention=attention), rngs=nnx.Rngs(0), dtype=dtype)


def agreement() -> None:
    ev = random_events(0, 4, 500)
    ref = model("math", jnp.float32)(ev["X"])
    for attention, dtype in [impl for impl in IMPLS if impl[1] == jnp.bfloat16]:
        graphdef, state = nnx.split(model(attention, dtype))
        out = jax.jit(lambda s, x, g=graphdef: nnx.merge(g, s)(x))(state, ev["X"])
        err = {k: float(jnp.max(jnp.abs(out[k] - ref[k])) / jnp.max(jnp.abs(ref[k]))) for k in out}
        print(f"{attention:8s} {jnp.dtype(dtype).name}: max|diff| / max|fp32 math| {err}", flush=True)


def train_step(attention: str, dtype, batch: dict, tx) -> str:
    graphdef, params = nnx.split(model(attention, dtype))

    def step(p, o, b):
        loss, g = jax.value_and_grad(lambda p: mlpf.loss(nnx.merge(graphdef, p), b)[0])(p)
        updates, o = tx.update(g, o, p)
        return optax.apply_updates(p, updates), o, loss

    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, tx.init(params), batch).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes / 2**30
    p, o, loss = compiled(params, tx.init(params), batch)
    jax.block_until_ready(loss)
    t = time.perf_counter()
    for _ in range(5):
        p, o, loss = compiled(p, o, batch)
    jax.block_until_ready(loss)
    ms = (time.perf_counter() - t) / 5 * 1e3
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use", 0) / 2**30
    return f"loss {float(loss):.4f}, step {ms:.1f} ms, temporaries {temp:.2f} GiB, peak {peak:.2f} GiB"


def main() -> None:
    print(jax.devices()[0].device_kind, "jax", jax.__version__, flush=True)
    agreement()
    batch = {k: jnp.asarray(v) for k, v in random_events(1, 1, N).items()}
    tx = optax.adamw(1e-4)
    for attention, dtype in IMPLS:
        try:
            result = train_step(attention, dtype, batch, tx)
        except Exception as err:  # out of memory (math attention), cuDNN refusing a shape, ...
            result = f"FAILED {type(err).__name__}: {str(err)[:300]}"
        print(f"N={N} {attention:8s} {jnp.dtype(dtype).name}: {result}", flush=True)


if __name__ == "__main__":
    main()
