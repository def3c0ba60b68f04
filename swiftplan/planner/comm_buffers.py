"""Communication buffers a multi-GPU run holds outside PyTorch's allocator: NCCL's per-connection
buffers, and vLLM's custom all-reduce buffers when serving with tensor parallelism. Pure.

NCCL (NVIDIA/nccl @ 5067397c2676d5aed50042fc39e5c8ee96eb0027) gives every connection between two ranks
of a communicator, on every channel, one buffer per protocol: LL (512 KiB), LL128 (4.6875 MiB) and
Simple (NCCL_BUFFSIZE, 4 MiB) — src/init.cc `DEFAULT_LL_BUFFSIZE`, `DEFAULT_LL128_BUFFSIZE`,
`DEFAULT_BUFFSIZE`, `computeBuffSizes`; src/include/device.h `NCCL_STEPS`, `NCCL_LL_*`, `NCCL_LL128_*`.
Where they live depends on the transport:

- **P2P** (NVLink or PCIe inside a node), src/transport/p2p.cc `p2pRecvSetup`/`p2pSendSetup`: the
  receiver holds the three buffers (with P2P read, the sender holds Simple instead), each side's block
  rounded up to CUDA_IPC_MIN = 2 MiB (src/include/comm.h): 10 MiB received + 2 MiB sent = 12 MiB per
  send/receive pair. NVIDIA/nccl issue #1685 (8 x H100, NCCL_DEBUG_SUBSYS=ALLOC) shows exactly these
  two allocation sizes, 10485760 and 2097152 bytes, per connection.
- **NET** (between nodes) with GPUDirect RDMA, src/transport/net.cc `sendProxyConnect`/`recvProxyConnect`:
  the sender keeps LL128 + Simple in device memory (LL in host memory), the receiver all three; without
  GPUDirect RDMA both stay in host memory.

A ring gives each rank one send and one receive peer per channel; a tree (used for all-reduce across
nodes) a chain inside the node, one peer up and one down, each both ways. Since NCCL 2.22 an
algorithm's connections are made at its first collective (`NCCL_RUNTIME_CONNECT=1`, src/init.cc; the
`algoNeedConnect` rule in src/enqueue.cc). The number of channels comes from NCCL's topology search;
the planner takes it, and the connections per tree channel, as calibration priors
(profiles/calibration.json `runtime_overhead`, with the logs they come from).

Not counted: NVLink SHARP (NVLS) buffers on NVSwitch systems that support multicast, CollNet, and the
extra channels of all-to-all / send-receive traffic (MoE expert parallelism), which can be several
GiB (NVIDIA/nccl #1685: 1.06 -> 4.34 GB after one all_to_all_single on 8 x H100).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from swiftplan.planner.breakdown import Term
from swiftplan.planner.calibration import constant, constant_source
from swiftplan.planner.hardware import Cluster
from swiftplan.planner.runtime_terms import shard_degree
from swiftplan.planner.setup import ServeSetup, TrainSetup

KiB = 2**10
MiB = 2**20

NCCL_STEPS = 8
"""src/include/device.h NCCL_STEPS: slots per connection buffer."""
LL_BUFFER_BYTES = 8 * 512 * NCCL_STEPS * 16
"""DEFAULT_LL_BUFFSIZE = NCCL_LL_LINES_PER_THREAD (8) x NCCL_LL_MAX_NTHREADS (512) x NCCL_STEPS x
sizeof(ncclLLFifoLine) (16) = 512 KiB (src/init.cc, src/include/device.h)."""
LL128_BUFFER_BYTES = 120 * 640 * NCCL_STEPS * 8
"""DEFAULT_LL128_BUFFSIZE = NCCL_LL128_ELEMS_PER_THREAD (120) x NCCL_LL128_MAX_NTHREADS (640) x
NCCL_STEPS x sizeof(uint64_t) = 4.6875 MiB."""
SIMPLE_BUFFER_BYTES = 4 * MiB
"""DEFAULT_BUFFSIZE (1 << 22): NCCL_BUFFSIZE's default, the Simple protocol's buffer."""
CUDA_IPC_MIN_BYTES = 2 * MiB
"""src/include/comm.h CUDA_IPC_MIN: P2P and NET device buffers are rounded up to it (ALIGN_SIZE)."""
CONTROL_BYTES = 64 * KiB
"""Upper bound on sizeof(ncclSendMem) / sizeof(ncclRecvMem) (head, tail and FIFO words, a few KiB);
it only matters through the 2 MiB rounding, which it never crosses."""

VLLM_CUSTOM_AR_MAX_BYTES = 8192 * 1024
"""vLLM CustomAllreduce `max_size` default (8 MiB): its IPC buffer, and the temporary part of its metadata
buffer (`meta_size() + max_size`); vllm-project/vllm @ 00d618aab60448acdf3fac3e9c4e2e22d0c6c753
vllm/distributed/device_communicators/custom_all_reduce.py `_complete_init`."""
VLLM_CUSTOM_AR_RANK_DATA_BYTES = 8 * 1024 * 1024
"""The same function's `rank_data` (8 MiB of registered pointer tuples)."""
VLLM_CUSTOM_AR_WORLD_SIZES = (2, 4, 6, 8)
"""CustomAllreduce._SUPPORTED_WORLD_SIZES; it is also off across nodes and on more than two PCIe-only GPUs."""


