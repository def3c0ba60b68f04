"""Tracing verifier: real transformers/peft code over fake tensors, checked against hand computations.

Every expected number below is written out from the model shapes (config.json fields), not copied
from a trace. `round_bytes=1` turns off the 512-byte allocator rounding where a figure must be exact.
"""

from __future__ import annotations

import resource
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from swiftplan.executors.trace import TraceResult, trace_serving, trace_training  # noqa: E402
from swiftplan.executors.trace_memory import CATEGORIES, MemoryTracker  # noqa: E402

H, LAYERS, HEADS, KV_HEADS, VOCAB, INTER = 64, 2, 4, 2, 128, 128
HEAD_DIM = H // HEADS  # 16
TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": H,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "num_key_value_heads": KV_HEADS,
    "vocab_size": VOCAB,
    "intermediate_size": INTER,
}


def tiny_llama_params(vocab: int = VOCAB) -> int:
    """Embedding + per layer (q, k, v, o, gate/up/down, 2 RMSNorms) + final norm + untied lm_head."""
    per_layer = (
        H * H  # q_proj
        + 2 * H * KV_HEADS * HEAD_DIM  # k_proj, v_proj
        + H * H  # o_proj
        + 3 * H * INTER  # gate, up, down
        + 2 * H  # input / post-attention RMSNorm
    )
    return vocab * H + LAYERS * per_layer + H + vocab * H


def lora_qv_params(rank: int) -> int:
    """LoRA A (r x in) + B (out x r) on q_proj (64 -> 64) and v_proj (64 -> 32), every layer."""
    return LAYERS * rank * ((H + H) + (H + KV_HEADS * HEAD_DIM))


def test_tiny_param_count_matches_hand_formula() -> None:
    assert tiny_llama_params() == 90_432


# -- (1) full fine-tuning, pure fp32, SGD ---------------------------------------------------------


def test_full_fp32_sgd_weights_and_gradients_are_params_times_4() -> None:
    r = trace_training(
        TINY_LLAMA, method="full", precision="fp32", optimizer="sgd", batch=1, seq=4, round_bytes=1
    )
    p = tiny_llama_params()
    assert r.params == p
    assert r.trainable_params == p
    assert r.at_peak["weights"] == p * 4
    # With 4 tokens the activations are tiny, so the peak is at the end of backward, when every
    # gradient has been produced (SGD without momentum keeps no state).
    assert r.at_peak["gradients"] == p * 4
    assert r.at_peak["optimizer"] == 0
    assert r.at_peak["adapters"] == 0
    assert set(r.phase_peaks) == {"forward", "backward", "optimizer"}
    # The optimizer step runs with all weights and gradients alive and allocates nothing itself.
    assert 2 * p * 4 <= r.phase_peaks["optimizer"] < 2 * p * 4 + 1024


def test_result_has_every_category_and_rounding_by_default() -> None:
    r = trace_training(TINY_LLAMA, method="full", precision="bf16", optimizer="sgd", batch=1, seq=4)
    assert isinstance(r, TraceResult)
    assert tuple(r.at_peak) == CATEGORIES
    assert all(v % 512 == 0 for v in r.at_peak.values())  # CUDA caching-allocator blocks
    assert r.peak_bytes == sum(r.at_peak.values())
    assert r.peak_bytes == max(r.phase_peaks.values())
    assert any("512 B" in n for n in r.notes)


# -- (2) LoRA parameter counts and adapter dtype ---------------------------------------------------


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_lora_trainable_params_and_fp32_adapters(precision: str) -> None:
    r = trace_training(
        TINY_LLAMA,
        method="lora",
        precision=precision,
        lora_rank=8,
        lora_targets=("q_proj", "v_proj"),
        optimizer="sgd",
        batch=1,
        seq=8,
        round_bytes=1,
    )
    t = lora_qv_params(8)
    assert t == 3584
    assert r.trainable_params == t
    assert r.params == tiny_llama_params() + t
    # peft (autocast_adapter_dtype=True) keeps adapters in fp32 even on a bf16 base model.
    assert r.at_peak["adapters"] == t * 4
    assert r.at_peak["weights"] == tiny_llama_params() * (2 if precision == "bf16" else 4)
    assert any("adapter weights are float32" in n for n in r.notes)


# -- (3) AdamW state size --------------------------------------------------------------------------


@pytest.mark.parametrize(("precision", "state_bytes"), [("bf16", 2), ("amp-bf16", 4)])
def test_adamw_states_are_two_per_trainable_param(precision: str, state_bytes: int) -> None:
    r = trace_training(
        TINY_LLAMA, method="full", precision=precision, optimizer="adamw", batch=1, seq=8, round_bytes=1
    )
    p = tiny_llama_params()
    # exp_avg + exp_avg_sq in the parameter dtype (fp32 parameters under AMP); the `step` counters
    # are CPU tensors on a real CUDA run and are not counted.
    assert r.at_peak["optimizer"] == 2 * p * state_bytes
    assert r.at_peak["weights"] == p * (4 if precision.startswith("amp") else 2)
    assert r.at_peak["master_weights"] == 0


