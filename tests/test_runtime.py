"""Cluster detection on simulated launcher environments (no processes are started)."""

from __future__ import annotations

import pytest

from smilejax import runtime
from smilejax.runtime import ClusterEnv, detect, expand_hostlist, local_device_ids, parse_tasks_per_node

pytestmark = pytest.mark.unit  # make test-fast runs it: one device, seconds


def slurm_step(procid: int, localid: int, **extra: str) -> dict[str, str]:
    """The variables srun sets in each task of a 4-task, 1-node step (as seen on a real Slurm 22.05)."""
    env = {
        "SLURM_JOB_ID": "4242",
        "SLURM_STEP_ID": "0",
        "SLURM_STEPID": "0",
        "SLURM_STEP_NUM_TASKS": "4",
        "SLURM_NTASKS": "4",
        "SLURM_STEP_NUM_NODES": "1",
        "SLURM_NNODES": "1",
        "SLURM_STEP_NODELIST": "gpu017",
        "SLURM_JOB_NODELIST": "gpu017",
        "SLURM_STEP_TASKS_PER_NODE": "4",
        "SLURM_TASKS_PER_NODE": "4",
        "SLURM_NODEID": "0",
        "SLURM_PROCID": str(procid),
        "SLURM_LOCALID": str(localid),
    }
    env.update(extra)
    return env


# ---- single and explicit


def test_empty_environment_is_single():
    env = detect({})
    assert env == ClusterEnv("single", 1, 0, None, 0, 1, 1, None)
    assert "single process" in runtime.describe(env)


def test_sbatch_batch_shell_is_single():
    # What the batch script of `sbatch -n 2` sees: tasks and a PROCID, but no job step.
    batch = {
        "SLURM_JOB_ID": "4",
        "SLURM_NTASKS": "2",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_JOB_NODELIST": "vm",
        "SLURM_TASKS_PER_NODE": "2",
    }
    assert detect(batch).launcher == "single"


def test_no_distributed_forces_single():
    assert detect(slurm_step(1, 1, SMILEJAX_NO_DISTRIBUTED="1")).launcher == "single"
    assert detect(slurm_step(1, 1, SMILEJAX_NO_DISTRIBUTED="0")).launcher == "slurm"


def test_explicit():
    env = detect(
        {
            "JAX_COORDINATOR_ADDRESS": "10.0.0.5:1234",
            "JAX_NUM_PROCESSES": "8",
            "JAX_PROCESS_ID": "5",
            "JAX_LOCAL_RANK": "1",
            "JAX_LOCAL_SIZE": "4",
            "CUDA_VISIBLE_DEVICES": "0,1,2,3",
        }
    )
    assert env == ClusterEnv("explicit", 8, 5, "10.0.0.5:1234", 1, 4, 2, [1])


def test_explicit_wins_over_slurm_and_adds_port():
    env = detect(
        slurm_step(
            2,
            2,
            JAX_COORDINATOR_ADDRESS="head",
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID="1",
            JAX_COORDINATOR_PORT="31337",
            CUDA_VISIBLE_DEVICES="0",
        )
    )
    assert env == ClusterEnv("explicit", 2, 1, "head:31337", 0, 1, 2, None)


# ---- Slurm


def test_slurm_one_process_per_gpu():
    for rank in range(4):
        env = detect(slurm_step(rank, rank, CUDA_VISIBLE_DEVICES="0,1,2,3"))
        assert env.launcher == "slurm"
        assert (env.num_processes, env.process_id, env.local_rank, env.local_size, env.num_nodes) == (
            4,
            rank,
            rank,
            4,
            1,
        )
        assert env.local_device_ids == [rank]
        host, port = env.coordinator.split(":")
        assert host == "gpu017" and 20000 <= int(port) < 60000


def test_slurm_one_process_per_node():
    # 3 nodes, 1 task each, 4 GPUs per node: every process owns all of its node's GPUs.
    env = detect(
        slurm_step(
            2,
            0,
            SLURM_STEP_NUM_TASKS="3",
            SLURM_NTASKS="3",
            SLURM_STEP_NUM_NODES="3",
            SLURM_STEP_NODELIST="nid[001-003]",
            SLURM_STEP_TASKS_PER_NODE="1(x3)",
            SLURM_NODEID="2",
            CUDA_VISIBLE_DEVICES="0,1,2,3",
        )
    )
    assert env == ClusterEnv("slurm", 3, 2, env.coordinator, 0, 1, 3, None)
    assert env.coordinator.startswith("nid001:")


