"""The training breakdown's terms as the user reads them: each number with the formula that gave it and,
for constants and runtime rules, their source. The numbers come from `train_memory`; only words here."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from swiftplan.planner.architecture import total_params
from swiftplan.planner.breakdown import Term
from swiftplan.planner.calibration import constant_source
from swiftplan.planner.dtypes import dtype_bytes
from swiftplan.planner.logprob_kernels import kernel_formula, kernel_source, plain_loss
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.objective_memory import (
    logits_setup,
    policy_setup,
    scored_sequences,
    scored_tokens_per_sequence,
)
from swiftplan.planner.objective_terms import objective_terms, sequences_formula, sequences_source
from swiftplan.planner.padding import padding_masked
from swiftplan.planner.runtime_terms import (
    auto_reduce_bucket,
    deepspeed_zero,
    grads_on_host,
    prefetch_bucket_elements,
    reduce_bucket_buffers,
    reduce_bucket_elements,
    shard_degree,
    sharding_stage,
    zero3_replayed,
)
from swiftplan.planner.setup import TrainSetup
from swiftplan.planner.states import StateDtypes
from swiftplan.planner.zero3_trace import ZERO3_TRACE_SOURCE, zero3_gathered
from swiftplan.units import format_gib

if TYPE_CHECKING:
    from swiftplan.planner.device_states import DeviceStates


LAST_BLOCK_BACKWARD = "backward through the last block"
"""Without checkpointing, a bitsandbytes base's moment: the last block's backward with its dequantized weight."""
LAST_BLOCK_FORWARD = "forward through the last block"
"""Without checkpointing, the last block's forward with its Linears' transients (recompute.last_block_forward_bytes)."""
FINAL_NORM_BACKWARD = "final norm backward"
"""The moment after the LM head's backward when the final RMSNorm differentiates, every saved tensor alive."""


