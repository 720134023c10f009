"""`smilejax launch` submitting through stand-in ``sbatch``/``qsub``: the run's launch folder, the scripts'
requeue logic, the rank wrapper, staging, and a Polaris job run end to end under a simulated PALS
``mpiexec`` whose ranks the runtime must recognise. (Rendered scripts and bad input: test_launch.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from smilejax import config
from smilejax.launch import job as jobs
from smilejax.launch import stage, systems
from smilejax.launch.systems import LaunchError
from smilejax.preemption import EXIT_PREEMPTED
from tests import toy
from tests.conftest import LAUNCH, calls, launch, stub

pytestmark = pytest.mark.unit  # make test-fast runs it: one device, seconds


# ---------------------------------------------------------------- submission and the script's requeue logic


def submit_local(capsys, stubs, toy_cfg, tmp_path, *options) -> tuple[Path, str]:
    stub(stubs, "sbatch", "echo '4242;cluster'")
    run_dir = tmp_path / "run"
    args = ["--system", "local", "--tasks-per-node", "2", *options, str(toy_cfg), f"run.dir={run_dir}"]
    code, out, err = launch(capsys, *args, "optimizer.lr=0.02")
    assert code == 0, err
    return run_dir, out


def test_submission_writes_the_run_launch_folder_and_prints_the_job_id(capsys, stubs, toy_cfg, tmp_path):
    run_dir, out = submit_local(capsys, stubs, toy_cfg, tmp_path)
    assert out.strip() == "4242"
    folder = run_dir / "launch"
    assert calls(stubs, "sbatch") == [f"--parsable {folder / 'job.sh'}"]
    assert os.access(folder / "job.sh", os.X_OK) and os.access(folder / "rank.sh", os.X_OK)
    frozen = config.load(folder / "config.yaml")  # the resolved config, overrides applied
    assert frozen.optimizer.lr == 0.02 and frozen.run.dir == str(run_dir) and frozen.data.batch_size == 64
    record = json.loads((folder / "jobs.jsonl").read_text())
    assert record["job_id"] == "4242" and record["system"] == "local" and record["tasks_per_node"] == 2
    script = (folder / "job.sh").read_text()
    assert "#SBATCH --overcommit" in script and f"#SBATCH --output={folder}/slurm-%j.out" in script


@pytest.mark.parametrize(
    ("train_rc", "restart", "requeued", "script_rc"),
    [
        (EXIT_PREEMPTED, 0, True, 0),
        (EXIT_PREEMPTED, 20, False, EXIT_PREEMPTED),
        (0, 0, False, 0),
        (1, 3, False, 1),
    ],
)
def test_slurm_script_requeues_a_preempted_run_until_the_limit(
    capsys, stubs, toy_cfg, tmp_path, train_rc, restart, requeued, script_rc
):
    run_dir, _ = submit_local(capsys, stubs, toy_cfg, tmp_path)
    stub(stubs, "srun", f"exit {train_rc}")
    stub(stubs, "scontrol", "exit 0")
    env = {
        **os.environ,
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_RESTART_COUNT": str(restart),
    }
    proc = subprocess.run(
        ["bash", str(run_dir / "launch" / "job.sh")], env=env, capture_output=True, text=True
    )
    assert proc.returncode == script_rc, proc.stdout + proc.stderr
    assert calls(stubs, "scontrol") == (["requeue 4242"] if requeued else [])
    (train,) = calls(stubs, "srun")
    assert "--ntasks=2 --ntasks-per-node=2" in train and f"{run_dir}/launch/rank.sh" in train
    assert train.endswith(f"-m smilejax train {run_dir}/launch/config.yaml")
    assert f"attempt {restart + 1}" in proc.stdout


# ---------------------------------------------------------------- the rank wrapper


def test_rank_wrapper_holds_an_early_warning_until_the_run_can_take_it(tmp_path):
    # The "run" installs its USR1 handler only after 1.5 s (JAX start-up); a warning at 0.3 s must
    # neither kill it nor get lost: the wrapper repeats it, and the run exits 75 as after a checkpoint.
    program = textwrap.dedent(
        """
        import signal, sys, time
        time.sleep(1.5)
        got = []
        signal.signal(signal.SIGUSR1, lambda *_: got.append(1))
        deadline = time.time() + 20
        while not got and time.time() < deadline:
            time.sleep(0.05)
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # what smilejax's StopWatch.restore does
        sys.exit(75 if got else 3)
        """
    )
    proc = subprocess.Popen(["bash", str(LAUNCH / "templates" / "rank.sh"), sys.executable, "-c", program])
    time.sleep(0.3)
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=30) == EXIT_PREEMPTED


def test_rank_wrapper_passes_exit_codes_and_term_on(tmp_path):
    wrapper = str(LAUNCH / "templates" / "rank.sh")
    assert subprocess.run(["bash", wrapper, "bash", "-c", "exit 7"]).returncode == 7
    program = (
        "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: sys.exit(75)); time.sleep(30)"
    )
    proc = subprocess.Popen(["bash", wrapper, sys.executable, "-c", program])
    time.sleep(1.0)
    proc.terminate()
    assert proc.wait(timeout=30) == EXIT_PREEMPTED


# ---------------------------------------------------------------- staging


def test_stage_plan_expands_globs_and_points_the_config_at_the_copies(tmp_path):
    data = tmp_path / "data"
    (data / "valid").mkdir(parents=True)
    for name in ("a.h5", "b.h5", "valid/c.h5"):
        (data / name).write_bytes(b"x" * 100)
    cfg = config.load(toy.config(data={"path": str(data / "*.h5"), "eval_path": "data/valid"}))
    system = systems.load("local")
    plan = jobs.stage_plan(cfg, system, None, workdir=tmp_path)
    assert plan.root == "/dev/shm" and plan.total_bytes == 300
    assert plan.sources == (str(data / "a.h5"), str(data / "b.h5"), str(data / "valid"))
    assert plan.overrides == (("data.path", ("a.h5", "b.h5")), ("data.eval_path", ("valid",)))
    (data / "other").mkdir()
    (data / "other" / "a.h5").write_bytes(b"y")
    cfg.data.eval_path = str(data / "other" / "a.h5")
    with pytest.raises(LaunchError, match=r"have the same name 'a\.h5'"):
        jobs.stage_plan(cfg, system, None, workdir=tmp_path)
    cfg.data.eval_path = None
    cfg.data.path = str(data / "*.root")
    with pytest.raises(LaunchError, match=r"data.path entry .*\*.root' matches no file"):
        jobs.stage_plan(cfg, system, None, workdir=tmp_path)
    cfg.data.path = str(data / "a.h5")
    big = systems.System(name="tiny", stage_dir="/tmp", stage_capacity_gb=1e-8)
    with pytest.raises(LaunchError, match="more than the 1e-08 GB tiny allows"):
        jobs.stage_plan(cfg, big, None, workdir=tmp_path)


def test_stage_copies_files_and_folders_once(tmp_path):
    src = tmp_path / "src"
    (src / "tree" / "sub").mkdir(parents=True)
    (src / "a.npz").write_bytes(os.urandom(3000))
    (src / "tree" / "sub" / "b.bin").write_bytes(os.urandom(500))
    dest = tmp_path / "shm" / "smilejax-1"
    first = stage.stage(dest, [src / "a.npz", src / "tree"])
    assert (first["files"], first["copied"], first["bytes"]) == (2, 2, 3500)
    assert (dest / "a.npz").read_bytes() == (src / "a.npz").read_bytes()
    assert (dest / "tree" / "sub" / "b.bin").read_bytes() == (src / "tree" / "sub" / "b.bin").read_bytes()
    assert not list(dest.glob(".*.part-*"))  # no temporary left behind
    again = stage.stage(dest, [src / "a.npz", src / "tree"])  # a requeued job on the same node
    assert again["copied"] == 0
    assert stage.main([str(dest), str(src / "missing.h5")]) == 1


def test_frontier_job_stages_to_the_nvme_and_keeps_caches_per_user_and_job(capsys, stubs, tmp_path):
    # The script as Frontier's batch shell runs it: modules, then staging, training and clean-up steps;
    # the stage folder and MIOpen's cache name the user and job in the job, not at submission.
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.npz").write_bytes(b"x" * 100)
    cfg = tmp_path / "toy.yaml"
    cfg.write_text(yaml.safe_dump(toy.config(data={"batch_size": 64, "path": str(data / "train.npz")})))
    stub(stubs, "sbatch", "echo 77")
    stub(stubs, "module", "exit 0")
    stub(stubs, "srun", f'echo "$MIOPEN_USER_DB_PATH $MIOPEN_CUSTOM_CACHE_DIR" >> {stubs}/srun.env')
    run_dir = tmp_path / "run"
    options = ["--nodes", "2", "--account", "ABC123", "--stage"]
    code, out, err = launch(capsys, "--system", "frontier", *options, str(cfg), f"run.dir={run_dir}")
    assert code == 0 and out.strip() == "77", err
    env = dict(os.environ, USER="alice", SLURM_JOB_ID="77", SLURM_JOB_NUM_NODES="2")
    script = run_dir / "launch" / "job.sh"
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    assert calls(stubs, "module") == [
        "load PrgEnv-gnu/8.7.0",
        "load cpe/26.03",
        "load rocm/7.2.0",
        "load rccl-net-plugin",
        "load craype-accel-amd-gfx90a",
    ]
    nvme = "/mnt/bb/alice/smilejax-77"
    steps = calls(stubs, "srun")
    (staging,) = [c for c in steps if "-m smilejax.launch.stage" in c]
    (train,) = [c for c in steps if "-m smilejax train" in c]
    (unstage,) = [c for c in steps if "rm -rf" in c]
    cache = "/tmp/miopen-alice-77"
    assert steps.index(f"--nodes=2 --ntasks=2 --ntasks-per-node=1 mkdir -p {cache} {cache}") < steps.index(
        train
    )
    assert staging.startswith("--nodes=2 --ntasks=2 --ntasks-per-node=1 ")
    assert staging.endswith(f"-m smilejax.launch.stage {nvme} {data / 'train.npz'}")
    assert "--ntasks=16 --ntasks-per-node=8 --cpus-per-task=7 --gpus-per-task=1 --gpu-bind=closest" in train
    assert train.endswith(f"train {run_dir}/launch/config.yaml data.path={nvme}/train.npz")
    assert unstage.endswith(f"rm -rf {nvme}")
    assert (stubs / "srun.env").read_text().splitlines() == [f"{cache} {cache}"] * len(steps)


# ---------------------------------------------------------------- Polaris under a simulated PALS mpiexec

# PALS mpiexec: -n N --ppn P [other options] COMMAND...; every rank gets the PMI/PALS variables.
MPIEXEC = """
n=0; ppn=1
while [[ $1 == -* ]]; do
    case $1 in -n) n=$2; shift 2 ;; --ppn) ppn=$2; shift 2 ;; --cpu-bind) shift 2 ;; *) shift ;; esac
