"""What a checkpointed dense block holds beyond its saved tensors while backward recomputes and differentiates it.

Non-reentrant checkpointing (HF's) recomputes a block when backward first unpacks one of its saved tensors and stops
once the last one exists. Backward runs the MLP first: down_proj (its LoRA branch before its base, the branch being
created later), the SwiGLU product, then up_proj's LoRA branch. Each moment is what is alive then beyond the block's
saved tensors B (`activations.layer_activation_bytes`), besides the gradient of the block's output, alive throughout
(T × h, the stream's dtype). E = T × I.

Recompute forward:
- always the forward's locals: the residual and the MLP input (T × h each), unless B holds them (an fp32 stream's
  post-attention norm saves the residual; LoRA reading the stream without cast or dropout, or full fine-tuning,
  saves the MLP input), and the gradient waiting at the LoRA branch's output (T × h, adapter dtype);
- a 4-bit base's down_proj forward: its dequantized weight, the double-quantized absmax (fp32, one per 64 weights),
  the input's compute-dtype cast (an fp32 stream) and the output (T × h);
- up_proj's LoRA output and its scaled copy (T × 2I for a fused gate_up) beside its base output;
- lora_A's saved input being made: down_proj's base output (peft's Linear4bit clones it), the product when B does
  not hold it, and the product's adapter-dtype cast while dropout reads it (under autocast dropout's fp32 output
  too, its bf16 copy being what lora_A saves). peft's plain Linear adds an fp32 LoRA output to a bf16 base output,
  and autocast's fp32 residual add hands the MLP a bf16 gradient: the base branch's gradient is a copy, waiting.

Backward through down_proj: lora_A's input gradient; with its saved input freed, dropout's input gradient beside
it; the cast's gradient; the base's gradient beside the dequantized weight (bitsandbytes); their out-of-place sum
(three compute-dtype E's), which the product's backward keeps beside its two outputs, autocast's copy of down_proj's
weight freed by then; up_proj's LoRA branch casting the up gradient to the adapter dtype and scaling it (two E's).
Full fine-tuning makes down_proj's weight gradient beside the product's gradient; a frozen down_proj (LoRA on
attention only) recomputes at its own backward, or after it on a bitsandbytes base, whose backward saves nothing.

Traced with transformers 5.25, peft 0.21.2 and bitsandbytes 0.50.2 on fake tensors (which peak where real tensors
do, tests/test_trace_real_tensors.py). tests/test_recompute_moments.py: within 0.05 % on two blocks of Llama-3.1-8B,
Qwen2.5 and Qwen3 at 1k-8k tokens,
adapters in fp32 or bf16, with and without dropout, nf4, int8, peft's k-bit upcast, autocast and full fine-tuning;
Phi-3's fused gate_up and Mistral past its sliding window too. MoE blocks take their experts' recompute forward;
Gemma 2's norm after down_proj, autocast over bitsandbytes, GPTQ/AWQ/fp8/torchao bases, float8 training and
MoE full fine-tuning keep the coarser `activations.backward_working_bytes`, as FSDP does (its moments,
planner/fsdp_memory.py, were traced with it).
"""

from __future__ import annotations

from dataclasses import dataclass

from swiftplan.planner.adapters import is_targeted
from swiftplan.planner.architecture import Linear, layer_linears
from swiftplan.planner.dtypes import (
    activation_dtype_bytes,
    adapter_dtype,
    adapters_read_the_stream,
    compute_dtype,
    dtype_bytes,
    module_dtype,
)
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.setup import TrainSetup
from swiftplan.planner.states import state_dtypes

