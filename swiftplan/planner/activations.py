"""Activation and logits memory of one training step: the tensors autograd saves for backward.

The terms follow what transformers (v5) + peft keep alive in a decoder block, tensor by tensor,
and were checked against the fake-tensor tracer (`swiftplan verify`). Notation: T = tokens on
the device (micro-batch × sequence), h = hidden size, q/kv = query/key-value projection widths,
I = MLP width, r = LoRA rank; `cb` = bytes of the compute dtype. All functions return bytes.

Rules used throughout (PyTorch autograd):
- a Linear saves its input only when its weight is trainable (full fine-tuning);
- a LoRA-wrapped Linear (peft) casts its input to the adapter dtype (fp32 by default) and saves
  that copy for lora_A (with dropout > 0 it saves the dropout mask and the dropped copy instead),
  and lora_B saves lora_A's output (T × r, adapter dtype); with adapters in the model dtype
  (`runtime.adapter_dtype` "model") there is no cast, so lora_A saves the tensor itself;
- RMSNorm (HF) upcasts to fp32 and saves that copy plus the fp32 rsqrt (one per token);
  with a trainable weight it also saves the normalised bf16 tensor;
- SDPA/flash attention saves q, k, v, the output and a logsumexp (fp32 per head and token);
  eager attention also keeps the softmax probabilities (heads × s × s);
- SwiGLU saves gate output (for SiLU), SiLU output and up output (for the product), and the
  product itself when down_proj is trainable.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from swiftplan.planner import fused_head
from swiftplan.planner.adapters import is_targeted, lora_params_for
from swiftplan.planner.architecture import Linear, layer_linears
from swiftplan.planner.dora import dora_first_block_unsaved_bytes, dora_saved_bytes
from swiftplan.planner.dora_moments import dora_recompute_extra_bytes
from swiftplan.planner.dtypes import (
    activation_dtype_bytes,
    adapter_dtype,
    adapters_read_the_stream,
    compute_dtype,
    dtype_bytes,
    module_dtype,
)
from swiftplan.planner.lora_saves import BOOL, linear_saves
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.padding import padding_masked
from swiftplan.planner.recompute import BNB_DEQUANTIZING, recompute_extra_bytes, stream_bytes
from swiftplan.planner.runtime_features import (
    float8_cast_bytes,
    offloaded_saved,
    selective_saved,
)
from swiftplan.planner.runtime_terms import (
    chunked_loss_bytes,
    fused_linear_loss_bytes,
    legacy_loss_bytes,
    saved_module_activation_bytes,
)
from swiftplan.planner.setup import TrainSetup

FP32 = 4
INT64 = 8


@dataclass(frozen=True, kw_only=True, slots=True)
class LayerActivations:
    """Bytes one decoder block keeps for backward, split by where they come from."""

    norms: int
    """RMSNorm fp32 copies and rsqrt factors."""
    linear_inputs: int
    """Inputs saved by trainable Linears (full fine-tuning), shared per distinct input."""
    lora: int
    """peft's input copies in the adapter dtype, dropout masks and lora_A outputs."""
    attention: int
    """q, k, v, attention output (+ logsumexp, or the probabilities for eager)."""
    mlp: int
    """SwiGLU intermediates."""
    moe: int
    """Routing logits/weights and the per-expert token copies of MoE layers."""
    weight_copies: int = 0
    """amp only: autocast's cached bf16/fp16 copies of the block's weights, saved by each matmul."""
    attention_mask: int = 0
    """SDPA's additive mask past a sliding window or for a padded batch (`_sdpa_mask_bytes`), whole on every
    tensor-parallel rank."""
    dora: int = 0
    """DoRA: each wrapped Linear's base output and lora_B output, kept for the magnitude's gradient
    (planner/dora.py)."""

    @property
    def total(self) -> int:
        """All saved bytes of the block."""
        return (
            self.norms
            + self.linear_inputs
            + self.lora
            + self.attention
            + self.mlp
            + self.moe
            + self.weight_copies
            + self.attention_mask
            + self.dora
        )


_OUTPUT_PROJECTIONS = frozenset({"o_proj", "wo", "dense", "c_proj", "down_proj", "w2", "dense_4h_to_h"})


def _reads_saved_tensor(linear: Linear) -> bool:
    """True for output projections, whose input autograd already keeps for another op."""
    return linear.name.rsplit(".", 1)[-1] in _OUTPUT_PROJECTIONS


def int8_kept_input_bytes(spec: ModelSpec, setup: TrainSetup, tokens: int, *, checkpointed: bool) -> int:
    """Bytes one block's bitsandbytes int8 Linears keep on their autograd context: MatMul8bitLt stores its input
    as `ctx.tensors` (bitsandbytes 0.50.2 autograd/_functions.py), an attribute that saved-tensor hooks never
    see, so activation checkpointing cannot drop it. One tensor per distinct input in the stream dtype: the
    attention input (shared by q, k, v), the attention output (o_proj's; the SDPA op keeps it anyway unless the
    block is checkpointed), the MLP input (gate, up) and the SwiGLU product (down). Without checkpointing, less
    what a LoRA wrapper already keeps as the same tensor (dropout 0, adapters in the stream's dtype). 0 for other
    bases. Traced with bitsandbytes' own Linear8bitLt (executors/trace_quant.py): Llama-2-7B int8 LoRA at 1024
    tokens, with and without checkpointing and peft's fp32 preparation, the peak within 0.4 %."""
    if setup.quant != "int8":
        return 0
    kept = _int8_kept_inputs(spec, setup, checkpointed=checkpointed)
    return tokens * activation_dtype_bytes(setup) * sum(kept.values())