done
pids=()
for ((r = 0; r < n; r++)); do
    PMI_RANK=$r PMI_SIZE=$n PMI_LOCAL_RANK=$((r % ppn)) PMI_LOCAL_SIZE=$ppn PALS_RANKID=$r \\
        PALS_LOCAL_RANKID=$((r % ppn)) PALS_NODEID=$((r / ppn)) "$@" &
    pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait $p; s=$?; ((s > rc)) && rc=$s; done
exit $rc
"""

# Stands in for `python -m smilejax train`: reports what the runtime detects, then waits for the
# pre-walltime warning and exits 75 as a checkpointed run does.
PROBE = """
import json, os, signal, sys, time
if "doctor" in sys.argv:  # the preflight: one process, before training, told what to expect
    with open(os.environ["PROBE_OUT"] + ".preflight", "a") as f:
        f.write(json.dumps({"argv": sys.argv[1:], "ranks": os.environ["PMI_SIZE"]}) + "\\n")
    sys.exit(0)
got = []
signal.signal(signal.SIGUSR1, lambda *_: got.append(time.time()))
from smilejax import runtime
env = runtime.detect()
visible = os.environ["CUDA_VISIBLE_DEVICES"].split(",")
with open(os.environ["PROBE_OUT"], "a") as f:
    f.write(json.dumps({
        "env": env.__dict__, "gpus": [visible[i] for i in env.local_device_ids],
        "hdf5_locking": os.environ.get("HDF5_USE_FILE_LOCKING"), "argv": sys.argv[1:],
    }) + "\\n")
