"""The moments of a checkpointed block's recompute and backward (planner/recompute.py) against a fake-tensor trace
of the real transformers + peft + bitsandbytes step: two blocks of a catalog model, TRL's fused LM head (so the
loss is small and the recompute sets the peak) and SGD (no optimizer state), the peak to within 0.05 %; MoE blocks
whose fused expert stacks carry LoRA, with and without checkpointing, too."""

from __future__ import annotations

from dataclasses import replace

import pytest

from swiftplan.planner import recompute
from swiftplan.planner.model_catalog import catalog_spec, spec_from_hf_config
from swiftplan.planner.runtime import apply_defaults, get_runtime, train_knobs
from swiftplan.planner.setup import LoraSetup, TrainSetup

ALL = ("all-linear",)
QV = ("q_proj", "v_proj")
CASES = {
    # TRL 1.16 QLoRA: bf16 adapters on the nf4 base, no dropout (peak: down_proj's base gradient beside lora_A's)
    "trl qlora": ("meta-llama/Llama-3.1-8B", dict(method="qlora", quant="nf4", adapter="kbit-bf16", dropout=0.0)),
    # peft's fp32 adapters with dropout (peak: recompute forward, the product's fp32 cast beside dropout's output)
    "qlora fp32 dropout": ("meta-llama/Llama-3.1-8B", dict(method="qlora", quant="nf4", adapter="fp32", dropout=0.05)),
    # fp32 adapters without dropout (peak: recompute forward, up_proj's fp32 LoRA output and its scaled copy)
    "qlora fp32": ("Qwen/Qwen2.5-7B-Instruct", dict(method="qlora", quant="nf4", adapter="fp32", dropout=0.0)),
    "lora model dropout": ("meta-llama/Llama-3.1-8B", dict(method="lora", adapter="model", dropout=0.1)),
    "lora fp32 q,v": ("Qwen/Qwen3-8B", dict(method="lora", adapter="fp32", dropout=0.0, targets=QV)),
    "int8 lora": ("meta-llama/Llama-3.1-8B", dict(method="lora", quant="int8", adapter="fp32", dropout=0.05)),
    "qlora kbit upcast": ("meta-llama/Llama-3.1-8B", dict(method="qlora", quant="nf4", adapter="fp32", dropout=0.05,
                                                           kbit_upcast=True)),
    "amp lora": ("meta-llama/Llama-3.1-8B", dict(method="lora", precision="amp-bf16", adapter="fp32", dropout=0.05)),
    "amp lora q,v": ("Qwen/Qwen2.5-7B-Instruct", dict(method="lora", precision="amp-bf16", adapter="fp32",
                                                       dropout=0.05, targets=QV)),
    # full fine-tuning under autocast: the untied embedding's gradient made last, from the stream's gradient
    "amp full": ("meta-llama/Llama-3.1-8B", dict(method="full", precision="amp-bf16")),
    # past Mistral's 4096-token window: an S × S mask per block and k, v repeated to every query head
    "sliding window": ("mistralai/Mistral-7B-v0.1", dict(method="lora", adapter="model", targets=QV, seq=4096)),
    # the 2023 T4 blog's set-up (hf4-03): fp16 over an fp32 stream, eager attention, LoRA on q, v only
    "upcast eager q,v": ("meta-llama/Llama-2-13b-hf", dict(method="qlora", quant="nf4", precision="fp16",
                                                        kbit_upcast=True, targets=QV, attention="eager")),
    # a fused gate_up and a contiguous copy for o_proj
    "phi-3 trl qlora": ("microsoft/Phi-3-mini-4k-instruct", dict(method="qlora", quant="nf4", adapter="kbit-bf16")),
    # MoE: the experts' recompute forward; all-linear LoRA on the fused expert stacks (peft's ParamWrapper
    # re-materialises them), with and without checkpointing
    "moe lora q,v": ("Qwen/Qwen3-30B-A3B", dict(method="lora", adapter="fp32", targets=QV)),
    "moe expert lora": ("Qwen/Qwen3-30B-A3B", dict(method="lora", adapter="fp32")),
    "moe expert qlora": ("mistralai/Mixtral-8x7B-v0.1", dict(method="qlora", quant="nf4", adapter="kbit-bf16")),
    "moe expert lora, no checkpointing": ("Qwen/Qwen3-30B-A3B", dict(method="lora", adapter="model", ckpt=False)),
    # without checkpointing, the last block's forward: the product's fp32 cast beside dropout's output and lora_B's
    # output with its scaled copy (the first block keeps no dropout mask on q, k, v: its input needs no gradient)
    "fp32 dropout, no checkpointing": ("meta-llama/Llama-3.1-8B", dict(method="lora", adapter="fp32", dropout=0.05,
                                                                      ckpt=False, seq=4096)),
    "qlora fp32, no checkpointing": ("Qwen/Qwen2.5-7B-Instruct", dict(method="qlora", quant="nf4", adapter="fp32",
                                                                     ckpt=False, seq=4096)),
    # after TRL's fused head, the final RMSNorm's backward: five fp32 T × h temporaries beside every saved tensor
    "final norm after the fused head": ("mistralai/Mistral-7B-v0.1", dict(method="lora", adapter="model", targets=QV,
                                                                        ckpt=False, seq=4096)),
    # the last block's backward with LoRA on q, v: down_proj's and the product's gradients beside every saved tensor
    # but the final norm's, freed by then
    "q,v backward, no checkpointing": ("Qwen/Qwen2.5-7B-Instruct", dict(method="lora", adapter="fp32", targets=QV,
                                                                       ckpt=False, seq=4096)),
    "q,v qlora backward, no checkpointing": ("Qwen/Qwen2.5-7B-Instruct", dict(method="qlora", quant="nf4",
                                             adapter="kbit-bf16", targets=QV, ckpt=False, seq=4096)),
    # a MoE block's forward with frozen experts: the routed copies' gather, weighting and return
    "moe q,v forward, no checkpointing": ("Qwen/Qwen3-30B-A3B", dict(method="lora", adapter="fp32", targets=QV,
                                                                    ckpt=False, seq=2048)),
    # a MoE block's backward with frozen experts: the routed product's and its factors' gradients, the experts' output
    # freed
    "moe q,v backward, no checkpointing": ("mistralai/Mixtral-8x7B-v0.1", dict(method="lora", adapter="model",
                                                                              targets=QV, ckpt=False, seq=2048)),
    # DeepSeek's fp32 routing weights: the weighted sum's backward in fp32
    "fp32 routing backward, no checkpointing": ("deepseek-ai/DeepSeek-V2-Lite", dict(method="lora", adapter="model",
                                                                                   targets=("q_proj",), ckpt=False,
                                                                                   seq=2048)),
    # a checkpointed MoE block with frozen experts: its routing and experts' moments, not the coarse SwiGLU set
    "moe frozen experts recompute": ("mistralai/Mixtral-8x7B-v0.1", dict(method="qlora", quant="nf4",
                                                                       adapter="kbit-bf16", targets=QV)),
    # a checkpointed MoE block's recompute under fp32 routing weights: the weighted sum's backward, three fp32 copies
    "fp32 routing recompute": ("deepseek-ai/DeepSeek-V2-Lite", dict(method="lora", adapter="model", targets=("q_proj",),
                                                                  seq=2048)),
    # experts with LoRA under fp32 routing weights: the weighted sum's backward beside the re-materialised stacks, the
    # shared experts (added after the routed ones) differentiated first
    "fp32 routing, expert lora, no checkpointing": ("deepseek-ai/DeepSeek-V2-Lite", dict(method="lora",
                                                                                      adapter="model", ckpt=False,
                                                                                      seq=2048)),
    "shared experts, expert lora, no checkpointing": ("deepseek-ai/DeepSeek-V2-Lite", dict(method="lora",
                                                                                        adapter="model", ckpt=False)),
    # autocast without checkpointing: the last block's forward (dropout's fp32 output freed before lora_B's output),
    # and the first block keeping no copy of q, k, v's frozen weights
    "amp dropout, no checkpointing": ("meta-llama/Llama-3.1-8B", dict(method="lora", precision="amp-bf16",
                                                                     adapter="fp32", dropout=0.05, ckpt=False, seq=4096)),
    "amp q,v, no checkpointing": ("Qwen/Qwen2.5-7B-Instruct", dict(method="lora", precision="amp-bf16", adapter="fp32",
                                                                  dropout=0.05, targets=QV, ckpt=False, seq=4096)),
    # an int8 base without checkpointing: the last block's forward as over a bf16 base (MatMul8bitLt keeps its inputs
    # among the saved tensors), and the first block's q, k, v keeping no input (no gradient flows to it)
    "int8 dropout, no checkpointing": ("meta-llama/Llama-3.1-8B", dict(method="lora", quant="int8", adapter="fp32",
                                                                      dropout=0.05, ckpt=False, seq=2048)),
    # and the last block's backward through a frozen int8 down_proj: the product's two gradients beside its input's
    "int8 q,v backward, no checkpointing": ("Qwen/Qwen2.5-7B-Instruct", dict(method="lora", quant="int8",
                                                                            adapter="fp32", dropout=0.05, targets=QV,
                                                                            ckpt=False, seq=2048)),
    # a fused gate_up's LoRA forward beside peft's fp32 cast of its input (dropout's input), alive until it returns
    "phi-3 fp32 dropout, no checkpointing": ("microsoft/Phi-3-mini-4k-instruct", dict(method="lora", adapter="fp32",
                                                                                    dropout=0.05, ckpt=False,
                                                                                    seq=2048)),
    # an int8 base under Phi-3's contiguous o_proj input: its recompute keeps that copy again; without checkpointing the
    # fused gate_up's forward comes before the product down_proj's int8 layer keeps
    "phi-3 int8 recompute": ("microsoft/Phi-3-mini-4k-instruct", dict(method="lora", quant="int8", adapter="fp32",
                                                                    dropout=0.05, seq=2048)),
    "phi-3 int8, no checkpointing": ("microsoft/Phi-3-mini-4k-instruct", dict(method="lora", quant="int8",
                                                                            adapter="fp32", dropout=0.05, ckpt=False,
                                                                            seq=4096)),
    # the first block's k_norm keeps nothing when k_proj has no adapter
    "qk-norm q,v, no checkpointing": ("Qwen/Qwen3-8B", dict(method="lora", adapter="fp32", targets=QV, dropout=0.05,
                                                           ckpt=False)),
}  # fmt: skip
PHASES = {
    "amp full": "end of backward",
    "moe expert lora, no checkpointing": "backward through the last block",
    "fp32 dropout, no checkpointing": "forward through the last block",
    "qlora fp32, no checkpointing": "forward through the last block",
    "final norm after the fused head": "final norm backward",
    "q,v backward, no checkpointing": "backward through the last block",
    "q,v qlora backward, no checkpointing": "backward through the last block",
    "qk-norm q,v, no checkpointing": "loss and backward start",
    "int8 dropout, no checkpointing": "forward through the last block",
    "phi-3 fp32 dropout, no checkpointing": "forward through the last block",
    "phi-3 int8, no checkpointing": "forward through the last block",
    "int8 q,v backward, no checkpointing": "backward through the last block",
    "amp dropout, no checkpointing": "forward through the last block",
    "moe q,v forward, no checkpointing": "forward through the last block",
    "moe q,v backward, no checkpointing": "backward through the last block",
    "fp32 routing backward, no checkpointing": "backward through the last block",
    "fp32 routing, expert lora, no checkpointing": "backward through the last block",
    "shared experts, expert lora, no checkpointing": "backward through the last block",
    "amp q,v, no checkpointing": "loss and backward start",
}


