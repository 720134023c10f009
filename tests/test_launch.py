"""`smilejax launch` without a scheduler: rendered scripts and checks before submission. (Submission through
stand-in ``sbatch``/``qsub``, requeue, the rank wrapper, staging, Polaris end to end: test_launch_jobs.py.)"""

from __future__ import annotations

import subprocess

import pytest
import yaml

from smilejax.launch import job as jobs
from smilejax.launch import systems
from smilejax.launch.systems import LaunchError
from tests.conftest import LAUNCH, calls, launch, stub

pytestmark = pytest.mark.unit  # make test-fast runs it: one device, seconds

# ---------------------------------------------------------------- rendered scripts


@pytest.mark.parametrize(
    ("system", "options", "expected"),
    [
        (
            "perlmutter",
            ["--nodes", "2", "--account", "m1234"],
            [
                "#SBATCH --nodes=2",
                "#SBATCH --ntasks-per-node=4",
                "#SBATCH --gpus-per-node=4",
                "#SBATCH --cpus-per-task=32",
                "#SBATCH --constraint=gpu",
                "#SBATCH --qos=regular",
                "#SBATCH --account=m1234",
                "#SBATCH --time=02:00:00",
                "#SBATCH --requeue",
                "#SBATCH --signal=USR1@180",
                "--ntasks-per-node=4 --cpus-per-task=32 --cpu-bind=cores --gpu-bind=none",
                'export NCCL_NET="AWS Libfabric"',
                'export HDF5_USE_FILE_LOCKING="FALSE"',
                'scontrol requeue "$SLURM_JOB_ID"',
            ],
        ),
        (  # one process per node owns all four GPUs
            "perlmutter",
            ["--nodes", "8", "--tasks-per-node", "1", "--time", "30"],
            [
                "#SBATCH --nodes=8",
                "#SBATCH --ntasks-per-node=1",
                "#SBATCH --cpus-per-task=128",
                "--time=00:30:00",
            ],
        ),
        (
            "polaris",
            ["--nodes", "2", "--account", "MyProj", "--time", "0:45:00"],
            [
                "#PBS -l select=2:system=polaris",
                "#PBS -l walltime=00:45:00",
                "#PBS -A MyProj",
                "#PBS -q debug",
                "#PBS -l place=scatter",
                "#PBS -l filesystems=home:eagle",
                "#PBS -r y",
                "mpiexec -n $((NODES * 4)) --ppn 4 --depth=8 --cpu-bind depth",
                "export CUDA_VISIBLE_DEVICES=3,2,1,0",
                "+ 2700 - 180 ))",
                'export NCCL_NET="AWS Libfabric"',
                "qsub -W depend=afterany:",
            ],
        ),
        (  # one process per GCD, bound by Slurm to the GCD of its L3 region (OLCF's srun options)
            "frontier",
            ["--nodes", "2", "--account", "ABC123"],
            [
                "#SBATCH --nodes=2",
                "#SBATCH --ntasks-per-node=8",
                "#SBATCH --gpus-per-task=1",
                "#SBATCH --cpus-per-task=7",
                "#SBATCH --account=ABC123",
                "#SBATCH --constraint=nvme",
                "#SBATCH --network=disable_rdzv_get",
                "#SBATCH --time=02:00:00",
                "#SBATCH --signal=USR1@180",
                "--ntasks-per-node=8 --cpus-per-task=7 --gpus-per-task=1 --gpu-bind=closest",
                "module load PrgEnv-gnu/8.7.0\nmodule load cpe/26.03\nmodule load rocm/7.2.0\n"
                "module load rccl-net-plugin\nmodule load craype-accel-amd-gfx90a\n",
                'export LD_LIBRARY_PATH="$CRAY_LD_LIBRARY_PATH:$LD_LIBRARY_PATH"',
                'export NCCL_SOCKET_IFNAME="hsn0,hsn1,hsn2,hsn3"',
                'export NCCL_NET_GDR_LEVEL="PHB"',
                'export FI_CXI_RDZV_PROTO="alt_read"',
                'export FI_MR_CACHE_MONITOR="kdreg2"',
                'export MIOPEN_USER_DB_PATH="/tmp/miopen-$USER-$SLURM_JOB_ID"',
                'export MIOPEN_CUSTOM_CACHE_DIR="/tmp/miopen-$USER-$SLURM_JOB_ID"',
                # /tmp is each node's own: the cache folders are made on every node
                'srun --nodes="$NODES" --ntasks="$NODES" --ntasks-per-node=1 '
                'mkdir -p "$MIOPEN_USER_DB_PATH" "$MIOPEN_CUSTOM_CACHE_DIR" ||',
                'export HDF5_USE_FILE_LOCKING="FALSE"',
                'scontrol requeue "$SLURM_JOB_ID"',
            ],
        ),
        (  # half the GCDs: the node's 56 cores still go to its processes, 14 each
            "frontier",
            ["--nodes", "2", "--gpus-per-node", "4", "--account", "ABC123"],
            [
                "#SBATCH --ntasks-per-node=4",
                "#SBATCH --gpus-per-task=1",
                "#SBATCH --cpus-per-task=14",
                "--ntasks-per-node=4 --cpus-per-task=14 --gpus-per-task=1 --gpu-bind=closest",
            ],
        ),
        (  # one process per node owns the node's eight GCDs and all 56 cores
            "frontier",
            ["--nodes", "4", "--tasks-per-node", "1", "--account", "ABC123"],
            [
                "#SBATCH --ntasks-per-node=1",
                "#SBATCH --gpus-per-task=8",
                "#SBATCH --cpus-per-task=56",
                "--ntasks-per-node=1 --cpus-per-task=56 --gpus-per-task=8 --gpu-bind=closest",
            ],
        ),
        (
            "slurm-gpu",
            ["--nodes", "4", "--queue", "gpu", "--qos", "high", "--time", "1-00:00:00"],
            [
                "#SBATCH --nodes=4",
                "#SBATCH --ntasks-per-node=8",
                "#SBATCH --gpus-per-node=8",
                "#SBATCH --partition=gpu",
                "#SBATCH --qos=high",
                "#SBATCH --time=24:00:00",
                "#SBATCH --exclusive",
            ],
        ),
    ],
)
def test_dry_run_prints_the_script_with_the_systems_resource_lines(
    capsys, stubs, toy_cfg, tmp_path, system, options, expected
):
    stub(stubs, "sbatch", "echo 1")
    stub(stubs, "qsub", "echo 1")
    run_dir = tmp_path / "run"
    code, out, err = launch(
        capsys, "--system", system, *options, "--dry-run", str(toy_cfg), f"run.dir={run_dir}"
    )
    assert code == 0, err
    for line in expected:
        assert line in out, f"{line!r} missing from\n{out}"
    assert f"RUN_DIR={run_dir}" in out and "-m smilejax train" in out and "rank.sh" in out
    assert subprocess.run(["bash", "-n"], input=out, text=True).returncode == 0  # valid shell
    assert not run_dir.exists() and not calls(stubs, "sbatch") and not calls(stubs, "qsub")


