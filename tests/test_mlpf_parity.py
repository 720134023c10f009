"""MLPF port against particleflow 3.1.0 itself (PyTorch), run in its own Python 3.11 environment.

One subprocess (``tests/mlpf_reference/run_reference.py`` under ``.mlpf-ref/bin/python``) builds
particleflow's model for each configuration, writes its weights, outputs, losses and gradients to an
.npz; here the weights are copied into the Flax port and everything is compared:

* CLIC (3,250,450 parameters) on events of 16, 97 and 300 elements: outputs to 1e-5 relative, the seven
  loss terms and the total to 1e-5 relative;
* a tiny CLIC-shaped model and a tiny model using every other option (joint encoding, concatenated
  representation, GELU, no final norm, the other five regression modes): outputs, losses and the
  gradients of the total loss; the chunked (memory-efficient) attention on the tiny model too;
* the checker itself: one perturbed weight, a changed activation or key masking must make it fail.

"Relative" is |ours - ref| / max(|ref|, rms(ref)), the rms taken per output column (logit or momentum
component), so that values crossing zero are not judged on their own tiny size.
"""

from __future__ import annotations

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from smilejax.models import mlpf
from smilejax.models.mlpf import peer

from tests.conftest import ROOT, run_reference
from tests.helpers_mlpf import INSTALL, REF_ENV
from tests.mlpf_reference.events import random_events

REF_SCRIPT = ROOT / "tests" / "mlpf_reference" / "run_reference.py"
CLIC_PARAMS = 3_250_450
RTOL = 1e-5
# LLVM -O0 for the test programs: the same XLA graph, half the CPU compile time
FAST_COMPILE = {"xla_backend_optimization_level": 0}
GRAD_RTOL = 1e-5  # per tensor, relative to its norm (measured: < 1e-6)
OUTPUTS = ("binary_logits", "pid_logits", "momentum")
LOSS_TERMS = {  # particleflow's name -> ours
    "Total": "total",
    "Classification_binary": "classification_binary",
    "Classification": "classification",
    **{f"Regression_{m}": f"regression_{m}" for m in mlpf.MOMENTUM},
}

CLIC = mlpf.MLPFConfig()
TINY = mlpf.MLPFConfig(num_convs=2, num_heads=4, head_dim=4)
OTHER = mlpf.MLPFConfig(
    num_convs=2,
    num_heads=2,
    head_dim=4,
    input_encoding="joint",
    learned_representation_mode="concat",
    activation="gelu",
    use_pre_layernorm=False,
    pt_mode="additive",
    eta_mode="multiplicative",
    sin_phi_mode="direct",
    cos_phi_mode="direct-elemtype",
    energy_mode="linear-elemtype",
)
RUNS = {  # name: (config, [(seed, batch, elements)], case whose gradients are compared or -1)
    "clic": (CLIC, [(1, 2, 16), (2, 2, 97), (3, 1, 300)], -1),
    "tiny": (TINY, [(4, 3, 40)], 0),
    "other": (OTHER, [(5, 2, 33)], 0),
}


def particleflow_config(cfg: mlpf.MLPFConfig) -> dict:
    """particleflow's ``MLPFConfig`` mapping for our config, as the benchmark sends it, with the MATH
    attention kernel (the one particleflow runs on CPU)."""
    out = peer.particleflow_config(cfg)
    out["model"]["attention"]["attention_type"] = "math"
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """{run: {"events": [...], "state_dict", "out": [per case {output: array, "loss": {...}}], "grads"}}."""
    tmp = tmp_path_factory.mktemp("mlpf_reference")
    arrays, runs, events = {}, [], {}
    for name, (cfg, cases, grad_case) in RUNS.items():
        runs.append({"name": name, "mlpf": particleflow_config(cfg), "seed": 0, "grad_case": grad_case})
        events[name] = [random_events(seed, b, n) for seed, b, n in cases]
        for i, ev in enumerate(events[name]):
            arrays.update({f"{name}/{k}_{i}": v for k, v in ev.items()})
    np.savez(tmp / "in.npz", runs=json.dumps(runs), **arrays)
    run_reference(
        REF_ENV,
        INSTALL,
        "Python 3.11, CPU torch 2.13.0, particleflow 3.1.0 without its heavy dependencies",
        str(REF_SCRIPT),
        str(tmp / "in.npz"),
        str(tmp / "out.npz"),
    )
    data = np.load(tmp / "out.npz")
    names = [str(n) for n in data["loss_names"]]
    result = {}
    for name in RUNS:

        def entries(prefix: str, name=name) -> dict[str, np.ndarray]:
            p = f"{name}/{prefix}"
            return {k[len(p) :]: data[k] for k in data.files if k.startswith(p)}

        out = []
        for i in range(len(events[name])):
            case = {k: data[f"{name}/{k}_{i}"] for k in OUTPUTS}
            case["loss"] = dict(zip(names, data[f"{name}/loss_{i}"].tolist(), strict=True))
            out.append(case)
        result[name] = {
            "events": events[name],
            "state_dict": entries("param/"),
            "out": out,
            "grads": entries("grad/"),
        }
    return result