def _setup(
    method: str,
    precision: str = "bf16",
    quant: str = "none",
    adapter: str = "fp32",
    dropout: float = 0.0,
    targets: tuple[str, ...] = ALL,
    kbit_upcast: bool = False,
    ckpt: bool = True,
    seq: int = 1024,
    attention: str = "sdpa",
) -> TrainSetup:
    profile = get_runtime("hf", "train")
    knobs = replace(train_knobs(profile, apply_defaults(profile, {})[0]), adapter_dtype=adapter)  # type: ignore[arg-type]
    lora = None if method == "full" else LoraSetup(rank=16, dropout=dropout, targets=targets)
    return TrainSetup(runtime=knobs, method=method, precision=precision, quant=quant, lora=lora,  # type: ignore[arg-type]
                      kbit_upcast=kbit_upcast, micro_batch=2, seq_len=seq, grad_ckpt=ckpt, attention=attention, optimizer="sgd")  # fmt: skip


def _two_blocks(model_id: str):  # type: ignore[no-untyped-def]
    config = dict(catalog_spec(model_id).hf_config) | {"num_hidden_layers": 2}
    return spec_from_hf_config(config, name=model_id)


@pytest.mark.parametrize("case", list(CASES))
def test_the_recompute_peak_matches_the_trace(case: str) -> None:
    pytest.importorskip("peft")
    from swiftplan.executors.verify import verify_training

    model_id, kwargs = CASES[case]
    spec, setup = _two_blocks(model_id), _setup(**kwargs)  # type: ignore[arg-type]
    comparison = verify_training(spec, setup)
    peak = next(row for row in comparison.rows if row.name == "peak_allocated")
    assert peak.estimate == pytest.approx(peak.traced, rel=5e-4)
    assert comparison.estimate_phase == PHASES.get(case, "recomputation in backward")


