"""Per-device training memory: the states each rank holds at rest (`planner/device_states.py`: weights,
adapters, gradients, optimizer, master copy, gathered parameters, offload) plus the step's activations,
logits and temporaries at each phase, the peak over the phases, and the caching allocator's reserve.

Sharding of the step's tensors (per device, dp = world / (tp × pp)): tensor parallelism divides per-head
activations and the vocab by tp; pipeline parallelism keeps ceil(layers / pp) blocks per stage, and the
first stage also holds the embedding and, with micro-batches in flight (1F1B), pp sets of activations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from swiftplan.planner import activations as act
from swiftplan.planner.adapters import adapter_params
from swiftplan.planner.allocator import SetupCache, with_reserved
from swiftplan.planner.architecture import (
    total_params,
)
from swiftplan.planner.breakdown import MemoryBreakdown, Term
from swiftplan.planner.calibration import constant
from swiftplan.planner.device_states import DeviceStates, device_states, gradient_shares, reward_head_params
from swiftplan.planner.dora_moments import DORA_FORWARD, dora_forward_moment_bytes
from swiftplan.planner.dtypes import dtype_bytes
from swiftplan.planner.expert_backward import EXPERT_BACKWARD, expert_backward
from swiftplan.planner.fsdp1_wrap import fsdp1_offload_copy_term, fsdp1_setup_cache
from swiftplan.planner.fsdp_memory import StepBytes, fsdp_moments
from swiftplan.planner.head_gradients import (
    CHUNK_SUM,
    HEAD_STEP,
    chunk_summed_head,
    head_step_transient,
    in_backward_grads,
    tied_sum_extra,
)
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.objective_memory import (
    RolloutMemory,
    adjusted_phases,
    no_grad_forward_bytes,
    objective_logits_bytes,
    policy_setup,
    reference_forward_bytes,
    reference_runs_beside_policy,
    rollout_memory,
)
from swiftplan.planner.optimizer_temporaries import optimizer_step_temporaries
from swiftplan.planner.recompute import (
    final_norm_backward_bytes,
    last_block_backward_bytes,
    last_block_forward_bytes,
    shared_expert_backward_bytes,
    stream_gradient_bytes,
)
from swiftplan.planner.runtime_features import annotate_terms
from swiftplan.planner.runtime_terms import (
    saved_module_params,
    shard_degree,
)
from swiftplan.planner.setup import TrainSetup
from swiftplan.planner.states import (
    state_dtypes,
)
from swiftplan.planner.train_terms import (
    FINAL_NORM_BACKWARD,
    LAST_BLOCK_BACKWARD,
    LAST_BLOCK_FORWARD,
    breakdown_terms,
)


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainMemory:
    """Device breakdown plus what lives on the host."""

    device: MemoryBreakdown
    """The most loaded device."""
    host_bytes: int
    """Host RAM taken by offloaded optimizer state and parameters (all ranks of one node)."""
    params: int
    """Parameters of the whole model, adapters included."""
    trainable_params: int
    """Parameters that receive gradients."""
    phase_activations: dict[str, int]
    """Activation bytes alive at each candidate peak moment (for explanation and verification)."""
    extras: tuple[Term, ...] = ()
    """Memory held outside torch's allocator on the device (a colocated vLLM engine in sleep mode)."""
    pooled: tuple[Term, ...] = ()
    """Memory held through torch's allocator beside the step (a colocated vLLM engine without sleep mode)."""
    rollout: RolloutMemory | None = None
    """GRPO/PPO: what the rollout engine holds on a training device."""
    phase_peaks: tuple[tuple[str, int], ...] = ()
    """(moment, allocated bytes without the cuBLAS workspace) of each candidate peak, for composing
    further terms on top (planner/vision_memory.py)."""

    moments: tuple[tuple[str, int, int], ...] = ()
    """(moment, allocated bytes, per-step bytes then) of each candidate peak, as the allocator model takes
    them: any may leave the most reserved."""

    setup_cache: SetupCache | None = None
    """What the run's set-up left cached in the allocator before the first step (FSDP1's wrap)."""


