"""`smilejax doctor`: the report on this CPU machine and the expectations that fail a GPU job running on a
CPU-only JAX. (The preflight line of the job scripts: test_doctor_preflight.py.)"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import tomllib

import jax
import jaxlib
import pytest

from smilejax import cli, doctor, features, host
from tests.conftest import ROOT, run_cli

pytestmark = pytest.mark.unit  # make test-fast runs it: one device, seconds


@pytest.fixture(scope="module")
def report() -> dict:
    """This process's report (8 CPU devices, no launcher); tests change copies of it."""
    return doctor.report({"PATH": "/usr/bin"})


def test_json_report_describes_this_cpu_machine(tmp_path):
    compiler = tmp_path / "gpu-compiler"
    (compiler / "jax_plugins" / "xla_cuda12").mkdir(parents=True)
    triton = tmp_path / "tritonserver"
    triton.write_text("#!/bin/sh\n")
    triton.chmod(0o755)
    proc = run_cli(
        "doctor",
        "--json",
        SMILEJAX_GPU_COMPILER=str(compiler),
        SMILEJAX_TRITONSERVER=str(triton),
        SMILEJAX_MLPF_REF=str(tmp_path / "no-such-env"),
        SMILEJAX_SALT_REF=str(tmp_path / "no-such-salt"),
    )
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    j = rep["jax"]
    assert (j["version"], rep["packages"]["jaxlib"]) == (jax.__version__, jaxlib.__version__)
    assert (j["backend"], j["local_device_count"], j["device_count"], j["process_count"]) == ("cpu", 8, 8, 1)
    assert [d["id"] for d in j["devices"]] == list(range(8))
    assert {d["platform"] for d in j["devices"]} == {"cpu"}
    assert rep["launcher"]["launcher"] == "single" and rep["launcher"]["num_processes"] == 1
    assert rep["expected"] == {"expect": None, "devices": None, "problem": None}
    assert all(rep["packages"][p] for p in ("jax", "flax", "optax", "orbax-checkpoint", "grain"))

    found = {f["name"]: f for f in rep["features"]}
    assert list(found) == [f.name for f in features.all_features()]
    assert set(found) >= {f.name for f in features.FEATURES} | {"pythia", "jets", "salt-reference"}
    for f in found.values():
        assert f["usable"] == (f["install"] is None), f  # a missing feature says how to install it
    assert found["gpu-compiler"]["found"] == str(compiler)
    assert found["triton-server"]["found"] == str(triton)
    reference = found["mlpf-reference"]
    assert not reference["usable"] and "no-such-env" in reference["why"]
    assert "make reference" in reference["install"]
    salt = found["salt-reference"]
    assert not salt["usable"] and salt["why"] == f"no salt environment ({tmp_path / 'no-such-salt'})"
    assert salt["install"] == "`make reference` (or `bash launch/install_salt_reference.sh [ENV_DIR]`)"


def test_salt_reference_is_where_the_salt_import_test_looks(monkeypatch, tmp_path):
    feature = next(f for f in features.all_features() if f.name == "salt-reference")
    python = tmp_path / "env" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.touch()
    monkeypatch.setenv("SMILEJAX_SALT_REF", str(tmp_path / "env"))
    assert features.check(feature)["found"] == str(python)
    monkeypatch.delenv("SMILEJAX_SALT_REF")
    row = features.check(feature)  # the checkout's .salt-ref, as tests/test_import_salt.py's REF_ENV
    assert str(ROOT / ".salt-ref") in (row.get("found") or row["why"])


def test_missing_packages_install_at_the_locks_versions(monkeypatch):
    # the modules of the hints, imported before find_spec stops finding modules
    from smilejax.generators import pythia  # noqa: F401
    from smilejax.models.mlpf import jets  # noqa: F401

    from smilejax.serve import client, export  # noqa: F401

    every = features.all_features()  # the families' feature modules, imported before find_spec goes
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, package=None: None)
    lock = "pip install -c launch/locks/venv.txt"
    expected = {
        "pythia": f"{lock} -e '.[pythia]'",
        "jets": f"{lock} fastjet",
        "onnx": f"{lock} -e '.[serve]'",
        "triton-client": f"{lock} -e '.[serve]'",
        "wandb": f"{lock} wandb",
        "tensorboard": f"{lock} tensorboardX",
        "optuna": f"{lock} optuna cmaes",
        "keras-tuner": f"{lock} keras-tuner scikit-learn six",
    }
    rows = {f.name: features.check(f) for f in every if f.name in expected}
    assert {name: row["install"] for name, row in rows.items()} == expected
    # what they name exists: the extras in pyproject.toml, every package pinned in the lock
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pinned = {line.partition("==")[0] for line in (ROOT / host.LOCK).read_text().splitlines() if "==" in line}
    for command in expected.values():
        for target in command.removeprefix(lock).split():
            if extra := re.fullmatch(r"'\.\[(\w+)\]'", target):
                assert extra[1] in extras, command
            elif target != "-e":
                assert target.lower() in pinned, command