def test_the_block_output_gradient_is_in_the_stream_dtype() -> None:
    spec = catalog_spec("meta-llama/Llama-3.1-8B")
    tokens = 2 * 1024
    bf16 = recompute.stream_gradient_bytes(spec, _setup("lora"), tokens)
    assert bf16 == tokens * 4096 * 2
    assert recompute.stream_gradient_bytes(spec, _setup("lora", precision="amp-bf16"), tokens) == 2 * bf16
    upcast = _setup("qlora", quant="nf4", kbit_upcast=True)
    assert recompute.stream_gradient_bytes(spec, upcast, tokens) == 2 * bf16


def test_dropout_with_fp32_adapters_peaks_in_the_recompute_forward() -> None:
    """peft's fp32 cast of the SwiGLU product, dropout's fp32 output and the product itself at once: the recompute
    forward holds more than any backward moment of down_proj."""
    spec = catalog_spec("meta-llama/Llama-3.1-8B")
    setup = _setup("qlora", quant="nf4", adapter="fp32", dropout=0.05)
    mlp = [lin for lin in recompute.layer_linears(spec, spec.num_layers - 1) if lin.block == "mlp"]
    moments = sum(recompute._dense_moments(spec, setup, 2048, tp=1, up=mlp[-2], down=mlp[-1]), [])
    assert max(moments) == moments[0]
    no_dropout = sum(recompute._dense_moments(spec, replace(setup, lora=LoraSetup(rank=16, dropout=0.0, targets=ALL)),
                                              2048, tp=1, up=mlp[-2], down=mlp[-1]), [])  # fmt: skip
    assert max(no_dropout) < max(moments)