@pytest.mark.parametrize(
    ("system", "kept"),
    [
        ("frontier", "--ntasks-per-node=1 --cpus-per-task=56 "),
        ("perlmutter", "--cpus-per-task=128 --cpu-bind=cores "),
    ],
)
def test_a_job_without_gpus_gets_no_gpu_options(capsys, toy_cfg, tmp_path, system, kept):
    options = ["--gpus-per-node", "0", "--account", "a1", "--dry-run"]
    code, out, err = launch(capsys, "--system", system, *options, str(toy_cfg), f"run.dir={tmp_path / 'run'}")
    assert code == 0, err
    (train,) = [line for line in out.splitlines() if "-m smilejax train" in line]
    assert kept + '"$RUN_DIR/launch/rank.sh"' in train  # the system's other options stay
    assert "--gpu" not in out  # no --gpu-bind, --gpus-per-task or --gpus-per-node anywhere
    assert "# (none: a CPU job)" in out


def test_node_dirs_are_made_only_where_a_system_names_them(capsys, toy_cfg, tmp_path):
    code, out, err = launch(
        capsys, "--system", "perlmutter", "--dry-run", str(toy_cfg), f"run.dir={tmp_path}"
    )
    assert code == 0, err
    assert "mkdir" not in out and "# (none in the system file)" in out
    polaris = tmp_path / "polaris.yaml"
    tree = yaml.safe_load((LAUNCH / "polaris.yaml").read_text())
    polaris.write_text(yaml.safe_dump({**tree, "node_dirs": ["/local/scratch/cache-$PBS_JOBID"]}))
    code, out, err = launch(capsys, "--system", str(polaris), "--account", "a1", "--dry-run", str(toy_cfg))
    assert code == 0, err
    assert 'mpiexec -n "$NODES" --ppn 1 mkdir -p "/local/scratch/cache-$PBS_JOBID" ||' in out


def test_time_limits_parse_like_slurm():
    assert jobs.parse_time("30") == 1800
    assert jobs.parse_time("30:00") == 1800  # minutes:seconds
    assert jobs.parse_time("02:00:00") == 7200
    assert jobs.parse_time("1-12") == 36 * 3600
    assert jobs.parse_time("1-00:30:00") == 86400 + 1800
    assert jobs.format_time(90061) == "25:01:01"
    for bad in ("", "1h", "0", "1:2:3:4"):
        with pytest.raises(LaunchError, match="time limit"):
            jobs.parse_time(bad)


# ---------------------------------------------------------------- bad input: an error, nothing submitted