def _int8_kept_inputs(
    spec: ModelSpec, setup: TrainSetup, *, checkpointed: bool
) -> dict[tuple[str, bool], int]:
    """The widths of the inputs one block's int8 Linears keep beyond the block's other saved tensors, by (block part,
    reads a tensor another op saves) (`int8_kept_input_bytes`)."""
    same_tensor = (  # a checkpointed block's LoRA keeps nothing, so nothing is shared then
        not checkpointed
        and setup.lora is not None
        and setup.lora.dropout == 0
        and not setup.precision.startswith("amp-")
        and adapters_read_the_stream(setup)
    )
    kept: dict[tuple[str, bool], int] = {}
    lora_reads: set[tuple[str, bool]] = set()
    for linear in layer_linears(spec, 0):
        if linear.kind != "linear" or linear.count != 1:
            continue
        key = (linear.block, _reads_saved_tensor(linear))
        kept[key] = linear.in_features
        if same_tensor and setup.lora is not None and is_targeted(linear, setup.lora, spec.model_type):
            lora_reads.add(key)
    return {
        key: width
        for key, width in kept.items()
        # o_proj's input is the SDPA output, which the SDPA op keeps anyway, unless it is a contiguous copy (Phi-3)
        if key not in lora_reads and (checkpointed or key != ("attention", True) or spec.rope_concat)
    }


def layer_activation_bytes(
    spec: ModelSpec, setup: TrainSetup, layer: int, tokens: int, seq_len: int
) -> LayerActivations:
    """Bytes decoder block `layer` saves for backward when `tokens` tokens pass through it."""
    # Blocks differ only in dense vs MoE MLP: compute once per kind (memoised), not per layer.
    return _layer_activation_bytes(spec, setup, _representative_layer(spec, layer), tokens, seq_len)


@cache
def _representative_layer(spec: ModelSpec, layer: int) -> int:
    """The first block with the same layout as `layer` (dense or MoE)."""
    return next(i for i in range(spec.num_layers) if spec.is_moe_layer(i) == spec.is_moe_layer(layer))


@cache
def _layer_activation_bytes(
    spec: ModelSpec, setup: TrainSetup, layer: int, tokens: int, seq_len: int
) -> LayerActivations:
    cb = activation_dtype_bytes(setup)
    full = setup.method == "full"
    amp = setup.precision.startswith("amp-")
    h = spec.hidden_size
    # fp32 copy (the fp32 residual itself under amp) + rsqrt; a trainable weight also keeps the
    # normalised tensor (in the compute dtype, or fp32 under amp).
    norm_per_token = FP32 * h + FP32 + ((FP32 if amp else cb) * h if full else 0)
    norms = spec.norms_per_layer * tokens * norm_per_token
    if spec.qk_norm:
        heads = spec.num_heads + spec.num_kv_heads
        norms += tokens * heads * (FP32 * spec.head_dim + FP32 + (cb * spec.head_dim if full else 0))

    linear_inputs = 0
    lora = 0
    seen_inputs: set[tuple[str | int, ...]] = set()
    for linear in layer_linears(spec, layer):
        if linear.kind != "linear":
            continue
        saved, lora_saved = linear_saves(linear, setup, tokens, cb, spec.model_type)
        ab = dtype_bytes(adapter_dtype(setup))
        if (
            lora_saved
            and setup.lora is not None
            and adapters_read_the_stream(setup)
            and not amp
            and setup.lora.dropout == 0
        ):
            # Activations already in the adapter dtype (fp32 ones with fp32 adapters, or adapters in the model
            # dtype) and no dropout: peft's cast is a no-op, so the Linears reading one tensor (q and v) keep
            # that same tensor once; only lora_A's output is theirs.
            own = tokens * ab * setup.lora.rank
            lora_key = ("lora", linear.block, linear.in_features, _reads_saved_tensor(linear))
            # o_proj reads the SDPA output, or with rope_concat a contiguous copy of it (its own)
            already_kept = (
                _reads_saved_tensor(linear) and linear.block == "attention" and not spec.rope_concat
            )
            if already_kept or lora_key in seen_inputs:
                lora_saved = own
            seen_inputs.add(lora_key)
        lora += lora_saved
        # Output projections read tensors other ops already keep (the SDPA output, the SwiGLU
        # product); the others read a norm output, shared by the Linears that read it (q/k/v, gate/up).
        if saved and not _reads_saved_tensor(linear):
            # MLA's b projections read their latent's norm output, never a tensor another Linear reads
            own_input = amp or linear.name.endswith(("kv_b_proj", "q_b_proj"))
            key = (linear.name, linear.in_features) if own_input else (linear.block, linear.in_features)
            if key not in seen_inputs:
                seen_inputs.add(key)
                linear_inputs += saved

    if not setup.grad_ckpt:
        linear_inputs += int8_kept_input_bytes(spec, setup, tokens, checkpointed=False)
    attention = _attention_bytes(spec, setup, tokens, seq_len, cb)
    mlp, moe = _mlp_bytes(spec, setup, layer, tokens, cb)
    weight_copies = _autocast_weight_copies(spec, setup, layer, cb) if amp else 0
    return LayerActivations(
        norms=norms,
        linear_inputs=linear_inputs,
        lora=lora,
        attention=attention,
        mlp=mlp,
        moe=moe,
        weight_copies=weight_copies,
        attention_mask=_sdpa_mask_bytes(spec, setup, seq_len, cb),
        dora=dora_saved_bytes(spec, setup, layer, tokens),
    )


