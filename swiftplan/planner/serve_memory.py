"""Serving memory: weights, the paged KV cache, the prefill workspace, and what fits.

The budget follows vLLM: the engine may use `gpu_memory_utilization × device memory`; from
that it subtracts weights, the activation peak of a profiling forward pass over
`prefill_chunk` tokens (or of the sampler warm-up, when larger), LoRA slots, non-torch memory
and its CUDA-graph estimate, and gives the rest to KV blocks (planner/vllm_runtime.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from swiftplan.errors import SwiftplanError
from swiftplan.planner.adapters import lora_params_for
from swiftplan.planner.architecture import layer_linears
from swiftplan.planner.breakdown import MemoryBreakdown, Term
from swiftplan.planner.calibration import constant, constant_source
from swiftplan.planner.checkpoint_quant import FP8_CONFIG_SOURCE, CheckpointQuant
from swiftplan.planner.dtypes import dtype_bytes
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.setup import LoraSetup, Quant, ServeSetup
from swiftplan.planner.vision_serve import vision_serve
from swiftplan.planner.vllm_runtime import (
    SAMPLER_SOURCE,
    cudagraph_pool_bytes,
    cudagraph_pool_formula,
    cudagraph_pool_source,
    sampler_peak_bytes,
    sampler_requests,
)
from swiftplan.planner.weights import layer_weight_bytes, outer_weight_bytes

VLLM_BLOCK_TOKENS = 16
"""vLLM allocates the KV cache in blocks of 16 tokens by default (`--block-size`)."""


def kv_cache_bytes_per_token(
    spec: ModelSpec, *, kv_dtype_bytes: int, tp: int = 1, context: int | None = None
) -> float:
    """KV-cache bytes one token of one sequence occupies on one device.

    GQA/MHA: 2 (K and V) × layers × kv_heads × head_dim × bytes, kv heads split by tp (a head
    is replicated when tp exceeds the kv heads). MLA caches one latent of kv_lora_rank +
    qk_rope_head_dim per layer, not split by tp. Sliding-window layers hold at most `window`
    tokens, so with `context` given their share is scaled by min(1, window / context).
    """
    if spec.mla is not None:
        return spec.num_layers * (spec.mla.kv_lora_rank + spec.mla.qk_rope_head_dim) * kv_dtype_bytes
    kv_heads = max(1, spec.num_kv_heads // tp)
    per_layer = 2 * kv_heads * spec.head_dim * kv_dtype_bytes
    full_layers = spec.num_layers - spec.sliding_window_layers
    window_layers: float = spec.sliding_window_layers
    if context and spec.sliding_window and spec.sliding_window < context:
        window_layers *= spec.sliding_window / context
    return per_layer * (full_layers + window_layers)


def serve_quant(spec: ModelSpec, setup: ServeSetup) -> tuple[Quant, CheckpointQuant | None]:
    """The weight quantization vLLM serves with, and the checkpoint's own fp8 layout when it has one.

    An fp8 checkpoint (config.json quantization_config, planner/checkpoint_quant.py) is served as fp8
    whether or not --quant fp8 is given: vLLM reads its quantization_config itself. Another --quant on
    such a checkpoint is refused: vLLM would not load it that way."""
    checkpoint = spec.checkpoint_quant
    if checkpoint is None:
        return setup.quant, None
    if setup.quant not in ("none", "fp8"):
        raise SwiftplanError(
            f"{spec.name!r} is already quantized to fp8 (its config.json has quantization_config.quant_method "
            f"{checkpoint.method!r}), so it cannot be served with --quant {setup.quant}: vLLM loads the "
            "checkpoint's own quantization.",
            hint="Leave --quant out (or pass --quant fp8), or plan the unquantized model.",
        )
    return "fp8", checkpoint


def serve_weight_bytes(spec: ModelSpec, setup: ServeSetup) -> int:
    """Weights on one tensor-parallel rank. Under fp8 vLLM quantizes the routed experts too
    (Fp8MoEMethod, checkpoint_quant.FP8_CONFIG_SOURCE); other schemes keep them in the compute dtype."""
    wb = dtype_bytes(setup.dtype)
    quant, checkpoint = serve_quant(spec, setup)
    blocks = sum(
        layer_weight_bytes(
            spec,
            i,
            dtype_bytes=wb,
            quant=quant,
            double_quant=True,
            tp=setup.tp,
            quantize_experts=quant == "fp8",
            checkpoint=checkpoint,
        )
        for i in range(spec.num_layers)
    )
    return blocks + outer_weight_bytes(spec, dtype_bytes=wb, tp=setup.tp)


def workspace_bytes_per_token(spec: ModelSpec, setup: ServeSetup) -> int:
    """Forward-pass temporaries per token (no autograd, so only one block's live at a time): hidden
    states and residual, q/k/v and attention output, and the SwiGLU gate/up/product."""
    cb = dtype_bytes(setup.dtype)
    width = (
        spec.moe.expert_intermediate_size * spec.moe.experts_per_token if spec.moe else spec.intermediate_size
    )
    return (
        cb * (3 * spec.hidden_size + 2 * spec.q_dim + 2 * spec.kv_dim) // setup.tp
        + cb * 3 * width // setup.tp
    )


def prefill_workspace_bytes(spec: ModelSpec, setup: ServeSetup) -> int:
    """Activation peak of one forward pass over `prefill_chunk` tokens, plus fp32 logits for the
    sequences being sampled."""
    logits = min(setup.concurrency, setup.prefill_chunk) * spec.vocab_size * 4
    return setup.prefill_chunk * workspace_bytes_per_token(spec, setup) + logits


def sampler_extra_bytes(spec: ModelSpec, setup: ServeSetup, *, workspace: int) -> int:
    """What vLLM's sampler warm-up needs beyond the prefill workspace: the profiled peak is the larger of
    the forward pass and the sampler (vllm_runtime.SAMPLER_SOURCE), so only the excess counts."""
    return max(0, sampler_peak_bytes(spec, setup) - workspace)


def lora_slot_bytes(spec: ModelSpec, setup: ServeSetup) -> int:
    """vLLM pre-allocates A and B for every supported Linear at max_lora_rank per LoRA slot."""
    if setup.max_loras <= 0:
        return 0
    lora = LoraSetup(rank=setup.max_lora_rank, targets=("all-linear",), dropout=0.0)
    per_slot = sum(
        lora_params_for(lin, lora)
        for i in range(spec.num_layers)
        for lin in layer_linears(spec, i)
        if lin.kind == "linear"
    )
    return setup.max_loras * per_slot * dtype_bytes(setup.dtype) // setup.tp


@dataclass(frozen=True, kw_only=True, slots=True)
class ServeMemory:
    """What a serving configuration needs and what the device can hold."""

    device: MemoryBreakdown
    """Per-device breakdown for the requested concurrency × context."""
    kv_bytes_per_token: float
    """KV cache per token per sequence on one device."""
    kv_budget_bytes: int
    """Bytes left for the KV cache under gpu_memory_utilization."""
    max_concurrency: int
    """Sequences of the requested context that fit in the KV budget."""
    max_context: int
    """Longest single sequence (capped at the model's max_position_embeddings) the budget holds at the requested concurrency."""
    fits: bool
    """The requested concurrency × context fits in the KV budget."""


def _weights_term(spec: ModelSpec, setup: ServeSetup, weights: int) -> Term:
    """The weights line: which dtype, whether the experts are in it, and the checkpoint's own layout."""
    quant, checkpoint = serve_quant(spec, setup)
    if quant == "none":
        return Term(name="weights", value_bytes=weights, formula=f"{setup.dtype} weights / tp{setup.tp}")
    formula = f"{quant} weights / tp{setup.tp}"
    if quant == "fp8" and spec.moe is not None:
        formula += ", routed experts fp8 (vLLM Fp8MoEMethod)"
    if checkpoint is None:
        source = FP8_CONFIG_SOURCE if quant == "fp8" else ""
        return Term(name="weights", value_bytes=weights, formula=formula, source=source)
    scales = (
        "per tensor"
        if checkpoint.weight_block is None
        else "per {}×{} block".format(*checkpoint.weight_block)
    )
    if checkpoint.scales == "channel":
        scales = "per output channel"
    formula += (
        f" from the checkpoint's quantization_config ({checkpoint.method}, fp32 scales {scales}, "
        f"{len(checkpoint.ignored)} ignored-module entries in {setup.dtype})"
    )
    return Term(name="weights", value_bytes=weights, formula=formula, source=checkpoint.source)


def _runtime_terms(spec: ModelSpec, setup: ServeSetup, *, graphs: int, sampler: int) -> tuple[Term, ...]:
    """vLLM's CUDA-graph estimate and the sampler warm-up's excess over the prefill workspace."""
    per_token = workspace_bytes_per_token(spec, setup)
    return (
        Term(
            name="cudagraph_pool",
            value_bytes=graphs,
            formula=cudagraph_pool_formula(setup, workspace_bytes_per_token=per_token),
            source=cudagraph_pool_source(setup),
        ),
        Term(
            name="sampler_warmup",
            value_bytes=sampler,
            formula=(
                f"max(0, {sampler_requests(setup)} requests × {spec.vocab_size:,} vocab × "
                f"({dtype_bytes(setup.dtype)} B logits + 3 × 4 B fp32) − prefill workspace)"
            ),
            source=SAMPLER_SOURCE,
        ),
    )


def _serve_terms(
    setup: ServeSetup, *, weights: Term, kv: int, workspace: int, loras: int, context_bytes: int,
    blocks_per_seq: int, per_token: float,
) -> tuple[Term, ...]:  # fmt: skip
    """The serving memory terms with their formulas, as the breakdown shows them."""
    return (
        weights,
        Term(
            name="kv_cache",
            value_bytes=kv,
            formula=f"{setup.concurrency} seqs × {blocks_per_seq} blocks × {VLLM_BLOCK_TOKENS} tokens × {per_token:,.0f} B/token",
        ),
        Term(
            name="activations",
            value_bytes=workspace,
            formula=f"prefill workspace for {setup.prefill_chunk} tokens + fp32 sampling logits",
        ),
        Term(
            name="adapters",
            value_bytes=loras,
            formula=f"{setup.max_loras} LoRA slots at rank {setup.max_lora_rank}",
        ),
        Term(
            name="runtime_overhead",
            value_bytes=context_bytes,
            formula="CUDA context and non-torch memory",
            source=constant_source("runtime_overhead", "cuda_context_bytes"),
        ),
    )


def _max_context(spec: ModelSpec, setup: ServeSetup, budget: int, per_token: float) -> int:
    """Longest context the KV budget holds at the set-up's concurrency, in whole blocks, within the model's."""
    fitting = int(budget // (per_token * setup.concurrency)) // VLLM_BLOCK_TOKENS * VLLM_BLOCK_TOKENS
    return max(0, min(spec.max_position_embeddings, fitting))


def serve_memory(
    spec: ModelSpec, setup: ServeSetup, *, device_memory_bytes: int, comm_bytes: int = 0
) -> ServeMemory:
    """Memory on one device for serving `setup`, and the concurrency/context limits it implies.

    `comm_bytes`: NCCL and custom all-reduce buffers of a tensor-parallel replica
    (planner/comm_buffers.py); vLLM's memory profile counts them against gpu_memory_utilization like
    the CUDA context, so they come off the KV budget."""
    kv_bytes = 1 if setup.kv_dtype == "fp8" else dtype_bytes(setup.dtype)
    per_token = kv_cache_bytes_per_token(spec, kv_dtype_bytes=kv_bytes, tp=setup.tp, context=setup.context)
    weights = serve_weight_bytes(spec, setup)
    workspace = prefill_workspace_bytes(spec, setup)
    sampler = sampler_extra_bytes(spec, setup, workspace=workspace)
    graphs = cudagraph_pool_bytes(setup, workspace_bytes_per_token=workspace_bytes_per_token(spec, setup))
    loras = lora_slot_bytes(spec, setup)
    vision = vision_serve(spec, setup, llm_workspace=workspace)  # the tower, encoder cache and its pass
    vision_bytes = 0 if vision is None else vision.total
    context_bytes = int(constant("runtime_overhead", "cuda_context_bytes"))
    budget = (
        int(device_memory_bytes * setup.gpu_memory_utilization)
        - weights
        - workspace
        - sampler
        - graphs
        - loras
        - context_bytes
        - comm_bytes
        - vision_bytes
    )
    budget = max(0, budget)
    blocks_per_seq = -(-setup.context // VLLM_BLOCK_TOKENS)
    seq_bytes = blocks_per_seq * VLLM_BLOCK_TOKENS * per_token
    max_concurrency = int(budget // seq_bytes) if seq_bytes else 0
    kv = int(seq_bytes * setup.concurrency)
    peak = weights + workspace + sampler + graphs + loras + kv + vision_bytes
    terms = _serve_terms(setup, weights=_weights_term(spec, setup, weights), kv=kv, workspace=workspace,
                         loras=loras, context_bytes=context_bytes, blocks_per_seq=blocks_per_seq,
                         per_token=per_token)  # fmt: skip
    terms = terms[:-1] + _runtime_terms(spec, setup, graphs=graphs, sampler=sampler) + terms[-1:]
    if (
        vision is not None
    ):  # the fields below hold the vision parts too; the table shows them on their own lines
        terms = terms[:-1] + vision.terms + terms[-1:]
        weights += vision.weights
        workspace += vision.encoder_cache + vision.workspace
    device = MemoryBreakdown(
        weights=weights,
        adapters=loras,
        activations=workspace,
        kv_cache=kv,
        transient=sampler,
        runtime_overhead=context_bytes,
        peak_allocated=peak,
        device_total=peak + context_bytes,
        peak_phase="prefill with a full KV cache",
        terms=terms,
    )
    return ServeMemory(
        device=device,
        kv_bytes_per_token=per_token,
        kv_budget_bytes=budget,
        max_concurrency=max_concurrency,
        max_context=_max_context(spec, setup, budget, per_token),
        fits=max_concurrency >= setup.concurrency,
    )
