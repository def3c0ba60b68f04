"""Estimate vs trace: run the fake-tensor tracer for a set-up and line it up with the analytic model.

The tracer measures live tensor bytes, so the comparison uses the estimate's tensor terms at its
peak (allocated memory without the cuBLAS workspace, CUDA context or allocator slack, which are not
tensors). A bitsandbytes NF4/FP4/int8 base runs for real (`trace_quant`: transformers' quantizer, bitsandbytes'
MatMul4Bit / MatMul8bitLt, peft's bitsandbytes LoRA layers and k-bit preparation). What cannot run under fake
tensors — GPTQ, AWQ, fp8 and torchao bases, and 8-bit optimizers — is traced with the unquantized equivalent
and the analytic term is substituted, with a note saying so.

The runtime's knobs (`TrainSetup.runtime`) are run, not assumed: AdamW's implementation (fused, foreach,
for_loop) is the traced optimizer's, and a chunked loss is computed over pieces of the logits as
torchtune does (`trace_loss.chunked_loss`). Knobs the tracer cannot run are refused by
`untraceable_knobs`, one reason each naming its flag.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from swiftplan.executors.trace import OptimizerName, TraceResult, trace_serving, trace_training
from swiftplan.executors.trace_features import TraceFeatures
from swiftplan.executors.trace_quant import QuantBase
from swiftplan.executors.verify_knobs import refuse_untraceable
from swiftplan.planner.breakdown import TENSOR_TERMS
from swiftplan.planner.calibration import constant
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.padding import padding_masked
from swiftplan.planner.serve_memory import ServeMemory, serve_memory
from swiftplan.planner.setup import RuntimeKnobs, ServeSetup, TrainSetup
from swiftplan.planner.train_memory import (
    CHUNK_SUM,
    HEAD_STEP,
    LAST_BLOCK_BACKWARD,
    TrainMemory,
    train_memory,
)

TERMS = TENSOR_TERMS


@dataclass(frozen=True, kw_only=True, slots=True)
class TermRow:
    """One line of the comparison, bytes."""

    name: str
    estimate: int
    traced: int

    @property
    def error(self) -> float | None:
        """Relative error of the estimate against the trace (None when the trace is 0)."""
        return None if self.traced == 0 else (self.estimate - self.traced) / self.traced


@dataclass(frozen=True, kw_only=True, slots=True)
class Comparison:
    """Estimate vs trace for one set-up."""

    rows: tuple[TermRow, ...]
    """Per-term figures alive at the peak, then the peak itself, then (SFT) the reserved peak."""
    trace: TraceResult
    """The raw trace."""
    estimate_phase: str
    """Where the estimate puts the peak."""
    notes: tuple[str, ...]
    """Substitutions and caveats."""

    @property
    def peak(self) -> TermRow:
        """The peak-allocated row."""
        return next(row for row in self.rows if row.name == "peak_allocated")

    @property
    def reserved(self) -> TermRow | None:
        """The peak-reserved row: the allocator model vs the traced allocations replayed (SFT traces)."""
        return next((row for row in self.rows if row.name == "peak_reserved"), None)


ADAMW_IMPLS: dict[str, OptimizerName] = {
    "fused": "adamw-fused",
    "foreach": "adamw",
    "for_loop": "adamw-for-loop",
}
"""--optimizer-impl → the tracer's AdamW (torch.optim.AdamW with fused=True, foreach=True, or neither)."""


def _traced_optimizer(planned: str, traced: str, knobs: RuntimeKnobs) -> OptimizerName:
    """The tracer's optimizer: AdamW in the runtime's implementation; an 8-bit AdamW stood in for by the
    fused one (its step temporaries are the 8-bit kernel's, not modelled by either side)."""
    if planned == "adamw":
        return ADAMW_IMPLS[knobs.optimizer_impl]
    return "adamw-fused" if traced == "adamw" else traced  # type: ignore[return-value]