def _phase_peaks(
    spec: ModelSpec,
    setup: TrainSetup,
    states: DeviceStates,
    phases: act.ActivationPhases,
    stage_layers: range,
    *,
    logits: int,
    step_temp: int,
) -> tuple[dict[str, int], dict[str, int], int, int, dict[str, int]]:
    """Allocated bytes at each candidate peak of a step, the activations live at each, the activations
    at the loss and in backward (1F1B keeps up to pp micro-batches on stage 0), and FSDP's gathered
    parameters at its moments."""
    pp = setup.parallel.pp
    in_flight = min(pp, setup.grad_accum) if pp > 1 else 1
    at_loss = phases.at_loss * in_flight
    in_backward = phases.in_backward + phases.at_loss * (in_flight - 1)
    grads, gathered = states.gradients, states.gathered
    static = states.static
    grads_during_fwd = grads if setup.grad_accum > 1 else 0
    head_grads, layer_grads, embedding_grads = gradient_shares(
        spec, setup, grads - states.bucket, stage_layers
    )
    early_grads = grads - layer_grads - embedding_grads
    if setup.runtime.optimizer_in_backward:
        head_grads, early_grads = in_backward_grads(spec, setup, grads)
    peaks = {
        "loss and backward start": static + gathered + grads_during_fwd + at_loss + logits,
        "optimizer step": static + grads + step_temp,
    }
    acts = {"loss and backward start": at_loss, "optimizer step": 0, "end of backward": 0}
    held: dict[str, int] = {}  # what each moment holds beyond the states and saved activations: its transient
    norm_backward = final_norm_backward_bytes(spec, policy_setup(setup))
    if norm_backward and setup.runtime.fsdp == "none" and setup.parallel.pp == 1:
        # after the LM head's backward, its loss tensors freed, every saved activation still alive (traced)
        peaks[FINAL_NORM_BACKWARD] = (
            static + gathered + (grads_during_fwd or head_grads) + at_loss + norm_backward
        )
        acts[FINAL_NORM_BACKWARD] = at_loss
        held[FINAL_NORM_BACKWARD] = gathered + norm_backward
    last_block = 0
    if setup.grad_ckpt or setup.runtime.activation_offload:  # offloaded tensors come back one block at a time
        # Backward recomputes one block at a time, last block first. Recomputing the last one: all
        # block inputs kept, only the head's gradients exist; recomputing the first: one input
        # left, every gradient but the first block's and the (untied) embedding's.
        kept = early_grads if setup.runtime.optimizer_in_backward else head_grads  # stepped: only a tied one
        late = ((grads_during_fwd or kept), in_backward)
        first_saved, first_working, first_grads = phases.largest_block, phases.backward_working, early_grads
        if _first_block_differs(spec, setup, stage_layers):
            # DeepSeek's dense first blocks: the first block's own tensors, working set and gradients (traced)
            first = stage_layers[0]
            first_saved, first_working = act.first_block_recompute(
                spec, policy_setup(setup), first, tp=setup.parallel.tp
            )
            _, first_layer_grads, _ = gradient_shares(
                spec, setup, grads - states.bucket, range(first, first + 1)
            )
            first_grads = grads - first_layer_grads - embedding_grads
        early = (
            grads_during_fwd or first_grads,
            phases.shared_in_backward
            + phases.block_input
            + phases.below_first_recompute
            + first_saved
            + first_working,
        )
        grads_then, acts_then = max(late, early, key=sum)
        peaks["recomputation in backward"] = static + gathered + grads_then + acts_then
        acts["recomputation in backward"] = acts_then
    elif setup.runtime.ckpt_every == 1:
        policy = policy_setup(setup)
        tokens = policy.micro_batch * setup.seq_len  # both halves of a pair, PPO's two passes
        # Without checkpointing, the last block's forward holds its Linears' transients (the product's adapter cast
        # beside dropout's output, up_proj's LoRA output, a 4-bit base's dequantized weight) beside every block's
        # saved tensors, before the loss exists (recompute.last_block_forward_bytes; traced)
        forward = last_block_forward_bytes(spec, policy, tokens, tp=setup.parallel.tp)
        if forward:  # transformers' bool mask too, alive until the forward returns (traced)
            forward += act.bool_mask_bytes(spec, policy)
            peaks[LAST_BLOCK_FORWARD] = static + gathered + grads_during_fwd + at_loss + forward
            acts[LAST_BLOCK_FORWARD] = at_loss
            held[LAST_BLOCK_FORWARD] = gathered + forward
        # Its backward multiplies by a bitsandbytes base's dequantized weight with every saved activation still
        # alive, once the loss tensors are gone (traced: int8 after peft's fp32 upcast holds a 180 MB fp32 copy of
        # Llama-2-7B's MLP projection there), or makes the gradient of a re-materialised expert stack with LoRA, or
        # holds a dense MLP's gradients beside its output's, the loss side's saved tensors (the final norm's, the LM
        # head's input) freed by then (recompute.last_block_backward_bytes; traced)
        plain = (
            setup.runtime.fsdp == "none" and setup.parallel.pp == 1
        )  # FSDP's moments are its own (fsdp_memory)
        dense = last_block_backward_bytes(spec, policy, tokens, tp=setup.parallel.tp) if plain else 0
        loss_side = phases.shared - act.block_arguments_bytes(spec, policy)
        dora = dora_forward_moment_bytes(spec, policy, tokens, tp=setup.parallel.tp) if plain else None
        if (
            dora is not None
        ):  # the last block's DoRA Linear rebuilds its adapted weight (planner/dora.py; traced)
            peaks[DORA_FORWARD] = static + gathered + grads_during_fwd + at_loss + dora
            acts[DORA_FORWARD] = at_loss
            held[DORA_FORWARD] = gathered + dora
        expert_lora = act.expert_lora_gradient_bytes(spec, setup, tokens)
        if expert_lora:
            # beside the block output's gradient, the loss side and a shared expert's tensors freed (traced)
            expert_lora += (
                stream_gradient_bytes(spec, setup, tokens)
                + shared_expert_backward_bytes(spec, policy, tokens, tp=setup.parallel.tp)
                - loss_side
            )
        last_block = max(
            act.dequantized_backward_bytes(spec, setup, tokens),
            expert_lora,
            dense - loss_side if dense else 0,
        )
        if last_block:
            peaks[LAST_BLOCK_BACKWARD] = (
                static + gathered + (grads_during_fwd or head_grads) + at_loss + last_block
            )
            acts[LAST_BLOCK_BACKWARD] = at_loss
    _objective_phases(
        spec, setup, states, phases, peaks, acts, grads_during_fwd=grads_during_fwd, at_loss=at_loss
    )
    if setup.method == "full" and setup.objective.kind == "rm":
        # no LM head: the embedding's gradient comes last, when every other gradient exists (traced)
        peaks["end of backward"] = static + grads
    elif setup.method == "full" and spec.tie_word_embeddings:
        # Tied embeddings: the embedding's gradient arrives last and is added out of place to the LM
        # head's, so two extra vocab × hidden gradients coexist with all others (traced).
        peaks["end of backward"] = static + grads + tied_sum_extra(spec, setup, head_grads)
    elif setup.method == "full" and setup.parallel.pp == 1 and not setup.runtime.optimizer_in_backward:
        # untied: the embedding's gradient is made last, from the stream's gradient at the first block's input,
        # beside every other gradient (traced)
        stream_grad = stream_gradient_bytes(spec, setup, policy_setup(setup).micro_batch * setup.seq_len)
        peaks["end of backward"] = static + grads + stream_grad
        acts["end of backward"] = stream_grad
    expert = expert_backward(spec, setup, grads - states.bucket, tp=setup.parallel.tp)
    if expert is not None:
        # full fine-tuning of a MoE model: a MoE block's experts differentiate beside nearly every gradient (traced)
        peaks[EXPERT_BACKWARD] = static + gathered + states.bucket + expert.total
        acts[EXPERT_BACKWARD] = expert.saved
        held[EXPERT_BACKWARD] = gathered + expert.held
    if setup.runtime.optimizer_in_backward and head_grads and not early_grads:
        # untied: the head's gradient is made beside the logits' gradient and stepped at once (its step
        # temporaries after that gradient is freed), every saved activation still alive (traced)
        peaks[HEAD_STEP] = static + head_grads + at_loss + head_step_transient(spec, setup, step_temp)
        acts[HEAD_STEP] = at_loss
    chunk_sum = chunk_summed_head(spec, setup, grads)
    if chunk_sum:  # before any other gradient but those kept across micro-batches (traced)
        peaks[CHUNK_SUM] = static + gathered + grads_during_fwd + at_loss + chunk_sum
        acts[CHUNK_SUM] = at_loss
    held |= _fsdp_phases(spec, setup, states, phases, stage_layers, peaks, acts, logits=logits, at_loss=at_loss,
                         in_backward=in_backward, root_grads=head_grads + embedding_grads, block_grads=layer_grads)  # fmt: skip
    if last_block:
        held[LAST_BLOCK_BACKWARD] = gathered + last_block
    return peaks, acts, at_loss, in_backward, held


