"""Training communication as it overlaps compute (planner/comm_speed.py): hidden when shorter than the compute
it is prefetched under, exposed when longer; FSDP full_shard moves ZeRO-3's traffic; hybrid_shard adds a
cross-group all-reduce of the gradient shards; the inter-node link is the cluster's stated network."""

from __future__ import annotations

from dataclasses import replace

import pytest

from swiftplan.errors import SwiftplanError
from swiftplan.planner.comm_speed import (
    CommPhase,
    TrainComm,
    exposed_comm_s,
    pipelined_exposed_s,
    ring_all_gather_s,
    ring_all_reduce_s,
    ring_link_bytes_per_s,
)
from swiftplan.planner.hardware import DEFAULT_INTER_NODE_BYTES_PER_S, parse_cluster
from swiftplan.planner.model_catalog import catalog_spec
from swiftplan.planner.setup import Parallelism, RuntimeKnobs, TrainSetup
from swiftplan.planner.speed import train_comm_of, train_speed

LLAMA_7B = "meta-llama/Llama-2-7b-hf"
FULL = TrainSetup(method="full", lora=None, micro_batch=2, seq_len=4096, grad_ckpt=False)


@pytest.fixture(scope="module")
def spec():
    return catalog_spec(LLAMA_7B)


def _fsdp(sharding: str, group: int = 0) -> TrainSetup:
    return replace(FULL, runtime=RuntimeKnobs(fsdp="fsdp1", fsdp_sharding=sharding, fsdp_shard_group=group))  # type: ignore[arg-type]


def _params(spec) -> int:
    from swiftplan.planner.architecture import total_params

    return total_params(spec)


def test_ring_formulas() -> None:
    # (n - 1) / n x bytes / link; all-reduce twice that (Patarasuk and Yuan 2009)
    assert ring_all_gather_s(8e9, 8, 100e9) == pytest.approx(7 / 8 * 0.08)
    assert ring_all_reduce_s(8e9, 8, 100e9) == pytest.approx(2 * 7 / 8 * 0.08)
    assert ring_all_gather_s(8e9, 1, 100e9) == 0.0


def test_comm_shorter_than_compute_leaves_only_the_first_unit() -> None:
    # 32 units, 3.2 s of gathers behind 10 s of compute: only the first unit's 0.1 s waits
    assert pipelined_exposed_s(3.2, 10.0, 32) == pytest.approx(0.1)


def test_comm_longer_than_compute_is_exposed_by_the_excess() -> None:
    # 3.2 s of gathers behind 1 s of compute: 0.1 + 31/32 x 2.2
    assert pipelined_exposed_s(3.2, 1.0, 32) == pytest.approx(0.1 + 31 / 32 * 2.2)
    # one unit cannot overlap anything
    assert pipelined_exposed_s(3.2, 10.0, 1) == pytest.approx(3.2)


def test_after_step_collectives_are_never_hidden() -> None:
    comm = TrainComm(
        phases=(CommPhase(name="gather after step", comm_s=0.5, compute_share=0.0, per_step=1, units=1),),
        tp_s=0.0,
    )
    assert exposed_comm_s(comm, 100.0) == pytest.approx(0.5)


def test_step_hides_zero3_gathers_behind_compute_on_fast_links(spec) -> None:
    setup = replace(FULL, parallel=Parallelism(zero=3))
    cluster = parse_cluster("8xa100-80gb-sxm")
    speed = train_speed(spec, setup, cluster, trainable_params=_params(spec))
    comm = train_comm_of(spec, setup, cluster, trainable_params=_params(spec))
    assert comm.total_s == pytest.approx(3 * 7 / 8 * _params(spec) * 2 / 300e9)  # 300 GB/s NVLink
    assert speed.breakdown_s["comm"] < 0.1 * comm.total_s  # compute of 16k tokens hides most of it
    # on a 100 Gb/s network across nodes the same traffic no longer hides
    slow = parse_cluster("2x8xa100-80gb-sxm@100gbps")
    slow_speed = train_speed(spec, setup, slow, trainable_params=_params(spec))
    slow_comm = train_comm_of(spec, setup, slow, trainable_params=_params(spec))
    assert slow_comm.total_s > slow_speed.breakdown_s["compute"]
    assert slow_speed.breakdown_s["comm"] > 0.5 * (slow_comm.total_s - slow_speed.breakdown_s["compute"])


