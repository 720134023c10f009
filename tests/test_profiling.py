"""``smilejax.xla.profile``: a step's device time by kind of op, model scope and pass, from a real trace."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smilejax.xla import profile as profiling

pytestmark = pytest.mark.unit  # make test-fast runs it: one device, seconds

BACKWARD = "jit(f)/transpose(jvp(encoder))/attention/dot_general"
EINSUM = "jit(f)/jvp(encoder)/attention/bqnh,bknh->bnqk/dot_general"


@pytest.mark.parametrize(
    ("op_name", "expected"),
    [
        (BACKWARD, ("backward", "encoder/attention", "dot_general")),
        (EINSUM, ("forward", "encoder/attention", "dot_general bqnh,bknh->bnqk")),
        ("jit(f)/jvp(vertex_head)/jit(relu)/max", ("forward", "vertex_head", "max")),
        ("jit(f)/optimizer/mul", ("update", "optimizer", "mul")),
        (f"{BACKWARD};{EINSUM}", ("backward", "encoder/attention", "dot_general")),  # merged ops
        ("jit(f)/while/body/eval_jaxpr/transpose(jvp(encoder))/mul", ("backward", "encoder", "mul")),  # scan
        ("jit(f)/while/body/jit(dynamic_index_in_dim)", ("update", "", "dynamic_index_in_dim")),
        ("", ("", "", "")),
        ("state.params['encoder']['out_kernel']", ("", "", "")),  # an argument's layout copy: XLA's
    ],
)
def test_name_stacks_give_pass_scope_and_primitive(op_name, expected):
    assert profiling.parse_op_name(op_name) == expected


def test_kinds_of_gpu_ops_from_compiled_hlo():
    """Categories from an op's own attributes: a reduction fed by a GEMM fusion is no matmul."""
    hlo = "\n".join(
        [
            "ENTRY %main (a: bf16[8,8]) -> bf16[8] {",
            "  %gemm_fusion_dot.1 = bf16[8,8]{1,0} fusion(%a, %a), kind=kCustom, calls=%gemm_fusion_dot.1_c, "
            'backend_config={"fusion_backend_config":{"kind":"__triton_gemm"}}',
            "  %input_reduce_fusion = bf16[8] fusion(%gemm_fusion_dot.1), kind=kInput, calls=%fused_reduce",
            "  %loop_fusion = bf16[8,8]{1,0} fusion(%gemm_fusion_dot.1), kind=kLoop, calls=%fused_add",
            '  %cublas = (bf16[8,8]{1,0}, s8[64]{0}) custom-call(%a, %a), custom_call_target="__cublas$gemm"',
            '  %fmha = (bf16[8,8]{1,0}) custom-call(%a, %a, %a), custom_call_target="__cudnn$fmhaSoftmax"',
            "}",
        ]
    )
    _, ops = profiling.hlo_ops(hlo)
    kinds = {name: op.category for name, op in ops.items()}
    assert kinds == {
        "gemm_fusion_dot.1": "matmul",
        "input_reduce_fusion": "reduction",
        "loop_fusion": "elementwise",
        "cublas": "matmul",
        "fmha": "attention (fused)",
    }


def _loss(w, x):
    with jax.named_scope("big"):  # two 512 x 512 x 512 products per pass
        h = jnp.tanh(x @ w) @ w
    with jax.named_scope("small"):  # elementwise on a 512 x 512 array, cheap beside the products
        return jnp.sum(h * h)


def test_profile_finds_the_scope_that_costs_most(tmp_path):
    step = jax.jit(lambda w, x: w - 1e-3 * jax.grad(_loss)(w, x))
    w = jax.random.normal(jax.random.key(0), (512, 512)) / 30
    x = jax.random.normal(jax.random.key(1), (512, 512))
    lowered = step.lower(w, x)
    compiled = lowered.compile()
    holder = {"w": w}

    def run(program):
        for _ in range(3):
            holder["w"] = program(holder["w"], x)
        return holder["w"]

    summary = profiling.profile_steps(run, lowered, compiled, 3, tmp_path, "toy")
    by_scope = {(r["scope"], r["phase"]): r for r in summary["by_scope"]}
    # the forward of "small" fuses into the backward pass: only its backward ops stay its own
    assert {("big", "forward"), ("big", "backward"), ("small", "backward")} <= set(by_scope)
    assert by_scope[("big", "backward")]["share"] > by_scope[("small", "backward")]["share"] > 0
    assert summary["by_category"][0]["category"] == "matmul"  # the products dominate
    assert sum(r["share"] for r in summary["by_scope"]) == pytest.approx(1.0)
    assert summary["traced_ms_per_step"] == pytest.approx(sum(r["ms_per_step"] for r in summary["by_scope"]))
    top = summary["top_ops"][0]
    assert top["category"] == "matmul" and top["scope"] == "big"
    for suffix in (".json", ".md", ".png"):
        assert (tmp_path / f"profile-toy{suffix}").stat().st_size > 0