def test_missing_features_name_their_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("SMILEJAX_GPU_COMPILER", str(tmp_path))  # no plugin in it
    row = features.check(next(f for f in features.FEATURES if f.name == "gpu-compiler"))
    assert row == {
        "name": "gpu-compiler",
        "purpose": "bench roofline",
        "usable": False,
        "why": "no JAX CUDA plugin in this venv's gpu-compiler/ (or $SMILEJAX_GPU_COMPILER)",
        "install": "make gpu-compiler",
    }
    absent = features.Feature("x", "y", lambda: features._modules({"no_such_mod_4711": "n"}, "pip install n"))
    assert features.check(absent)["why"] == "no_such_mod_4711 not installed"
    assert features.check(absent)["install"] == "pip install n"

    def broken() -> str:
        raise RuntimeError("libfoo.so: cannot open")

    row = features.check(features.Feature("z", "w", broken))
    assert not row["usable"] and row["why"] == "probe failed: RuntimeError: libfoo.so: cannot open"


def test_installed_packages_add_their_features_and_a_broken_one_is_a_row(monkeypatch):
    from smilejax import registry

    extra = features.Feature("toy-reference", "the toy's parity test", lambda: "/opt/toy")
    monkeypatch.setattr(registry, "features", lambda: [extra])
    rows = features.check_all()
    assert [r["name"] for r in rows] == [*(f.name for f in features.FEATURES), "toy-reference"]
    assert rows[-1]["found"] == "/opt/toy"

    def broken() -> list:
        raise registry.RegistryError("the smilejax.features entry point toy = toy:F does not load")

    monkeypatch.setattr(registry, "features", broken)
    row = features.check_all()[-1]
    assert (row["name"], row["usable"]) == ("plug-ins", False) and "toy = toy:F does not load" in row["why"]


def test_text_report_has_every_section(report):
    text = doctor.text(report)
    for heading in ("packages", "JAX", "accelerator", "launcher", "features"):
        assert f"\n{heading}\n" in text
    assert f"jax {jax.__version__}" in text
    n = jax.local_device_count()  # 8, or 1 under make test-fast
    ids = f"0-{n - 1}" if n > 1 else "[0]"
    assert f"ids {ids}: cpu cpu, memory not reported" in text
    assert "single process, all visible devices" in text


def test_expectations_met_on_this_machine(report):
    assert doctor.problem(report) is None
    n = jax.local_device_count()
    assert doctor.problem(report, "cpu", n) is None
    assert doctor.problem(report, None, n + 1) == (
        f"expected at least {n + 1} devices on this node but JAX {jax.__version__} sees {n} (cpu)"
    )


def _cpu_only(report: dict, **accelerator) -> dict:
    rep = copy.deepcopy(report)
    rep["accelerator"].update(plugins=[], visible={}, hardware={"nvidia": True, "amd_gpus": 0})
    rep["accelerator"].update(accelerator)
    rep["jax"].update(jax_platforms=None, backend_errors={})
    return rep