def test_fsdp_full_shard_moves_zero3_traffic(spec) -> None:
    cluster = parse_cluster("2x8xa100-80gb-sxm@400gbps")
    zero3 = train_comm_of(
        spec, replace(FULL, parallel=Parallelism(zero=3)), cluster, trainable_params=_params(spec)
    )
    fsdp = train_comm_of(spec, _fsdp("full_shard"), cluster, trainable_params=_params(spec))
    assert fsdp.total_s == pytest.approx(zero3.total_s)
    assert [p.comm_s for p in fsdp.phases] == pytest.approx([p.comm_s for p in zero3.phases])
    # shard_grad_op gathers once per micro-step, not again for backward
    grad_op = train_comm_of(spec, _fsdp("shard_grad_op"), cluster, trainable_params=_params(spec))
    gather_s = fsdp.phases[0].comm_s
    assert grad_op.total_s == pytest.approx(fsdp.total_s - gather_s)


def test_hybrid_shard_all_reduces_gradient_shards_across_groups(spec) -> None:
    cluster = parse_cluster("16x8xa100-80gb-sxm@400gbps")
    params = _params(spec)
    hybrid = train_comm_of(spec, _fsdp("hybrid_shard", 8), cluster, trainable_params=params)
    # inside the node: gathers and reduce-scatter over NVLink; across the 16 groups: each of the 8 GPUs
    # all-reduces its 1/8 gradient shard, the 8 rings sharing the node's 50 GB/s
    grad_bytes = params * 2
    nvlink = cluster.accelerator.intra_node_bytes_per_s
    inside = 3 * ring_all_gather_s(grad_bytes, 8, nvlink)
    across = ring_all_reduce_s(grad_bytes / 8, 16, 50e9 / 8)
    assert hybrid.total_s == pytest.approx(inside + across, rel=0.02)
    assert across == pytest.approx(2 * 15 / 16 * grad_bytes / 50e9)
    # full_shard over all 128 ranks sends every gather and reduce-scatter through the node's network instead
    full = train_comm_of(spec, _fsdp("full_shard"), cluster, trainable_params=params)
    assert full.total_s == pytest.approx(3 * 127 / 128 * grad_bytes / 50e9)
    assert full.total_s > hybrid.total_s


def test_inter_node_link_is_the_clusters_network() -> None:
    stated = parse_cluster("2x8xh100-sxm@800gbps")
    assert stated.inter_node_bytes_per_s == pytest.approx(100e9)
    assert parse_cluster("2x8xh100-sxm").inter_node_bytes_per_s == DEFAULT_INTER_NODE_BYTES_PER_S
    # one ring over the nodes: the node's whole network; 8 concurrent rings share it
    assert ring_link_bytes_per_s(stated, spans_nodes=True, rings_per_node=1) == pytest.approx(100e9)
    assert ring_link_bytes_per_s(stated, spans_nodes=True, rings_per_node=8) == pytest.approx(12.5e9)
    assert (
        ring_link_bytes_per_s(stated, spans_nodes=False, rings_per_node=1)
        == stated.accelerator.intra_node_bytes_per_s
    )
    with pytest.raises(SwiftplanError, match="network speed"):
        parse_cluster("2x8xh100-sxm@fastgbps")


def test_faster_network_speeds_up_a_network_bound_step(spec) -> None:
    setup = replace(_fsdp("full_shard"), micro_batch=1, seq_len=2048)
    slow = train_speed(
        spec, setup, parse_cluster("4x8xa100-80gb-sxm@100gbps"), trainable_params=_params(spec)
    )
    fast = train_speed(
        spec, setup, parse_cluster("4x8xa100-80gb-sxm@1600gbps"), trainable_params=_params(spec)
    )
    assert slow.bound == "network"
    assert fast.tokens_per_s > 2 * slow.tokens_per_s
    assert fast.breakdown_s["comm"] < 0.05 * fast.breakdown_s["compute"]
