"""The GPUs the planner knows: memory, dense BF16 peak, bandwidth inside and between nodes, node size.

Memory is in GB = 1e9 bytes, the nominal capacity: an "80 GB" H100 holds 80 GiB (85.9e9 bytes), of
which about 79.6 GiB are usable, so planning against 80e9 bytes leaves ~6% in hand.
Peaks are NVIDIA's dense (no 2:4 sparsity) BF16 tensor-core figures for the SXM parts.
Bandwidths are what collectives achieve, taken as 80% of the link rate: ``nvlink_gbps`` inside a
node (unidirectional NVLink per GPU: H100/H200 NVLink 4 450 GB/s, A100 NVLink 3 300 GB/s) and
``network_gbps`` per GPU between nodes (one InfiniBand NIC per GPU: NDR 400 Gb/s = 50 GB/s on H100
and H200 nodes, HDR 200 Gb/s = 25 GB/s on A100 nodes). A node's NICs work side by side: a
data-parallel group with k ranks on each node moves its traffic between nodes over k NICs at once
(:mod:`mm1.plan.estimate`), so it sees k x ``network_gbps``. ``hbm_gbps``, for decoding
(:mod:`mm1.plan.infer`): 80% of the device memory's peak (H100 SXM 3.35 TB/s, H200 4.8, A100 80 GB
2.04, A100 40 GB 1.56).
"""

from __future__ import annotations

from dataclasses import dataclass

from mm1.plan.layout import PlanError


@dataclass(frozen=True)
class GPU:
    """One accelerator model and the node it usually comes in."""

    name: str
    memory_gb: float  # device memory, GB (1e9 bytes)
    bf16_tflops: float  # dense BF16 peak, TFLOP/s
    nvlink_gbps: float  # collective bandwidth per GPU inside a node, GB/s
    network_gbps: float  # collective bandwidth per GPU between nodes, GB/s
    gpus_per_node: int = 8  # HGX/DGX nodes
    hbm_gbps: float = 2700  # device-memory bandwidth decoding achieves, GB/s (80% of the SXM part's peak)


GPUS: dict[str, GPU] = {
    g.name: g
    for g in (
        GPU("h100-80gb", memory_gb=80, bf16_tflops=989, nvlink_gbps=360, network_gbps=40, hbm_gbps=2680),
        GPU("h200-141gb", memory_gb=141, bf16_tflops=989, nvlink_gbps=360, network_gbps=40, hbm_gbps=3840),
        GPU("a100-80gb", memory_gb=80, bf16_tflops=312, nvlink_gbps=240, network_gbps=20, hbm_gbps=1630),
        GPU("a100-40gb", memory_gb=40, bf16_tflops=312, nvlink_gbps=240, network_gbps=20, hbm_gbps=1240),
    )
}


def find_gpu(name: str) -> GPU:
    """The catalogue entry called ``name``; an error listing the known names otherwise."""
    try:
        return GPUS[name]
    except KeyError:
        raise PlanError(f"unknown GPU {name!r}; known GPUs: {', '.join(GPUS)}") from None