# --- the checker ---------------------------------------------------------------------------------


def relative_errors(ours: dict, ref: dict) -> dict[str, float]:
    """Worst |ours - ref| / max(|ref|, rms of ref's column) of each output."""
    errors = {}
    for k in OUTPUTS:
        a, b = np.asarray(ours[k], np.float64), np.asarray(ref[k], np.float64)
        assert a.shape == b.shape, (k, a.shape, b.shape)
        floor = np.sqrt(np.mean(np.square(b).reshape(-1, b.shape[-1]), axis=0))
        errors[k] = float(np.max(np.abs(a - b) / np.maximum(np.abs(b), floor + 1e-30)))
    return errors


def mismatches(ours: dict, ref: dict, rtol: float = RTOL) -> dict[str, float]:
    return {k: e for k, e in relative_errors(ours, ref).items() if e > rtol}


def loss_mismatches(ours: dict[str, float], ref: dict[str, float], rtol: float = RTOL) -> dict[str, tuple]:
    bad = {}
    for pf_name, name in LOSS_TERMS.items():
        if not np.isclose(ours[name], ref[pf_name], rtol=rtol, atol=1e-7):
            bad[pf_name] = (ours[name], ref[pf_name])
    return bad


# --- the port ------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=(0, 3), compiler_options=FAST_COMPILE)
def _evaluate(graphdef, params, batch, grads: bool):
    """(outputs, losses, gradients of the total or None) from one forward pass."""

    def total(p):
        model = nnx.merge(graphdef, p)
        out = model(batch["X"])
        value, metrics = mlpf.loss_from_outputs(out, batch, model.loss_weights)
        return value, (out, {"total": value, **metrics})

    if not grads:
        return (*total(params)[1], None)
    (_, (out, losses)), g = jax.value_and_grad(total, has_aux=True)(params)
    return out, losses, g


def abstract_model(cfg: mlpf.MLPFConfig) -> mlpf.MLPF:
    with nnx.use_eager_sharding(False):
        return nnx.eval_shape(lambda: mlpf.build(cfg, rngs=nnx.Rngs(0)))


def port(cfg: mlpf.MLPFConfig, state_dict: dict) -> tuple[nnx.GraphDef, nnx.State]:
    """Our model of ``cfg`` holding particleflow's weights (graph, parameters)."""
    model = abstract_model(cfg)
    return nnx.graphdef(model), mlpf.convert_particleflow_state_dict(model, state_dict)


def run_port(cfg: mlpf.MLPFConfig, state_dict: dict, event: dict, grads: bool = False):
    """Our outputs and losses on ``event`` with particleflow's weights (and the gradients)."""
    graphdef, params = port(cfg, state_dict)
    out, losses, g = _evaluate(graphdef, params, {k: jnp.asarray(v) for k, v in event.items()}, grads)
    out = {k: np.asarray(v) for k, v in out.items()}
    losses = {k: float(v) for k, v in losses.items()}
    return (out, losses, g) if grads else (out, losses)


# --- tests ---------------------------------------------------------------------------------------


def test_reference_is_particleflow_clic_and_loads_exactly(reference):
    sd = reference["clic"]["state_dict"]
    assert sum(v.size for v in sd.values()) == CLIC_PARAMS
    for event in reference["clic"]["events"][:2]:  # the batched cases hold padded events
        assert (event["X"][..., 0] == 0).any()
    # every particleflow tensor has exactly one parameter here (conversion refuses leftovers / gaps)
    _, params = port(CLIC, sd)
    assert sum(x.size for x in jax.tree.leaves(params)) == CLIC_PARAMS
    np.testing.assert_array_equal(params["conv_id"][1]["seq0"]["kernel"][...], sd["conv_id.1.seq.0.weight"].T)

    model = abstract_model(CLIC)
    missing = {k: v for k, v in sd.items() if k != "nn_pid.4.bias"}
    with pytest.raises(KeyError, match=r"nn_pid\.4\.bias"):
        mlpf.convert_particleflow_state_dict(model, missing)
    with pytest.raises(KeyError, match=r"nn_pu\.weight"):
        mlpf.convert_particleflow_state_dict(model, {**sd, "nn_pu.weight": np.zeros(3)})
    with pytest.raises(ValueError, match=r"nn0_id\.0\.weight"):
        mlpf.convert_particleflow_state_dict(model, {**sd, "nn0_id.0.weight": np.zeros((256, 16))})


