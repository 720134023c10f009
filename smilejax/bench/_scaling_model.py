"""Predicted weak scaling over nodes from a measured step: compute time plus the step's collectives.

The step's collectives (``xla.hlo_stats.Collective``: kind, full buffer size, group size) are costed with
the alpha-beta model of a hierarchical ring on nodes of ``g`` GPUs (NCCL's layout: rings through
NVLink inside a node, one network interface per GPU between nodes):

    t(op, N nodes) = f(g) · S / B_node_link  +  f(N) · S / (g · B_nic)  +  α_intra · k(g)  +  α_inter · k(N)

where S is the op's full buffer size, ``f(p) = 2(p-1)/p`` for an all-reduce and ``(p-1)/p`` for
all-gather / reduce-scatter / all-to-all (the fraction a ring moves), and ``k(p)`` its ring steps
(``2(p-1)`` or ``p-1``). Each GPU carries 1/g of the inter-node traffic over its own NIC, so a node
moves S through ``g · B_nic``. Ops that span only the tensor axis (which ``mesh.build_mesh`` keeps
inside a process, so inside a node) stay on NVLink at every scale. Bandwidths are peaks times
``efficiency`` (what NCCL reaches of a link's peak).

A step is ``t_compute + (1 - overlap) · t_comm``: ``overlap`` is the fraction of communication hidden
behind compute (0 = none, the pessimistic case). Weak scaling keeps the per-GPU batch, so
``t_compute`` is constant and the efficiency against one node is ``t_step(1) / t_step(N)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from smilejax.xla.hlo_stats import Collective


@dataclasses.dataclass(frozen=True)
class Network:
    """Perlmutter-like GPU nodes (docs/SCALING.md gives the sources)."""

    gpus_per_node: int = 4  # 4× A100 per node
    nic_gbs: float = 25.0  # one HPE Slingshot-11 NIC per GPU: 200 Gb/s = 25 GB/s per direction
    intra_gbs: float = 100.0  # NVLink-3 between two A100s of a node: 4 links × 25 GB/s per direction
    efficiency: float = 0.8  # fraction of link peak a large NCCL collective reaches
    alpha_intra_us: float = 2.0  # latency per ring step inside a node
    alpha_inter_us: float = 5.0  # latency per ring step between nodes
    overlap: float = 0.0  # fraction of communication hidden behind compute

    def describe(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _ring(kind: str, p: int) -> tuple[float, int]:
    """(fraction of the buffer each member moves, ring steps) for ``p`` members."""
    if p <= 1:
        return 0.0, 0
    if kind == "all-reduce":
        return 2 * (p - 1) / p, 2 * (p - 1)
    if kind in ("all-gather", "reduce-scatter", "all-to-all"):
        return (p - 1) / p, p - 1
    return 1.0, 1  # collective-permute, broadcast: one hop


def op_time(op: Collective, nodes: int, net: Network, *, node_local: bool = False) -> float:
    """Seconds for one collective on ``nodes`` nodes (all GPUs, or one node's when ``node_local``)."""
    g = net.gpus_per_node
    intra_bw = net.intra_gbs * 1e9 * net.efficiency
    inter_bw = net.nic_gbs * 1e9 * net.efficiency
    if node_local:
        frac, steps = _ring(op.kind, min(op.group_size, g))
        return frac * op.full_bytes / intra_bw + steps * net.alpha_intra_us * 1e-6
    f_in, k_in = _ring(op.kind, g)
    f_out, k_out = _ring(op.kind, nodes)
    bandwidth = f_in * op.full_bytes / intra_bw + f_out * op.full_bytes / (g * inter_bw)
    latency = k_in * net.alpha_intra_us * 1e-6 + k_out * net.alpha_inter_us * 1e-6
    return bandwidth + latency


def node_local(op: Collective, net: Network) -> bool:
    """Tensor-axis ops of groups that fit a node; data / fsdp ops (or unknown axes) span every node."""
    return bool(op.axes) and set(op.axes) <= {"tensor"} and op.group_size <= net.gpus_per_node


def comm_time(ops: Sequence[Collective], nodes: int, net: Network) -> float:
    """Seconds of communication per step on ``nodes`` nodes."""
    return sum(op_time(op, nodes, net, node_local=node_local(op, net)) for op in ops)


def predict(
    ops: Sequence[Collective],
    *,
    t_compute: float,
    per_gpu_batch: int,
    net: Network,
    nodes: Sequence[int] = (1, 2, 4, 8, 16, 32, 64),
) -> list[dict[str, Any]]:
    """One row per node count: step time, samples/s, and weak-scaling efficiency against one node and
    against one GPU with no communication."""
    rows = []
    base = None
    for n in nodes:
        t_comm = comm_time(ops, n, net)
        t_step = t_compute + (1 - net.overlap) * t_comm
        base = base if base is not None else t_step
        gpus = n * net.gpus_per_node
        rows.append(
            {
                "nodes": n,
                "gpus": gpus,
                "t_compute_ms": t_compute * 1e3,
                "t_comm_ms": t_comm * 1e3,
                "t_step_ms": t_step * 1e3,
                "samples_per_s": gpus * per_gpu_batch / t_step,
                "eff_vs_1node": base / t_step,
                "eff_vs_1gpu": t_compute / t_step,
            }
        )
    return rows