def test_adamw_states_follow_fp32_adapters_in_lora() -> None:
    r = trace_training(
        TINY_LLAMA, method="lora", precision="bf16", lora_rank=8, batch=1, seq=8, round_bytes=1
    )
    assert r.at_peak["optimizer"] == 2 * lora_qv_params(8) * 4


def test_adamw_foreach_step_holds_a_param_sized_temporary() -> None:
    # Full fine-tuning with 4 tokens peaks inside AdamW's foreach step: weights + grads + 2 states
    # + one sqrt(exp_avg_sq) temporary per parameter (torch._foreach_sqrt over the whole group).
    r = trace_training(TINY_LLAMA, method="full", precision="bf16", batch=1, seq=4, round_bytes=1)
    p = tiny_llama_params()
    assert r.peak_bytes == r.phase_peaks["optimizer"]
    assert r.at_peak["gradients"] == p * 2
    temporaries = r.at_peak["activations"]
    assert p * 2 <= temporaries < p * 2 + 4096


def test_fused_adamw_has_no_step_temporary() -> None:
    kwargs = {"method": "full", "precision": "bf16", "batch": 1, "seq": 4, "round_bytes": 1}
    foreach = trace_training(TINY_LLAMA, optimizer="adamw", **kwargs)
    fused = trace_training(TINY_LLAMA, optimizer="adamw-fused", **kwargs)
    p = tiny_llama_params()
    # Fused keeps a 4-byte fp32 step counter per parameter tensor on the device (21 tensors here).
    assert fused.at_peak["optimizer"] == 2 * p * 2 + 21 * 4
    assert foreach.phase_peaks["optimizer"] - fused.phase_peaks["optimizer"] >= p * 2 - 21 * 4


# -- (4) logits and loss ---------------------------------------------------------------------------


def test_logits_at_peak_match_hand_formula() -> None:
    # A large vocabulary makes the loss dominate, so the peak is at the first backward op of the loss.
    vocab, batch, seq = 4096, 2, 32
    config = {**TINY_LLAMA, "vocab_size": vocab}
    r = trace_training(
        config, method="lora", precision="bf16", lora_rank=8, batch=batch, seq=seq, round_bytes=1
    )
    bsv = batch * seq * vocab
    # transformers' ForCausalLMLoss: logits.float() -> cross_entropy = log_softmax + nll_loss.
    # Forward keeps only the fp32 log_softmax output (4 B per logit) for backward; the bf16 logits
    # and their fp32 copy are freed once the loss is computed and the output dropped.
    # Backward starts with nll_loss_backward (an fp32 grad of the log-probs, 4 B) and
    # _log_softmax_backward_data (the fp32 grad of the logits, 4 B) while the saved log-probs are
    # still alive: 3 x 4 bytes per logit at once, plus the fp32 loss and its seed gradient (4 B each).
    assert r.at_peak["logits"] == 3 * 4 * bsv + 4 + 4
    assert r.peak_bytes == r.phase_peaks["backward"]


# -- (5) serving: KV cache -------------------------------------------------------------------------


def kv_bytes(tokens: int, batch: int) -> int:
    """K and V, every layer, bf16: 2 x layers x kv_heads x head_dim x tokens x batch x 2 bytes."""
    return 2 * LAYERS * KV_HEADS * HEAD_DIM * tokens * batch * 2


def test_kv_cache_after_prefill() -> None:
    r = trace_serving(TINY_LLAMA, dtype="bf16", batch=2, prompt_len=16, decode_steps=0, round_bytes=1)
    assert r.at_peak["kv_cache"] == kv_bytes(16, 2) == 8192
    assert set(r.phase_peaks) == {"prefill"}
    assert r.trainable_params == r.params == tiny_llama_params()


def test_kv_cache_at_decode_peak_includes_the_cat_copy() -> None:
    prompt, steps, batch = 4, 32, 1
    r = trace_serving(
        TINY_LLAMA, dtype="bf16", batch=batch, prompt_len=prompt, decode_steps=steps, round_bytes=1
    )
    assert r.peak_bytes == r.phase_peaks["decode"]
    # DynamicCache.update does keys = cat([keys, new]): at the last layer's value update of the last
    # step the whole cache holds prompt + steps tokens while the old value tensor (one token shorter)
    # is still alive.
    old_values = KV_HEADS * HEAD_DIM * (prompt + steps - 1) * batch * 2
    assert r.at_peak["kv_cache"] == kv_bytes(prompt + steps, batch) + old_values


# -- (6) and (7) activation levers -----------------------------------------------------------------


def test_gradient_checkpointing_reduces_activations() -> None:
    kwargs = {"method": "lora", "precision": "bf16", "lora_rank": 8, "batch": 2, "seq": 256}
    plain = trace_training(TINY_LLAMA, **kwargs)
    ckpt = trace_training(TINY_LLAMA, grad_ckpt=True, **kwargs)
    assert ckpt.phase_peaks["forward"] < plain.phase_peaks["forward"]
    assert ckpt.at_peak["activations"] < plain.at_peak["activations"]
    assert ckpt.peak_bytes < plain.peak_bytes
    assert any("checkpointing" in n for n in ckpt.notes)