FP32 = 4
DOUBLE_QUANT_BLOCK = 64
"""Weights per absmax of bitsandbytes' 4-bit blockwise quantization (quantize_4bit's blocksize 64)."""
BNB_4BIT = ("nf4", "fp4")
"""Bases peft wraps in its Linear4bit, whose forward clones the base output (peft 0.21.2 tuners/lora/bnb.py:533)."""
FP32_ROUTING = ("deepseek_v2", "deepseek_v3")
"""MoE blocks whose routing weights stay fp32 (transformers 5.25 DeepseekV2/V3 routers softmax and keep fp32 top-k
weights), so the weighted sum of the experts' outputs and its backward run in fp32."""
SHARED_BEFORE_ROUTED = frozenset({"qwen2_moe"})
"""MoE blocks that run their shared expert before the routed experts (transformers 5.25 modeling_qwen2_moe.py
Qwen2MoeSparseMoeBlock.forward), so its backward comes after theirs; DeepSeek's blocks add the shared experts after
(modeling_deepseek_v2.py DeepseekV2Moe.forward), and their backward comes first."""
BNB_DEQUANTIZING = ("nf4", "fp4", "int8")
"""Bases whose backward multiplies the input gradient by a dequantized weight (bitsandbytes 0.50.2
autograd/_functions.py MatMul4Bit.backward, MatMul8bitLt.backward)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class DenseMlp:
    """Byte sizes of the tensors a dense SwiGLU block's recompute and backward juggle (per device)."""

    e_compute: int
    """One T × I tensor in the compute dtype (product, gate/up outputs, their gradients)."""
    e_adapter: int
    """One T × I tensor in the adapter dtype (lora_A's input cast, its gradients)."""
    mask: int
    """down_proj's dropout mask (bool, T × I), 0 without dropout."""
    th_stream: int
    """One T × h tensor in the stream's dtype (residual, MLP input, block-output gradient)."""
    th_compute: int
    """One T × h tensor in the compute dtype (down_proj's base output)."""
    th_adapter: int
    """One T × h tensor in the adapter dtype (the LoRA branch's output gradient)."""
    dequantized: int
    """down_proj's (or up_proj's) weight dequantized by bitsandbytes, 0 for other bases."""
    down_forward: int
    """A 4-bit base's down_proj forward: its dequantized weight, the double-quantized absmax it dequantizes first
    (fp32, one per 64 weights), its input's compute-dtype cast (an fp32 stream) and its output (T × h, compute
    dtype); 0 for other bases."""
    up_forward: int
    """A 4-bit base's up_proj forward, beyond B: its dequantized weight and absmax, with an fp32 stream its
    input's compute-dtype cast, and its compute-dtype output standing for its fp32 output among B."""


FINAL_NORM_TEMPORARIES = 5
"""fp32 T × h tensors the final RMSNorm's autograd backward holds at once over a bf16/fp16 stream (traced with
transformers 5.25's LlamaRMSNorm: the mul, div, pow, mul.Scalar and mul of (B, S, h) fp32 tensors)."""


def final_norm_backward_bytes(spec: ModelSpec, setup: TrainSetup) -> int:
    """What the final RMSNorm's backward holds beyond the saved tensors over a half-precision stream (0 over an fp32
    one, amp or peft's k-bit upcast, not traced), or when nothing below the LM head trains."""
    if stream_bytes(setup) == FP32 or not (setup.trains_adapters or setup.method == "full"):
        return 0
    return FINAL_NORM_TEMPORARIES * setup.micro_batch * setup.seq_len * spec.hidden_size * FP32


def stream_gradient_bytes(spec: ModelSpec, setup: TrainSetup, tokens: int) -> int:
    """The gradient of a block's output, alive through its recompute and backward (T × h, the stream's dtype)."""
    return tokens * spec.hidden_size * stream_bytes(setup)