def _estimate_at_peak(memory: TrainMemory, setup: TrainSetup, workspace: int) -> dict[str, int]:
    """Tensor bytes alive at the estimate's peak, by term (the tracer's categories)."""
    device = memory.device
    at_peak = {name: getattr(device, name) for name in TERMS}
    at_peak["activations"] = memory.phase_activations[device.peak_phase]
    if device.peak_phase in ("optimizer step", "end of backward"):
        at_peak["activations"] = device.transient  # optimizer temporaries count as activations in the trace
        at_peak["logits"] = 0
    elif device.peak_phase == CHUNK_SUM:  # the pieces' head gradients and logits' gradients ("logits" traced)
        at_peak["logits"] = device.transient
        if setup.grad_accum == 1:
            at_peak["gradients"] = 0
    elif device.peak_phase == HEAD_STEP:  # the untied head's gradient stepped in backward, activations saved
        at_peak["activations"] += device.transient  # the logits' gradient or the step's temporaries
        at_peak["logits"] = 0
    elif device.peak_phase == LAST_BLOCK_BACKWARD:  # a bitsandbytes weight dequantized, every activation kept
        at_peak["activations"] += device.transient
        at_peak["logits"] = 0
        if setup.grad_accum == 1:
            at_peak["gradients"] = 0  # the LoRA head has none; the blocks' come after
    else:
        if device.peak_phase != "loss and backward start":
            at_peak["logits"] = 0
        if setup.grad_accum == 1 and not (setup.grad_ckpt and device.peak_phase != "loss and backward start"):
            at_peak["gradients"] = 0  # zero_grad(set_to_none=True): none exist yet when backward starts
    total = device.peak_allocated - workspace
    return at_peak | {"peak_allocated": total}


def trace_arguments(spec: ModelSpec, setup: TrainSetup, *, optimizer: str, steps: int) -> dict[str, Any]:
    """The tracer's keyword arguments for `setup` (its method, adapters, shapes and runtime knobs), traced with
    `optimizer` (an 8-bit optimizer is traced as adamw by the callers); the FSDP tracer takes the same."""
    lora, knobs = setup.lora, setup.runtime
    return {
        "method": "full" if setup.method == "full" else "lora",  # qlora: LoRA over the quantized base
        "precision": setup.precision,
        "lora_rank": lora.rank if lora else 16,
        "lora_dropout": lora.dropout if lora else 0.0,
        "lora_targets": "all-linear" if lora and lora.all_linear else (lora.targets if lora else ("q_proj",)),
        "lora_dora": bool(lora and lora.dora),
        "optimizer": _traced_optimizer(setup.optimizer, optimizer, knobs),
        "batch": setup.micro_batch,
        "seq": setup.seq_len,
        "grad_ckpt": setup.grad_ckpt,
        "attn_implementation": "eager" if setup.attention == "eager" or spec.eager_attention_only else "sdpa",
        "steps": steps,
        "loss": knobs.loss if knobs.loss in ("chunked", "fused_head") else "full",
        "loss_chunks": knobs.loss_chunks,
        "padded": padding_masked(spec, setup),
        "features": TraceFeatures(
            ckpt_every=knobs.ckpt_every,
            ckpt_position=knobs.ckpt_position,
            activation_offload=knobs.activation_offload,
            adapter_dtype=knobs.adapter_dtype,
            optimizer_in_backward=knobs.optimizer_in_backward,
            modules_to_save=knobs.modules_to_save,
        ),
    }