def _first_block_differs(spec: ModelSpec, setup: TrainSetup, stage_layers: range) -> bool:
    """Plain checkpointing of a model whose first block's MLP is dense and whose last is MoE (or the reverse), without
    the optimizer in backward: the first block's recompute has its own figures."""
    knobs = setup.runtime
    return (
        setup.grad_ckpt
        and knobs.ckpt_every == 1
        and not knobs.activation_offload
        and knobs.fsdp == "none"
        and not knobs.optimizer_in_backward
        and spec.is_moe_layer(stage_layers[0]) != spec.is_moe_layer(stage_layers[-1])
    )


def _fsdp_sharded(setup: TrainSetup, grads: int) -> int:
    """Sharded gradients on the device under FSDP: `grads`, or none when CPU offload keeps them on the host."""
    return 0 if setup.runtime.fsdp_cpu_offload else grads


def _fsdp_phases(
    spec: ModelSpec, setup: TrainSetup, states: DeviceStates, phases: act.ActivationPhases, stage_layers: range,
    peaks: dict[str, int], acts: dict[str, int], *, logits: int, at_loss: int, in_backward: int, root_grads: int,
    block_grads: int,
) -> dict[str, int]:  # fmt: skip
    """FSDP's moments added to (or replacing) `peaks` and `acts` (planner/fsdp_memory.py); what FSDP holds at
    each beyond the shards — gathered parameters, unsharded gradients — as the breakdown's transient."""
    if setup.runtime.fsdp == "none":
        return {}
    dtypes = state_dtypes(setup)
    wb, gb = dtype_bytes(dtypes.weights), dtype_bytes(dtypes.gradients)
    grads_during_fwd = states.gradients if setup.grad_accum > 1 else 0
    sharded = _fsdp_sharded(setup, states.gradients - root_grads)
    step = StepBytes(static=states.static, grads_during_fwd=grads_during_fwd, grads_without_root=sharded,
                     at_loss=at_loss, in_backward=in_backward, logits=logits,
                     last_block_kept=phases.block_input or phases.largest_block,
                     grads_early=_fsdp_sharded(setup, sharded - block_grads), block_shard=_fsdp_sharded(setup, block_grads),
                     recomputed_block=phases.largest_block + phases.backward_working,
                     early_acts=phases.shared_in_backward + phases.block_input + phases.below_first_recompute + phases.largest_block
                     + phases.backward_working)  # fmt: skip
    held = {}
    for moment, (peak, alive, transient) in fsdp_moments(spec, setup, stage_layers, step, weight_bytes=wb, grad_bytes=gb).items():  # fmt: skip
        peaks[moment], acts[moment], held[moment] = peak, alive, transient
    return held