def breakdown_terms(
    spec: ModelSpec, setup: TrainSetup, states: DeviceStates, dtypes: StateDtypes, *, dp: int, layers: int, lora_params: int,
    activations: int, logits: int, transient: int, phase: str, overhead: int, context: int, frag: float,
) -> tuple[Term, ...]:  # fmt: skip
    """Each number of the breakdown with the formula that gave it and, for constants, their source."""
    par, knobs = setup.parallel, setup.runtime
    tp = par.tp
    trainable_here = states.trainable_here
    stage = sharding_stage(setup)
    shard = "FSDP " + knobs.fsdp_sharding if knobs.fsdp != "none" else "ZeRO"
    shards = shard_degree(setup, dp)  # hybrid sharding: the shard group, not every data-parallel rank
    over = f"dp{dp}" if shards == dp else f"{shards} (hybrid shard group of dp{dp})"
    saved = (f" + trainable copies of {','.join(knobs.modules_to_save)} ({states.saved_modules:,} params, modules_to_save)"
             if states.saved_modules else "")  # fmt: skip
    bucket = (f" + DeepSpeed reduce bucket {reduce_bucket_buffers(knobs, stage=stage)} × "
              f"{reduce_bucket_elements(spec, knobs, stage=stage):,} elements"
              f"{' (auto: hidden²)' if auto_reduce_bucket(knobs, stage=stage) else ''} ({format_gib(states.bucket)})"
              if states.bucket else "")  # fmt: skip
    return (
        Term(
            name="weights",
            value_bytes=states.weights,
            formula=f"{total_params(spec):,} params by dtype/quant ({setup.quant}), /tp{tp}, {layers} blocks/stage"
            + (f", /{over} ({shard}-3)" if stage == 3 else ""),
        ),
        Term(
            name="adapters",
            value_bytes=states.adapters,
            formula=f"{lora_params:,} LoRA params × {dtype_bytes(dtypes.adapters)} B ({dtypes.adapters})"
            + (f", /tp{tp}" if tp > 1 else "")
            + saved
            + (f" /{over} ({shard}-3)" if stage == 3 else ""),
        ),
        Term(
            name="gradients",
            value_bytes=states.gradients,
            formula=f"{trainable_here:,} trainable × {dtype_bytes(dtypes.gradients)} B ({dtypes.gradients})"
            + (f" / {over}" if stage >= 2 else "")
            + (" (one at a time: optimizer in backward)" if knobs.optimizer_in_backward else "")
            + (" in host RAM with the offloaded optimizer (DeepSpeed)" if grads_on_host(setup) else "")
            + bucket,
            source="deepspeedai/DeepSpeed @ edaa722 deepspeed/runtime/zero/config.py, stage_1_and_2.py, stage3.py"
            if bucket
            else "",
        ),
        Term(
            name="optimizer",
            value_bytes=states.optimizer,
            formula=f"{setup.optimizer} state for {trainable_here:,} params ({dtypes.optimizer} moments)"
            + (f" / {over}" if stage >= 1 else "")
            + (" (offloaded to host)" if par.offload != "none" else ""),
        ),
        Term(
            name="master_weights",
            value_bytes=states.master,
            formula=f"{dtype_bytes(dtypes.master)} B × {trainable_here:,} trainable ({dtypes.master}, DeepSpeed mixed precision)"
            + (f" / dp{dp}" if par.zero >= 1 else "")
            if dtypes.master
            else "none (no separate master copy)",
            source="measured: DeepSpeed 0.19.8 keeps single_partition_of_fp32_groups / fp32_partitioned_groups_flat (tests/test_state_agreement.py)"
            if dtypes.master
            else "",
        ),
        *objective_terms(spec, setup, states.objective, dp=dp),
        Term(
            name="activations",
            value_bytes=activations,
            formula=f"saved tensors of {layers} blocks for {sequences_formula(setup)} × {setup.seq_len} tokens"
            + (" with checkpointing" if setup.grad_ckpt else "")
            + (
                ": every block's input, a recomputed block's tensors and what its recompute and backward hold at"
                " their largest moment (planner/recompute.py)"
                if phase == "recomputation in backward"
                and setup.runtime.ckpt_every == 1
                and setup.runtime.fsdp == "none"
                and not setup.runtime.activation_offload
                else ""
            )
            + (
                " (each bitsandbytes int8 Linear keeps its input on the autograd context, checkpointed or not)"
                if setup.quant == "int8"
                else ""
            )
            + (
                "; DoRA keeps each wrapped Linear's base and lora_B outputs (with dropout, a copy of its weight in the"
                " adapters' dtype) and rebuilds its adapted weight in every forward: an in × in identity and four"
                " out × in matrices (planner/dora.py)"
                if setup.lora is not None and setup.lora.dora and setup.trains_adapters
                else ""
            )
            + (
                f"; padded batches ({setup.runtime.padding} padding): SDPA gets a padding mask, so each block keeps"
                " k and v repeated to every query head and a B × 1 × S × S additive mask (planner/padding.py)"
                if padding_masked(spec, policy_setup(setup))  # both halves of a pair are padded together
                else ""
            ),
            source=sequences_source(setup)
            or (
                "bitsandbytes 0.50.2 autograd/_functions.py MatMul8bitLt: ctx.tensors = (CAt, subA, A)"
                if setup.quant == "int8"
                else ""
            ),  # fmt: skip
        ),
        Term(
            name="logits",
            value_bytes=logits,
            formula=_objective_logits_formula(spec, setup, tp),
            source=kernel_source(setup) or _LOSS_SOURCES[plain_loss(setup)],
        ),
        Term(
            name="transient",
            value_bytes=transient,
            formula=f"at the peak ({phase})"
            + (
                ": the reference's no-grad forward — one block's working set + its scored tokens' log-prob kernel"
                if phase == "reference forward"
                else ": the largest block matrix dequantized by the bitsandbytes base + the gradient it multiplies"
                if phase == LAST_BLOCK_BACKWARD
                else ": generate()'s KV cache and sampling logits (and a ZeRO-3-gathered model)"
                if phase == "generation"
                else _step_formula(setup)
            )
            + _gathered_formula(spec, setup, states),
            source="; ".join(filter(None, (_step_source(setup), _gathered_source(setup, states)))),
        ),
        Term(
            name="runtime_overhead",
            value_bytes=overhead,
            formula=f"CUDA context {format_gib(context)} + {frag:.0%} allocator slack",
            source=constant_source("runtime_overhead", "cuda_context_bytes"),
        ),
    )