def test_only_sdpa_past_the_window_keeps_a_mask_and_every_rank_keeps_it_whole() -> None:
    from swiftplan.planner import activations as act

    spec = catalog_spec("mistralai/Mistral-7B-v0.1")  # a 4096-token window on every block
    sdpa = _setup("lora", targets=QV, seq=8192)
    tokens = 2 * 8192
    masked = act.layer_activation_bytes(spec, sdpa, 0, tokens, 8192)
    assert masked.attention_mask == 2 * 8192 * 8192 * 2  # B × 1 × S × S in bf16
    assert (
        act.layer_activation_bytes(spec, replace(sdpa, attention="flash"), 0, tokens, 8192).attention_mask
        == 0
    )
    assert act.layer_activation_bytes(spec, replace(sdpa, seq_len=2048), 0, 4096, 2048).attention_mask == 0
    # tensor parallelism splits the heads' tensors, not the mask every head shares
    assert act.per_rank_bytes(masked, 2) - masked.attention_mask == act.per_rank_bytes(
        replace(masked, attention_mask=0), 2
    )


def test_the_non_checkpointed_moments_show_their_extra_as_the_transient() -> None:
    """The last block's forward and the final norm's backward hold their bytes beside every saved tensor: the
    breakdown's transient row carries them, and the reserved figure's per-step bytes with it."""
    from swiftplan.planner import activations as act
    from swiftplan.planner.train_memory import train_memory

    spec = catalog_spec("mistralai/Mistral-7B-v0.1")
    forward = _setup("lora", dropout=0.05, ckpt=False, seq=4096)
    device = train_memory(spec, forward).device
    assert device.peak_phase == "forward through the last block"
    # past the window, transformers' bool mask lives through the forward
    mask = act.bool_mask_bytes(spec, forward)
    assert mask == 4096 * 4096
    assert device.transient == recompute.last_block_forward_bytes(spec, forward, 2 * 4096, tp=1) + mask
    norm = _setup("lora", adapter="model", targets=QV, ckpt=False, seq=4096)
    device = train_memory(spec, norm).device
    assert device.peak_phase == "final norm backward"
    assert device.transient == recompute.final_norm_backward_bytes(spec, norm) == 5 * 2 * 4096 * 4096 * 4


def test_the_first_block_keeps_less_only_when_its_input_needs_no_gradient() -> None:
    """Its input norm's fp32 copy and rsqrt and q, k, v's dropout masks, with adapters on a frozen embedding and
    no checkpointing; nothing when the embedding trains (full, or peft's modules_to_save), or with checkpointing."""
    from swiftplan.planner import activations as act

    spec = catalog_spec("meta-llama/Llama-3.1-8B")
    tokens = 2 * 1024
    lora = _setup("lora", dropout=0.05, ckpt=False)
    assert act.first_block_unsaved_bytes(spec, lora, tokens) == tokens * (4 * 4096 + 4) + 3 * tokens * 4096
    assert act.first_block_unsaved_bytes(
        spec, replace(lora, lora=LoraSetup(dropout=0.0)), tokens
    ) == tokens * (4 * 4096 + 4)
    embedding = replace(lora, runtime=replace(lora.runtime, modules_to_save=("embed_tokens",)))
    assert act.first_block_unsaved_bytes(spec, embedding, tokens) == 0
    assert act.first_block_unsaved_bytes(spec, _setup("full", ckpt=False), tokens) == 0
    assert act.first_block_unsaved_bytes(spec, _setup("lora", dropout=0.05), tokens) == 0
    # over an int8 base, q, k and v's MatMul8bitLt keep no input either (bf16, T × h)
    int8 = _setup("lora", quant="int8", dropout=0.05, ckpt=False)
    assert act.first_block_unsaved_bytes(spec, int8, tokens) - act.first_block_unsaved_bytes(
        spec, lora, tokens
    ) == (tokens * 4096 * 2)
