"""``smilejax doctor``: what a run would find on this machine, and what is missing.

Prints the versions of JAX, jaxlib, Flax, Optax, Orbax and Grain; JAX's backend and this process's
devices with their memory; the accelerator stack (CUDA, cuDNN, NCCL or ROCm versions; whether a JAX
CUDA/ROCm plugin is installed and matches jaxlib); the launcher and process layout the runtime detects
(Slurm, Open MPI, PBS, explicit variables; jax.distributed is not started); and each optional feature
(ONNX export, Triton server and client, W&B, TensorBoard, Optuna, keras-tuner, the GPU compiler of
bench roofline, Slurm, and those of the installed model families and generators: reference
environments, event generators) with the command that installs it where it is missing.

With --expect gpu it exits 1, naming the problem in one line, when JAX sees only a CPU (no plugin, a
plugin that does not match jaxlib, hidden GPUs, JAX_PLATFORMS=cpu, CUDA libraries the plugin refuses).
Jobs written by `smilejax launch` run this on their first node before training.
"""

from __future__ import annotations

import argparse
import json
import sys

from smilejax.commands.common import add_command

EPILOG = """\
examples:
  smilejax doctor                                  # the report
  smilejax doctor --json > doctor.json             # the same as one JSON object
  srun -N1 -n1 smilejax doctor --expect gpu --expect-devices 4   # a GPU node, as a job sees it
  srun -N1 -n1 --gpus-per-node=4 smilejax doctor --system perlmutter   # what its system file promises

exit codes: 0 the report (and the expectation met), 1 the expectation not met."""


def register(sub: argparse._SubParsersAction) -> None:
    parser = add_command(
        sub,
        "doctor",
        help="what a run would find here: JAX, devices, CUDA/ROCm, launcher, optional features",
        description=__doc__,
        epilog=EPILOG,
    )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument(
        "--expect",
        choices=("gpu", "cpu"),
        help="fail (exit 1) unless JAX's devices are GPUs (gpu) or CPUs only (cpu); default: expect nothing",
    )
    parser.add_argument(
        "--expect-devices",
        type=int,
        metavar="N",
        help="fail (exit 1) unless this process sees at least N devices (GPUs with --expect gpu)",
    )
    parser.add_argument(
        "--system",
        help="expect what a system file of smilejax launch promises (GPUs, at least its gpus_per_node of "
        "them): a name (perlmutter) or a path; run it on one whole node of that system",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from smilejax import doctor

    if args.expect_devices is not None and args.expect_devices < 1:
        raise ValueError(f"--expect-devices must be at least 1, got {args.expect_devices}")
    expect, devices, source = args.expect, args.expect_devices, None
    if args.system:
        from smilejax.launch import systems

        system = systems.load(args.system)  # a LaunchError (ValueError) names a bad file
        if system.gpus_per_node:
            expect = expect or "gpu"
            devices = devices or system.gpus_per_node
            source = f"the system file {system.name} says {system.gpus_per_node} per node"
    rep = doctor.report()
    why = doctor.problem(rep, expect, devices, source)
    if args.json:
        rep["expected"] = {"expect": expect, "devices": devices, "problem": why}
        print(json.dumps(rep, indent=1))
    else:
        print(doctor.text(rep), end="", flush=True)
    if why:
        print(f"smilejax doctor: {why}", file=sys.stderr)
        return 1
    return 0