def _objective_logits_formula(spec: ModelSpec, setup: TrainSetup, tp: int) -> str:
    """The logits line: the reward model's score head, the objective's log-prob kernel, or the loss's."""
    if setup.objective.kind == "rm":
        return "none: a reward model's score head emits one value per sequence"
    sequences = scored_sequences(setup)
    scored = scored_tokens_per_sequence(setup)
    special = kernel_formula(spec, setup, sequences=sequences, scored=scored, tp=tp)
    plain = replace(logits_setup(setup), runtime=replace(setup.runtime, loss=plain_loss(setup)))
    return special or _logits_formula(plain, spec.vocab_size // tp)


def _step_formula(setup: TrainSetup) -> str:
    """What the optimizer-step temporaries were counted as."""
    knobs = setup.runtime
    impl = (f"AdamW {knobs.optimizer_impl} step temporaries"
            if setup.optimizer == "adamw" and knobs.optimizer_impl != "fused" else "")  # fmt: skip
    if deepspeed_zero(setup) and setup.parallel.offload == "none":
        groups = "one sub-group (sub_group_size)" if setup.parallel.zero == 3 else "the rank's partition"
        return f"; DeepSpeed ZeRO steps {groups} at a time: flat gradient copy + fp32 gradient" + (
            f" + {impl} of that partition" if impl else ""
        )
    return f"; {impl}" if impl else ""


def _deepspeed_gathers(setup: TrainSetup, states: DeviceStates) -> bool:
    """Whether the gathered parameters are DeepSpeed ZeRO-3's replayed step (`zero3_trace`)."""
    return bool(states.gathered) and zero3_replayed(setup)


def _gathered_formula(spec: ModelSpec, setup: TrainSetup, states: DeviceStates) -> str:
    """What the sharded parameters gathered at once add to the transient: under DeepSpeed ZeRO-3 the most its
    step holds gathered or in flight, and why (the module computed, a recompute's block, the reuse window, the
    prefetcher's run ahead); under FSDP its units."""
    if not states.gathered:
        return ""
    if not _deepspeed_gathers(setup, states):
        return f"; + {format_gib(states.gathered)} of sharded parameters gathered (the units computed)"
    knobs = setup.runtime
    held = zero3_gathered(spec, setup)
    ahead = (f"the prefetcher runs up to {prefetch_bucket_elements(spec, knobs):,}-element buckets ahead while under "
             f"{knobs.max_live_parameters:,} live parameters" if knobs.max_live_parameters else "no prefetching")  # fmt: skip
    return (
        f"; + ZeRO-3 parameters gathered or in flight at most: {held.base:,} elements ({format_gib(states.gathered)}),"
        f" reached at {held.moment}: the module computed, a checkpointed block's recompute, what the "
        f"{knobs.max_reuse_distance:,}-element reuse window keeps between two uses, and {ahead}"
    )


def _gathered_source(setup: TrainSetup, states: DeviceStates) -> str:
    """The replay's source when the gathered parameters are DeepSpeed ZeRO-3's."""
    return ZERO3_TRACE_SOURCE + " (planner/zero3_trace.py)" if _deepspeed_gathers(setup, states) else ""


def _step_source(setup: TrainSetup) -> str:
    """Where the step temporaries' rule comes from."""
    sources = []
    if deepspeed_zero(setup) and setup.parallel.offload == "none":
        sources.append(
            "DeepSpeed 0.19.8 deepspeed/runtime/zero/stage3.py (step, _prepare_fp32_grad_for_sub_group), "
            "stage_1_and_2.py (step); measured on CPU (tests/test_zero3_memory.py)"
        )
    if setup.runtime.optimizer_impl != "fused":
        sources.append("torch 2.13 torch/optim/adam.py (_multi_tensor_adam: _foreach_sqrt)")
    return "; ".join(sources)


_LOSS_SOURCES = {
    "full": "",
    "full_legacy": "transformers 4.38.2 src/transformers/models/llama/modeling_llama.py LlamaForCausalLM.forward "
    "(logits.float() and shift_logits .contiguous() in forward, 4.31.0-4.45.2); traced in "
    "benchmarks/results/legacy_loss_trace.md",
    "chunked": "pytorch/torchtune @ bd2a0fc torchtune/modules/loss/ce_chunked_output_loss.py",
    "fused_linear": "linkedin/Liger-Kernel @ e11c2d6 src/liger_kernel/ops/fused_linear_cross_entropy.py",
}


def _logits_formula(setup: TrainSetup, vocab: int) -> str:
    """How the logits term was counted, for the loss implementation the runtime uses."""
    tokens = setup.micro_batch * setup.seq_len
    knobs = setup.runtime
    if knobs.loss == "chunked":
        return (f"{tokens} tokens × {vocab} vocab × (compute-dtype logits + fp32 log_softmax outputs) "
                f"+ one of {knobs.loss_chunks} chunks' fp32 copy and gradient (chunked cross-entropy)")  # fmt: skip
    if knobs.loss == "full_legacy":
        copy = "the shifted fp32 copy, " if setup.micro_batch > 1 else ""
        kept = " + the kept output's fp32 logits" if knobs.keep_output else ""
        return (f"{tokens} tokens × {vocab} vocab: the larger of forward (the output's fp32 logits, {copy}the "
                f"log_softmax output) and backward (3 fp32 loss tensors{kept}), over the {setup.seq_len - 1} "
                "shifted positions of each sequence (transformers < 4.46)")  # fmt: skip
    if knobs.loss == "fused_linear":
        chunk = f"{knobs.loss_chunk_tokens}-token" if knobs.loss_chunk_tokens else "Liger-sized"
        return f"one {chunk} chunk × {vocab} vocab fp32 + hidden-state gradient (fused linear cross-entropy, no full logits)"
    kept = " + the kept output's compute-dtype logits (--keep-output)" if knobs.keep_output else ""
    return (
        f"{tokens} tokens × {vocab} vocab × 3 fp32 loss tensors (log_softmax output and two gradients){kept}"
    )
