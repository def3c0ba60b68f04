"""NCCL and vLLM custom all-reduce buffers (planner/comm_buffers.py) and their line in the estimate."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest

from swiftplan.planner.comm_buffers import (
    Communicator,
    NcclParams,
    communicator_bytes,
    net_pair_bytes,
    nodes_spanned,
    p2p_pair_bytes,
    serve_comm_bytes,
    train_comm_term,
    train_communicators,
)
from swiftplan.planner.estimate import estimate_serving, estimate_training
from swiftplan.planner.hardware import parse_cluster
from swiftplan.planner.model_catalog import catalog_spec
from swiftplan.planner.setup import Parallelism, RuntimeKnobs, ServeSetup, TrainSetup

MiB = 2**20
PARAMS = NcclParams.from_calibration()


def test_p2p_pair_is_the_two_allocations_nccl_logs():
    """NVIDIA/nccl issue #1685 (8 x H100, NCCL_DEBUG_SUBSYS=ALLOC): one 10485760-byte and one
    2097152-byte allocation per P2P connection: LL + LL128 + Simple rounded up to 2 MiB, and the
    sender's control block rounded up to 2 MiB."""
    assert p2p_pair_bytes(PARAMS) == 10485760 + 2097152


def test_buffsize_changes_the_pair():
    """NCCL_BUFFSIZE=16 MiB (Simple) makes the receive side 512 KiB + 4.6875 MiB + 16 MiB -> 22 MiB."""
    assert p2p_pair_bytes(replace(PARAMS, simple_bytes=16 * MiB)) == 22 * MiB + 2 * MiB


def test_net_pair_keeps_ll_on_the_host_and_nothing_without_gpudirect():
    """net.cc: the NET sender keeps LL in host memory, LL128 + Simple on the device (8.6875 -> 10 MiB);
    the receiver all three (9.1875 -> 10 MiB); without GPUDirect RDMA everything is in host memory."""
    assert net_pair_bytes(PARAMS) == 20 * MiB
    assert net_pair_bytes(replace(PARAMS, gpudirect_rdma=False)) == 0


def test_one_device_holds_nothing():
    cluster = parse_cluster("h100-sxm")
    assert train_communicators(TrainSetup(), cluster, world_size=1) == ()
    assert train_comm_term(TrainSetup(), cluster, world_size=1) is None
    assert serve_comm_bytes(ServeSetup(tp=1), cluster) == 0


def test_single_node_ring_grows_with_channels():
    cluster = parse_cluster("8xa100-80gb-sxm")
    comm = Communicator(name="data parallel", ranks=8)
    base = communicator_bytes(comm, cluster, PARAMS)
    assert base == PARAMS.channels_nvlink * 12 * MiB
    more = communicator_bytes(comm, cluster, replace(PARAMS, channels_nvlink=PARAMS.channels_nvlink * 2))
    assert more == 2 * base


def test_pcie_node_has_fewer_channels_than_nvlink():
    ddp = Communicator(name="data parallel", ranks=2)
    nvlink = communicator_bytes(ddp, parse_cluster("2xa100-80gb-sxm"), PARAMS)
    pcie = communicator_bytes(ddp, parse_cluster("2xrtx4090"), PARAMS)
    assert pcie == PARAMS.channels_pcie * 12 * MiB < nvlink


def test_inter_node_adds_tree_pairs_and_net_buffers():
    """Across nodes: the inter-node channel prior, ring + tree pairs per channel, and one NET pair in
    every node's ring segment (20 MiB instead of 12)."""
    cluster = parse_cluster("2x8xh100-sxm")
    comm = Communicator(name="data parallel", ranks=16, nodes=2)
    per_pair = (7 * 12 * MiB + 20 * MiB) / 8
    expected = PARAMS.channels_inter_node * (1 + PARAMS.tree_pairs_per_channel) * per_pair
    assert communicator_bytes(comm, cluster, PARAMS) == int(expected)
    intra = Communicator(name="data parallel", ranks=8)
    no_tree = replace(PARAMS, tree_pairs_per_channel=0, channels_inter_node=PARAMS.channels_nvlink)
    assert communicator_bytes(comm, cluster, no_tree) > communicator_bytes(intra, cluster, PARAMS)