def test_larger_batch_has_larger_peak() -> None:
    one = trace_training(TINY_LLAMA, method="lora", precision="bf16", batch=1, seq=128)
    two = trace_training(TINY_LLAMA, method="lora", precision="bf16", batch=2, seq=128)
    assert two.peak_bytes > one.peak_bytes
    assert (
        two.at_peak["activations"] + two.at_peak["logits"]
        > one.at_peak["activations"] + one.at_peak["logits"]
    )


# -- architectures other than Llama ----------------------------------------------------------------


def test_moe_with_fused_experts_traces_and_notes_lora_on_experts() -> None:
    config = {
        "model_type": "qwen3_moe",
        **{k: v for k, v in TINY_LLAMA.items() if k != "model_type"},
        "head_dim": 16,
        "num_experts": 8,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
    }
    r = trace_training(config, method="lora", precision="bf16", lora_targets="all-linear", batch=1, seq=16)
    assert r.trainable_params > 0
    assert any("ParamWrapper" in n for n in r.notes)


def test_mla_attention_uses_the_memory_efficient_kernel() -> None:
    config = {
        "model_type": "deepseek_v2",
        **{k: v for k, v in TINY_LLAMA.items() if k != "model_type"},
        "num_key_value_heads": HEADS,
        "n_routed_experts": 4,
        "n_shared_experts": 1,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "kv_lora_rank": 16,
        "q_lora_rank": None,
        "qk_rope_head_dim": 8,
        "qk_nope_head_dim": 16,
        "v_head_dim": 16,
        "first_k_dense_replace": 1,
        "n_group": 1,
        "topk_group": 1,
    }
    r = trace_training(config, method="full", precision="bf16", batch=1, seq=16)
    assert any("_scaled_dot_product_efficient_attention" in n for n in r.notes)
    assert not any("math path" in n for n in r.notes)


def test_model_without_sdpa_falls_back_to_eager_with_a_note() -> None:
    config = {**TINY_LLAMA, "model_type": "gemma2", "head_dim": 16, "sliding_window": 8}
    r = trace_serving(config, batch=1, prompt_len=16, decode_steps=1)
    assert any("'eager'" in n for n in r.notes)


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="method"):
        trace_training(TINY_LLAMA, method="qlora", precision="bf16")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="precision"):
        trace_training(TINY_LLAMA, method="full", precision="int8")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="model_type"):
        trace_training({"hidden_size": 64}, method="full", precision="bf16")


# -- (8) a 7B config: it must finish in seconds without real memory -------------------------------

QWEN25_7B = {
    "model_type": "qwen2",
    "hidden_size": 3584,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "intermediate_size": 18944,
    "vocab_size": 152064,
    "tie_word_embeddings": False,
}


def test_qwen25_7b_lora_trace_finishes() -> None:
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = trace_training(QWEN25_7B, method="lora", precision="bf16", lora_rank=64, batch=2, seq=2048)
    rss_growth_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    # Qwen2.5-7B has 7,615,616,512 parameters (its model card); LoRA r=64 on q_proj (3584 -> 3584) and
    # v_proj (3584 -> 512) adds 28 x 64 x ((3584 + 3584) + (3584 + 512)).
    lora = 28 * 64 * ((3584 + 3584) + (3584 + 512))
    assert r.params == 7_615_616_512 + lora
    assert r.trainable_params == lora
    assert r.at_peak["weights"] == 7_615_616_512 * 2  # every bf16 weight is > 512 B, no rounding
    assert rss_growth_kib < 3 * 1024 * 1024  # fake tensors: far below the 15 GB of real bf16 weights
    print(f"\nQwen2.5-7B LoRA r64 b2 s2048 trace: {r.seconds:.1f} s", file=sys.stderr)


# -- the tracker itself ----------------------------------------------------------------------------


def test_tracker_counts_views_once_rounds_and_frees() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    tracker = MemoryTracker()
    with FakeTensorMode(), tracker:
        tracker.start_measuring()
        x = torch.empty(100, dtype=torch.float32)  # 400 B -> one 512 B block
        v = x.view(10, 10)
        assert tracker.live_bytes == 512
        y = x * 2
        assert tracker.live_bytes == 1024
        del x, v
        assert tracker.live_bytes == 512
        tracker.classify([y], "logits")
        del y
        assert tracker.live_bytes == 0
    assert tracker.peak_bytes == 1024
    # at_peak reports each storage by its latest category (a buffer that later becomes a .grad
    # counts as a gradient): y was classified after the peak.
    assert tracker.at_peak()["activations"] == 512
    assert tracker.at_peak()["logits"] == 512


def test_forgotten_storage_stays_uncounted_through_in_place_updates() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    tracker = MemoryTracker(round_bytes=1)
    with FakeTensorMode(), tracker:
        step = torch.zeros(())  # like Adam's CPU step counter
        assert tracker.live_bytes == 4
        tracker.forget([step])
        assert tracker.live_bytes == 0
        step.add_(1)
        assert tracker.live_bytes == 0