def _autocast_weight_copies(spec: ModelSpec, setup: TrainSetup, layer: int, cb: int) -> int:
    """Autocast caches a low-precision copy of each fp32 weight a matmul uses, and the matmul keeps
    it for the input gradient: every block matrix (frozen or not) and every LoRA A/B. (Traced:
    `_to_copy` of each weight alive at the peak.)"""
    params = sum(lin.params for lin in layer_linears(spec, layer))
    if setup.trains_adapters and setup.lora is not None:
        params += sum(
            lora_params_for(lin, setup.lora)
            for lin in layer_linears(spec, layer)
            if is_targeted(lin, setup.lora, spec.model_type)
        )
    return params * cb


def _attention_bytes(spec: ModelSpec, setup: TrainSetup, tokens: int, seq_len: int, cb: int) -> int:
    """q and k after RoPE, v, the output, and the kernel's own saved state.

    SDPA/flash keeps an fp32 logsumexp per head and token. Eager attention (or a model that only
    has it, Gemma 2) repeats k and v to every query head, and keeps the fp32 softmax, its cast to
    the compute dtype and, with soft-capping, the tanh output: per token heads × seq scores each.
    A fused qkv projection (Phi-3) makes v a view of the qkv output, which keeps it all alive.
    """
    q, kv = spec.q_dim, spec.kv_dim
    v_saved = (q + 2 * kv) if spec.fused_qkv else kv
    if spec.mla is not None:
        return _mla_bytes(spec, setup, tokens, cb)
    if setup.attention == "eager" or spec.eager_attention_only:
        scores = spec.num_heads * seq_len  # per token: one row of S scores per head
        # the fp32 softmax, and its cast to the compute dtype unless that is fp32 too (peft's k-bit upcast)
        per_score = FP32 + (cb if cb != FP32 else 0) + (cb if spec.attn_logit_softcapping else 0)
        repeated = 3 * q  # q, and k and v repeated to every query head
        output = q if setup.method == "full" else 0  # o_proj's input is a fresh copy, kept when o_proj trains
        return tokens * (cb * (repeated + output) + scores * per_score)
    output_copy = q if spec.rope_concat and setup.method == "full" else 0  # o_proj's contiguous input
    k_saved = kv
    if sdpa_masked(spec, setup, seq_len):
        # transformers hands SDPA an S × S mask: k and v then come repeated to every query head (use_gqa_in_sdpa
        # needs no mask; repeat_kv copies), and SDPA turns the bool mask into an additive one in the compute dtype
        # (aten convert_boolean_attn_mask), which the memory-efficient kernel keeps for backward, per block
        k_saved = q
        v_saved = v_saved if spec.fused_qkv else q
    return tokens * cb * (q + k_saved + v_saved + q + output_copy) + tokens * spec.num_heads * FP32


def _sdpa_mask_bytes(spec: ModelSpec, setup: TrainSetup, seq_len: int, cb: int) -> int:
    """Past a sliding window or with padding, the additive B × 1 × S × S mask SDPA makes from transformers' bool
    one (aten convert_boolean_attn_mask) and its memory-efficient kernel keeps for backward, per block; the same
    on every head, so tensor parallelism does not split it."""
    return setup.micro_batch * seq_len * seq_len * cb if sdpa_masked(spec, setup, seq_len) else 0


def sdpa_masked(spec: ModelSpec, setup: TrainSetup, seq_len: int) -> bool:
    """True when transformers hands every block's SDPA a mask: past a sliding window, or for a padded batch
    (`padding.padding_masked`)."""
    return sliding_window_masked(spec, setup, seq_len) or padding_masked(spec, setup)


def sliding_window_masked(spec: ModelSpec, setup: TrainSetup, seq_len: int) -> bool:
    """True when every block attends through SDPA with a sliding window that `seq_len` reaches: transformers 5.25
    then materialises the mask instead of letting SDPA run causal (masking_utils.sdpa_mask skips it only while the
    sequence is shorter than the window); flash attention takes the window as an argument and builds none."""
    window = spec.sliding_window
    return (
        window is not None
        and seq_len >= window
        and spec.sliding_window_layers == spec.num_layers
        and setup.attention == "sdpa"
        and not spec.eager_attention_only
    )


def _mla_bytes(spec: ModelSpec, setup: TrainSetup, tokens: int, cb: int) -> int:
    """Multi-head latent attention as transformers 5 runs it (DeepseekV2Attention): q and k after RoPE, the
    kv_b projection's output (value_states is a view of it, so its k_nope half stays too), the output and the
    kernel's fp32 logsumexp; the latents' RMSNorms (kv_a_layernorm, and q_a_layernorm with a q LoRA rank) keep an
    fp32 copy and rsqrt, and the normalised copy when their weights train (the b projections' inputs are linear
    inputs). Traced on fake tensors (tests/test_moe_activations.py)."""
    mla = spec.mla
    assert mla is not None
    heads = spec.num_heads
    q = heads * (mla.qk_nope_head_dim + mla.qk_rope_head_dim)
    k = q
    kv_b_out = heads * (mla.qk_nope_head_dim + mla.v_head_dim)
    v = heads * mla.v_head_dim
    ranks = mla.kv_lora_rank + (mla.q_lora_rank or 0)
    norms = ranks * FP32 + FP32 * (2 if mla.q_lora_rank else 1)
    if setup.method == "full":
        norms += ranks * cb  # the normalised copy the norm's weight gradient reads
    return tokens * cb * (q + k + kv_b_out + v) + tokens * heads * FP32 + tokens * norms