def _objective_phases(
    spec: ModelSpec,
    setup: TrainSetup,
    states: DeviceStates,
    phases: act.ActivationPhases,
    peaks: dict[str, int],
    acts: dict[str, int],
    *,
    grads_during_fwd: int,
    at_loss: int,
) -> None:
    """Add the objective's no-grad reference (and KTO KL) forward as a candidate peak: after the
    policy forward with its activations alive (DPO, KTO), or before it (GRPO, PPO)."""
    objective = setup.objective
    forward = reference_forward_bytes(spec, setup, states.objective.reference_kind)
    rollout = objective.rollout
    if rollout is not None and rollout.engine == "vllm":
        # TRL re-scores vLLM's completions with the policy, without gradients, before the policy forward
        # (importance-sampling correction; trl 1.16 grpo_trainer.py:2652-2665)
        scoring = no_grad_forward_bytes(spec, setup, sequences=setup.micro_batch, tp=setup.parallel.tp)
        peaks["scoring"] = states.static + states.gathered + grads_during_fwd + scoring
        acts["scoring"] = 0
    if not forward:
        return
    alive = at_loss if reference_runs_beside_policy(objective) else 0
    peaks["reference forward"] = states.static + states.gathered + grads_during_fwd + alive + forward
    acts["reference forward"] = alive


