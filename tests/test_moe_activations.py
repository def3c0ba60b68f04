"""What a MoE block and multi-head latent attention save for backward, as transformers 5 runs them: the planner's
per-block bytes against a fake-tensor trace of the real model (the difference between a 4-block and a 2-block
model, so only one block's saved tensors count), and the arithmetic behind them."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import pytest

from swiftplan.planner import activations as act
from swiftplan.planner.model_catalog import catalog_spec, spec_from_hf_config
from swiftplan.planner.setup import LoraSetup, RuntimeKnobs, TrainSetup

TOKENS = 1024
SMALL = {"hidden_size": 512, "moe_intermediate_size": 256, "intermediate_size": 1024, "vocab_size": 4096}
QWEN3_MOE = dict(catalog_spec("Qwen/Qwen3-30B-A3B").hf_config) | SMALL | {
    "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 64, "num_experts": 16, "num_experts_per_tok": 4,
}  # fmt: skip
DEEPSEEK_V2 = dict(catalog_spec("deepseek-ai/DeepSeek-V2-Lite").hf_config) | SMALL | {
    "num_attention_heads": 8, "num_key_value_heads": 8, "n_routed_experts": 16, "num_experts": 16,
    "num_experts_per_tok": 4, "first_k_dense_replace": 0,
}  # fmt: skip


def _setup(method: str, targets: tuple[str, ...]) -> TrainSetup:
    lora = LoraSetup(rank=16, dropout=0.0, targets=targets) if method == "lora" else None
    return TrainSetup(method=method, precision="bf16", micro_batch=1, seq_len=TOKENS, grad_ckpt=False,  # type: ignore[arg-type]
                      optimizer="sgd", lora=lora, runtime=RuntimeKnobs(loss="full"))  # fmt: skip


def _layers(config: dict[str, Any], layers: int) -> dict[str, Any]:
    return config | {"num_hidden_layers": layers, "max_window_layers": layers}


def _planned_block(config: dict[str, Any], setup: TrainSetup) -> int:
    spec = spec_from_hf_config(_layers(config, 4), name="tiny")
    return sum(asdict(act.layer_activation_bytes(spec, setup, 3, TOKENS, TOKENS)).values())


def _traced_block(config: dict[str, Any], method: str, targets: tuple[str, ...] | str) -> float:
    pytest.importorskip("transformers")
    from swiftplan.executors.trace import trace_training

    saved = {}
    for layers in (2, 4):
        trace = trace_training(_layers(config, layers), method=method, precision="bf16", optimizer="sgd",  # type: ignore[arg-type]
                               seq=TOKENS, grad_ckpt=False, steps=1, lora_targets=targets)  # fmt: skip
        saved[layers] = trace.at_peak["activations"]
    return (saved[4] - saved[2]) / 2


def _qwen2_moe() -> dict[str, Any]:
    """Qwen2-MoE: a shared expert beside the routed ones, scaled by a sigmoid gate (no catalog entry)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.Qwen2MoeConfig().to_dict() | SMALL | {
        "num_attention_heads": 8, "num_key_value_heads": 2, "num_experts": 16, "num_experts_per_tok": 4,
        "shared_expert_intermediate_size": 512, "decoder_sparse_step": 1, "mlp_only_layers": [],
        "architectures": ["Qwen2MoeForCausalLM"], "torch_dtype": "bfloat16",
    }  # fmt: skip
    config.pop("layer_types", None)
    return config


DEEPSEEK_V3 = {
    key: value for key, value in dict(catalog_spec("deepseek-ai/DeepSeek-V3").hf_config).items()
    if key != "quantization_config"  # the FP8 checkpoint's: the trace builds bf16 weights
} | SMALL | {
    "num_attention_heads": 8, "num_key_value_heads": 8, "n_routed_experts": 16, "num_experts": 16,
    "num_experts_per_tok": 4, "first_k_dense_replace": 0, "n_group": 4, "topk_group": 2, "q_lora_rank": 384,
}  # fmt: skip
"""DeepSeek-V3: a q LoRA rank (a second latent norm), sigmoid group-limited routing with a score bias."""
CONFIGS = {"qwen3-moe": lambda: QWEN3_MOE, "deepseek-v2-mla": lambda: DEEPSEEK_V2, "qwen2-moe": _qwen2_moe,
           "deepseek-v3-mla": lambda: DEEPSEEK_V3}  # fmt: skip
TARGETS = {"qwen3-moe": ("q_proj", "v_proj"), "deepseek-v2-mla": ("q_proj",), "qwen2-moe": ("q_proj", "v_proj"),
           "deepseek-v3-mla": ("q_b_proj",)}  # fmt: skip