FP32_ROUTERS = frozenset({"deepseek_v2", "deepseek_v3"})
"""Models whose router runs `F.linear(hidden_states.type(torch.float32), self.weight.type(torch.float32))`
(transformers 5.25 modeling_deepseek_v2.py / modeling_deepseek_v3.py TopkRouter.forward)."""


def _mlp_bytes(spec: ModelSpec, setup: TrainSetup, layer: int, tokens: int, cb: int) -> tuple[int, int]:
    full = setup.method == "full"
    if not spec.is_moe_layer(layer):
        width = spec.intermediate_size
        return tokens * cb * width * (4 if full else 3), 0
    moe = spec.moe
    assert moe is not None
    routed = tokens * moe.experts_per_token
    width, h = moe.expert_intermediate_size, spec.hidden_size
    # Per routed token copy (transformers 5's grouped_mm experts, integrations/moe.py): the gate_up output (2I,
    # kept by the SwiGLU through its chunks), the activation (I) and the expert output the routing weight
    # multiplies (H); trained experts also keep the gathered input (H) and the SwiGLU product (I) for their
    # weight gradients, as do experts whose stacks carry LoRA (`expert_lora_stacks`, kept with their factors' casts).
    stacks = expert_lora_stacks(spec, setup, layer)
    trained = full or bool(stacks)
    experts = routed * cb * (4 * width + 2 * h if trained else 3 * width + h)
    experts += sum(stacks) + expert_lora_factor_copies(spec, setup, layer)
    # the router's fp32 probabilities per expert; per routed copy the top-k index, the sort permutation, the
    # gather index and its inverse (int64 each) and the routing weight; a trained router keeps its input.
    # DeepSeek's routers compute in fp32 (an fp32 copy of the input, fp32 routing weights); otherwise a shared
    # expert reads the router's input too and already keeps it (a linear input)
    rb = FP32 if spec.model_type in FP32_ROUTERS else cb
    own_input = trained and (rb == FP32 or not moe.shared_intermediate_size)
    router = (
        tokens * moe.num_experts * FP32 + routed * (4 * INT64 + rb) + (tokens * h * rb if own_input else 0)
    )
    if moe.router_bias:  # DeepSeek-V3 divides its fp32 top-k weights by their sum in place: both are kept
        router += tokens * FP32 + routed * FP32
    shared = tokens * cb * moe.shared_intermediate_size * (4 if full else 3)
    if moe.shared_expert_gate:  # Qwen2-MoE: sigmoid(gate) × the shared expert's output keeps both
        shared += tokens * cb * (h + 1)
    return shared, experts + router


def expert_lora_stacks(spec: ModelSpec, setup: TrainSetup, layer: int) -> tuple[int, ...]:
    """Bytes of each router or fused expert parameter of MoE block `layer` that carries LoRA, in forward order: peft's
    ParamWrapper re-materialises each as a whole, `baddbmm(W, lhs, rhs)` under `nn.utils.parametrize` (peft 0.21.2
    tuners/lora/layer.py `_LoraFactorsProxy`), in the parameter's dtype, and the grouped matmul saves it for its input
    gradient until the block's backward, which makes its gradient, as large, one parameter at a time."""
    lora = setup.lora
    if not setup.trains_adapters or lora is None or not spec.is_moe_layer(layer):
        return ()
    wb = dtype_bytes(module_dtype(setup))
    return tuple(
        lin.params * wb
        for lin in layer_linears(spec, layer)
        if lin.kind in ("experts", "router") and is_targeted(lin, lora, spec.model_type)
    )


def expert_lora_factor_copies(spec: ModelSpec, setup: TrainSetup, layer: int) -> int:
    """The LoRA factors of block `layer`'s fused expert stacks cast to the stacks' dtype for the `baddbmm` that
    folds them in (`get_delta_factors`' `lhs.to(param.dtype)`), which saves them: with adapters in another dtype
    than the experts (peft's fp32 on bf16), their size in the experts' dtype; none otherwise."""
    lora = setup.lora
    if (
        not expert_lora_stacks(spec, setup, layer)
        or lora is None
        or adapter_dtype(setup) == module_dtype(setup)
    ):
        return 0
    wb = dtype_bytes(module_dtype(setup))
    return sum(
        lora_params_for(lin, lora) * wb
        for lin in layer_linears(spec, layer)
        if lin.kind == "experts" and is_targeted(lin, lora, spec.model_type)
    )


def expert_lora_gradient_bytes(spec: ModelSpec, setup: TrainSetup, tokens: int) -> int:
    """The most the last block's backward adds for its re-materialised expert parameters (`expert_lora_stacks`):
    the gradient of each, made last-first (the later ones' stacks and gradients freed by then), beside the gradient
    of the down projection's input (per routed copy, I in the compute dtype; the expert output's gradient stands in
    for the expert output the routing weight's product freed)."""
    stacks = expert_lora_stacks(spec, setup, _representative_layer(spec, spec.num_layers - 1))
    if not stacks:
        return 0
    moe = spec.moe
    assert moe is not None
    copies = tokens * moe.experts_per_token * moe.expert_intermediate_size
    return max(
        stack - sum(stacks[i + 1 :]) for i, stack in enumerate(stacks)
    ) + copies * activation_dtype_bytes(setup)


def swiglu_tensor_bytes(spec: ModelSpec, setup: TrainSetup, tokens: int) -> int:
    """One T × I tensor of the SwiGLU (the routed experts' and shared widths for MoE) in the stream's dtype."""
    width = spec.intermediate_size
    if spec.moe is not None:
        width = (
            spec.moe.expert_intermediate_size * spec.moe.experts_per_token + spec.moe.shared_intermediate_size
        )
    return tokens * width * activation_dtype_bytes(setup)