def recompute_extra_bytes(
    spec: ModelSpec, setup: TrainSetup, tokens: int, *, tp: int, coarse: int, layer: int | None = None
) -> int:
    """Most bytes beyond block `layer`'s saved tensors (the last block's by default) while it is recomputed and
    differentiated, the block-output gradient included; `coarse` (backward_working_bytes, per device) where the
    moments are not modelled."""
    layer = spec.num_layers - 1 if layer is None else layer
    stream_grad = stream_gradient_bytes(spec, setup, tokens)
    if spec.is_moe_layer(layer):
        # traced with frozen experts and with LoRA on them; a full fine-tune's saved tensors already hold the
        # gathered input and the router's, so it keeps the coarse set
        if setup.method == "full":
            return stream_grad + coarse
        moe = max(
            _moe_recompute_bytes(spec, setup, tokens, tp=tp),
            moe_backward_bytes(spec, setup, tokens, tp=tp, layer=layer, recomputed=True),
        )
        # frozen experts (bf16 or under a bitsandbytes base, whose layers leave the fused experts unquantized): those
        # moments are the block's, the coarse 3 × T·k × I missing the experts' freed output (Mixtral q,v +0.5 % -> 0.00 %);
        # experts with LoRA keep the coarse set, which holds their re-materialised stacks' gradients
        frozen = not _experts_carry_lora(spec, setup, layer)
        return stream_grad + (moe if frozen else max(coarse, moe))
    dense = dense_layout(spec, setup, layer)
    if dense is None:
        return stream_grad + coarse
    up, down = dense
    # with an fp32 stream, B's fp32 copy of the input norm is the block input itself, kept anyway
    block_input_copy = stream_grad if stream_bytes(setup) == FP32 else 0
    # an int8 base's recomputed Linears keep their inputs on their autograd context again
    # (activations.int8_kept_input_bytes); of those, only the attention input is not otherwise counted here, and
    # o_proj's when it reads a contiguous copy of the SDPA output rather than the output itself (Phi-3; traced)
    int8_inputs = 1 + (1 if spec.rope_concat else 0)
    int8_attention_input = (
        int8_inputs * tokens * spec.hidden_size * activation_dtype_bytes(setup)
        if setup.quant == "int8"
        else 0
    )
    forward, backward = _dense_moments(spec, setup, tokens, tp=tp, up=up, down=down)
    return stream_grad - block_input_copy + int8_attention_input + max(forward + backward)


def last_block_forward_bytes(spec: ModelSpec, setup: TrainSetup, tokens: int, *, tp: int) -> int:
    """Without checkpointing, the most a dense last block's forward holds beyond the saved tensors of every block
    (its own included): the forward's locals and its Linears' transients (`_dense_moments` with no gradient: the
    product's adapter-dtype cast beside dropout's output and lora_B's output and its scaled copy; a 4-bit base's
    dequantizing forward; up_proj's LoRA output); a MoE block with frozen experts holds its routed copies' gather,
    weighting and return (`_moe_recompute_bytes`); 0 where the moments are not modelled. Traced on two blocks of
    Llama-3.1-8B, Qwen2.5-7B and Mistral-7B at 1k-4k tokens, bf16, autocast and an int8 base, and Qwen3-30B-A3B:
    within 0.1 % (Phi-3's fused gate_up over an int8 base within 0.35 %)."""
    last = spec.num_layers - 1
    if spec.is_moe_layer(last):
        # frozen experts: the routed copies' gather, weighting and return beside the forward's locals, as in its
        # recompute (a full fine-tune's or expert LoRA's forward is not traced moment by moment)
        plain = setup.method != "full" and setup.quant != "int8" and not setup.precision.startswith("amp-")
        frozen_experts = not _experts_carry_lora(spec, setup, last)
        return _moe_recompute_bytes(spec, setup, tokens, tp=tp) if plain and frozen_experts else 0
    dense = dense_layout(spec, setup)
    if dense is None:
        return 0
    up, down = dense
    forward, _ = _dense_moments(spec, setup, tokens, tp=tp, up=up, down=down, recompute=False)
    return max(0, *forward)


def last_block_backward_bytes(spec: ModelSpec, setup: TrainSetup, tokens: int, *, tp: int) -> int:
    """Without checkpointing, the most a dense last block's backward holds beyond the saved tensors of every block
    (its own included): the gradient of its output (T × h, the stream's dtype) and the MLP's backward moments
    (`_dense_moments`' backward: down_proj's input gradients and their sum, the product's two gradients, up_proj's
    LoRA branch). The loss-side saved tensors (the final norm's, the LM head's input) are freed by then, which the
    caller takes off; a MoE block holds its routing and experts' backward moments instead (`moe_backward_bytes`). 0
    where the moments are not modelled: autocast keeps its at-loss figure, an fp32 stream (peft's k-bit upcast) is not
    traced (MoE full fine-tuning: planner/expert_backward.py). Traced on two blocks of Qwen2.5-7B, Llama-3.1-8B,
    Qwen3-8B, Mixtral and DeepSeek-V2-Lite, bf16 and int8 bases (tests/test_recompute_moments.py)."""
    amp = setup.precision.startswith("amp-")
    trains = setup.trains_adapters or setup.method == "full"
    if amp or stream_bytes(setup) == FP32 or not trains:
        return 0
    last = spec.num_layers - 1
    if spec.is_moe_layer(last):
        if setup.method == "full":
            return 0
        return stream_gradient_bytes(spec, setup, tokens) + moe_backward_bytes(
            spec, setup, tokens, tp=tp, layer=last
        )
    dense = dense_layout(spec, setup)
    if dense is None:
        return 0
    up, down = dense
    _, backward = _dense_moments(spec, setup, tokens, tp=tp, up=up, down=down)
    return stream_gradient_bytes(spec, setup, tokens) + max(backward)