@pytest.mark.parametrize("method", ["lora", "full"])
@pytest.mark.parametrize("model", list(CONFIGS))
def test_a_moe_blocks_saved_tensors_match_the_trace(model: str, method: str) -> None:
    config, targets = CONFIGS[model](), TARGETS[model]
    planned, traced = _planned_block(config, _setup(method, targets)), _traced_block(config, method, targets)
    assert planned == pytest.approx(traced, rel=1e-4), (planned, traced)


@pytest.mark.parametrize("model", ["qwen3-moe", "deepseek-v2-mla"])
def test_lora_on_the_expert_stacks_saves_them_rematerialised(model: str) -> None:
    """all-linear LoRA on transformers 5's fused experts (peft's ParamWrapper): each block keeps its re-materialised
    gate_up and down stacks and the router's, their LoRA factors cast to bf16, the grouped matmuls' inputs as for
    trained experts and the router's input (DeepSeek's fp32 router within 18 kB of 66 MB)."""
    config = CONFIGS[model]()
    planned = _planned_block(config, _setup("lora", ("all-linear",)))
    traced = _traced_block(config, "lora", "all-linear")  # type: ignore[arg-type]
    assert planned == pytest.approx(traced, rel=3e-4), (planned, traced)
    spec = spec_from_hf_config(_layers(config, 4), name="tiny")
    stacks = act.expert_lora_stacks(spec, _setup("lora", ("all-linear",)), 3)
    assert stacks == (16 * 512 * 2, 16 * 512 * 512 * 2, 16 * 256 * 512 * 2)  # router, gate_up, down (bf16)


def test_routed_experts_save_three_expert_widths_and_the_output_frozen_and_five_and_the_input_trained() -> (
    None
):
    spec = spec_from_hf_config(_layers(QWEN3_MOE, 4), name="tiny")
    lora, full = _setup("lora", ("q_proj",)), _setup("full", ())
    routed, width, hidden = TOKENS * 4, 256, 512
    routing = TOKENS * 16 * 4 + routed * (
        4 * 8 + 2
    )  # fp32 probabilities; 4 int64 indices + the weight per copy
    assert (
        act.layer_activation_bytes(spec, lora, 0, TOKENS, TOKENS).moe
        == routed * 2 * (3 * width + hidden) + routing
    )
    # trained: the gathered input and the SwiGLU product per copy, and the router's own input
    assert act.layer_activation_bytes(spec, full, 0, TOKENS, TOKENS).moe == (
        routed * 2 * (4 * width + 2 * hidden) + routing + TOKENS * hidden * 2
    )


def test_mla_keeps_the_whole_kv_b_output_and_the_latent_norms_fp32_copy() -> None:
    spec = catalog_spec("deepseek-ai/DeepSeek-V2-Lite")  # 16 heads, nope 128, rope 64, v 128, kv rank 512
    setup = _setup("lora", ("q_proj",))
    heads, q = 16, 16 * 192
    expected = (
        TOKENS * 2 * (q + q + heads * (128 + 128) + heads * 128) + TOKENS * heads * 4 + TOKENS * (512 * 4 + 4)
    )
    assert act.layer_activation_bytes(spec, setup, 1, TOKENS, TOKENS).attention == expected


def test_a_bitsandbytes_moe_dequantizes_attention_not_the_experts_it_leaves_unquantized() -> None:
    spec = catalog_spec("mistralai/Mixtral-8x7B-v0.1")  # experts 4096 × 14336, attention 4096 × 4096
    qlora = TrainSetup(method="qlora", seq_len=TOKENS)
    assert act.dequantized_weight_bytes(spec, qlora) == 4096 * 4096 * 2
    # the input-gradient matmul of q_proj or o_proj: its weight and a T × 4096 gradient
    assert act.dequantized_backward_bytes(spec, qlora, TOKENS) == 4096 * 4096 * 2 + TOKENS * 4096 * 2
    dense = catalog_spec("meta-llama/Llama-2-7b-hf")  # down_proj: 4096 × 11008, its gradient T × 11008
    assert act.dequantized_backward_bytes(dense, qlora, TOKENS) == 4096 * 11008 * 2 + TOKENS * 11008 * 2


def test_the_last_blocks_backward_takes_the_last_blocks_layout() -> None:
    spec = catalog_spec(
        "deepseek-ai/DeepSeek-V2-Lite"
    )  # block 0 dense (down_proj 2048 × 10944), the rest MoE
    qlora = TrainSetup(method="qlora", seq_len=TOKENS)
    # recomputing block 0 dequantizes its down_proj; in the last block the most is the shared experts' down_proj
    # (2816 → 2048, a plain Linear bitsandbytes quantizes) and the T × 2816 gradient it makes
    assert act.dequantized_weight_bytes(spec, qlora) == 2048 * 10944 * 2
    assert act.dequantized_backward_bytes(spec, qlora, TOKENS) == 2816 * 2048 * 2 + TOKENS * 2816 * 2
