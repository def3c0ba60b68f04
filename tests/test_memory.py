"""Properties and hand-checked values of the memory terms."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swiftplan.planner.architecture import Linear, total_params
from swiftplan.planner.dtypes import dtype_bytes
from swiftplan.planner.model_catalog import catalog_spec
from swiftplan.planner.runtime_terms import reduce_bucket_bytes
from swiftplan.planner.serve_memory import kv_cache_bytes_per_token
from swiftplan.planner.setup import LoraSetup, Parallelism, RuntimeKnobs, TrainSetup
from swiftplan.planner.states import optimizer_state_bytes, state_dtypes
from swiftplan.planner.train_memory import train_memory
from swiftplan.planner.weights import quantized_linear_bytes

QWEN7B = catalog_spec("Qwen/Qwen2.5-7B-Instruct")
MODELS = [QWEN7B, catalog_spec("meta-llama/Llama-3.1-8B"), catalog_spec("mistralai/Mixtral-8x7B-v0.1")]


# --- hand computations -----------------------------------------------------------------------------


def test_full_bf16_weights_are_two_bytes_per_param():
    mem = train_memory(QWEN7B, TrainSetup(method="full", precision="bf16", optimizer="adamw"))
    n = total_params(QWEN7B)
    assert mem.device.weights == 2 * n
    assert mem.device.gradients == 2 * n
    assert mem.device.optimizer == 4 * n  # two bf16 moments
    assert mem.trainable_params == n


def test_amp_keeps_fp32_weights_grads_and_states():
    mem = train_memory(QWEN7B, TrainSetup(method="full", precision="amp-bf16"))
    n = total_params(QWEN7B)
    assert (mem.device.weights, mem.device.gradients, mem.device.optimizer) == (4 * n, 4 * n, 8 * n)


def test_lora_counts_adapters_fp32_and_freezes_base():
    lora = LoraSetup(rank=64, targets=("q_proj", "v_proj"))
    mem = train_memory(QWEN7B, TrainSetup(method="lora", lora=lora))
    # Qwen2.5-7B: q_proj 3584→3584, v_proj 3584→512, 28 layers; A: r×in, B: out×r.
    per_layer = 64 * (3584 + 3584) + 64 * (3584 + 512)
    assert mem.trainable_params == 28 * per_layer
    assert mem.device.adapters == 4 * 28 * per_layer
    assert mem.device.gradients == 4 * 28 * per_layer
    assert mem.device.optimizer == 8 * 28 * per_layer
    assert mem.device.weights == 2 * total_params(QWEN7B)


def test_nf4_bytes_per_weight_match_qlora_paper():
    # QLoRA paper §3: double quantization brings the constants from 0.5 to ~0.127 bits per parameter.
    linear = Linear(name="q_proj", in_features=4096, out_features=4096)
    with_dq = quantized_linear_bytes(linear, "nf4", double_quant=True) * 8 / (4096 * 4096)
    without = quantized_linear_bytes(linear, "nf4", double_quant=False) * 8 / (4096 * 4096)
    assert without == pytest.approx(4.5)
    assert with_dq == pytest.approx(4.127, abs=0.001)


def test_kv_cache_gqa_hand_computation():
    # Qwen2.5-7B: 2 (K,V) × 28 layers × 4 kv heads × 128 head_dim × 2 bytes = 57,344 B/token.
    assert kv_cache_bytes_per_token(QWEN7B, kv_dtype_bytes=2) == 2 * 28 * 4 * 128 * 2 == 57_344
    assert kv_cache_bytes_per_token(QWEN7B, kv_dtype_bytes=1) == 28_672
    # TP 2 splits the 4 kv heads; TP 8 replicates one head per rank.
    assert kv_cache_bytes_per_token(QWEN7B, kv_dtype_bytes=2, tp=2) == 28_672
    assert kv_cache_bytes_per_token(QWEN7B, kv_dtype_bytes=2, tp=8) == 2 * 28 * 1 * 128 * 2


def test_kv_cache_mla_hand_computation():
    # DeepSeek-V3 caches kv_lora_rank 512 + rope 64 = 576 elements per layer per token, 61 layers.
    v3 = catalog_spec("deepseek-ai/DeepSeek-V3")
    assert kv_cache_bytes_per_token(v3, kv_dtype_bytes=2) == 61 * 576 * 2


def test_kv_cache_sliding_window_caps_long_contexts():
    mistral = catalog_spec("mistralai/Mistral-7B-v0.1")  # window 4096 on every layer
    short = kv_cache_bytes_per_token(mistral, kv_dtype_bytes=2, context=4096)
    long = kv_cache_bytes_per_token(mistral, kv_dtype_bytes=2, context=16384)
    assert long == pytest.approx(short / 4)


def test_optimizer_8bit_is_about_two_bytes():
    # two uint8 moments + one fp32 absmax per 256 values for each moment
    assert optimizer_state_bytes(1_000_000, "adamw-8bit", 4) == 2 * 1_000_000 + 2 * 4 * 3907
    assert optimizer_state_bytes(1_000_000, "sgd", 4) == 0


# --- properties -------------------------------------------------------------------------------------

settings.register_profile("fast", max_examples=25, deadline=None)
settings.load_profile("fast")


@given(
    spec=st.sampled_from(MODELS),
    method=st.sampled_from(["full", "lora", "qlora"]),
    batch=st.integers(1, 7),
    seq=st.integers(64, 4096),
    ckpt=st.booleans(),
)
def test_peak_grows_with_batch_and_sequence(spec, method, batch, seq, ckpt):
    base = dict(method=method, grad_ckpt=ckpt)
    small = train_memory(spec, TrainSetup(micro_batch=batch, seq_len=seq, **base)).device
    more_batch = train_memory(spec, TrainSetup(micro_batch=batch + 1, seq_len=seq, **base)).device
    more_seq = train_memory(spec, TrainSetup(micro_batch=batch, seq_len=seq + 64, **base)).device
    # Activations and logits always grow; the peak grows too unless it sits at the optimizer step.
    for bigger in (more_batch, more_seq):
        assert bigger.activations > small.activations and bigger.logits > small.logits
        assert bigger.peak_allocated >= small.peak_allocated
        if small.peak_phase != "optimizer step":
            assert bigger.peak_allocated > small.peak_allocated


@given(spec=st.sampled_from(MODELS), rank=st.integers(1, 255), all_linear=st.booleans())
def test_peak_grows_with_rank(spec, rank, all_linear):
    targets = ("all-linear",) if all_linear else ("q_proj", "v_proj")
    lo = train_memory(
        spec, TrainSetup(method="lora", lora=LoraSetup(rank=rank, targets=targets))
    ).device.peak_allocated
    hi = train_memory(
        spec, TrainSetup(method="lora", lora=LoraSetup(rank=rank + 1, targets=targets))
    ).device.peak_allocated
    assert hi > lo


@given(
    spec=st.sampled_from(MODELS),
    method=st.sampled_from(["full", "lora"]),
    world=st.sampled_from([2, 4, 8, 16]),
    precision=st.sampled_from(["bf16", "amp-bf16"]),
)
def test_zero_stages_never_increase_memory(spec, method, world, precision):
    peaks = [
        train_memory(
            spec,
            TrainSetup(method=method, precision=precision, parallel=Parallelism(zero=z)),
            world_size=world,
        ).device
        for z in (0, 1, 2, 3)
    ]

    def states(m):
        return m.weights + m.adapters + m.gradients + m.optimizer + m.master_weights

    # ZeRO-3 ≤ ZeRO-2 ≤ ZeRO-1 on the sharded model-state terms (all three run through DeepSpeed).
    for deeper, shallower in zip(peaks[2:], peaks[1:-1], strict=False):
        assert states(deeper) <= states(shallower)
    assert peaks[3].peak_allocated <= peaks[1].peak_allocated
    if precision == "amp-bf16" or world >= 4:
        # Plain torch (ZeRO-0) keeps no master copy: DeepSpeed's fp32 master and moments (12 B per
        # trainable parameter) only beat it once sharded over enough ranks, or against amp's fp32 states;
        # DeepSpeed's reduce buckets (2 × 5e8 elements with overlap_comm) come on top whatever the model.
        zero1 = TrainSetup(method=method, precision=precision, parallel=Parallelism(zero=1))
        buckets = reduce_bucket_bytes(
            spec, RuntimeKnobs(), stage=1, grad_bytes=dtype_bytes(state_dtypes(zero1).gradients)
        )
        assert states(peaks[1]) - buckets <= states(peaks[0])


def test_deepspeed_keeps_fp32_master_and_moments_and_casts_the_module_to_bf16():
    """The states DeepSpeed 0.19.8 was measured to keep (tests/test_state_agreement.py checks it for real)."""
    plain = train_memory(QWEN7B, TrainSetup(method="full", precision="bf16")).device
    zero1 = train_memory(
        QWEN7B, TrainSetup(method="full", precision="bf16", parallel=Parallelism(zero=1))
    ).device
    assert (
        plain.master_weights == 0 and zero1.master_weights == plain.weights * 2
    )  # fp32 master vs bf16 weights
    assert zero1.optimizer == plain.optimizer * 2  # fp32 moments instead of bf16
    buckets = reduce_bucket_bytes(QWEN7B, RuntimeKnobs(), stage=1, grad_bytes=2)
    assert zero1.gradients - buckets == plain.gradients  # bf16 gradients either way, and DeepSpeed's buckets
    lora = train_memory(QWEN7B, TrainSetup(method="lora", precision="bf16")).device
    lora_zero = train_memory(
        QWEN7B, TrainSetup(method="lora", precision="bf16", parallel=Parallelism(zero=2))
    ).device
    assert lora_zero.adapters * 2 == lora.adapters  # peft's fp32 adapters become bf16 under DeepSpeed
    assert lora_zero.master_weights == lora.adapters  # their fp32 master


@given(spec=st.sampled_from(MODELS[:2]), tp=st.sampled_from([2, 4]))
def test_tensor_parallel_divides_sharded_terms(spec, tp):
    one = train_memory(spec, TrainSetup(method="full"), world_size=tp).device
    split = train_memory(spec, TrainSetup(method="full", parallel=Parallelism(tp=tp)), world_size=tp).device
    assert split.weights == pytest.approx(one.weights / tp, rel=0.01)
    assert split.gradients == pytest.approx(one.gradients / tp, rel=0.01)
    assert split.activations < one.activations
    assert split.logits == pytest.approx(one.logits / tp, rel=0.01)


@given(
    spec=st.sampled_from(MODELS[:2]),
    world=st.sampled_from([1, 2, 8]),
    method=st.sampled_from(["full", "lora"]),
)
def test_offload_moves_bytes_to_host_without_losing_them(spec, world, method):
    base = train_memory(spec, TrainSetup(method=method, parallel=Parallelism(zero=3)), world_size=world)
    opt = train_memory(
        spec, TrainSetup(method=method, parallel=Parallelism(zero=3, offload="optimizer")), world_size=world
    )
    both = train_memory(
        spec,
        TrainSetup(method=method, parallel=Parallelism(zero=3, offload="optimizer+params")),
        world_size=world,
    )
    dp = world
    assert opt.device.optimizer == 0 and both.device.weights == 0 and both.device.adapters == 0
    # DeepSpeed keeps the gradient partition in the CPU optimizer's fp32 buffer; the reduce bucket stays
    grad_bytes = dtype_bytes(
        state_dtypes(TrainSetup(method=method, parallel=Parallelism(zero=3, offload="optimizer"))).gradients
    )
    bucket = reduce_bucket_bytes(spec, RuntimeKnobs(), stage=3, grad_bytes=grad_bytes)
    partition = base.device.gradients - bucket
    assert opt.device.gradients == bucket
    host_grads = partition * 4 // grad_bytes * dp
    assert opt.host_bytes == (base.device.optimizer + base.device.master_weights) * dp + host_grads
    assert both.host_bytes == opt.host_bytes + (base.device.weights + base.device.adapters) * dp
    assert opt.device.peak_allocated <= base.device.peak_allocated


def test_grad_ckpt_saves_activation_memory():
    on = train_memory(QWEN7B, TrainSetup(method="lora", micro_batch=4, seq_len=2048, grad_ckpt=True)).device
    off = train_memory(QWEN7B, TrainSetup(method="lora", micro_batch=4, seq_len=2048, grad_ckpt=False)).device
    assert on.activations < off.activations / 5


def test_kbit_upcast_puts_unquantized_parameters_and_activations_in_fp32():
    from swiftplan.errors import SwiftplanError
    from swiftplan.planner.architecture import embedding_params, lm_head_params

    llama = catalog_spec("meta-llama/Meta-Llama-3-8B")
    plain = train_memory(llama, TrainSetup(method="qlora")).device
    upcast = train_memory(llama, TrainSetup(method="qlora", kbit_upcast=True)).device
    # embeddings, LM head, the final norm and two norms per block go from 2 to 4 bytes
    unquantized = embedding_params(llama) + lm_head_params(llama) + 4096 + 32 * 2 * 4096
    assert upcast.weights - plain.weights == 2 * unquantized
    assert upcast.activations > plain.activations
    with pytest.raises(SwiftplanError, match="bitsandbytes base"):
        TrainSetup(method="lora", kbit_upcast=True)