def moe_backward_bytes(
    spec: ModelSpec, setup: TrainSetup, tokens: int, *, tp: int, layer: int, recomputed: bool = False
) -> int:
    """The most MoE block `layer`'s backward holds beyond its saved tensors and its output's gradient, LoRA elsewhere
    or on the experts: first the routing-weighted sum's backward (the output gradient spread to the T·k copies, its
    products with the weights and with the experts' output; DeepSeek's fp32 routing weights make all three fp32, and
    a cast back); then, with frozen experts, the routed product's gradient and its two factors' (T·k × I each), as a
    dense block's frozen down_proj makes them, the experts' output (T·k × h, saved for the routing weights' gradient)
    freed by then (experts with LoRA have their own moments: activations.expert_lora_gradient_bytes); a shared expert
    added after the routed ones changes both (`shared_expert_backward_bytes`). Traced without checkpointing on two
    blocks of Mixtral, Qwen3-30B-A3B and DeepSeek-V2-Lite; in a checkpointed block's recompute (`recomputed`) the fp32
    spread peaks at its three fp32 copies, the cast back coming once one is freed (traced on DeepSeek-V2-Lite)."""
    moe = spec.moe
    assert moe is not None
    cb = activation_dtype_bytes(setup)
    copies = tokens * moe.experts_per_token
    product = copies * moe.expert_intermediate_size * cb // tp
    output = copies * spec.hidden_size * cb // tp
    fp32_routing = spec.model_type in FP32_ROUTING
    cast_back = output if fp32_routing and not recomputed else 0
    spread = 3 * copies * spec.hidden_size * (FP32 if fp32_routing else cb) // tp + cast_back
    routed = spread if _experts_carry_lora(spec, setup, layer) else max(3 * product - output, spread)
    return shared_expert_backward_bytes(spec, setup, tokens, tp=tp) + routed


def shared_expert_backward_bytes(spec: ModelSpec, setup: TrainSetup, tokens: int, *, tp: int) -> int:
    """What a frozen shared expert added after the routed ones (DeepSeek's) changes by the routed experts' backward:
    differentiated first, its saved tensors (three T × I_s) are freed and its input gradient (T × h) waits for the
    routed experts'. 0 without one, or one run before them (SHARED_BEFORE_ROUTED)."""
    moe = spec.moe
    if moe is None or not moe.shared_intermediate_size or spec.model_type in SHARED_BEFORE_ROUTED:
        return 0
    cb = activation_dtype_bytes(setup)
    return tokens * cb * (spec.hidden_size - 3 * moe.shared_intermediate_size) // tp


def dense_layout(
    spec: ModelSpec, setup: TrainSetup, layer: int | None = None
) -> tuple[Linear, Linear] | None:
    """(up_proj or the fused gate_up_proj, down_proj) of block `layer` (the last by default) when its moments are
    modelled, else None: MoE blocks have their own; sandwich norms (Gemma 2) put a norm after down_proj; autocast
    over bitsandbytes, other quantized bases' kernels and float8's casts are not modelled moment by moment."""
    last = spec.num_layers - 1 if layer is None else layer
    mlp = [lin for lin in layer_linears(spec, last) if lin.block == "mlp"]
    amp_bnb = setup.precision.startswith("amp-") and setup.quant in BNB_DEQUANTIZING
    untraced_base = setup.quant not in ("none", *BNB_DEQUANTIZING)  # GPTQ, AWQ, fp8, torchao NF4
    if (
        spec.is_moe_layer(last)
        or amp_bnb
        or untraced_base
        or setup.runtime.float8
        or spec.norms_per_layer != 2
        or mlp[-1].kind != "linear"
    ):
        return None
    return mlp[-2], mlp[-1]