def backward_working_bytes(spec: ModelSpec, setup: TrainSetup, tokens: int) -> int:
    """Gradients the SwiGLU backward holds at once (w.r.t. the product, the up and the gate
    outputs): 3 × T × I in the compute dtype; with a bitsandbytes base, a projection's input-gradient
    matmul holds its dequantized weight beside the one T × I gradient it multiplies, when that is more
    (`dequantized_weight_bytes`; traced on Llama-2-7B NF4 at 256-4096 tokens: the peak within 0.2 %).
    The coarse working set of a block's backward: selective checkpointing and offloading use it, and a
    checkpointed block's recompute where `recompute.recompute_extra_bytes` does not model its moments (MoE,
    Gemma 2's sandwich norms, autocast over bitsandbytes, bases other than bitsandbytes', float8, FSDP)."""
    gradient = swiglu_tensor_bytes(spec, setup, tokens)
    working = max(
        3 * gradient,
        gradient + dequantized_weight_bytes(spec, setup),
        expert_lora_gradient_bytes(spec, setup, tokens),
    )
    return working + float8_cast_bytes(spec, setup, tokens)


def forward_working_bytes(spec: ModelSpec, setup: TrainSetup, tokens: int) -> int:
    """What a SwiGLU forward without autograd holds at once: gate activation, up output and their product
    (3 × T × I); with a bitsandbytes base, the up projection's dequantized weight beside the gate activation
    and its own output, when that is more (a no-grad reference or scoring pass; an int8 base's forward
    multiplies int8 by int8 and dequantizes nothing)."""
    tensor = swiglu_tensor_bytes(spec, setup, tokens)
    # an int8 base multiplies int8 by int8 in forward (MatMul8bitLt): only a 4-bit one dequantizes there
    dequantized = dequantized_weight_bytes(spec, setup) if setup.quant != "int8" else 0
    working = max(3 * tensor, 2 * tensor + dequantized)
    return working + float8_cast_bytes(spec, setup, tokens)


def dequantized_weight_bytes(spec: ModelSpec, setup: TrainSetup) -> int:
    """The largest block matrix bitsandbytes quantizes, alive while a bitsandbytes base's backward multiplies by
    it (an MLP projection: 4096 × 11008 × 2 B = 86 MiB for Llama-2-7B in bf16; a MoE model's attention
    projection), in `_dequantized_element_bytes`; 0 for other bases. Traced with bitsandbytes' own layers
    (executors/trace_quant.py)."""
    if setup.quant not in BNB_DEQUANTIZING:
        return 0
    return _largest_block_matrix(spec) * _dequantized_element_bytes(setup)


def dequantized_backward_bytes(spec: ModelSpec, setup: TrainSetup, tokens: int) -> int:
    """A bitsandbytes Linear's input-gradient matmul in the last block: its dequantized weight beside the input
    gradient it makes (T × in_features, the stream's dtype), for the Linear where that is most (Llama's
    down_proj: H × I + T × I; a MoE block's attention projections, since bitsandbytes leaves transformers 5's
    fused experts unquantized). Traced with bitsandbytes' own layers (executors/trace_quant.py), dense and MoE."""
    if setup.quant not in BNB_DEQUANTIZING:
        return 0
    cb = activation_dtype_bytes(setup)
    last = _quantized_block_matrices(spec, _representative_layer(spec, spec.num_layers - 1))
    return max(w * _dequantized_element_bytes(setup) + tokens * fan_in * cb for w, fan_in in last)


def _dequantized_element_bytes(setup: TrainSetup) -> int:
    """A dequantized weight's element size: the compute dtype (MatMul4Bit casts to the gradient's), or for int8
    its input's (MatMul8bitLt's `CB.to(ctx.dtype_A)`: fp32 after peft's upcast)."""
    if setup.quant == "int8":
        return activation_dtype_bytes(setup)
    return dtype_bytes(compute_dtype(setup.precision))


@cache
def _quantized_block_matrices(spec: ModelSpec, layer: int) -> tuple[tuple[int, int], ...]:
    """(elements, in_features) of each Linear bitsandbytes quantizes in block `layer`; transformers 5's fused
    experts and the router stay in the compute dtype (`weights.is_quantized`)."""
    return tuple(
        (lin.in_features * lin.out_features, lin.in_features)
        for lin in layer_linears(spec, layer)
        if lin.kind == "linear"
    )


@cache
def _largest_block_matrix(spec: ModelSpec) -> int:
    """Elements of the largest Linear weight bitsandbytes quantizes in any block (dense and MoE layouts)."""
    layouts = {_representative_layer(spec, i) for i in range(spec.num_layers)}
    return max(elements for i in layouts for elements, _ in _quantized_block_matrices(spec, i))


def block_input_bytes(spec: ModelSpec, setup: TrainSetup, tokens: int) -> int:
    """What gradient checkpointing keeps per block: its input hidden states (T × h), fp32 under amp
    (the residual stream stays in the parameter dtype; DeepSpeed ZeRO casts the module to the half dtype)."""
    return tokens * spec.hidden_size * stream_bytes(setup)


