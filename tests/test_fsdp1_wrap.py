"""FSDP1's wrap cache and CPU-offload copies (planner/fsdp1_wrap.py): the construction steps of torch's
_init_utils.py / _flat_param.py replayed through the caching allocator, and what they add to the reserved
figure of a plan."""

from __future__ import annotations

from dataclasses import replace

import pytest

from swiftplan.planner.architecture import layer_linears, total_params
from swiftplan.planner.estimate import estimate_training
from swiftplan.planner.fsdp1_wrap import (
    _broadcast_buckets,
    fsdp1_offload_copy_term,
    fsdp1_wrap_cache,
    fsdp1_wrap_events,
)
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


def test_the_replay_matches_torchs_own_fsdp1_constructor(monkeypatch):
    """torch's FullyShardedDataParallel wraps a small Llama (2 blocks and the root; 2-22 MiB tensors, so the
    mid and large pools are both used) as rank 0 of 2 on the fake process group, materializing each unit from
    the meta device and broadcasting it; every allocation and free it makes, logged by the tracer's dispatch
    mode and replayed through the allocator's rules, reserves what `fsdp1_wrap_cache` predicts."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import functools

    import torch.distributed.fsdp._init_utils as init_utils
    from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy
    from torch.distributed.fsdp._flat_param import FlatParamHandle
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    from swiftplan.executors.trace_fsdp import fake_process_group
    from swiftplan.executors.trace_memory import MemoryTracker
    from swiftplan.planner.caching_allocator import replay
    from swiftplan.planner.model_catalog import spec_from_hf_config

    config = {"model_type": "llama", "hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 2,
              "num_attention_heads": 8, "num_key_value_heads": 8, "vocab_size": 8192, "tie_word_embeddings": False}  # fmt: skip
    tracker = MemoryTracker(round_bytes=1)
    # the boundary this CPU run cannot cross: sync_module_states insists on GPU tensors (a device check only)
    monkeypatch.setattr(init_utils, "_check_module_states_for_sync_module_states", lambda states: None)
    original_shard = FlatParamHandle.shard

    def shard(self):  # type: ignore[no-untyped-def]
        key = id(self.flat_param.untyped_storage())
        original_shard(self)
        tracker._free(key, None)  # resize_(0) frees the flat block on CUDA; a dispatch mode does not see it

    monkeypatch.setattr(FlatParamHandle, "shard", shard)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config)).to(torch.bfloat16)
    cpu = torch.device("cpu")
    with fake_process_group(2), tracker:
        FullyShardedDataParallel(
            model, sharding_strategy=ShardingStrategy.FULL_SHARD, use_orig_params=False, device_id=cpu,
            auto_wrap_policy=functools.partial(transformer_auto_wrap_policy, transformer_layer_cls={LlamaDecoderLayer}),
            sync_module_states=True, param_init_fn=lambda m: m.to_empty(device=cpu, recurse=False),
        )  # fmt: skip
    real = replay(tracker.events)
    spec = spec_from_hf_config(config, name="small-llama")
    full = TrainSetup(method="full", runtime=RuntimeKnobs(fsdp="fsdp1"))
    # the same requests in the same order: each unit's parameters, broadcast buffer, flat parameter, shard
    ours = [n for _, n in fsdp1_wrap_events(spec, full, shards=2, weight_bytes=2, layers=range(2)) if n > MiB]
    theirs = [n for _, n in tracker.events if n > MiB]
    assert len(ours) == len(theirs) == 2 * (7 + 3) + 5  # blocks: 7 matrices, buffer, flat, shard; the root 5
    assert all(abs(a - b) <= 64 * 1024 for a, b in zip(ours, theirs, strict=True))  # norms and buffers apart
    model_figure = fsdp1_wrap_cache(spec, full, shards=2, weight_bytes=2, layers=range(2))
    assert real.peak_reserved == model_figure.reserved
    assert (
        abs(tracker.live_bytes - model_figure.shards) <= 2 * MiB
    )  # the shards kept (small-pool rounding apart)


def test_bitsandbytes_constants_stay_whole_on_every_rank(llama7b):
    """FSDP shards a 4-bit base's packed data but not its quant state (absmax, nested constants), which
    bitsandbytes keeps on the module: they are on every rank whole, with or without CPU offload."""
    from swiftplan.planner.weights import bnb_quant_state_bytes

    constants = bnb_quant_state_bytes(llama7b, range(32), quant="nf4", double_quant=True)
    blocks = sum(lin.in_features * lin.out_features for i in range(32) for lin in layer_linears(llama7b, i))
    # double quantization: 1 B per 64 weights plus one fp32 per 256 blocks
    assert constants == pytest.approx(blocks / 64 + 4 * blocks / 64 / 256, rel=0.001)
    cluster = parse_cluster("2xRTX4090")
    one = estimate_training(llama7b, _setup(quant="nf4"), parse_cluster("RTX4090")).memory
    two = estimate_training(llama7b, _setup(quant="nf4"), cluster).memory
    assert two.weights == (one.weights - constants) // 2 + constants
    offloaded = estimate_training(llama7b, _setup(quant="nf4", offload=True), cluster).memory
    assert offloaded.weights == constants
    weights = next(t for t in two.terms if t.name == "weights")
    assert (
        "whole on every rank" in weights.formula
        and "fix_4bit_weight_quant_state_from_module" in weights.source
    )