def _experts_carry_lora(spec: ModelSpec, setup: TrainSetup, layer: int) -> bool:
    """Whether LoRA wraps block `layer`'s fused experts or router (peft's ParamWrapper)."""
    lora = setup.lora
    if not setup.trains_adapters or lora is None:
        return False
    return any(
        lin.kind in ("experts", "router") and is_targeted(lin, lora, spec.model_type)
        for lin in layer_linears(spec, layer)
    )


def _moe_recompute_bytes(spec: ModelSpec, setup: TrainSetup, tokens: int, *, tp: int) -> int:
    """A MoE block's recompute forward as its experts finish (transformers 5's grouped_mm experts): the residual and
    the MLP input, the gathered per-copy input and the routing-weighted expert output (T·k × h each), beside the
    gradient backward has already spread to the T·k copies (the weighted sum's backward, cloned). A plain forward
    holds as much: the weighted output's gather back to the tokens stands where the spread gradient was (traced)."""
    moe = spec.moe
    assert moe is not None
    routed = tokens * moe.experts_per_token * spec.hidden_size * activation_dtype_bytes(setup) // tp
    return 2 * tokens * spec.hidden_size * stream_bytes(setup) + 3 * routed


def _dense_moments(
    spec: ModelSpec,
    setup: TrainSetup,
    tokens: int,
    *,
    tp: int,
    up: Linear,
    down: Linear,
    recompute: bool = True,
) -> tuple[list[int], list[int]]:
    """Bytes beyond B at each moment of a dense SwiGLU block's recompute and backward (module docstring), as
    (forward moments, backward moments); with `recompute` False, its plain forward's moments (no gradient exists
    yet, nothing after the last saved tensor) and no backward ones."""
    sizes = _sizes(spec, setup, tokens, tp=tp, up=up, down=down)
    e, ea = sizes.e_compute, sizes.e_adapter
    lora = setup.lora
    amp = setup.precision.startswith("amp-")
    int8_kept = setup.quant == "int8" and not recompute  # MatMul8bitLt keeps its inputs among B
    forward_locals = _forward_locals(spec, setup, sizes, up, int8_kept=int8_kept)
    # under autocast the fp32 residual add hands the MLP a bf16 copy of the gradient, used up by down_proj's
    # backward, after which down_proj's bf16 weight copy (among B) is freed
    amp_grad = sizes.th_compute if amp and recompute else 0
    weight_copy = down.in_features * down.out_features * activation_dtype_bytes(setup) // tp if amp else 0
    if setup.trains_adapters and lora is not None and is_targeted(down, lora, spec.model_type):
        cast = not adapters_read_the_stream(setup)  # peft casts the product to lora_A's dtype
        dropout = lora.dropout > 0
        # lora_A saves the product itself without cast or dropout; under autocast, its bf16 copy of its input
        keeps_product = not (cast or dropout)
        saved_input = e if keeps_product or amp else ea
        freed = saved_input + sizes.mask
        # the LoRA branch's output gradient waits for lora_B's backward (autocast: lora_B's output is bf16)
        branch_grad = (sizes.th_compute if amp else sizes.th_adapter) if recompute else 0
        # peft's plain Linear adds an fp32 LoRA output to the base output: the base's gradient is a copy
        plain_cast = cast and setup.quant not in BNB_DEQUANTIZING and recompute
        base_grad = amp_grad or (sizes.th_compute if plain_cast else 0)
        # while lora_A reads it: the cast of the product (and, under autocast, dropout's output, also fp32)
        transient_inputs = (ea + (ea if dropout else 0)) if amp else (ea if cast and dropout else 0)
        # a plain forward runs on past lora_A's input (the cast still held): lora_B's output and its scaled copy; under
        # autocast with dropout, dropout's fp32 output is freed first (lora_A keeps its bf16 copy), which outweighs them
        lora_output = (
            0 if recompute or (amp and dropout) else 2 * (sizes.th_compute if amp else sizes.th_adapter)
        )
        at_lora_input = (
            forward_locals
            + sizes.th_compute  # down_proj's base output
            + branch_grad
            + base_grad
            + (0 if keeps_product or int8_kept else e)  # the product, not among B
            + transient_inputs
            + lora_output
        )
        forward = [
            at_lora_input,
            # bitsandbytes 4-bit: down_proj's base forward, its dequantized weight and output (compute dtype) beside
            # the product and its compute-dtype cast (an fp32 stream), before down_proj's own saved tensors exist
            forward_locals
            + branch_grad
            + base_grad
            + sizes.down_forward
            - (0 if keeps_product else freed - e),
        ]
        moments = [
            base_grad + (e if amp else ea),  # lora_A's input gradient
            -freed + base_grad + ea + e,  # the cast's gradient beside dropout's (or lora_A's)
            -freed + base_grad + 2 * e + sizes.dequantized,  # the base's input gradient
            -freed - weight_copy + 3 * e,  # their sum, then the product's two gradients beside it
        ]
        if amp:
            moments.append(-saved_input + base_grad + e + ea)  # autocast's bf16 copy's gradient made fp32
        if dropout:
            moments.append(-saved_input + base_grad + 2 * ea)  # dropout's input gradient beside its output's
        if is_targeted(up, lora, spec.model_type):
            element = activation_dtype_bytes(setup) if amp else dtype_bytes(adapter_dtype(setup))
            up_lora_out = tokens * up.out_features * element // tp
            # a fused gate_up runs first: the activation's output (among B) does not exist yet
            not_yet = e if up.out_features == 2 * down.in_features else 0
            if int8_kept and not keeps_product:
                not_yet += e  # nor does down_proj's int8 copy of the product (MatMul8bitLt's)
            # forward: up_proj's LoRA output and its scaled copy beside its base output (standing for the up output
            # among B), before down_proj's saved tensors exist; peft's cast of the input, dropout's input, is alive
            # until the wrapper returns (traced on Phi-3's fused gate_up, where this moment is the block's largest)
            up_input_cast = sizes.th_adapter if cast and dropout and not amp else 0
            forward.append(
                -freed
                - weight_copy
                + 2 * up_lora_out
                + up_input_cast
                + forward_locals
                + branch_grad
                + base_grad
                - not_yet
            )
            # backward, up_proj's LoRA branch: its gradient cast to the adapter dtype and scaled
            moments.append(-freed - weight_copy + (2 * ea if cast and not amp else e))
        return forward, moments
    if setup.method == "full":
        # down_proj keeps the product (in B) for its weight gradient, made beside the product's gradient and alive
        # from then on, before the rest of the block's gradients (as the FSDP moments, not summed with the others)
        weight_grad = down.in_features * down.out_features * dtype_bytes(state_dtypes(setup).gradients) // tp
        if not recompute:
            return [forward_locals], []
        return [forward_locals + amp_grad], [
            amp_grad + e + weight_grad,
            -e - weight_copy + 3 * e + weight_grad,
        ]
    if setup.quant in BNB_DEQUANTIZING:
        # a frozen bitsandbytes down_proj's backward needs no saved tensor: its input gradient exists before the
        # recompute, which ends at up_proj's forward
        ends = forward_locals + (e if recompute else 0) + sizes.up_forward
    else:
        # the recompute ends when down_proj saves its weight (under autocast, its copy), the product alive
        ends = forward_locals + amp_grad + e
    return ([ends], [-weight_copy + 3 * e]) if recompute else ([ends], [])


