"""Bytes of the base model's weights on one device, by dtype and quantization scheme.

Which modules a scheme quantizes follows the libraries: bitsandbytes (transformers'
`replace_with_bnb_linear`) and GPTQ/AWQ replace `nn.Linear` layers in the blocks only;
embeddings, the LM head, norms, routers and (transformers v5) fused expert tensors stay in
the compute dtype. vLLM's fp8 also quantizes the routed experts (Fp8MoEMethod), so serving
passes `quantize_experts`; an fp8 checkpoint's own config (planner/checkpoint_quant.py) says
which modules stay in the compute dtype and how its scales are laid out.
"""

from __future__ import annotations

from functools import cache

from swiftplan.planner.architecture import (
    Linear,
    embedding_params,
    final_norm_params,
    layer_buffer_elements,
    layer_linears,
    layer_vector_params,
    lm_head_params,
)
from swiftplan.planner.checkpoint_quant import CheckpointQuant
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.setup import Quant

BNB_4BIT_BLOCK = 64
"""bitsandbytes 4-bit quantizes in blocks of 64 weights, one absmax per block (Dettmers et al. 2023, §3)."""
BNB_DOUBLE_QUANT_BLOCK = 256
"""Double quantization stores absmax as 8-bit with one fp32 constant per 256 absmax values (QLoRA paper §3)."""
GPTQ_AWQ_GROUP = 128
"""Default group size of GPTQ/AWQ checkpoints: one fp16 scale and one 4-bit zero per 128 input rows."""
TORCHAO_NF4_BLOCK = 64
"""torchao `to_nf4` block_size: one double-quantized scaler per 64 weights."""
TORCHAO_NF4_SCALER_BLOCK = 256
"""torchao `to_nf4` scaler_block_size: one quantization factor per 256 scalers."""
TORCHAO_NF4_SOURCE = (
    "pytorch/ao @ 36027d8 (torchao 0.18) torchao/quantization/quantize_/workflows/nf4/nf4_tensor.py "
    "(to_nf4(block_size=64, scaler_block_size=256); NF4Tensor.from_tensor, double_quantize_scalers), as "
    "torchtune @ bd2a0fc builds its QLoRA base (torchtune/modules/peft/lora.py linear_nf4, FrozenNF4Linear); "
    "checked against torchao's to_nf4 (tests/test_runtime_features.py)"
)