def test_communicators_follow_the_layout():
    cluster = parse_cluster("2x8xh100-sxm")
    setup = TrainSetup(parallel=Parallelism(tp=2, pp=2))
    comms = {c.name: c for c in train_communicators(setup, cluster, world_size=16)}
    assert comms["tensor parallel"] == Communicator(name="tensor parallel", ranks=2)
    assert comms["data parallel"] == Communicator(name="data parallel", ranks=4)  # stride 2: 8 GPUs, one node
    assert comms["pipeline"] == Communicator(name="pipeline", ranks=2, nodes=2, neighbours_only=True)


def test_hybrid_shard_splits_the_data_parallel_group():
    cluster = parse_cluster("2x8xh100-sxm")
    knobs = RuntimeKnobs(fsdp="fsdp2", fsdp_sharding="hybrid_shard", fsdp_shard_group=8)
    comms = train_communicators(TrainSetup(runtime=knobs), cluster, world_size=16)
    assert [(c.name, c.ranks, c.nodes) for c in comms] == [("FSDP shard", 8, 1), ("FSDP replicate", 2, 2)]


@pytest.mark.parametrize(
    ("ranks", "stride", "nodes"), [(8, 1, 1), (16, 1, 2), (4, 8, 4), (8, 2, 2), (2, 4, 1)]
)
def test_nodes_spanned(ranks: int, stride: int, nodes: int):
    assert nodes_spanned(ranks, stride, 8) == nodes


def test_estimate_adds_the_term_outside_the_allocator():
    spec = catalog_spec("Qwen/Qwen2.5-7B-Instruct")
    setup = TrainSetup(method="full", parallel=Parallelism(zero=3))
    one = estimate_training(spec, setup, parse_cluster("a100-80gb-sxm")).memory
    eight = estimate_training(spec, setup, parse_cluster("8xa100-80gb-sxm")).memory
    comm = next(t for t in eight.terms if t.name == "comm_buffers")
    assert comm.value_bytes == PARAMS.channels_nvlink * 12 * MiB
    assert eight.device_total - eight.peak_reserved == one.device_total - one.peak_reserved + comm.value_bytes
    assert not any(t.name == "comm_buffers" for t in one.terms)


def test_serving_tp_counts_nccl_and_vllm_custom_allreduce():
    """vLLM custom_all_reduce.py @ 00d618a: two 8 MiB IPC buffers and 8 MiB rank_data per device, on
    top of the TP group's NCCL ring; the bytes come off the KV budget too."""
    spec = catalog_spec("Qwen/Qwen2.5-7B-Instruct")
    cluster = parse_cluster("4xa100-80gb-sxm")
    assert serve_comm_bytes(ServeSetup(tp=4), cluster) == PARAMS.channels_nvlink * 12 * MiB + 24 * MiB
    assert serve_comm_bytes(ServeSetup(tp=3), cluster) == PARAMS.channels_nvlink * 12 * MiB  # no custom AR
    est = estimate_serving(spec, ServeSetup(tp=4), cluster)
    assert any(t.name == "comm_buffers" for t in est.memory.terms)


def test_estimate_json_shows_comm_buffers_for_eight_gpus():
    result = subprocess.run(
        [sys.executable, "-c", "from swiftplan.cli import main; main()", "estimate", "Qwen/Qwen2.5-7B-Instruct",
         "--method", "full", "--zero", "3", "--gpus", "8xa100-80gb-sxm", "--json"],
        capture_output=True, text=True, timeout=60,
        env={"SWIFTPLAN_OFFLINE": "1", "PATH": "/usr/bin:/bin", "COLUMNS": "120"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    terms = {t["name"]: t for t in json.loads(result.stdout)["terms"]}
    assert terms["comm_buffers"]["bytes"] == PARAMS.channels_nvlink * 12 * MiB
    assert "24 channels" in terms["comm_buffers"]["formula"]
    assert "comm_buffers" in terms["runtime_overhead"]["formula"]
