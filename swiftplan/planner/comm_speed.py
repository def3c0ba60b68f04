"""Training communication as it overlaps compute: the collectives a data-parallel layout runs per
optimizer step, how long each takes on the ring it uses, and the part of it the step waits for.

Layouts (one `CommPhase` per group of collectives that share a hiding place):

- DDP (ZeRO 0): one gradient all-reduce per step, in buckets during the last micro-step's backward
  (DDP's no_sync skips the others; Li et al. 2020, "PyTorch Distributed", §3.2.3-3.2.4).
- DeepSpeed ZeRO-1/2: a gradient reduce-scatter during backward (ZeRO-1 at the accumulation boundary,
  ZeRO-2 in every micro-step's backward hooks), then an all-gather of the updated parameter partitions after
  the optimizer step, which nothing hides (deepspeed/runtime/zero/stage_1_and_2.py @ v0.14: `reduce_ipg_grads`
  from the backward hooks when `partition_gradients`, `all_gather_dp_groups` after `step`).
- ZeRO-3 and FSDP full_shard: every micro-step all-gathers each unit's parameters for forward and again for
  backward and reduce-scatters its gradients in backward (Rajbhandari et al. 2020, §7.2.2; torch.distributed.fsdp
  ShardingStrategy.FULL_SHARD). The next unit's gather is prefetched while the current unit computes
  (FSDP forward_prefetch/BackwardPrefetch.BACKWARD_PRE, FSDP2 fully_shard's implicit prefetch of one unit:
  torch/distributed/fsdp/_fully_shard/_fully_shard.py @ v2.5; DeepSpeed stage3_prefetch_bucket_size).
- FSDP shard_grad_op: gathered once for forward and kept through backward (ShardingStrategy.SHARD_GRAD_OP),
  gradients reduce-scattered in backward.
- FSDP hybrid_shard: full_shard inside a shard group, then an all-reduce of each rank's gradient shard across
  the groups (ShardingStrategy.HYBRID_SHARD), in the same backward.

A phase pipelined over L units (decoder blocks) with prefetch depth one hides behind the compute it
overlaps except the first unit's collective (or the last unit's reduction) and any excess of
communication over compute: with per-unit collective g = C / L and compute c = T / L the phase takes
g + (L − 1)·max(g, c) + c, so it adds `C / L + (L − 1) / L · max(0, C − T)` to the compute T.

Ring collectives (Patarasuk and Yuan 2009; nccl-tests doc/PERFORMANCE.md @ v2.13 "bus bandwidth"):
all-gather and reduce-scatter move (n − 1) / n × bytes over the slowest link, all-reduce twice that.
A ring across nodes crosses each node boundary once per channel and NCCL spreads its channels over the
node's NICs, so the whole buffer passes through the node's network once: the inter-node link of a ring is
the node's network bandwidth, shared only between the distinct rings that leave the node at the same time
(tensor-parallel ranks' data-parallel groups, hybrid_shard's replica groups: one per GPU of a shard group).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from swiftplan.planner.adapters import adapter_params
from swiftplan.planner.dtypes import adapter_dtype, dtype_bytes
from swiftplan.planner.weights import layer_weight_bytes, outer_weight_bytes

if TYPE_CHECKING:
    from swiftplan.planner.hardware import Cluster
    from swiftplan.planner.model_spec import ModelSpec
    from swiftplan.planner.setup import TrainSetup

HALF_BYTES = 2
"""bf16/fp16 parameters and gradients as ZeRO and FSDP mixed precision communicate them (ZeRO, Rajbhandari
et al. 2020, §3.1; FSDP MixedPrecision(param_dtype=bf16) gathers bf16). A reduce in fp32 (FSDP2
MixedPrecisionPolicy(reduce_dtype=float32), torchtitan's default) is not expressed: its traffic is counted at
the compute dtype."""


@dataclass(frozen=True, kw_only=True, slots=True)
class CommPhase:
    """Collectives issued together and hidden behind the same compute."""

    name: str
    """What the collectives are, e.g. 'forward all-gather'."""
    comm_s: float
    """Seconds of collectives per occurrence on their ring."""
    compute_share: float
    """Share of one micro-step's matmul time they overlap (0: after the step, nothing hides them)."""
    per_step: int
    """Occurrences per optimizer step: the micro-steps for per-micro-step collectives, else 1."""
    units: int
    """Units (decoder blocks) the phase is pipelined over: the first gather or last reduce stays exposed."""


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainComm:
    """A training step's data-parallel collectives and its tensor-parallel all-reduce time."""

    phases: tuple[CommPhase, ...]
    """Data-parallel collectives, each with the compute that can hide it."""
    tp_s: float
    """Tensor-parallel all-reduce seconds per step counted as exposed (speed.TP_EXPOSED_FRACTION applied)."""

    @property
    def total_s(self) -> float:
        """All data-parallel collective seconds per step, hidden or not."""
        return sum(p.comm_s * p.per_step for p in self.phases)


def ring_all_gather_s(num_bytes: float, ranks: int, link_bytes_per_s: float) -> float:
    """Ring all-gather of a `num_bytes` buffer: (n − 1) / n × bytes / link (Patarasuk and Yuan 2009)."""
    return (ranks - 1) / ranks * num_bytes / link_bytes_per_s if ranks > 1 else 0.0


def ring_reduce_scatter_s(num_bytes: float, ranks: int, link_bytes_per_s: float) -> float:
    """Ring reduce-scatter of a `num_bytes` buffer: (n − 1) / n × bytes / link, an all-gather's traffic."""
    return ring_all_gather_s(num_bytes, ranks, link_bytes_per_s)


def ring_all_reduce_s(num_bytes: float, ranks: int, link_bytes_per_s: float) -> float:
    """Ring all-reduce: a reduce-scatter then an all-gather, 2 (n − 1) / n × bytes / link."""
    return 2 * ring_all_gather_s(num_bytes, ranks, link_bytes_per_s)


def ring_link_bytes_per_s(cluster: Cluster, *, spans_nodes: bool, rings_per_node: int) -> float:
    """Bandwidth of a ring: intra-node inside one node; across nodes the smaller of the intra-node link and
    the node's network shared by the `rings_per_node` distinct rings leaving the node together."""
    intra = cluster.accelerator.intra_node_bytes_per_s
    if not spans_nodes or cluster.nodes == 1:
        return intra
    return min(intra, cluster.inter_node_bytes_per_s / max(1, rings_per_node))


def pipelined_exposed_s(comm_s: float, compute_s: float, units: int) -> float:
    """Seconds a pipelined collective adds to the compute it overlaps: C / L + (L − 1) / L · max(0, C − T)
    (first unit's gather or last unit's reduce, then the excess; prefetch depth one)."""
    if comm_s <= 0:
        return 0.0
    units = max(1, units)
    return comm_s / units + (units - 1) / units * max(0.0, comm_s - compute_s)


def exposed_comm_s(comm: TrainComm, micro_compute_s: float) -> float:
    """Communication seconds per step the step waits for, given one micro-step's matmul time."""
    return comm.tp_s + sum(
        p.per_step * pipelined_exposed_s(p.comm_s, p.compute_share * micro_compute_s, p.units)
        for p in comm.phases
    )


def gathered_weight_bytes(spec: ModelSpec, setup: TrainSetup) -> float:
    """Bytes one all-gather of the whole model brings to a rank: the weights as stored (quantized linears at
    their packed size, the rest in 16 bits) plus any adapters, split over tensor and pipeline ranks."""
    par = setup.parallel
    base = sum(
        layer_weight_bytes(
            spec, layer, dtype_bytes=HALF_BYTES, quant=setup.quant, double_quant=setup.double_quant, tp=par.tp
        )
        for layer in range(spec.num_layers)
    ) + outer_weight_bytes(spec, dtype_bytes=HALF_BYTES, tp=par.tp)
    adapters = adapter_params(spec, setup.lora) * dtype_bytes(adapter_dtype(setup)) if setup.lora else 0
    return (base + adapters / par.tp) / par.pp


def _phases_sharded(
    setup: TrainSetup,
    cluster: Cluster,
    *,
    param_bytes: float,
    grad_bytes: float,
    dp: int,
    forward_share: float,
    units: int,
) -> tuple[CommPhase, ...]:
    """ZeRO-3 and FSDP full_shard / shard_grad_op / hybrid_shard, per micro-step."""
    knobs, tp, accum = setup.runtime, setup.parallel.tp, setup.grad_accum
    hybrid = (
        knobs.fsdp != "none" and knobs.fsdp_sharding == "hybrid_shard" and 0 < knobs.fsdp_shard_group < dp
    )
    group = knobs.fsdp_shard_group if hybrid else dp
    shard_link = ring_link_bytes_per_s(
        cluster, spans_nodes=group * tp > cluster.gpus_per_node, rings_per_node=min(cluster.gpus_per_node, tp)
    )
    gather_s = ring_all_gather_s(param_bytes, group, shard_link)
    backward_s = ring_reduce_scatter_s(grad_bytes, group, shard_link)
    if knobs.fsdp == "none" or knobs.fsdp_sharding != "shard_grad_op":
        backward_s += gather_s  # resharded after forward: gathered again for backward
    if hybrid:
        replica_link = ring_link_bytes_per_s(
            cluster, spans_nodes=True, rings_per_node=min(cluster.gpus_per_node, group * tp)
        )
        backward_s += ring_all_reduce_s(grad_bytes / group, dp // group, replica_link)
    return (
        CommPhase(
            name="forward all-gather",
            comm_s=gather_s,
            compute_share=forward_share,
            per_step=accum,
            units=units,
        ),
        CommPhase(
            name="backward all-gather, reduce-scatter" + (", cross-group all-reduce" if hybrid else ""),
            comm_s=backward_s,
            compute_share=1 - forward_share,
            per_step=accum,
            units=units,
        ),
    )


def train_comm(
    spec: ModelSpec,
    setup: TrainSetup,
    cluster: Cluster,
    *,
    grad_bytes: float,
    dp: int,
    forward_share: float,
    tp_s: float,
) -> TrainComm:
    """The data-parallel collectives of `setup` on `cluster` (module docstring), `grad_bytes` the gradient
    bytes of one tensor/pipeline rank, `forward_share` the forward's share of a micro-step's matmul time."""
    par = setup.parallel
    stage = setup.runtime.fsdp_stage if setup.runtime.fsdp != "none" else par.zero
    units = max(1, spec.num_layers // par.pp)
    if dp <= 1:
        return TrainComm(phases=(), tp_s=tp_s)
    if stage == 3 or setup.runtime.fsdp != "none":
        phases = _phases_sharded(
            setup,
            cluster,
            param_bytes=gathered_weight_bytes(spec, setup),
            grad_bytes=grad_bytes,
            dp=dp,
            forward_share=forward_share,
            units=units,
        )
        return TrainComm(phases=phases, tp_s=tp_s)
    link = ring_link_bytes_per_s(
        cluster,
        spans_nodes=dp * par.tp > cluster.gpus_per_node,
        rings_per_node=min(cluster.gpus_per_node, par.tp),
    )
    backward_share = 1 - forward_share
    if stage == 0:
        reduce = CommPhase(
            name="gradient all-reduce",
            comm_s=ring_all_reduce_s(grad_bytes, dp, link),
            compute_share=backward_share,
            per_step=1,
            units=units,
        )
        return TrainComm(phases=(reduce,), tp_s=tp_s)
    reduce = CommPhase(
        name="gradient reduce-scatter",
        comm_s=ring_reduce_scatter_s(grad_bytes, dp, link),
        compute_share=backward_share,
        per_step=setup.grad_accum if stage == 2 else 1,
        units=units,
    )
    gather = CommPhase(
        name="updated-parameter all-gather",
        comm_s=ring_all_gather_s(grad_bytes, dp, link),
        compute_share=0.0,
        per_step=1,
        units=1,
    )
    return TrainComm(phases=(reduce, gather), tp_s=tp_s)