def mlp_forward_locals(spec: ModelSpec, setup: TrainSetup, tokens: int, *, tp: int) -> int | None:
    """Without checkpointing, what a dense last block's MLP forward holds in locals beyond B: the residual and the MLP
    input unless B holds them (`_forward_locals`). None where the block's moments are not modelled."""
    dense = dense_layout(spec, setup)
    if dense is None:
        return None
    up, down = dense
    sizes = _sizes(spec, setup, tokens, tp=tp, up=up, down=down)
    return _forward_locals(spec, setup, sizes, up, int8_kept=setup.quant == "int8")


def down_input_locals(spec: ModelSpec, setup: TrainSetup, tokens: int, *, tp: int) -> int | None:
    """Without checkpointing, what a dense last block's forward holds beyond B once down_proj's LoRA wrapper has its
    input in the adapters' dtype, before lora_A runs (`_dense_moments`' lora-input moment without down_proj's base
    output and the LoRA output): the MLP's locals, the product when B does not hold it, the product's cast while
    dropout reads it. None where the block's moments are not modelled or down_proj carries no LoRA."""
    dense = dense_layout(spec, setup)
    lora = setup.lora
    if dense is None or lora is None or not setup.trains_adapters or setup.precision.startswith("amp-"):
        return None
    up, down = dense
    if not is_targeted(down, lora, spec.model_type):
        return None
    sizes = _sizes(spec, setup, tokens, tp=tp, up=up, down=down)
    cast = not adapters_read_the_stream(setup)
    dropout = lora.dropout > 0
    int8_kept = setup.quant == "int8"
    product = 0 if not (cast or dropout) or int8_kept else sizes.e_compute
    cast_beside_dropout = sizes.e_adapter if cast and dropout else 0
    return _forward_locals(spec, setup, sizes, up, int8_kept=int8_kept) + product + cast_beside_dropout