def test_expect_gpu_names_why_jax_sees_only_a_cpu(report):
    n = jax.local_device_count()
    head = f"expected 4 GPUs but JAX {jax.__version__} sees only {n} cpu device(s): "
    rep = _cpu_only(report)
    assert doctor.problem(rep, "gpu", 4) == head + (
        f"jaxlib {jaxlib.__version__} has no CUDA or ROCm plugin; install the matching one: "
        "pip install -c launch/locks/venv.txt -e '.[cuda12]' (NVIDIA) or "
        "pip install -c launch/locks/venv.txt -e '.[rocm]' (AMD)"
    )
    stale = {"package": "jax-cuda12-plugin", "runtime": "cuda", "version": "0.0.1", "matches_jaxlib": False}
    rep = _cpu_only(report, plugins=[stale])
    assert doctor.problem(rep, "gpu").startswith(
        f"expected GPUs but JAX {jax.__version__} sees only {n} cpu device(s): "
        f"jax-cuda12-plugin 0.0.1 does not match jaxlib {jaxlib.__version__}; "
        "reinstall with pip install -c launch/locks/venv.txt -e '.[cuda12]'"
    )
    rep = _cpu_only(report, plugins=[{**stale, "matches_jaxlib": True}], visible={"CUDA_VISIBLE_DEVICES": ""})
    rep["jax"]["jax_platforms"] = "cpu"
    rep["jax"]["backend_errors"] = {"cuda": "no supported devices found for platform CUDA"}
    rep["launcher"] = {**rep["launcher"], "visible_gpus": 0}
    assert doctor.problem(rep, "gpu", 4) == head + (
        "JAX_PLATFORMS=cpu leaves the GPUs out; unset it; "
        "the cuda backend failed: no supported devices found for platform CUDA; "
        "CUDA_VISIBLE_DEVICES='' leaves this process no GPU; ask the scheduler for GPUs (--gpus-per-node)"
    )
    rep = _cpu_only(report, hardware={"nvidia": False, "amd_gpus": 0})
    assert "the node shows no GPU (no /dev/nvidia*, no AMD KFD node)" in doctor.problem(rep, "gpu")


def test_expect_gpu_counts_the_gpus(report):
    rep = copy.deepcopy(report)
    gpu = {"platform": "gpu", "kind": "NVIDIA H100", "memory_bytes": 80 * 2**30, "compute_capability": "9.0"}
    rep["jax"].update(backend="gpu", local_device_count=2, devices=[{**gpu, "id": 0}, {**gpu, "id": 1}])
    rep["accelerator"]["visible"] = {"CUDA_VISIBLE_DEVICES": "0,1"}
    assert doctor.problem(rep, "gpu", 2) is None
    assert doctor.problem(rep, "gpu", 4) == (
        f"expected at least 4 GPUs on this node but JAX {jax.__version__} sees 2 (NVIDIA H100) "
        "(CUDA_VISIBLE_DEVICES=0,1)"
    )
    assert doctor.problem(rep, "cpu") == (
        f"expected CPU devices only but JAX {jax.__version__} uses 2 GPU(s) (NVIDIA H100); "
        "set JAX_PLATFORMS=cpu"
    )
    plugin = {"package": "jax-cuda12-plugin", "runtime": "cuda", "version": "0.12.0", "matches_jaxlib": False}
    rep["accelerator"].update(
        plugins=[plugin], cuda={"cuda_runtime": "12.8", "cudnn": "9.8.0", "nccl": "2.27.3"}
    )
    text = doctor.text(rep)
    assert "ids [0, 1]: gpu NVIDIA H100, 80.0 GiB for JAX, compute capability 9.0" in text
    assert "GPU plugins     jax-cuda12-plugin 0.12.0 (does NOT match jaxlib)" in text
    assert "CUDA stack      CUDA 12.8, cuDNN 9.8.0, NCCL 2.27.3" in text


def test_a_jax_that_cannot_start_is_the_problem(report):
    rep = copy.deepcopy(report)
    rep["jax"] = {"version": "0.12.0", "backend": None, "error": "Unable to initialize backend 'cuda'"}
    assert doctor.problem(rep) == "JAX 0.12.0 cannot start: Unable to initialize backend 'cuda'"
    rep["accelerator"]["plugins"] = []
    assert doctor.problem(rep, "gpu").startswith(
        f"JAX 0.12.0 cannot start: Unable to initialize backend 'cuda'; jaxlib {jaxlib.__version__} has no "
    )
    assert "error           Unable to initialize backend 'cuda'" in doctor.text(rep)


def test_jax_platforms_naming_a_backend_jax_lacks_says_which(monkeypatch):
    assert not any(host.package_version(p) for p in doctor.PLUGINS["cuda"])  # this venv has no CUDA plugin
    no_cuda = (
        "JAX_PLATFORMS=cuda: JAX has no cuda backend here "
        "(no CUDA plugin installed: pip install -c launch/locks/venv.txt -e '.[cuda12]')"
    )
    proc = run_cli("doctor", "--expect", "gpu", JAX_PLATFORMS="cuda")  # a bare AssertionError in JAX
    assert proc.returncode == 1
    assert f"error           {no_cuda}\n" in proc.stdout
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"smilejax doctor: JAX {jax.__version__} cannot start: {no_cuda}; jaxlib ")

    assert doctor._no_backend("cpu") is None
    assert doctor._no_backend("rocm,cpu") == (
        "JAX_PLATFORMS=rocm,cpu: JAX has no rocm backend here "
        "(no ROCm plugin installed: pip install -c launch/locks/venv.txt -e '.[rocm]')"
    )
    # with the plugin, JAX still skips cuda on a node whose NVIDIA GPUs this process cannot see
    monkeypatch.setattr(doctor, "_plugin_platforms", lambda: {"cuda"})
    monkeypatch.setattr(doctor, "_has_nvidia_gpu", lambda: False)
    assert (
        doctor._no_backend("cuda")
        == "JAX_PLATFORMS=cuda: JAX skips its cuda backend: this process sees no NVIDIA GPU"
    )