def test_slurm_uneven_tasks_per_node_picks_this_node():
    # 7 tasks as 2,2,2,1: the last node runs one process and owns both of its GPUs.
    env = detect(
        slurm_step(
            6,
            0,
            SLURM_STEP_NUM_TASKS="7",
            SLURM_STEP_NUM_NODES="4",
            SLURM_STEP_NODELIST="n[1-4]",
            SLURM_STEP_TASKS_PER_NODE="2(x3),1",
            SLURM_NODEID="3",
            SLURM_GPUS_ON_NODE="2",
        )
    )
    assert (env.local_rank, env.local_size, env.num_nodes, env.local_device_ids) == (0, 1, 4, None)
    env = detect(
        slurm_step(
            3,
            1,
            SLURM_STEP_NUM_TASKS="7",
            SLURM_STEP_NUM_NODES="4",
            SLURM_STEP_NODELIST="n[1-4]",
            SLURM_STEP_TASKS_PER_NODE="2(x3),1",
            SLURM_NODEID="1",
            SLURM_GPUS_ON_NODE="4",
        )
    )
    assert (env.local_rank, env.local_size, env.local_device_ids) == (1, 2, [2, 3])


def test_slurm_falls_back_to_job_nodelist():
    env = detect(
        {k: v for k, v in slurm_step(0, 0).items() if k != "SLURM_STEP_NODELIST"}
        | {"SLURM_JOB_NODELIST": "login[5-6]"}
    )
    assert env.coordinator.startswith("login5:")


def test_slurm_port_differs_between_steps_and_is_overridable():
    ports = {detect(slurm_step(0, 0, SLURM_STEP_ID=str(s))).coordinator for s in range(20)}
    assert len(ports) == 20
    assert detect(slurm_step(0, 0)) == detect(slurm_step(0, 0))  # deterministic across processes
    assert detect(slurm_step(0, 0, JAX_COORDINATOR_PORT="45678")).coordinator == "gpu017:45678"


def test_hostlist():
    assert expand_hostlist("nid[001-003,007],login5") == ["nid001", "nid002", "nid003", "nid007", "login5"]
    assert expand_hostlist("vm") == ["vm"]
    assert expand_hostlist("a[8-10]") == ["a8", "a9", "a10"]
    assert expand_hostlist("x[098-101]") == ["x098", "x099", "x100", "x101"]
    assert expand_hostlist("r[1-2]n[01-02]") == ["r1n01", "r1n02", "r2n01", "r2n02"]
    assert expand_hostlist("gpu-a100-[3,5]") == ["gpu-a100-3", "gpu-a100-5"]
    with pytest.raises(ValueError, match="hostlist"):
        expand_hostlist("nid[a-b]")


def test_tasks_per_node():
    assert parse_tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    assert parse_tasks_per_node("4") == [4]
    assert parse_tasks_per_node("1,3(x2)") == [1, 3, 3]
    with pytest.raises(ValueError, match="tasks-per-node"):
        parse_tasks_per_node("2(3)")


# ---- GPU split


def test_local_device_ids():
    assert local_device_ids(None, 0, 4) is None  # no GPU information
    assert local_device_ids(4, 0, 1) is None  # one process per node
    assert local_device_ids(1, 3, 4) is None  # srun --gpus-per-task=1 already bound one GPU
    assert local_device_ids(4, 2, 4) == [2]
    assert local_device_ids(8, 1, 2) == [4, 5, 6, 7]
    assert local_device_ids(0, 0, 4) is None  # CUDA_VISIBLE_DEVICES="" on a CPU node
    with pytest.raises(ValueError, match="3 visible GPUs"):
        local_device_ids(3, 0, 2)


def test_visible_gpu_count():
    assert runtime.visible_gpu_count({}) is None
    assert runtime.visible_gpu_count({"CUDA_VISIBLE_DEVICES": ""}) == 0
    assert runtime.visible_gpu_count({"CUDA_VISIBLE_DEVICES": "GPU-aa,GPU-bb"}) == 2
    assert runtime.visible_gpu_count({"SLURM_STEP_GPUS": "0,1,2"}) == 3
    assert runtime.visible_gpu_count({"SLURM_GPUS_ON_NODE": "4"}) == 4