def _forward_locals(
    spec: ModelSpec, setup: TrainSetup, sizes: DenseMlp, up: Linear, *, int8_kept: bool
) -> int:
    """What the forward's locals hold beyond B through the MLP: the residual (with an fp32 stream, the
    post-attention norm's saved input, among B) and the MLP input (among B when gate/up save it: full fine-tuning,
    LoRA reading the stream itself, without cast or dropout, or, not recomputed, an int8 base's MatMul8bitLt)."""
    residual = 0 if stream_bytes(setup) == FP32 else sizes.th_stream
    lora = setup.lora
    mlp_input_saved = (
        setup.method == "full"
        or int8_kept
        or (
            setup.trains_adapters
            and lora is not None
            and is_targeted(up, lora, spec.model_type)
            and adapters_read_the_stream(setup)
            and lora.dropout == 0
            and not setup.precision.startswith("amp-")
        )
    )
    return residual + (0 if mlp_input_saved else sizes.th_stream)


def _sizes(spec: ModelSpec, setup: TrainSetup, tokens: int, *, tp: int, up: Linear, down: Linear) -> DenseMlp:
    width = down.in_features
    cb = activation_dtype_bytes(setup)
    ab = dtype_bytes(adapter_dtype(setup))
    h = spec.hidden_size
    dequantized = 0
    if setup.quant in BNB_DEQUANTIZING:
        element = cb if setup.quant == "int8" else dtype_bytes(compute_dtype(setup.precision))
        dequantized = h * width * element // tp
    dropout = setup.lora is not None and setup.lora.dropout > 0
    down_forward = up_forward = 0
    compute = dtype_bytes(compute_dtype(setup.precision))
    if setup.quant in BNB_4BIT:  # MatMul4Bit.forward: F.linear(A, dequantize_4bit(B).to(A.dtype).t())
        recast = cb != compute  # Linear4bit casts its input to the compute dtype, its output back
        for lin in (up, down):
            weight = lin.in_features * lin.out_features
            absmax = weight * FP32 // DOUBLE_QUANT_BLOCK if setup.double_quant else 0
            # tensor parallelism splits the weight and down_proj's input, not up_proj's (the whole T × h)
            cast_input = tokens * lin.in_features * compute // (tp if lin is down else 1) if recast else 0
            common = (weight * compute + absmax) // tp + cast_input
            if lin is down:
                down_forward = common + tokens * lin.out_features * compute
            else:
                up_forward = common - (tokens * lin.out_features * (cb - compute) // tp if recast else 0)
    return DenseMlp(
        down_forward=down_forward,
        up_forward=up_forward,
        e_compute=tokens * width * cb // tp,
        e_adapter=tokens * width * ab // tp,
        mask=tokens * width // tp if dropout else 0,
        th_stream=tokens * h * stream_bytes(setup),
        th_compute=tokens * h * cb,
        th_adapter=tokens * h * ab,
        dequantized=dequantized,
    )


def stream_bytes(setup: TrainSetup) -> int:
    """The residual stream's element size: the module dtype (fp32 under amp or peft's k-bit upcast)."""
    return max(dtype_bytes(module_dtype(setup)), activation_dtype_bytes(setup))