def _round_up(nbytes: int, multiple: int) -> int:
    return -(-nbytes // multiple) * multiple


@dataclass(frozen=True, kw_only=True, slots=True)
class NcclParams:
    """NCCL's buffer sizes (its defaults, or NCCL_*BUFFSIZE) and the channel priors."""

    simple_bytes: int = SIMPLE_BUFFER_BYTES
    """NCCL_BUFFSIZE."""
    ll_bytes: int = LL_BUFFER_BYTES
    """NCCL_LL_BUFFSIZE."""
    ll128_bytes: int = LL128_BUFFER_BYTES
    """NCCL_LL128_BUFFSIZE."""
    channels_nvlink: int
    """Collective channels of a communicator inside one NVLink node."""
    channels_pcie: int
    """Collective channels of a communicator inside one PCIe-only node."""
    channels_inter_node: int
    """Collective channels of a communicator spanning nodes."""
    tree_pairs_per_channel: int
    """Send/receive pairs a rank adds per channel when the tree algorithm is connected (across nodes)."""
    gpudirect_rdma: bool = True
    """NET buffers in device memory (GPUDirect RDMA, as on InfiniBand clusters) rather than host memory."""

    def __post_init__(self) -> None:
        for name in ("simple_bytes", "ll_bytes", "ll128_bytes", "channels_nvlink", "channels_pcie",
                     "channels_inter_node"):  # fmt: skip
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.tree_pairs_per_channel < 0:
            raise ValueError("tree_pairs_per_channel cannot be negative")

    @classmethod
    def from_calibration(cls) -> NcclParams:
        """NCCL's default buffer sizes and the priors in profiles/calibration.json."""
        return cls(
            channels_nvlink=int(constant("runtime_overhead", "nccl_channels_nvlink")),
            channels_pcie=int(constant("runtime_overhead", "nccl_channels_pcie")),
            channels_inter_node=int(constant("runtime_overhead", "nccl_channels_inter_node")),
            tree_pairs_per_channel=int(constant("runtime_overhead", "nccl_tree_pairs_per_channel")),
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Communicator:
    """One NCCL communicator (process group) a device belongs to."""

    name: str
    """What the group is for: 'data parallel', 'tensor parallel', 'pipeline', 'FSDP shard'…"""
    ranks: int
    """Ranks in the communicator."""
    nodes: int = 1
    """Nodes its ranks span."""
    neighbours_only: bool = False
    """Point-to-point with the previous and next rank only (pipeline stages), no collectives."""

    def __post_init__(self) -> None:
        if self.ranks < 1 or not 1 <= self.nodes <= self.ranks:
            raise ValueError(
                f"a communicator needs 1 <= nodes <= ranks, got {self.nodes} nodes, {self.ranks} ranks"
            )

    @property
    def ranks_per_node(self) -> int:
        """Its ranks on one node."""
        return -(-self.ranks // self.nodes)


def p2p_pair_bytes(params: NcclParams) -> int:
    """Device bytes of one send + one receive P2P connection on a rank: the receive side's LL, LL128 and
    Simple buffers and the send side's control block, each rounded up to 2 MiB (12 MiB at the defaults).
    With P2P read the sender holds Simple instead; at the defaults the sum is the same 12 MiB."""
    received = _round_up(
        CONTROL_BYTES + params.ll_bytes + params.ll128_bytes + params.simple_bytes, CUDA_IPC_MIN_BYTES
    )
    return received + _round_up(CONTROL_BYTES, CUDA_IPC_MIN_BYTES)


def net_pair_bytes(params: NcclParams) -> int:
    """Device bytes of one send + one receive NET connection on a rank: with GPUDirect RDMA the sender's
    LL128 and Simple buffers and the receiver's three, each side rounded up to 2 MiB (20 MiB at the
    defaults); 0 without it (host memory)."""
    if not params.gpudirect_rdma:
        return 0
    sent = _round_up(params.ll128_bytes + params.simple_bytes, CUDA_IPC_MIN_BYTES)
    received = _round_up(params.ll_bytes + params.ll128_bytes + params.simple_bytes, CUDA_IPC_MIN_BYTES)
    return sent + received


def pair_bytes(comm: Communicator, params: NcclParams) -> float:
    """Device bytes of one connection pair, averaged over a ring's ranks: inside one node every pair is
    P2P; across nodes each channel's ring enters and leaves every node once, so one pair in
    `ranks_per_node` is NET and the rest P2P."""
    if comm.nodes == 1:
        return p2p_pair_bytes(params)
    local = comm.ranks_per_node
    return ((local - 1) * p2p_pair_bytes(params) + net_pair_bytes(params)) / local


def channels(comm: Communicator, cluster: Cluster, params: NcclParams) -> int:
    """Collective channels of the communicator (priors by link class)."""
    if comm.nodes > 1:
        return params.channels_inter_node
    return params.channels_nvlink if cluster.accelerator.nvlink_bytes_per_s else params.channels_pcie


def pairs_per_channel(comm: Communicator, params: NcclParams) -> int:
    """Send/receive pairs a rank holds per channel: a ring's one, plus the tree's across nodes; a pipeline
    stage's previous and next stage (one at either end when there are only two)."""
    if comm.neighbours_only:
        return min(2, comm.ranks - 1)
    return 1 + (params.tree_pairs_per_channel if comm.nodes > 1 else 0)


def communicator_bytes(comm: Communicator, cluster: Cluster, params: NcclParams) -> int:
    """NCCL buffer bytes one communicator holds on a device (0 for a one-rank group)."""
    if comm.ranks <= 1:
        return 0
    return int(channels(comm, cluster, params) * pairs_per_channel(comm, params) * pair_bytes(comm, params))


def nodes_spanned(ranks: int, stride: int, gpus_per_node: int) -> int:
    """Nodes a group of `ranks` ranks `stride` apart spans, ranks numbered node by node."""
    if ranks <= 1:
        return 1
    if stride >= gpus_per_node:
        return ranks
    return min(ranks, math.ceil(ranks * stride / gpus_per_node))


def train_communicators(setup: TrainSetup, cluster: Cluster, *, world_size: int) -> tuple[Communicator, ...]:
    """The communicators of a training layout with more than one rank, in Megatron's rank order
    (tensor-parallel ranks adjacent, then data-parallel, then pipeline stages): the tensor-parallel group,
    the data-parallel group (DDP, DeepSpeed ZeRO, FSDP) or, under FSDP hybrid_shard, its shard and
    replicate groups, and the pipeline group (send/receive between neighbouring stages)."""
    tp, pp = setup.parallel.tp, setup.parallel.pp
    dp = max(1, world_size // (tp * pp))
    g = min(cluster.gpus_per_node, world_size)
    shard = shard_degree(setup, dp)
    groups = [("tensor parallel", tp, 1, False)]
    if shard < dp:
        groups += [("FSDP shard", shard, tp, False), ("FSDP replicate", dp // shard, tp * shard, False)]
    else:
        groups.append(("data parallel", dp, tp, False))
    groups.append(("pipeline", pp, tp * dp, True))
    return tuple(
        Communicator(name=name, ranks=n, nodes=nodes_spanned(n, stride, g), neighbours_only=p2p)
        for name, n, stride, p2p in groups
        if n > 1
    )


def serve_communicators(setup: ServeSetup, cluster: Cluster) -> tuple[Communicator, ...]:
    """A tensor-parallel replica's one NCCL communicator (vLLM's PyNcclCommunicator for the TP group)."""
    if setup.tp <= 1:
        return ()
    return (
        Communicator(
            name="tensor parallel", ranks=setup.tp, nodes=nodes_spanned(setup.tp, 1, cluster.gpus_per_node)
        ),
    )


def vllm_custom_allreduce_bytes(setup: ServeSetup, cluster: Cluster) -> int:
    """vLLM's custom all-reduce on one device: two `max_size` IPC buffers (the metadata buffer's signal
    words are small) and `rank_data`; only for 2, 4, 6 or 8 ranks on one node that are all NVLink-connected
    or are two (custom_all_reduce.py `__init__`)."""
    if setup.tp not in VLLM_CUSTOM_AR_WORLD_SIZES or setup.tp > cluster.gpus_per_node:
        return 0
    if setup.tp > 2 and not cluster.accelerator.nvlink_bytes_per_s:
        return 0
    return 2 * VLLM_CUSTOM_AR_MAX_BYTES + VLLM_CUSTOM_AR_RANK_DATA_BYTES


def _comm_formula(comms: tuple[Communicator, ...], cluster: Cluster, params: NcclParams) -> str:
    parts = []
    for comm in comms:
        where = f"{comm.nodes} nodes" if comm.nodes > 1 else "1 node"
        parts.append(
            f"{comm.name} ({comm.ranks} ranks, {where}): {channels(comm, cluster, params)} channels × "
            f"{pairs_per_channel(comm, params)} send/recv pairs × {pair_bytes(comm, params) / MiB:.1f} MiB"
        )
    return "NCCL " + "; ".join(parts)


def _nccl_source() -> str:
    return (
        "NVIDIA/nccl @ 5067397 src/init.cc (LL 512 KiB, LL128 4.6875 MiB, Simple 4 MiB per connection), "
        "src/transport/p2p.cc and net.cc (where each side keeps them, 2 MiB rounding); channels: "
        + constant_source("runtime_overhead", "nccl_channels_nvlink")
    )


def train_comm_term(
    setup: TrainSetup, cluster: Cluster, *, world_size: int, params: NcclParams | None = None
) -> Term | None:
    """The `comm_buffers` line of a training breakdown (None on one device or off CUDA)."""
    if cluster.accelerator.backend != "cuda":
        return None
    params = params or NcclParams.from_calibration()
    comms = train_communicators(setup, cluster, world_size=world_size)
    total = sum(communicator_bytes(c, cluster, params) for c in comms)
    if not total:
        return None
    return Term(
        name="comm_buffers",
        value_bytes=total,
        formula=_comm_formula(comms, cluster, params),
        source=_nccl_source(),
    )


def serve_comm_bytes(setup: ServeSetup, cluster: Cluster, params: NcclParams | None = None) -> int:
    """NCCL and vLLM custom all-reduce bytes on one serving device (0 for tp 1 or off CUDA)."""
    if cluster.accelerator.backend != "cuda":
        return 0
    params = params or NcclParams.from_calibration()
    nccl = sum(communicator_bytes(c, cluster, params) for c in serve_communicators(setup, cluster))
    return nccl + vllm_custom_allreduce_bytes(setup, cluster)


def serve_comm_term(setup: ServeSetup, cluster: Cluster, params: NcclParams | None = None) -> Term | None:
    """The `comm_buffers` line of a serving breakdown (None for tp 1 or off CUDA)."""
    total = serve_comm_bytes(setup, cluster, params)
    if not total:
        return None
    params = params or NcclParams.from_calibration()
    custom = vllm_custom_allreduce_bytes(setup, cluster)
    formula = _comm_formula(serve_communicators(setup, cluster), cluster, params)
    if custom:
        formula += (
            f" + vLLM custom all-reduce {custom / MiB:.0f} MiB (2 × 8 MiB IPC buffers + 8 MiB rank data)"
        )
    return Term(
        name="comm_buffers",
        value_bytes=total,
        formula=formula,
        source=_nccl_source()
        + "; vllm-project/vllm @ 00d618a vllm/distributed/device_communicators/custom_all_reduce.py",
    )