@dataclass(frozen=True, kw_only=True, slots=True)
class ActivationPhases:
    """Saved activations on one device at the two moments that can set the peak, bytes."""

    at_loss: int
    """End of forward / start of backward, while the loss tensors are alive."""
    in_backward: int
    """While the first recomputed block runs its backward (checkpointing); equals at_loss otherwise,
    since without checkpointing backward only frees activations."""
    largest_block: int
    """Saved tensors of the largest single block (what checkpointing recomputes at once)."""
    shared: int = 0
    """Saved tensors outside the blocks (RoPE tables, masks every block reads, final norm)."""
    shared_in_backward: int
    """What of `shared` is counted while blocks run their backward: with plain checkpointing (every block, no
    FSDP) only what every block reads (`block_arguments_bytes`; the final norm's and the LM head's saved tensors
    are freed by then); all of `shared` without checkpointing, under FSDP and with selective checkpointing or
    activation offloading, whose moments were traced that way."""
    block_input: int = 0
    """What checkpointing keeps per block (0 without checkpointing)."""
    backward_working: int = 0
    """What a block's recompute and backward hold beyond its saved tensors at their largest moment: with plain
    checkpointing `recompute.recompute_extra_bytes` (the block-output gradient and the forward's locals included),
    otherwise the MLP's gradient temporaries (`backward_working_bytes`)."""
    below_first_recompute: int = 0
    """Selective checkpointing / offloading: kept below the first recomputed block beyond one block input."""
    offloaded: int = 0
    """Activation offloading: saved bytes moved to host RAM (runtime_features)."""


def activation_phases(
    spec: ModelSpec, setup: TrainSetup, *, layers: int | None = None, tp: int = 1
) -> ActivationPhases:
    """Saved activations at the loss and, with checkpointing, during a block's recomputation.

    Without checkpointing every block keeps its saved tensors. With it (non-reentrant, as HF
    uses), each block keeps only its input; during backward one block at a time is recomputed,
    after the loss tensors are freed. Tensor parallelism splits the per-head and per-width
    tensors (not the norm copies) by `tp`.
    """
    tokens = setup.micro_batch * setup.seq_len
    count = spec.num_layers if layers is None else layers
    blocks = [
        per_rank_bytes(layer_activation_bytes(spec, setup, i, tokens, setup.seq_len), tp)
        for i in range(count)
    ]
    shared = shared_bytes(spec, setup)
    largest = max(blocks)
    if setup.runtime.ckpt_every > 1 or setup.runtime.activation_offload:
        return _feature_phases(spec, setup, blocks, shared=shared, tokens=tokens, tp=tp)
    if setup.grad_ckpt:
        # an int8 base's Linears keep their inputs through checkpointing (int8_kept_input_bytes)
        block_input = block_input_bytes(spec, setup, tokens) + int8_kept_input_bytes(
            spec, setup, tokens, checkpointed=True
        )
        arguments = block_arguments_bytes(spec, setup)  # all that outlives the loss outside the blocks
        coarse = backward_working_bytes(spec, setup, tokens) // tp
        working = recompute_extra_bytes(spec, setup, tokens, tp=tp, coarse=coarse)
        # a recomputed DoRA Linear rebuilds its adapted weight (planner/dora_moments.py)
        working = max(working, dora_recompute_extra_bytes(spec, setup, tokens, tp=tp) or 0)
        if setup.runtime.fsdp != "none":
            # FSDP's recompute moments (fsdp_memory) add a block's unsharded gradients and gathered parameters to
            # the coarse working set and the final norm's saved tensors, as traced on FSDP2 (tests/test_trace_fsdp.py)
            arguments, working = shared, coarse
        return ActivationPhases(
            at_loss=shared + count * block_input,
            in_backward=arguments + count * block_input + largest + working,
            largest_block=largest,
            shared=shared,
            shared_in_backward=arguments,
            block_input=block_input,
            backward_working=working,
        )
    # the first block keeps less than the others and the final norm more than `shared` says (first_block_unsaved_bytes;
    # under autocast `shared` counts the final norm already)
    first = first_block_unsaved_bytes(spec, setup, tokens, tp=tp)
    if first and not setup.precision.startswith("amp-"):
        shared += tokens * (FP32 * spec.hidden_size + FP32)  # the final norm's fp32 copy and rsqrt
    total = shared + sum(blocks) - first
    return ActivationPhases(
        at_loss=total, in_backward=total, largest_block=largest, shared=shared, shared_in_backward=shared
    )


_LATENT_READERS = ("kv_b_proj", "q_b_proj")
"""MLA's projections that read a latent's norm rather than the block's input norm."""


def first_block_recompute(spec: ModelSpec, setup: TrainSetup, layer: int, *, tp: int = 1) -> tuple[int, int]:
    """With plain checkpointing, (saved tensors, working set beyond them) of block `layer` while it is recomputed and
    differentiated: the early end of backward for models whose first blocks differ from the rest (DeepSeek's dense
    first blocks before its MoE ones), which `ActivationPhases.largest_block` and `backward_working` (the largest
    block's, the last block's kind) would misstate."""
    tokens = setup.micro_batch * setup.seq_len
    saved = per_rank_bytes(layer_activation_bytes(spec, setup, layer, tokens, setup.seq_len), tp)
    coarse = backward_working_bytes(spec, setup, tokens) // tp
    return saved, recompute_extra_bytes(spec, setup, tokens, tp=tp, coarse=coarse, layer=layer)