def _rollout_terms(memory: RolloutMemory, states: DeviceStates, peak_allocated: int) -> tuple[Term, ...]:
    """A colocated vLLM engine as a term beside the trainer: what it holds while training or — when
    generation is the larger moment (sleep mode wakes it beside the trainer's states) — the generation
    phase's excess over the training peak. generate() inside the trainer is a phase of its own instead."""
    if not memory.engine_pool:
        return ()
    at_generation = states.static + memory.during_generation - peak_allocated
    held = max(memory.during_training, at_generation)
    which = (
        "while generating beside the trainer's states"
        if at_generation > memory.during_training
        else "while training"
    )
    return (
        Term(
            name="rollout_engine",
            value_bytes=held,
            formula=f"{memory.formula}; counted {which}",
            source="vLLM sleep mode frees weights and KV cache (vllm 0.32 v1/worker/gpu_worker.py:294); "
            "TRL GRPOConfig vllm_gpu_memory_utilization = 0.3 (trl 1.16 trainer/grpo_config.py:656)",
        ),
    )


def train_memory(
    spec: ModelSpec, setup: TrainSetup, *, world_size: int = 1, device_memory_bytes: int = 80 * 2**30
) -> TrainMemory:
    """Bytes on the most loaded device for one training step of `setup` on `world_size` devices
    (`device_memory_bytes` sizes a colocated rollout engine's share)."""
    par = setup.parallel
    tp, pp = par.tp, par.pp
    dp = max(1, world_size // (tp * pp))
    stage_layers = range(math.ceil(spec.num_layers / pp))
    model_params = total_params(spec)
    lora_params = adapter_params(spec, setup.lora) if setup.trains_adapters and setup.lora else 0
    dtypes = state_dtypes(setup)
    states = device_states(spec, setup, stage_layers, dp)
    phases = adjusted_phases(
        spec, setup, act.activation_phases(spec, policy_setup(setup), layers=len(stage_layers), tp=tp)
    )
    logits = objective_logits_bytes(spec, setup, tp=tp)
    step_temp = (
        optimizer_step_temporaries(
            spec, setup, states.trainable_here, dtypes, dp=dp, saved=states.saved_modules
        )
        if par.offload == "none" and not setup.runtime.fsdp_cpu_offload  # offloaded: stepped on the CPU
        else 0
    )
    phase_peaks, phase_acts, at_loss, in_backward, held = _phase_peaks(
        spec, setup, states, phases, stage_layers, logits=logits, step_temp=step_temp
    )
    rollout = rollout_memory(spec, setup, device_memory_bytes=device_memory_bytes, states=states.objective)
    if (
        rollout.during_generation and not rollout.engine_pool
    ):  # generate() inside the trainer, gradients freed
        phase_peaks["generation"] = states.static + rollout.during_generation
        phase_acts["generation"] = 0
    activations = max(at_loss, in_backward)
    phase = max(phase_peaks, key=lambda name: phase_peaks[name])
    head_grads = (
        in_backward_grads(spec, setup, states.gradients)[0]
        if setup.runtime.optimizer_in_backward
        else gradient_shares(spec, setup, states.gradients - states.bucket, stage_layers)[0]
    )
    transients = {
        "optimizer step": step_temp,
        "end of backward": (
            tied_sum_extra(spec, setup, head_grads)
            if spec.tie_word_embeddings and setup.objective.kind != "rm"
            else 0
        ),
        HEAD_STEP: head_step_transient(spec, setup, step_temp),
        CHUNK_SUM: chunk_summed_head(spec, setup, states.gradients),
        "reference forward": states.gathered
        + reference_forward_bytes(spec, setup, states.objective.reference_kind),
        "generation": rollout.during_generation,
        **held,  # FSDP's moments
    }
    transient = transients.get(phase, states.gathered)
    runtime_alloc = int(constant("runtime_overhead", "cublas_workspace_bytes"))
    peak = phase_peaks[phase] + runtime_alloc
    frag = 0.0  # the allocator's slack is planner/allocator.py's (with_reserved below)
    context = int(constant("runtime_overhead", "cuda_context_bytes"))
    overhead = int(peak * frag) + context
    terms = breakdown_terms(
        spec, setup, states, dtypes, dp=dp, layers=len(stage_layers), lora_params=lora_params,
        activations=activations, logits=logits, transient=transient, phase=phase, overhead=overhead,
        context=context, frag=frag,
    )  # fmt: skip
    terms = annotate_terms(spec, setup, terms, offloaded=phases.offloaded, gathered=states.gathered,
                           quant_constants=states.quant_constants)  # fmt: skip
    device = MemoryBreakdown(  # with_reserved (below) adds peak_reserved and the allocator's slack
        weights=states.weights,
        adapters=states.adapters,
        gradients=states.gradients,
        optimizer=states.optimizer,
        master_weights=states.master,
        reference=states.objective.reference,
        aux_models=states.objective.reward_model + states.objective.value_model,
        activations=activations,
        logits=logits,
        transient=transient,
        runtime_overhead=overhead,
        peak_allocated=peak,
        device_total=peak + overhead,
        peak_phase=phase,
        terms=terms,
    )
    engine = _rollout_terms(rollout, states, peak)
    asleep = setup.objective.rollout is not None and setup.objective.rollout.sleep
    extras, pooled = (engine, ()) if asleep else ((), engine)
    shards, wb = shard_degree(setup, dp), dtype_bytes(dtypes.weights)
    wrap = fsdp1_setup_cache(spec, setup, shards=shards, layers=stage_layers, weight_bytes=wb,
                             gathered_bytes=states.gathered)  # fmt: skip
    copies = fsdp1_offload_copy_term(spec, setup, shards=shards, weight_bytes=wb, layers=stage_layers)
    pooled = (*pooled, *((copies,) if copies else ()))
    # each moment's per-step bytes (its activations, the loss's logits, what it holds besides), for the
    # reserved figure: the moment that leaves the most reserved need not be the allocated peak
    moments = tuple(
        (name, value + runtime_alloc, phase_acts.get(name, 0) + transients.get(name, states.gathered)
         + (logits if name == "loss and backward start" else 0))
        for name, value in phase_peaks.items()
    )  # fmt: skip
    device = with_reserved(spec, device, seq_len=setup.seq_len, extras=extras, pooled=pooled, setup_cache=wrap,
                           moments=moments)  # fmt: skip
    return TrainMemory(
        device=device,
        host_bytes=states.host + phases.offloaded * dp,
        params=model_params + lora_params,
        trainable_params=(lora_params + saved_module_params(spec, setup.runtime))
        if setup.trains_adapters
        else model_params - reward_head_params(spec, setup),
        phase_activations=phase_acts,
        extras=extras,
        pooled=pooled,
        setup_cache=wrap,
        rollout=rollout if setup.objective.rollout is not None else None,
        phase_peaks=tuple(phase_peaks.items()),
        moments=moments,
    )
