"""What each accelerator can do at most: the one table behind MFU (``metrics``) and the roofline bound.

``DEVICES`` is keyed by a part of JAX's ``device_kind``: a case-insensitive substring match, first hit
wins (so "GH200" is listed before "H200"). Peaks are vendor data-sheet numbers for dense matrix
products (no sparsity), per JAX device: an MI250X's two dies (two JAX devices) get half the card each.
NVIDIA parts that the roofline compiles for also carry ``gpu``: what XLA's GPU compiler needs to know
of them (``Device.target_config``).
"""

from __future__ import annotations

import dataclasses

import jax


@dataclasses.dataclass(frozen=True)
class Gpu:
    """An NVIDIA GPU as XLA's compiler sees it (``gpu_device_info``), for compiling without one."""

    compute_capability: tuple[int, int]
    sms: int
    clock_ghz: float
    l2_bytes: int
    shared_memory_per_sm: int
    shared_memory_per_block_optin: int


@dataclasses.dataclass(frozen=True)
class Device:
    description: str  # the device_kind of the listed part, e.g. "NVIDIA H100 80GB HBM3"
    peak_bf16: float  # dense FLOP/s
    # float32 matrix products at JAX's default precision: TF32 on NVIDIA (a V100 has no TF32: its
    # float32 peak); None: as bf16 (TPUs' default precision runs them as bf16 passes)
    peak_tf32: float | None
    memory_bandwidth: float  # bytes/s (HBM)
    memory_bytes: int
    gpu: Gpu | None = None

    def peak(self, precision: str) -> float:
        """Peak FLOP/s of matrix products at ``precision`` ("bf16", else float32)."""
        if precision == "bf16" or self.peak_tf32 is None:
            return self.peak_bf16
        return self.peak_tf32

    def target_config(self) -> str:
        """XLA's ``GpuTargetConfig`` text proto (what ``--xla_gpu_target_config_filename`` reads)."""
        return _target_config(self)


_HOPPER = dict(compute_capability=(9, 0), sms=132, clock_ghz=1.98, l2_bytes=50 * 2**20,
               shared_memory_per_sm=233472, shared_memory_per_block_optin=232448)  # fmt: skip
_AMPERE = Gpu((8, 0), sms=108, clock_ghz=1.41, l2_bytes=40 * 2**20,
            shared_memory_per_sm=167936, shared_memory_per_block_optin=166912)  # fmt: skip

# SXM / OAM parts; ordered so that a longer name is tried before the name it contains.
DEVICES: dict[str, Device] = {
    "GH200": Device("NVIDIA GH200 480GB", 989e12, 494e12, 4.0e12, 96 * 2**30),
    "H200": Device("NVIDIA H200", 989e12, 494e12, 4.8e12, 141 * 10**9, Gpu(**_HOPPER)),
    "H100": Device("NVIDIA H100 80GB HBM3", 989e12, 494e12, 3.35e12, 80 * 2**30, Gpu(**_HOPPER)),
    "A100": Device("NVIDIA A100-SXM4-80GB", 312e12, 156e12, 2.04e12, 80 * 2**30, _AMPERE),
    "A40": Device("NVIDIA A40", 150e12, 74.8e12, 696e9, 48 * 2**30),
    "L40S": Device("NVIDIA L40S", 362e12, 183e12, 864e9, 48 * 2**30),
    "V100": Device("Tesla V100-SXM2-32GB", 125e12, 15.7e12, 900e9, 32 * 2**30),  # no bf16: fp16's peak
    "MI250X": Device("AMD Instinct MI250X", 191.5e12, 47.9e12, 1.6e12, 64 * 2**30),  # per die (GCD)
    "MI300X": Device("AMD Instinct MI300X", 1307e12, 653.7e12, 5.3e12, 192 * 2**30),
    "TPU v4": Device("TPU v4", 275e12, None, 1.2e12, 32 * 2**30),
    "TPU v5p": Device("TPU v5p", 459e12, None, 2.76e12, 95 * 2**30),
    "TPU v5 lite": Device("TPU v5 lite", 197e12, None, 819e9, 16 * 2**30),
}

# The roofline's compile targets (``smilejax bench roofline --target``): the parts with ``gpu`` set.
TARGETS = {kind.lower(): d for kind, d in DEVICES.items() if d.gpu is not None}


def find(device_kind: str) -> Device | None:
    """The table's entry for JAX's ``device_kind`` (None: not listed, e.g. a CPU)."""
    kind = device_kind.lower()
    return next((d for name, d in DEVICES.items() if name.lower() in kind), None)


def peak_flops(device: jax.Device, precision: str = "bf16") -> float | None:
    """Peak dense FLOP/s of ``device`` at ``precision`` (None: unknown, so no MFU)."""
    found = find(device.device_kind)
    return found.peak(precision) if found else None


def _target_config(device: Device) -> str:
    gpu = device.gpu
    if gpu is None:
        raise ValueError(f"{device.description}: no GPU description to compile for")
    major, minor = gpu.compute_capability
    return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {gpu.shared_memory_per_sm}
  threads_per_core_limit: 2048
  core_count: {gpu.sms}
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(device.memory_bandwidth)}
  l2_cache_size: {gpu.l2_bytes}
  clock_rate_ghz: {gpu.clock_ghz}
  device_memory_size: {device.memory_bytes}
  shared_memory_per_block_optin: {gpu.shared_memory_per_block_optin}
  cuda_compute_capability {{ major: {major} minor: {minor} }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 }}
runtime_version {{ major: 12 minor: 8 }}
device_description_str: "{device.description}"
"""