@pytest.mark.parametrize("case", [0, 1, 2], ids=["16-elements", "97-elements", "300-elements"])
def test_clic_outputs_and_losses_match_particleflow(reference, case):
    ref = reference["clic"]
    ours, losses = run_port(CLIC, ref["state_dict"], ref["events"][case])
    errors = relative_errors(ours, ref["out"][case])
    print(f"CLIC case {case}: worst relative errors {errors}")
    assert not mismatches(ours, ref["out"][case]), errors
    assert not loss_mismatches(losses, ref["out"][case]["loss"])


@pytest.mark.parametrize("name", ["tiny", "other"])
def test_small_configs_match_particleflow_with_gradients(reference, name):
    cfg = RUNS[name][0]
    ref = reference[name]
    event = ref["events"][0]
    ours, losses, grads = run_port(cfg, ref["state_dict"], event, grads=True)
    assert not mismatches(ours, ref["out"][0]), relative_errors(ours, ref["out"][0])
    assert not loss_mismatches(losses, ref["out"][0]["loss"])
    # particleflow's gradients, in our layout (the same linear maps as the weights)
    ref_grads = mlpf.convert_particleflow_state_dict(abstract_model(cfg), ref["grads"])
    flat_ours = dict(nnx.to_flat_state(grads))
    errors = {}
    for path, g_ref in nnx.to_flat_state(ref_grads):
        g_ref, g = np.asarray(g_ref[...]), np.asarray(flat_ours[path][...])
        errors[path] = np.linalg.norm(g - g_ref) / max(np.linalg.norm(g_ref), 1e-12)
    worst = max(errors, key=errors.get)
    print(f"{name}: worst gradient error {errors[worst]:.2e} ({'.'.join(map(str, worst))})")
    assert errors[worst] < GRAD_RTOL, (worst, errors[worst])


def test_chunked_attention_matches_particleflow(reference):
    ref = reference["tiny"]
    chunked = dataclasses.replace(TINY, attention="chunked", attention_chunk=16)  # 40 = 16 + 16 + 8
    ours, losses = run_port(chunked, ref["state_dict"], ref["events"][0])
    assert not mismatches(ours, ref["out"][0]), relative_errors(ours, ref["out"][0])
    assert not loss_mismatches(losses, ref["out"][0]["loss"])


@pytest.mark.parametrize(
    "key, index",
    [
        ("conv_id.2.mha.in_proj_weight", (600, 17)),  # last id layer's value projection
        ("conv_reg.0.norm1.weight", (5,)),
        ("nn0_id.2.bias", (40,)),  # LayerNorm inside the input encoding
        ("nn_pt.nn.1.4.weight", (0, 3)),  # the cluster pT head
    ],
)
def test_checker_catches_one_perturbed_weight(reference, key, index):
    ref = reference["clic"]
    event, expected = ref["events"][0], ref["out"][0]
    sd = dict(ref["state_dict"])
    sd[key] = sd[key].copy()
    sd[key][index] += 1e-3
    ours, _ = run_port(CLIC, sd, event)
    bad = mismatches(ours, expected)
    print(f"{key}{list(index)} + 1e-3: {bad}")
    assert bad, relative_errors(ours, expected)
    # and the unperturbed copy passes (same compiled program)
    ours, _ = run_port(CLIC, ref["state_dict"], event)
    assert not mismatches(ours, expected)


@pytest.mark.parametrize(
    "change",
    [dict(activation="relu"), dict(mask_padded_keys=True)],
    ids=["activation", "key-masking"],
)
def test_checker_catches_a_changed_layer(reference, change):
    """A port whose layer differs from particleflow's, holding the same weights, fails the check."""
    ref = reference["tiny"]
    ours, _ = run_port(dataclasses.replace(TINY, **change), ref["state_dict"], ref["events"][0])
    assert mismatches(ours, ref["out"][0])