def first_block_unsaved_bytes(spec: ModelSpec, setup: TrainSetup, tokens: int, *, tp: int = 1) -> int:
    """Without checkpointing, what the first block does not save though every other block does, when its input
    needs no gradient (adapters in the blocks, the embedding frozen): autograd records nothing before the first
    trainable parameter, so its input RMSNorm keeps no fp32 copy or rsqrt, dropout on the Linears reading that
    norm (q, k, v) keeps no mask (lora_A keeps dropout's output for its weight gradient) and DoRA's base matmul there
    no copy of the base weight, nor does Qwen3's q_norm or
    k_norm behind a projection no adapter wraps; under autocast q, k and v keep no copy of their frozen weights
    either, nor does an int8 base keep q, k and v's input (bitsandbytes' MatMul8bitLt keeps it only for a gradient).
    The final norm keeps its fp32 copy and rsqrt instead (its input needs a gradient), which
    `activation_phases` adds (under autocast `shared` has it). Traced on two blocks of Qwen2.5-7B, Llama-3.1-8B,
    Qwen3-8B, Mistral-7B and Phi-3, bf16 and autocast (tests/test_recompute_moments.py); 0 with peft's k-bit upcast
    (an fp32 stream without autocast), pipeline stages and DeepSeek's latent attention, not traced."""
    lora = setup.lora
    plain = not setup.grad_ckpt and setup.runtime.ckpt_every == 1 and not setup.runtime.activation_offload
    trained_tower = setup.vision is not None and setup.vision.trains_vision  # its tokens need gradients
    frozen_input = (
        setup.trains_adapters and "embed_tokens" not in setup.runtime.modules_to_save and not trained_tower
    )
    amp = setup.precision.startswith("amp-")
    if (
        not plain
        or not frozen_input
        or lora is None
        or setup.parallel.pp > 1
        or (stream_bytes(setup) == FP32 and not amp)
    ):
        return 0
    norm = tokens * (FP32 * spec.hidden_size + FP32)
    reading_the_norm = [
        lin
        for lin in layer_linears(spec, _representative_layer(spec, 0))
        if lin.kind == "linear"
        and lin.block == "attention"
        and not _reads_saved_tensor(lin)
        and not lin.name.endswith(_LATENT_READERS)
    ]
    if spec.mla is not None:
        # a latent's RMSNorm behind a projection no adapter wraps keeps no fp32 copy or rsqrt
        frozen = {lin.name for lin in reading_the_norm if not is_targeted(lin, lora, spec.model_type)}
        norm += tokens * (FP32 * spec.mla.kv_lora_rank + FP32) * ("kv_a_proj_with_mqa" in frozen)
        if spec.mla.q_lora_rank:
            norm += tokens * (FP32 * spec.mla.q_lora_rank + FP32) * ("q_a_proj" in frozen)
    masks = 0
    if lora.dropout > 0:
        masks = sum(
            tokens * lin.in_features * BOOL
            for lin in reading_the_norm
            if is_targeted(lin, lora, spec.model_type)
        )
        # nor does DoRA's second base matmul keep its weight copy (F.linear keeps it for the input's gradient)
        masks += dora_first_block_unsaved_bytes(spec, setup, _representative_layer(spec, 0), reading_the_norm)
    if amp:  # nor do the Linears reading that norm keep autocast's copy of their frozen weight
        norm += (
            sum(lin.in_features * lin.out_features for lin in reading_the_norm)
            * activation_dtype_bytes(setup)
            // tp
        )
    if spec.qk_norm:  # q_norm / k_norm of a projection no adapter wraps: its output needs no gradient either
        frozen = {
            lin.name.rsplit(".", 1)[-1]
            for lin in reading_the_norm
            if not is_targeted(lin, lora, spec.model_type)
        }
        heads = spec.num_heads * ("q_proj" in frozen) + spec.num_kv_heads * ("k_proj" in frozen)
        norm += tokens * heads * (FP32 * spec.head_dim + FP32)
    # bitsandbytes' MatMul8bitLt keeps its input only when it or the weight needs a gradient
    # (autograd/_functions.py `if any(ctx.needs_input_grad[:2])`): not q, k and v's in the first block
    if setup.quant == "int8":
        attention_input = _int8_kept_inputs(spec, setup, checkpointed=False).get(("attention", False), 0)
        norm += tokens * activation_dtype_bytes(setup) * attention_input // tp
    return norm + masks // tp


def _feature_phases(
    spec: ModelSpec, setup: TrainSetup, blocks: list[int], *, shared: int, tokens: int, tp: int
) -> ActivationPhases:
    """Selective checkpointing (`ckpt_every`) and activation offloading (runtime_features)."""
    every = setup.runtime.ckpt_every if setup.grad_ckpt else 0
    working = backward_working_bytes(spec, setup, tokens) // tp
    block_input = block_input_bytes(spec, setup, tokens) if setup.grad_ckpt else 0
    saved = selective_saved(
        blocks, every=every, block_input=block_input, working=working, position=setup.runtime.ckpt_position
    )
    if setup.runtime.activation_offload:
        saved = offloaded_saved(saved, largest=max(blocks), every=every, count=len(blocks), working=working)
    return ActivationPhases(
        at_loss=shared + saved.at_loss,
        in_backward=shared + saved.in_backward,
        largest_block=max(blocks),
        shared=shared,
        shared_in_backward=shared,
        block_input=saved.block_input,
        backward_working=working,
        below_first_recompute=saved.below_first,
        offloaded=saved.offloaded,
    )


def activations_bytes(spec: ModelSpec, setup: TrainSetup, *, layers: int | None = None, tp: int = 1) -> int:
    """The most saved-activation bytes one device holds during the step (see `activation_phases`)."""
    phases = activation_phases(spec, setup, layers=layers, tp=tp)
    return max(phases.at_loss, phases.in_backward)


def per_rank_bytes(acts: LayerActivations, tp: int) -> int:
    """A block's saved bytes on one tensor-parallel rank: the per-head and per-width tensors split by `tp`, the norms'
    copies and the attention mask whole."""
    return (
        acts.norms
        + acts.attention_mask
        + (
            acts.linear_inputs
            + acts.lora
            + acts.attention
            + acts.mlp
            + acts.moe
            + acts.weight_copies
            + acts.dora
        )
        // tp
    )