@pytest.mark.parametrize(
    ("options", "overrides", "message"),
    [
        (["--system", "perlmuter"], [], "unknown system 'perlmuter': did you mean perlmutter"),
        (["--system", "perlmutter", "--gpus-per-node", "8"], [], "perlmutter has 4 GPU"),
        (["--system", "perlmutter", "--tasks-per-node", "3"], [], "does not divide the 4 GPUs"),
        (["--system", "polaris"], [], "polaris needs an account"),
        (["--system", "frontier"], [], "frontier needs an account"),
        (["--system", "frontier", "--tasks-per-node", "3"], [], "does not divide the 8 GPUs"),
        (["--system", "local", "--time", "1", "--signal-margin", "90"], [], "shorter than the time limit"),
        (["--system", "local"], ["optimizer.lrr=0.1"], "unknown config key optimizer.'lrr'"),
        (["--system", "local"], ["model.name=nosuchmodel"], "unknown model 'nosuchmodel'"),
        (
            ["--system", "perlmutter", "--nodes", "3"],
            [],
            "data.batch_size=64 is not divisible by the 12 processes",
        ),
        (
            ["--system", "perlmutter", "--tasks-per-node", "1"],
            ["data.batch_size=6"],
            "divisible by the batch-sharded",
        ),
        (["--system", "local", "--stage"], [], "--stage needs data.path"),
    ],
)
def test_bad_input_fails_before_anything_is_written_or_submitted(
    capsys, stubs, toy_cfg, tmp_path, options, overrides, message
):
    stub(stubs, "sbatch", "echo 1")
    stub(stubs, "qsub", "echo 1")
    run_dir = tmp_path / "run"
    code, out, err = launch(capsys, *options, str(toy_cfg), f"run.dir={run_dir}", *overrides)
    assert code == 2 and message in err, err
    assert out == "" and not run_dir.exists()
    assert not calls(stubs, "sbatch") and not calls(stubs, "qsub")


def test_a_config_that_does_not_load_names_the_file(capsys, stubs, tmp_path):
    stub(stubs, "sbatch", "echo 1")
    code, _, err = launch(capsys, "--system", "local", str(tmp_path / "missing.yaml"))
    assert code == 2 and "missing.yaml" in err and "neither a file nor a packaged config" in err
    assert not calls(stubs, "sbatch")


def test_system_file_keys_are_checked(tmp_path):
    bad = tmp_path / "mycluster.yaml"
    bad.write_text("scheduler: slurm\ngpus_per_nod: 4\n")
    with pytest.raises(LaunchError, match=r"mycluster.yaml.*'gpus_per_nod'.*did you mean 'gpus_per_node'"):
        systems.load(str(bad))
    bad.write_text("scheduler: lsf\n")
    with pytest.raises(LaunchError, match="scheduler must be one of 'slurm', 'pbs'"):
        systems.load(str(bad))
    bad.write_text("gpus_per_node: 4\ngpu_order: [0, 1, 1, 2]\n")
    with pytest.raises(LaunchError, match="gpu_order"):
        systems.load(str(bad))
    good = systems.load(str(LAUNCH / "polaris.yaml"))
    assert (good.name, good.scheduler, good.gpus_per_node, good.gpu_order) == (
        "polaris",
        "pbs",
        4,
        [3, 2, 1, 0],
    )
    assert {"frontier", "local", "perlmutter", "polaris", "slurm-gpu"} <= set(systems.names())


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ("gpu_vendor: intel\n", "gpu_vendor must be one of 'nvidia', 'amd'"),
        ("gpu_binding: per_task\nscheduler: pbs\n", "per_task is Slurm's --gpus-per-task"),
        ("gpu_binding: per_task\ngpu_order: [1, 0]\n", "gpu_order has no effect with gpu_binding per_task"),
    ],
)
def test_gpu_keys_are_checked(tmp_path, keys, message):
    bad = tmp_path / "mycluster.yaml"
    bad.write_text("gpus_per_node: 2\n" + keys)
    with pytest.raises(LaunchError, match=message):
        systems.load(str(bad))


def test_gpu_order_on_amd_gpus_sets_hip_visible_devices(capsys, stubs, toy_cfg, tmp_path):
    # Slurm may set ROCR_VISIBLE_DEVICES for each step; HIP_VISIBLE_DEVICES orders the GPUs it leaves.
    amd = yaml.safe_load((LAUNCH / "slurm-gpu.yaml").read_text())
    amd.update(gpu_vendor="amd", gpu_order=[4, 5, 2, 3, 6, 7, 0, 1])
    (tmp_path / "amd.yaml").write_text(yaml.safe_dump(amd))
    code, out, err = launch(capsys, "--system", str(tmp_path / "amd.yaml"), "--dry-run", str(toy_cfg))
    assert code == 0, err
    assert "export HIP_VISIBLE_DEVICES=4,5,2,3,6,7,0,1" in out and "CUDA_VISIBLE_DEVICES" not in out
    assert "#SBATCH --gpus-per-node=8" in out and "--gpus-per-task" not in out  # shared binding