deadline = time.time() + 40
while not got and time.time() < deadline:
    time.sleep(0.05)
signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # as smilejax's StopWatch restores the inherited disposition
sys.exit(75 if got else 3)
"""


def test_polaris_job_runs_under_pals_mpiexec_detects_ranks_and_resubmits(capsys, stubs, toy_cfg, tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    python = tmp_path / "python"  # the system's interpreter: runs the probe whatever the arguments
    python.write_text(f'#!/bin/bash\nexec {sys.executable} {probe} "$@"\n')
    python.chmod(0o755)
    sim = yaml.safe_load((LAUNCH / "polaris.yaml").read_text())
    sim.update(setup=[], python=str(python))
    (tmp_path / "polaris-sim.yaml").write_text(yaml.safe_dump(sim))
    stub(stubs, "qsub", "echo 123.polaris-pbs-01")
    stub(stubs, "mpiexec", MPIEXEC)
    run_dir = tmp_path / "run"
    # Walltime 60 s, warning 57 s before it: the ranks are warned 3 s into the job.
    options = [
        "--nodes",
        "2",
        "--tasks-per-node",
        "2",
        "--account",
        "P",
        "--time",
        "1",
        "--signal-margin",
        "57",
    ]
    code, out, err = launch(
        capsys, "--system", str(tmp_path / "polaris-sim.yaml"), *options, str(toy_cfg), f"run.dir={run_dir}"
    )
    assert code == 0 and out.strip() == "123.polaris-pbs-01", err
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("x3001c0s1b0n0.hsn\nx3002c0s7b1n0.hsn\n")
    env = dict(os.environ, PBS_JOBID="123.polaris-pbs-01", PBS_NODEFILE=str(nodefile))
    env["PROBE_OUT"] = str(tmp_path / "ranks.jsonl")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    script = run_dir / "launch" / "job.sh"
    started = time.time()
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120)
    log = (run_dir / "launch" / "pbs-123.out").read_text()
    assert proc.returncode == 0, log
    assert time.time() - started < 60, "the warning came at the walltime, not before it"

    preflight = (tmp_path / "ranks.jsonl.preflight").read_text().splitlines()
    expect = ["-m", "smilejax", "doctor", "--expect", "gpu", "--expect-devices", "4"]  # the node's 4 GPUs
    assert [json.loads(line) for line in preflight] == [{"argv": expect, "ranks": "1"}]
    lines = (tmp_path / "ranks.jsonl").read_text().splitlines()
    ranks = sorted((json.loads(line) for line in lines), key=lambda r: r["env"]["process_id"])
    assert [r["env"]["process_id"] for r in ranks] == [0, 1, 2, 3]
    for r in ranks:
        e = r["env"]
        assert (e["launcher"], e["num_processes"], e["num_nodes"], e["local_size"]) == ("pbs", 4, 2, 2)
        assert e["local_rank"] == e["process_id"] % 2
        assert e["coordinator"].startswith("x3001c0s1b0n0.hsn:")
        assert r["hdf5_locking"] == "FALSE"
        assert r["argv"] == ["-m", "smilejax", "train", str(run_dir / "launch" / "config.yaml")]
    # Two ranks per node split the GPUs in Polaris' affinity order 3,2,1,0.
    assert [r["gpus"] for r in ranks] == [["3", "2"], ["1", "0"], ["3", "2"], ["1", "0"]]

    assert "training exited with code 75" in log
    assert (
        calls(stubs, "qsub")[-1]
        == f"-W depend=afterany:123.polaris-pbs-01 -v SMILEJAX_RESTART_COUNT=1 {script}"
    )