def test_a_trace_without_a_breakdown_costs_the_benchmark_nothing(tmp_path, monkeypatch):
    lowered = jax.jit(jnp.sin).lower(jnp.ones(8))
    compiled = lowered.compile()
    monkeypatch.setattr(profiling, "op_times", lambda *a: ({}, {}, 1))  # a backend whose trace names no op
    run = lambda program: program(jnp.ones(8))  # noqa: E731
    assert profiling.profile_steps(run, lowered, compiled, 1, tmp_path, "bare") is None
    assert "No breakdown: the trace holds no timed op" in (tmp_path / "profile-bare.md").read_text()
    assert list((tmp_path / "profile-bare").rglob("*.xplane.pb"))  # the trace is kept


def test_programs_with_cuda_graphs_are_traced_compiled_without_them(monkeypatch):
    """A GPU program, whose kernels XLA puts into command buffers (CUDA graphs), is traced from a compile
    without them (the compile options are parsed for real: a wrong value is refused); a CPU program,
    which has none, is traced as it is."""
    lowered = jax.jit(jnp.sin).lower(jnp.ones(8))
    compiled = lowered.compile()
    assert profiling.compile_traceable(lowered, compiled) is compiled

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # an H100 ran GN2's step as one graph
    retraced = profiling.compile_traceable(lowered, compiled)
    assert retraced is not compiled and np.allclose(retraced(jnp.ones(8)), np.sin(1.0))
    with pytest.raises(Exception, match="not a valid enum value"):  # the option names a real setting
        lowered.compile(compiler_options={key: "GRAPHS" for key in profiling.TRACEABLE})


def test_a_trace_of_cuda_graphs_says_how_to_see_their_kernels(tmp_path, monkeypatch, caplog):
    """A program traced with command buffers (the training loop's before 2026-11-27 on an H100): each graph
    is one op, and the breakdown says so and how to see its kernels."""
    compiled = jax.jit(jnp.sin).lower(jnp.ones(8)).compile()
    graphs = {("jit_sin", None): {"command_buffer_1": 3e6, "sine.1": 1e6}}
    monkeypatch.setattr(profiling, "op_times", lambda *a: (graphs, {}, 1))
    summary = profiling.write_summary(tmp_path / "profile", {"one": compiled}, 1, "graphs")
    assert summary["top_ops"][0]["op"] == "command_buffer_1" and summary["top_ops"][0]["share"] == 0.75
    note = "CUDA graphs timed as one op each (command_buffer_1): compile with profiling.TRACEABLE"
    assert note in (tmp_path / "profile.md").read_text() and note in caplog.text


def test_programs_of_several_shapes_are_told_apart(tmp_path):
    """Bucketed batches run one compiled program per width; their ops share names, so each op is
    attributed to its program by the id the trace carries."""
    step = jax.jit(lambda w, x: w - 1e-3 * jax.grad(_loss)(w, x))
    small, large = ((jnp.ones((n, n)) / n, jnp.ones((n, n))) for n in (64, 384))
    programs = {"64": step.lower(*small).compile(), "384": step.lower(*large).compile()}
    ids = {profiling.program_id(c) for c in programs.values()}
    assert len(ids) == 2 and all(isinstance(i, int) for i in ids)
    trace_dir = tmp_path / "profile"
    jax.block_until_ready((programs["64"](*small), programs["384"](*large)))  # warm
    with jax.profiler.trace(str(trace_dir)):
        jax.block_until_ready((programs["64"](*small), programs["384"](*large)))
    summary = profiling.write_summary(trace_dir, programs, 1, "two shapes")
    labels = [r["op"].rsplit(" [", 1)[1] for r in summary["top_ops"]]
    assert labels[0] == "384]" and "64]" in labels  # every op names its program; the large one costs most
    assert (tmp_path / "profile.md").read_text().startswith("# Device time of one step: two shapes")


def test_summarise_refuses_an_empty_trace():
    with pytest.raises(RuntimeError, match="no timed op"):
        profiling.summarise({}, {}, {}, steps=1)


def test_missing_trace_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        profiling.op_times(tmp_path)