def test_amd_gpus_are_the_kfd_nodes_with_simd_units(monkeypatch, tmp_path):
    for node, simds in (("0", 0), ("1", 304), ("2", 304)):  # node 0: the CPU
        (tmp_path / node).mkdir()
        (tmp_path / node / "properties").write_text(f"cpu_cores_count 0\nsimd_count {simds}\nlocation_id 1\n")
    monkeypatch.setattr(doctor, "KFD_NODES", str(tmp_path))
    assert doctor._amd_gpus() == 2
    monkeypatch.setattr(doctor, "KFD_NODES", str(tmp_path / "none"))
    assert doctor._amd_gpus() == 0


def test_nccl_version_comes_from_the_nccl_jax_uses(monkeypatch, tmp_path, report):
    monkeypatch.setattr(doctor, "PROC_MAPS", tmp_path / "maps")  # no libnccl loaded yet
    assert doctor._nccl_libraries() == ["libnccl.so.2"]  # the soname: whatever the loader finds first
    site = tmp_path / "site-packages"
    wheel = site / "nvidia" / "nccl" / "lib" / "libnccl.so.2"  # nvidia-nccl-cu12's layout
    wheel.parent.mkdir(parents=True)
    wheel.write_bytes(b"")
    monkeypatch.syspath_prepend(str(site))
    # the wheel's first, before an NCCL that a module put on LD_LIBRARY_PATH
    assert doctor._nccl_libraries() == [str(wheel), "libnccl.so.2"]
    system = "/opt/nccl/2.18.1/lib/libnccl.so.2.18.1"
    (tmp_path / "maps").write_text(
        f"7f2a00000000-7f2a00400000 r-xp 00000000 08:01 4711                       {system}\n"
        "7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]\n"
    )
    assert doctor._nccl_libraries() == [system, str(wheel), "libnccl.so.2"]  # one loaded already is JAX's

    answers = {system: None, str(wheel): "2.27.3", "libnccl.so.2": "2.18.1"}  # None: it cannot be loaded
    monkeypatch.setattr(doctor, "_nccl_version", answers.get)
    cuda = doctor._cuda()
    assert (cuda["nccl"], cuda["nccl_library"]) == ("2.27.3", str(wheel))
    rep = copy.deepcopy(report)
    rep["accelerator"]["cuda"] = cuda
    assert f"\n  NCCL from       {wheel}\n" in doctor.text(rep)


def test_cli_expect_gpu_exits_1_with_one_line_after_the_report():
    proc = run_cli("doctor", "--expect", "gpu", "--expect-devices", "4")
    assert proc.returncode == 1
    assert "\nfeatures\n" in proc.stdout  # the report is printed all the same
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(
        f"smilejax doctor: expected 4 GPUs but JAX {jax.__version__} sees only 8 cpu device(s): "
    )
    assert "JAX_PLATFORMS=cpu leaves the GPUs out" in line


def test_cli_expects_what_a_system_file_promises(capsys):
    assert cli.main(["doctor", "--system", "perlmutter"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(
        "smilejax doctor: expected 4 GPUs (the system file perlmutter says 4 per node) "
        f"but JAX {jax.__version__} sees only {jax.local_device_count()} cpu device(s): "
    )
    assert cli.main(["doctor", "--system", "local", "--json"]) == 0  # a CPU system demands no GPU
    assert json.loads(capsys.readouterr().out)["expected"] == {
        "expect": None,
        "devices": None,
        "problem": None,
    }
    assert cli.main(["doctor", "--system", "perlmuter"]) == 2
    assert "unknown system 'perlmuter': did you mean perlmutter?" in capsys.readouterr().err


def test_cli_refuses_a_device_count_below_one(capsys):
    assert cli.main(["doctor", "--expect-devices", "0"]) == 2
    assert "--expect-devices must be at least 1, got 0" in capsys.readouterr().err
