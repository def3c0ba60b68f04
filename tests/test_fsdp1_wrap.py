"""FSDP1's wrap cache and CPU-offload copies (planner/fsdp1_wrap.py): the construction steps of torch's
_init_utils.py / _flat_param.py replayed through the caching allocator, and what they add to the reserved
figure of a plan."""

from __future__ import annotations

from dataclasses import replace

import pytest

from swiftplan.planner.architecture import total_params
from swiftplan.planner.estimate import estimate_training
from swiftplan.planner.fsdp1_wrap import _broadcast_buckets, fsdp1_offload_copy_term, fsdp1_wrap_cache
from swiftplan.planner.hardware import parse_cluster
from swiftplan.planner.model_catalog import catalog_spec
from swiftplan.planner.setup import LoraSetup, Parallelism, RuntimeKnobs, TrainSetup

MiB = 2**20


@pytest.fixture(scope="module")
def llama7b():
    return catalog_spec("meta-llama/Llama-2-7b-hf")


def _setup(fsdp: str = "fsdp1", *, batch: int = 1, offload: bool = False, quant: str = "none") -> TrainSetup:
    knobs = RuntimeKnobs(name="torch", fsdp=fsdp, fsdp_cpu_offload=offload)  # type: ignore[arg-type]
    return TrainSetup(method="qlora" if quant != "none" else "lora", quant=quant, micro_batch=batch,  # type: ignore[arg-type]
                      seq_len=512, grad_ckpt=True, lora=LoraSetup(rank=64), runtime=knobs,
                      parallel=Parallelism())  # fmt: skip


def test_broadcast_buckets_group_tensors_up_to_250_mib_and_one_tensor_needs_no_buffer():
    assert _broadcast_buckets([100 * MiB, 100 * MiB, 100 * MiB, 10 * MiB]) == [300 * MiB, 0]
    assert _broadcast_buckets([250 * MiB, 1 * MiB, 250 * MiB]) == [0, 251 * MiB]


def test_wrap_keeps_the_shards_and_leaves_the_transients_cached(llama7b):
    wrap = fsdp1_wrap_cache(llama7b, _setup(), shards=2, weight_bytes=2, layers=range(llama7b.num_layers))
    half_model = total_params(llama7b) * 2 // 2
    assert half_model <= wrap.shards <= half_model * 1.01  # this rank's shards, rounded to blocks
    # at least the root's construction stays cached: its embedding and LM head (250 MiB each) and the
    # 500 MiB FlatParameter it was concatenated into
    assert wrap.cached >= 1000 * MiB


def test_cpu_offload_moves_every_shard_to_the_host(llama7b):
    wrap = fsdp1_wrap_cache(llama7b, _setup(offload=True), shards=2, weight_bytes=2, layers=range(32))
    assert wrap.shards == 0
    assert wrap.cached == wrap.reserved > 0


def test_reserved_cannot_fall_below_what_wrapping_reserved(llama7b):
    cluster = parse_cluster("2xRTX4090")
    fsdp1 = estimate_training(llama7b, _setup(), cluster).memory
    fsdp2 = estimate_training(llama7b, _setup("fsdp2"), cluster).memory
    assert fsdp1.peak_allocated == fsdp2.peak_allocated  # same tensors in the step
    wrap = fsdp1_wrap_cache(llama7b, _setup(), shards=2, weight_bytes=2, layers=range(32))
    assert fsdp1.peak_reserved > fsdp2.peak_reserved
    slack = next(t for t in fsdp1.terms if t.name == "allocator_slack")
    assert "FSDP1's wrap" in slack.formula and "_init_utils.py" in slack.source
    # the wrap's segments stay: everything but the step's gathered units (their own stream) fits in them
    assert fsdp1.peak_reserved >= wrap.reserved


def test_a_large_step_reuses_the_wrap_cache(llama7b):
    cluster = parse_cluster("2xA100-80GB")
    big = replace(_setup(batch=16), seq_len=4096)
    fsdp1 = estimate_training(llama7b, big, cluster).memory
    fsdp2 = estimate_training(
        llama7b, replace(big, runtime=replace(big.runtime, fsdp="fsdp2")), cluster
    ).memory
    assert fsdp1.peak_reserved == fsdp2.peak_reserved


def test_offload_copies_only_under_fsdp1_cpu_offload(llama7b):
    layers = range(32)
    assert fsdp1_offload_copy_term(llama7b, _setup(), shards=2, weight_bytes=2, layers=layers) is None
    term = fsdp1_offload_copy_term(llama7b, _setup(offload=True), shards=2, weight_bytes=2, layers=layers)
    assert term is not None
    # the root (embedding + LM head, 2 x 250 MiB, + norm) over 2 ranks, in a segment rounded to 2 MiB
    assert term.value_bytes == 252 * MiB
    memory = estimate_training(llama7b, _setup(offload=True), parse_cluster("2xRTX4090")).memory
    assert any(t.name == "fsdp1_offload_copies" for t in memory.terms)