def logits_bytes(spec: ModelSpec, setup: TrainSetup, *, tp: int = 1) -> int:
    """Peak of the LM-head output and the loss on one device.

    transformers' ForCausalLMLoss upcasts the logits to fp32 and cross_entropy's log_softmax keeps
    its fp32 output; the model output (with the compute-dtype logits) is dropped before backward, as
    `Trainer.compute_loss` drops it. The peak comes at the start of backward, when the fp32
    log_softmax output, the gradient nll_loss hands back and log_softmax's input gradient coexist:
    T × V × 3 × 4 bytes (traced: `_log_softmax`, `nll_loss_backward`, `_log_softmax_backward_data`).
    Gemma 2's logit soft-capping keeps its tanh output (compute dtype) for backward.

    The runtime's loss implementation changes this (`setup.runtime.loss`): transformers < 4.46's
    loss (full_legacy), chunked and fused linear cross-entropy are in `runtime_terms`. A loop that keeps the
    model output through backward (`keep_output`) adds the compute-dtype logits to that peak (traced with
    transformers 5.25: 14.00 B per token × vocab against 12.00, benchmarks/results/legacy_loss_trace.md);
    chunked and fused losses free or never make them.
    """
    tokens = setup.micro_batch * setup.seq_len
    cb = activation_dtype_bytes(setup)
    softcap = cb if spec.final_logit_softcapping else 0
    vocab = spec.vocab_size // tp
    knobs = setup.runtime
    if knobs.loss == "chunked":
        return (
            chunked_loss_bytes(tokens, vocab, chunks=knobs.loss_chunks, compute_bytes=cb)
            + tokens * vocab * softcap
        )
    if knobs.loss == "fused_head":
        # TRL 1.16's fused LM head over every position (each sequence's last, unscored, is within rounding)
        return fused_head.head_bytes(spec, setup, tokens, backward=True, tp=tp)
    if knobs.loss == "fused_linear":
        return fused_linear_loss_bytes(
            tokens, vocab, spec.hidden_size, compute_bytes=cb, chunk_tokens=knobs.loss_chunk_tokens
        )
    if knobs.loss == "full_legacy":
        legacy = legacy_loss_bytes(
            batch=setup.micro_batch, seq=setup.seq_len, vocab=vocab, keep_output=knobs.keep_output
        )
        return legacy + tokens * vocab * softcap
    per_token = 3 * FP32 + softcap + (cb if knobs.keep_output else 0)
    return tokens * vocab * per_token


def block_arguments_bytes(spec: ModelSpec, setup: TrainSetup) -> int:
    """What every block reads, alive until the first block's backward: the RoPE cos and sin tables (seq × head_dim
    each, batch dimension 1) and, with checkpointing, transformers' bool mask past a sliding window (seq × seq, batch
    dimension 1) or for a padded batch (one per sequence), or
    eager attention's additive one (one per sequence)."""
    amp = setup.precision.startswith("amp-")
    rope_width = spec.mla.qk_rope_head_dim if spec.mla is not None else spec.head_dim
    rope = 2 * setup.seq_len * rope_width * (FP32 if amp else activation_dtype_bytes(setup))
    # the bool mask outlives the forward as checkpointing's saved argument to every block
    mask = bool_mask_bytes(spec, setup) if setup.grad_ckpt else 0
    if setup.attention == "eager" or spec.eager_attention_only:
        # eager attention adds a materialised causal mask (B × 1 × S × S) in the activations' dtype
        mask = setup.micro_batch * setup.seq_len * setup.seq_len * activation_dtype_bytes(setup)
    return rope + mask


def bool_mask_bytes(spec: ModelSpec, setup: TrainSetup) -> int:
    """transformers' bool mask for SDPA (`sdpa_masked`): seq × seq past a sliding window, one per sequence when the
    batch is padded (the padding differs by sequence). Without checkpointing it lives through the forward only."""
    if not sdpa_masked(spec, setup, setup.seq_len):
        return 0
    rows = setup.micro_batch if padding_masked(spec, setup) else 1
    return rows * setup.seq_len * setup.seq_len * BOOL


def shared_bytes(spec: ModelSpec, setup: TrainSetup) -> int:
    """Saved tensors outside the blocks: what every block reads (`block_arguments_bytes`) and the final norm's
    saved tensors: its fp32 copy and rsqrt
    when gradients flow through it (full fine-tuning, or with checkpointing, whose recomputed block
    inputs require grad), plus the normalised copy and its output (the LM head's input) when the
    LM head trains. A LoRA run without checkpointing keeps the fp32 copy and rsqrt too (its input needs a gradient):
    `activation_phases` adds them with the first block's own correction (`first_block_unsaved_bytes`)."""
    cb = activation_dtype_bytes(setup)
    amp = setup.precision.startswith("amp-")
    arguments = block_arguments_bytes(spec, setup)
    tokens = setup.micro_batch * setup.seq_len
    h = spec.hidden_size
    final_norm = 0
    if setup.method == "full" or setup.grad_ckpt or amp:
        final_norm = tokens * (FP32 * h + FP32)
    if setup.method == "full":
        # normalised copy, and the LM head's input (a separate autocast copy under amp)
        final_norm += tokens * (FP32 * h + cb * h) if amp else tokens * 2 * cb * h
    # Under amp the LM head matmul keeps autocast's low-precision copy of its (or the tied embedding's) weight.
    head_copy = spec.vocab_size * h * cb if amp else 0
    return arguments + final_norm + head_copy + saved_module_activation_bytes(spec, setup, cb)