def test_visible_gpu_count_on_amd_gpus_reads_the_innermost_rocm_list():
    # ROCR_VISIBLE_DEVICES hides GPUs first; HIP_VISIBLE_DEVICES (else CUDA_VISIBLE_DEVICES) picks among them.
    assert runtime.visible_gpu_count({"ROCR_VISIBLE_DEVICES": "4", "SLURM_GPUS_ON_NODE": "8"}) == 1
    rocr = {"ROCR_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}
    assert runtime.visible_gpu_count(rocr) == 8
    assert runtime.visible_gpu_count({**rocr, "HIP_VISIBLE_DEVICES": "4,5"}) == 2
    assert runtime.visible_gpu_count({**rocr, "CUDA_VISIBLE_DEVICES": "1,2,3"}) == 3
    assert runtime.visible_gpu_count({**rocr, "HIP_VISIBLE_DEVICES": "2", "CUDA_VISIBLE_DEVICES": "1,2"}) == 1
    assert runtime.visible_gpu_count({**rocr, "HIP_VISIBLE_DEVICES": ""}) == 8  # HIP ignores an empty value


def test_amd_node_shared_gcds_are_dealt_out_in_hip_order():
    # Every process sees the node's 8 GCDs in an affinity order (gpu_order on an AMD system): 4 processes
    # take two each, as indices into that order.
    environ = {"ROCR_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7", "HIP_VISIBLE_DEVICES": "4,5,2,3,6,7,0,1"}
    assert [detect(slurm_step(r, r, **environ)).local_device_ids for r in range(4)] == [
        [0, 1],
        [2, 3],
        [4, 5],
        [6, 7],
    ]


@pytest.mark.parametrize("gpus_per_task", ["2", "gpu:2"])
def test_slurm_gpus_bound_per_task_are_not_split_again(gpus_per_task):
    # srun --gpus-per-task=2 --gpu-bind=closest: each of 4 tasks sees only its own two GCDs.
    own = ["4,5", "2,3", "6,7", "0,1"]
    for r in range(4):
        env = detect(slurm_step(r, r, ROCR_VISIBLE_DEVICES=own[r], SLURM_GPUS_PER_TASK=gpus_per_task))
        assert env.local_device_ids is None, r
    # Without the per-task binding the same two visible GPUs would be split between the local processes.
    with pytest.raises(ValueError, match="2 visible GPUs cannot be split evenly among 4"):
        detect(slurm_step(0, 0, ROCR_VISIBLE_DEVICES="4,5"))
    # A step that sees more GPUs than its tasks were given still deals them out.
    env = detect(slurm_step(1, 1, CUDA_VISIBLE_DEVICES="0,1,2,3", SLURM_GPUS_PER_TASK="1"))
    assert env.local_device_ids == [1]


@pytest.mark.parametrize(
    ("environ", "variable", "narrowed"),
    [
        ({"CUDA_VISIBLE_DEVICES": "3,2,1,0"}, "CUDA_VISIBLE_DEVICES", "1,0"),
        ({"ROCR_VISIBLE_DEVICES": "0,1,2,3"}, "ROCR_VISIBLE_DEVICES", "2,3"),
        ({"ROCR_VISIBLE_DEVICES": "0,1,2,3", "HIP_VISIBLE_DEVICES": "3,2,1,0"}, "HIP_VISIBLE_DEVICES", "1,0"),
        ({}, "CUDA_VISIBLE_DEVICES", "2,3"),  # nothing listed: indices, which CUDA and HIP both read
    ],
)
def test_narrow_visible_devices_keeps_the_block_of_the_innermost_list(environ, variable, narrowed):
    before = dict(environ)
    runtime.narrow_visible_devices(environ, [2, 3])
    assert environ[variable] == narrowed
    assert {k: v for k, v in environ.items() if k != variable} == {
        k: v for k, v in before.items() if k != variable
    }


# ---- Open MPI and PBS


def test_openmpi():
    env = detect(
        {
            "OMPI_COMM_WORLD_SIZE": "8",
            "OMPI_COMM_WORLD_RANK": "6",
            "OMPI_COMM_WORLD_LOCAL_RANK": "2",
            "OMPI_COMM_WORLD_LOCAL_SIZE": "4",
            "MASTER_ADDR": "node01",
            "MASTER_PORT": "29500",
            "CUDA_VISIBLE_DEVICES": "0,1,2,3",
        }
    )
    assert env == ClusterEnv("openmpi", 8, 6, "node01:29500", 2, 4, 2, [2])


def test_openmpi_needs_a_coordinator():
    with pytest.raises(ValueError, match="JAX_COORDINATOR_ADDRESS"):
        detect({"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "0"})


def test_pbs_pals(tmp_path):
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("x3001c0s1b0n0.hsn\nx3001c0s1b0n0.hsn\nx3002c0s7b1n0.hsn\nx3002c0s7b1n0.hsn\n")
    env = detect(
        {
            "PMI_SIZE": "8",
            "PMI_RANK": "5",
            "PALS_LOCAL_RANKID": "1",
            "PALS_LOCAL_SIZE": "4",
            "PBS_NODEFILE": str(nodefile),
            "PBS_JOBID": "123456.polaris-pbs-01",
            "CUDA_VISIBLE_DEVICES": "0,1,2,3",
        }
    )
    assert (env.launcher, env.num_processes, env.process_id, env.num_nodes) == ("pbs", 8, 5, 2)
    assert (env.local_rank, env.local_size, env.local_device_ids) == (1, 4, [1])
    host, port = env.coordinator.split(":")
    assert host == "x3001c0s1b0n0.hsn" and 20000 <= int(port) < 60000


def test_pbs_mpich_one_process_per_node(tmp_path):
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("a\nb\n")
    env = detect(
        {
            "PMI_SIZE": "2",
            "PMI_RANK": "1",
            "MPI_LOCALRANKID": "0",
            "MPI_LOCALNRANKS": "1",
            "PBS_NODEFILE": str(nodefile),
            "JAX_COORDINATOR_PORT": "23456",
            "CUDA_VISIBLE_DEVICES": "0,1,2,3",
        }
    )
    assert env == ClusterEnv("pbs", 2, 1, "a:23456", 0, 1, 2, None)


# ---- malformed values name the variable


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        (slurm_step(0, 0, SLURM_PROCID="zero"), "SLURM_PROCID"),
        (slurm_step(4, 0), "SLURM_PROCID"),
        (slurm_step(0, 4), "SLURM_LOCALID"),
        (slurm_step(0, 0, SLURM_STEP_NUM_TASKS="four"), "SLURM_STEP_NUM_TASKS"),
        (slurm_step(0, 0, JAX_COORDINATOR_PORT="http"), "JAX_COORDINATOR_PORT"),
        (slurm_step(0, 0, JAX_COORDINATOR_PORT="70000"), "JAX_COORDINATOR_PORT"),
        ({k: v for k, v in slurm_step(0, 0).items() if "NODELIST" not in k}, "SLURM_STEP_NODELIST"),
        (dict(JAX_COORDINATOR_ADDRESS="h:1", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID="2"), "JAX_PROCESS_ID"),
        (dict(JAX_COORDINATOR_ADDRESS="h:1", JAX_NUM_PROCESSES="x", JAX_PROCESS_ID="0"), "JAX_NUM_PROCESSES"),
        (dict(OMPI_COMM_WORLD_SIZE="2", OMPI_COMM_WORLD_RANK="-1", MASTER_ADDR="h"), "OMPI_COMM_WORLD_RANK"),
        ({"PMI_SIZE": "2", "PMI_RANK": "1.0", "PBS_NODEFILE": "/nonexistent"}, "PMI_RANK"),
        ({"PMI_SIZE": "2", "PMI_RANK": "1", "PBS_NODEFILE": "/nonexistent"}, "PBS_NODEFILE"),
        (slurm_step(1, 1, CUDA_VISIBLE_DEVICES="0,1,2"), "3 visible GPUs"),
    ],
)
def test_malformed_values_name_the_variable(environ, variable):
    with pytest.raises(ValueError, match=variable):
        detect(environ)


# ---- initialize


def test_initialize_single_starts_nothing(monkeypatch):
    calls = []
    monkeypatch.setattr(runtime, "_initialized", None)
    monkeypatch.setattr(runtime.jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(runtime.jax.distributed, "is_initialized", lambda: False)
    env = runtime.initialize(detect({}))
    assert env.launcher == "single" and calls == []


def test_initialize_once_with_detected_arguments(monkeypatch):
    calls, updates = [], []
    monkeypatch.setattr(runtime, "_initialized", None)
    monkeypatch.setattr(runtime.jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(runtime.jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(runtime.jax.config, "update", lambda *a: updates.append(a))
    env = detect(slurm_step(3, 3, CUDA_VISIBLE_DEVICES="0,1,2,3"))
    assert runtime.initialize(env) is env
    assert runtime.initialize(env) is env  # idempotent
    assert calls == [
        {"coordinator_address": env.coordinator, "num_processes": 4, "process_id": 3, "local_device_ids": [3]}
    ]
    assert updates == [("jax_cpu_collectives_implementation", "gloo")]
    assert "slurm: process 3/4" in runtime.describe(env) and "GPUs [3]" in runtime.describe(env)
