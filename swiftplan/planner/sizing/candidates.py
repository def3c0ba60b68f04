"""The clusters `size` considers, and a cheap test that rules out those that cannot hold the weights. Pure.

Each catalog accelerator comes as 1, 2, 4 or 8 GPUs in one node, and as 2 to `max_nodes` full nodes
of 8 (fewer GPUs than a node holds are always one node: the same GPUs over a network are never
faster). Apple silicon is one device per machine. GPUs inside a node talk over NVLink when the catalog
says every board has it, else over PCIe (consumer and workstation cards, whose NVLink bridges are
optional, are modelled as PCIe-only); nodes talk over the stated network.

The weight floor is the smallest the weights can be under any allowed method (NF4 for QLoRA, int8 or
16-bit for LoRA, 16-bit for full fine-tuning): every plan keeps at least that much across all devices
(tensor and pipeline parallelism and ZeRO-3 only split it), except that ZeRO-3 may park unquantized
weights in host RAM. A cluster whose memory cannot hold the floor is skipped without a search. Per
structure, the same floor on the most loaded device (the first pipeline stage's blocks and the embedding
and head, split by tensor parallelism, as `train_memory` counts them) rules out layouts whose weights
alone exceed one GPU, before any estimate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache

from swiftplan.planner.hardware import Accelerator, Cluster
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.search.candidate import Candidate
from swiftplan.planner.search.space_choices import TrainSpace
from swiftplan.planner.weights import layer_weight_bytes, outer_weight_bytes

GPUS_PER_NODE = (1, 2, 4, 8)
"""Single-node sizes considered."""
FULL_NODE = 8
"""GPUs per node in multi-node clusters."""
DEFAULT_MAX_NODES = 4
"""Most nodes considered unless told."""
DEFAULT_NETWORK_GBPS = 100.0
"""Network between nodes unless told: one 100 Gb/s NIC per node (as `hardware.DEFAULT_INTER_NODE_BYTES_PER_S`)."""


def node_sizes(accelerator: Accelerator, max_nodes: int) -> Iterator[tuple[int, int]]:
    """(GPUs per node, nodes) pairs to consider for one accelerator, smallest first."""
    if accelerator.unified_memory:
        yield 1, 1
        return
    for per_node in GPUS_PER_NODE:
        yield per_node, 1
    for nodes in range(2, max_nodes + 1):
        yield FULL_NODE, nodes


def candidate_clusters(
    accelerators: Iterable[Accelerator],
    *,
    max_nodes: int = DEFAULT_MAX_NODES,
    network_gbps: float = DEFAULT_NETWORK_GBPS,
    max_gpus: int | None = None,
) -> list[Cluster]:
    """Every cluster to plan, accelerator by accelerator, smallest first."""
    if max_nodes < 1:
        raise ValueError(f"max_nodes must be at least 1, got {max_nodes}")
    if network_gbps <= 0:
        raise ValueError(f"network_gbps must be positive, got {network_gbps}")
    out = []
    for accelerator in accelerators:
        for per_node, nodes in node_sizes(accelerator, max_nodes):
            if max_gpus is not None and per_node * nodes > max_gpus:
                continue
            out.append(
                Cluster(
                    accelerator=accelerator,
                    gpus_per_node=per_node,
                    nodes=nodes,
                    inter_node_bytes_per_s=network_gbps * 1e9 / 8,
                )
            )
    return out


@cache
def weight_bytes(spec: ModelSpec, quant: str) -> int:
    """Bytes of the whole model's weights in 16-bit, with the block linears in `quant` (none/int8/nf4)."""
    blocks = sum(
        layer_weight_bytes(
            spec,
            layer,
            dtype_bytes=2,
            quant=quant if quant != "nf4-dq" else "nf4",
            double_quant=True,
        )
        for layer in range(spec.num_layers)
    )
    return blocks + outer_weight_bytes(spec, dtype_bytes=2)


@dataclass(frozen=True, kw_only=True, slots=True)
class Shortfall:
    """How far a cluster is from holding the smallest weights any allowed plan keeps."""

    need_bytes: int
    """The weight floor of the least demanding method."""
    capacity_bytes: int
    """What the cluster offers for it: device memory within the headroom (plus host RAM for offloaded weights)."""
    method: str
    """The method with the smallest shortfall."""

    @property
    def short_bytes(self) -> int:
        """Bytes missing (positive: cannot fit)."""
        return self.need_bytes - self.capacity_bytes


def weight_shortfall(
    spec: ModelSpec, cluster: Cluster, space: TrainSpace, *, headroom: float, host_ram_bytes: int | None
) -> Shortfall:
    """The smallest gap between a method's weight floor and what the cluster can hold (see module docstring)."""
    device = int(cluster.memory_bytes_per_device * (1 - headroom)) * cluster.world_size
    params_offload = any(zero == 3 and offload == "optimizer+params" for zero, offload in space.shardings)
    host = host_ram_bytes * cluster.nodes if host_ram_bytes is not None else 1 << 62
    best: Shortfall | None = None
    for method in space.methods:
        for quant in space.quants[method]:
            capacity = device + (host if quant == "none" and params_offload else 0)
            gap = Shortfall(need_bytes=weight_bytes(spec, quant), capacity_bytes=capacity, method=method)
            if best is None or gap.short_bytes < best.short_bytes:
                best = gap
    assert best is not None  # build_train_space leaves at least one method
    return best


@cache
def _stage_weight_bytes(spec: ModelSpec, quant: str, tp: int, pp: int) -> int:
    layers = range(math.ceil(spec.num_layers / pp))
    blocks = sum(
        layer_weight_bytes(spec, layer, dtype_bytes=2, quant=quant, double_quant=True, tp=tp)
        for layer in layers
    )
    return blocks + outer_weight_bytes(spec, dtype_bytes=2, tp=tp)


def device_weight_floor_bytes(spec: ModelSpec, structure: Candidate) -> int:
    """A lower bound on the weights term of the most loaded device for any variant of the structure:
    16-bit weights with the block linears in its quantization (NF4 with double quantization, the
    smallest) of the first pipeline stage, embedding and head included, split by tp; under ZeRO-3 also
    sharded over the data-parallel ranks, and none when the parameters are offloaded."""
    layout = structure.layout
    quant = "nf4" if structure.quant.startswith("nf4") else structure.quant
    stage = _stage_weight_bytes(spec, quant, layout.tp, layout.pp)
    if structure.zero < 3:
        return stage
    return 0 if structure.offload == "optimizer+params" else stage // layout.dp