def torchao_nf4_bytes(elements: int, dtype_bytes: int = 2) -> int:
    """Bytes of one torchao NF4Tensor of `elements` weights quantized from a `dtype_bytes` tensor (bf16 in
    torchtune): 4-bit codes (quantized_data, uint8, n/2), one int8 double-quantized scaler per 64 weights
    (quantized_scalers, n/64), one quantization factor per 256 scalers and the scaler mean in the weight's
    dtype, and the 16-entry NF4 table in it: n/2 + n/64 + (n/16384 + 17) × dtype bytes ≈ 0.516 B/weight.
    Source: `TORCHAO_NF4_SOURCE`."""
    blocks = -(-elements // TORCHAO_NF4_BLOCK)
    factors = -(-blocks // TORCHAO_NF4_SCALER_BLOCK)
    return -(-elements // 2) + blocks + (factors + 1 + 16) * dtype_bytes


def fp8_scale_bytes(linear: Linear, checkpoint: CheckpointQuant | None = None) -> int:
    """fp32 scales of one copy of an fp8 weight (source: checkpoint_quant.FP8_CONFIG_SOURCE): one per
    tensor (vLLM's in-flight fp8 and per-tensor checkpoints; a fused expert gate/up keeps one per
    shard), one per output row (compressed-tensors 'channel'), or one per weight_block (e.g. 128 × 128);
    plus one input scale with static activation scales."""
    if checkpoint is None or checkpoint.scales == "tensor":
        scales = 2 if linear.kind == "experts" and linear.name.endswith("gate_up_proj") else 1
    elif checkpoint.scales == "channel":
        scales = linear.out_features
    else:
        assert checkpoint.weight_block is not None
        rows, cols = checkpoint.weight_block
        scales = -(-linear.out_features // rows) * -(-linear.in_features // cols)
    static = 1 if checkpoint is not None and checkpoint.static_activations else 0
    return 4 * (scales + static)


def quantized_linear_bytes(
    linear: Linear, quant: Quant, *, double_quant: bool = True, checkpoint: CheckpointQuant | None = None
) -> int:
    """Bytes of one quantized nn.Linear (weight, its constants, and its bias in 16-bit).

    - nf4/fp4: 0.5 B/weight + absmax per 64 weights: fp32 (4 B), or with double quant 1 B plus
      one fp32 per 256 blocks (≈ 0.127 bit/weight instead of 0.5, as in the QLoRA paper).
    - int8 (LLM.int8): 1 B/weight + one fp32 row scale (SCB) per output feature.
    - gptq/awq: 4-bit packed weights + per group of 128 inputs an fp16 scale and a 4-bit zero
      per output; GPTQ also keeps g_idx (int32 per input row).
    - fp8: 1 B/weight + fp32 scales (`fp8_scale_bytes`: per tensor unless `checkpoint` says otherwise).
    - nf4-torchao: torchao's NF4Tensor (`torchao_nf4_bytes`, bf16 constants).
    """
    weights = linear.in_features * linear.out_features
    bias = 2 * linear.out_features if linear.bias else 0
    if quant in ("nf4", "fp4"):
        blocks = -(-weights // BNB_4BIT_BLOCK)
        absmax = blocks + 4 * -(-blocks // BNB_DOUBLE_QUANT_BLOCK) if double_quant else 4 * blocks
        per_copy = weights // 2 + absmax
    elif quant == "int8":
        per_copy = weights + 4 * linear.out_features
    elif quant in ("gptq", "awq"):
        groups = -(-linear.in_features // GPTQ_AWQ_GROUP)
        per_copy = weights // 2 + groups * linear.out_features * 2 + groups * linear.out_features // 2
        if quant == "gptq":
            per_copy += 4 * linear.in_features
    elif quant == "fp8":
        per_copy = weights + fp8_scale_bytes(linear, checkpoint)
    elif quant == "nf4-torchao":
        per_copy = torchao_nf4_bytes(weights)
    else:
        raise ValueError(f"not a quantized format: {quant}")
    return linear.count * (per_copy + bias)


def is_quantized(linear: Linear, quant: Quant, *, quantize_experts: bool = False) -> bool:
    """Whether `quant` replaces this module: plain nn.Linear layers, and the fused routed experts too
    with `quantize_experts` (vLLM's Fp8MoEMethod; bitsandbytes and GPTQ/AWQ in transformers leave them)."""
    if quant == "none":
        return False
    return linear.kind == "linear" or (quantize_experts and linear.kind == "experts")


def module_path(spec: ModelSpec, layer: int, linear: Linear) -> str:
    """The module's full name as vLLM matches it against a checkpoint's ignored layers: e.g.
    model.layers.3.self_attn.q_proj, model.layers.3.mlp.down_proj, and for the fused routed experts the
    RoutedExperts module itself (model.layers.3.mlp.experts; Mixtral's block_sparse_moe.experts)."""
    block = "self_attn" if linear.block == "attention" else "mlp"
    if spec.model_type == "mixtral" and linear.block == "mlp":
        block = "block_sparse_moe"
    name = "experts" if linear.kind == "experts" else linear.name
    return f"model.layers.{layer}.{block}.{name}"


@cache
def layer_weight_bytes(
    spec: ModelSpec,
    layer: int,
    *,
    dtype_bytes: int,
    quant: Quant,
    double_quant: bool,
    tp: int = 1,
    quantize_experts: bool = False,
    checkpoint: CheckpointQuant | None = None,
) -> int:
    """Bytes of block `layer` on one tensor-parallel rank: matrices split by `tp`, vectors replicated.

    `quantize_experts`: the routed experts are quantized too (vLLM fp8). `checkpoint`: an fp8 checkpoint's
    own layout; modules it ignores stay in the compute dtype and its scales follow `fp8_scale_bytes`."""
    total = (layer_vector_params(spec, layer) + layer_buffer_elements(spec, layer)) * dtype_bytes
    for linear in layer_linears(spec, layer):
        if is_quantized(linear, quant, quantize_experts=quantize_experts) and not (
            checkpoint is not None and checkpoint.ignores(module_path(spec, layer, linear))
        ):
            total += (
                quantized_linear_bytes(linear, quant, double_quant=double_quant, checkpoint=checkpoint) // tp
            )
        else:
            total += linear.params * dtype_bytes // tp
    return total


def outer_weight_bytes(spec: ModelSpec, *, dtype_bytes: int, tp: int = 1) -> int:
    """Embedding, LM head and final norm (never quantized), with vocab rows split by `tp`."""
    return (embedding_params(spec) + lm_head_params(spec)) * dtype_bytes // tp + final_norm_params(
        spec
    ) * dtype_bytes


BNB_QUANT_STATE_SOURCE = (
    "bitsandbytes @ 95f9af30 bitsandbytes/nn/modules.py: Params4bit keeps absmax and the nested state in its "
    "quant_state, not in the tensor's data; FSDP flattens only the data (in bnb_4bit_quant_storage), and "
    "fix_4bit_weight_quant_state_from_module restores the state from module.quant_state ('the quant state "
    "got lost when the parameter got converted. This happens for example for fsdp'), so every rank holds it whole"
)


def bnb_quant_state_bytes(
    spec: ModelSpec, layers: range, *, quant: Quant, double_quant: bool, tp: int = 1
) -> int:
    """Bytes of the bitsandbytes 4-bit constants (absmax, the nested quantization's) of the blocks in `layers`:
    what sharding (FSDP, ZeRO-3) leaves whole on every rank. 0 for other schemes. Source: `BNB_QUANT_STATE_SOURCE`."""
    if quant not in ("nf4", "fp4"):
        return 0
    total = 0
    for layer in layers:
        for linear in layer_linears(spec, layer):
            if is_quantized(linear, quant):
                packed = linear.count * (linear.in_features * linear.out_features // 2)
                bias = linear.count * 2 * linear.out_features if linear.bias else 0
                total += (
                    quantized_linear_bytes(linear, quant, double_quant=double_quant) - packed - bias
                ) // tp
    return total