def verify_training(spec: ModelSpec, setup: TrainSetup, *, steps: int = 2, world_size: int = 1) -> Comparison:
    """Trace `setup` on `spec` and compare every term with the analytic estimate (one device, no sharding;
    with FSDP, rank 0 of `world_size` on a fake process group: `verify_fsdp`), under its runtime's loss and
    optimizer implementation (`refuse_untraceable` first)."""
    refuse_untraceable(setup.runtime, world_size=world_size)
    if setup.runtime.fsdp != "none":
        from swiftplan.executors.verify_fsdp import verify_fsdp

        return verify_fsdp(spec, setup, world_size=world_size, steps=steps)
    knobs = setup.runtime
    notes: list[str] = []
    if knobs.loss == "chunked":
        notes.append(f"loss: torchtune's chunked cross-entropy over {knobs.loss_chunks} pieces of the logits")
    traced_setup, quant_base = setup, QuantBase.of(setup)  # a bitsandbytes base is traced for real
    if quant_base is None and setup.quant != "none":
        notes.append(
            f"{setup.quant} base weights are not traceable: traced with a {setup.precision} base and the "
            "analytic quantized weights substituted; the quantization kernels' own buffers are in neither figure"
        )
        traced_setup = replace(setup, method="lora", quant="none")
    optimizer = setup.optimizer
    if optimizer == "adamw-8bit" or optimizer == "paged-adamw-8bit":  # == (not in): mypy narrows on it
        notes.append(
            f"{optimizer} is not traceable: traced with adamw and the analytic 8-bit state substituted"
        )
        optimizer = "adamw"
    if setup.parallel.tp > 1 or setup.parallel.pp > 1 or setup.parallel.zero:
        notes.append("parallelism is not traced: both figures are for a single device without sharding")
        setup = replace(setup, parallel=replace(setup.parallel, tp=1, pp=1, zero=0, offload="none"))
        traced_setup = replace(traced_setup, parallel=setup.parallel)
    trace = trace_training(
        dict(spec.hf_config),
        **trace_arguments(spec, traced_setup, optimizer=optimizer, steps=steps),
        quant_base=quant_base,
    )
    workspace = int(constant("runtime_overhead", "cublas_workspace_bytes"))
    memory = train_memory(spec, setup)
    estimate = _estimate_at_peak(memory, setup, workspace)
    # the reserved figure: the planner's allocator model vs the trace's allocations replayed through the
    # caching allocator's rules (one stream, fixed shapes, as the estimate's default settings)
    estimate["peak_reserved"] = memory.device.peak_reserved - workspace
    traced = dict(trace.at_peak) | {"peak_allocated": trace.peak_bytes, "peak_reserved": trace.peak_reserved}
    if traced_setup.quant != setup.quant:  # the unquantized stand-in's weights replaced by the analytic ones
        unquantized = train_memory(spec, traced_setup).device.weights
        for total in ("peak_allocated", "peak_reserved"):
            traced[total] += estimate["weights"] - unquantized
        traced["weights"] = estimate["weights"]
    if optimizer != setup.optimizer:
        adamw = train_memory(spec, replace(traced_setup, optimizer="adamw")).device.optimizer
        for total in ("peak_allocated", "peak_reserved"):
            traced[total] += estimate["optimizer"] - adamw
        traced["optimizer"] = estimate["optimizer"]
    rows = tuple(
        TermRow(name=name, estimate=estimate.get(name, 0), traced=traced.get(name, 0))
        for name in (*TERMS, "peak_allocated", "peak_reserved")
        if estimate.get(name, 0) or traced.get(name, 0) or name == "peak_allocated"
    )
    return Comparison(
        rows=rows,
        trace=trace,
        estimate_phase=memory.device.peak_phase,
        notes=tuple(notes) + trace.notes,
    )


def verify_serving(spec: ModelSpec, setup: ServeSetup, *, decode_steps: int = 1) -> Comparison:
    """Trace a prefill of `concurrency × (context − decode_steps)` tokens plus decode steps and compare
    the weights, KV cache and peak with the analytic serving model at the same load.

    The trace uses transformers' DynamicCache (contiguous, grown by concatenation), not vLLM's paged
    blocks, so the KV figure is compared without block rounding.
    """
    prompt = setup.context - decode_steps
    trace = trace_serving(
        dict(spec.hf_config),
        dtype=setup.dtype,
        batch=setup.concurrency,
        prompt_len=prompt,
        decode_steps=decode_steps,
    )
    analytic: ServeMemory = serve_memory(
        spec, replace(setup, prefill_chunk=setup.concurrency * prompt), device_memory_bytes=10**15
    )
    exact_kv = int(analytic.kv_bytes_per_token * setup.concurrency * setup.context)
    estimate = {
        "weights": analytic.device.weights,
        "kv_cache": exact_kv,
        "activations": analytic.device.activations,
        "peak_allocated": analytic.device.weights + exact_kv + analytic.device.activations,
    }
    traced = {
        "weights": trace.at_peak.get("weights", 0),
        "kv_cache": trace.at_peak.get("kv_cache", 0),
        "activations": trace.at_peak.get("activations", 0) + trace.at_peak.get("logits", 0),
        "peak_allocated": trace.peak_bytes,
    }
    rows = tuple(TermRow(name=name, estimate=estimate[name], traced=traced[name]) for name in estimate)
    return Comparison(rows=rows, trace=trace, estimate_phase="prefill", notes=trace.notes)
