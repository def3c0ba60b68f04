"""Per-device training memory: composes weights, states, activations and logits under sharding.

Sharding rules (per device, dp = world / (tp × pp)):
- tensor parallelism divides matrices, per-head activations and the vocab by tp;
- pipeline parallelism keeps ceil(layers / pp) blocks per stage; the first stage also holds
  the embedding and, with micro-batches in flight (1F1B), pp sets of activations;
- ZeRO-1 shards optimizer state (and master weights) over dp, ZeRO-2 also gradients,
  ZeRO-3 also parameters (plus one gathered block in flight);
- offload moves the optimizer state (and with ZeRO-3 the parameters) to host RAM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

from swiftplan.planner import activations as act
from swiftplan.planner.adapters import adapter_params, is_targeted, lora_params_for
from swiftplan.planner.allocator import with_reserved
from swiftplan.planner.architecture import (
    largest_param_elements,
    layer_linears,
    layer_params,
    linear_modules,
    total_params,
)
from swiftplan.planner.breakdown import MemoryBreakdown, Term
from swiftplan.planner.calibration import constant, constant_source
from swiftplan.planner.dtypes import dtype_bytes
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.setup import LoraSetup, TrainSetup
from swiftplan.planner.states import (
    StateDtypes,
    gradient_bytes,
    master_weight_bytes,
    optimizer_state_bytes,
    state_dtypes,
)
from swiftplan.planner.weights import layer_weight_bytes, outer_weight_bytes
from swiftplan.units import format_gib


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


def _weights_on_device(spec: ModelSpec, setup: TrainSetup, layers: range) -> int:
    """Base weights of the stage's blocks and the outer layers, in the module dtype (quantized where set)."""
    wb = dtype_bytes(state_dtypes(setup).weights)
    tp = setup.parallel.tp
    blocks = sum(
        layer_weight_bytes(spec, i, dtype_bytes=wb, quant=setup.quant, double_quant=setup.double_quant, tp=tp)
        for i in layers
    )
    return blocks + outer_weight_bytes(spec, dtype_bytes=wb, tp=tp)


@cache
def _matrix_shape_sum(spec: ModelSpec) -> int:
    """Adafactor's state elements for the whole model: rows + cols per matrix (factored second
    moment), the full size of every vector (norm weights, biases), all fp32."""
    # (elements, row + column state) per matrix; a fused (E, out, in) expert tensor factors over
    # its last two dims, keeping E × out rows and E × in columns.
    matrices = [
        (lin.count * lin.out_features * lin.in_features, lin.count * (lin.out_features + lin.in_features))
        for _, lin in linear_modules(spec)
    ]
    heads = 1 if spec.tie_word_embeddings else 2
    matrices += [(spec.vocab_size * spec.hidden_size, spec.vocab_size + spec.hidden_size)] * heads
    vectors = total_params(spec) - sum(elements for elements, _ in matrices)
    return sum(state for _, state in matrices) + vectors


def _optimizer_step_temporaries(spec: ModelSpec, setup: TrainSetup, trainable: int, state_bytes: int) -> int:
    """Extra bytes live during optimizer.step().

    AdamW is torch's fused kernel (the HF Trainer default, `adamw_torch_fused`): in place, none.
    Adafactor (transformers) loops over parameters; for the largest one it holds fp32 copies of the
    gradient and the parameter (16-bit models) plus grad² and the update: 4 × 4 B × its elements
    (2 × 4 B when the parameter is already fp32). SGD and the 8-bit optimizers update in place.
    """
    if setup.optimizer != "adafactor" or trainable == 0:
        return 0
    largest = min(largest_param_elements(spec), trainable) if not setup.trains_adapters else 0
    if setup.trains_adapters:
        assert setup.lora is not None
        largest = (
            max(
                lora_params_for(lin, setup.lora)
                for _, lin in linear_modules(spec)
                if is_targeted(lin, setup.lora, spec.model_type)
            )
            // 2
        )
    copies = 2 if state_bytes == 4 else 4
    return copies * 4 * largest


@cache
def _layer_adapter_params(spec: ModelSpec, lora: LoraSetup, layer: int) -> int:
    """LoRA parameters of one block (blocks differ only as dense vs MoE, hence first and last)."""
    return sum(
        lora_params_for(lin, lora)
        for lin in layer_linears(spec, layer)
        if is_targeted(lin, lora, spec.model_type)
    )


def _grad_shares(spec: ModelSpec, setup: TrainSetup, grads: int, layers: range) -> tuple[int, int, int]:
    """(LM head + final norm, one block, untied embedding) shares of the gradient bytes `grads`."""
    if grads == 0:
        return 0, 0, 0
    if setup.trains_adapters:
        assert setup.lora is not None
        total = adapter_params(spec, setup.lora)
        per_layer = max(_layer_adapter_params(spec, setup.lora, i) for i in {layers[0], layers[-1]})
        return 0, grads * per_layer // max(total, 1), 0
    total = total_params(spec)
    head = spec.vocab_size * spec.hidden_size + spec.hidden_size
    per_layer = max(layer_params(spec, i) for i in layers)
    embedding = 0 if spec.tie_word_embeddings else spec.vocab_size * spec.hidden_size
    return grads * head // total, grads * per_layer // total, grads * embedding // total


@dataclass(frozen=True, kw_only=True, slots=True)
class _States:
    """Per-device bytes of the parameter-sized terms after sharding and offload."""

    weights: int
    adapters: int
    gradients: int
    optimizer: int
    master: int
    gathered: int
    """ZeRO-3: the block being computed and the one prefetched, gathered in full."""
    host: int
    """Offloaded to host RAM, all data-parallel ranks together."""
    trainable_here: int
    """Trainable parameters of this device's model-parallel shard."""


def _states(spec: ModelSpec, setup: TrainSetup, stage_layers: range, dp: int) -> _States:
    """Weights, adapters, gradients, optimizer state and master copy on one device (ZeRO shards them
    over dp: 1 the optimizer state and master, 2 also gradients, 3 also parameters; offload moves
    the optimizer state, and with optimizer+params the parameters, to host RAM)."""
    par, dtypes = setup.parallel, state_dtypes(setup)
    model_parallel = par.tp * par.pp
    lora_params = adapter_params(spec, setup.lora) if setup.trains_adapters and setup.lora else 0
    trainable_here = (lora_params if setup.trains_adapters else total_params(spec)) // model_parallel
    weights = _weights_on_device(spec, setup, stage_layers)
    adapters = lora_params * dtype_bytes(dtypes.adapters) // model_parallel
    grads = gradient_bytes(trainable_here, dtype_bytes(dtypes.gradients))
    optim = optimizer_state_bytes(trainable_here, setup.optimizer, dtype_bytes(dtypes.optimizer),
                                  matrix_shape_sum=_matrix_shape_sum(spec) // model_parallel)  # fmt: skip
    master = master_weight_bytes(trainable_here, dtype_bytes(dtypes.master)) if dtypes.master else 0
    if par.zero >= 1:
        optim, master = optim // dp, master // dp
    if par.zero >= 2:
        grads //= dp
    gathered = 0
    if par.zero == 3:
        largest_block = max(layer_params(spec, i) for i in stage_layers) * dtype_bytes(dtypes.weights)
        weights, adapters = weights // dp, adapters // dp
        gathered = 2 * largest_block // par.tp
    host = 0
    if par.offload in ("optimizer", "optimizer+params"):
        host += (optim + master) * dp
        optim, master = 0, 0
    if par.offload == "optimizer+params":
        host += (weights + adapters) * dp
        weights, adapters = 0, 0
    return _States(weights=weights, adapters=adapters, gradients=grads, optimizer=optim, master=master,
                   gathered=gathered, host=host, trainable_here=trainable_here)  # fmt: skip


def _phase_peaks(
    spec: ModelSpec,
    setup: TrainSetup,
    states: _States,
    phases: act.ActivationPhases,
    stage_layers: range,
    *,
    logits: int,
    step_temp: int,
) -> tuple[dict[str, int], dict[str, int], int, int]:
    """Allocated bytes at each candidate peak of a step, the activations live at each, and the
    activations at the loss and in backward (1F1B keeps up to pp micro-batches on stage 0)."""
    pp = setup.parallel.pp
    in_flight = min(pp, setup.grad_accum) if pp > 1 else 1
    at_loss = phases.at_loss * in_flight
    in_backward = phases.in_backward + phases.at_loss * (in_flight - 1)
    grads, gathered = states.gradients, states.gathered
    static = states.weights + states.adapters + states.optimizer + states.master
    grads_during_fwd = grads if setup.grad_accum > 1 else 0
    head_grads, layer_grads, embedding_grads = _grad_shares(spec, setup, grads, stage_layers)
    peaks = {
        "loss and backward start": static + gathered + grads_during_fwd + at_loss + logits,
        "optimizer step": static + grads + step_temp,
    }
    acts = {"loss and backward start": at_loss, "optimizer step": 0, "end of backward": 0}
    if setup.grad_ckpt:
        # Backward recomputes one block at a time, last block first. Recomputing the last one: all
        # block inputs kept, only the head's gradients exist; recomputing the first: one input
        # left, every gradient but the first block's and the (untied) embedding's.
        late = ((grads_during_fwd or head_grads), in_backward)
        early = (
            grads_during_fwd or grads - layer_grads - embedding_grads,
            phases.shared + phases.block_input + phases.largest_block + phases.backward_working,
        )
        grads_then, acts_then = max(late, early, key=sum)
        peaks["recomputation in backward"] = static + gathered + grads_then + acts_then
        acts["recomputation in backward"] = acts_then
    if setup.method == "full" and spec.tie_word_embeddings:
        # Tied embeddings: the embedding's gradient arrives last and is added out of place to the LM
        # head's, so two extra vocab × hidden gradients coexist with all others (traced).
        peaks["end of backward"] = static + grads + 2 * head_grads
    return peaks, acts, at_loss, in_backward


def train_memory(spec: ModelSpec, setup: TrainSetup, *, world_size: int = 1) -> TrainMemory:
    """Bytes on the most loaded device for one training step of `setup` on `world_size` devices."""
    par = setup.parallel
    tp, pp = par.tp, par.pp
    dp = max(1, world_size // (tp * pp))
    stage_layers = range(math.ceil(spec.num_layers / pp))
    model_params = total_params(spec)
    lora_params = adapter_params(spec, setup.lora) if setup.trains_adapters and setup.lora else 0
    dtypes = state_dtypes(setup)
    states = _states(spec, setup, stage_layers, dp)
    phases = act.activation_phases(spec, setup, layers=len(stage_layers), tp=tp)
    logits = act.logits_bytes(spec, setup, tp=tp)
    state_bytes = dtype_bytes(dtypes.optimizer)
    step_temp = (
        _optimizer_step_temporaries(spec, setup, states.trainable_here, state_bytes)
        if par.offload == "none"
        else 0
    )
    phase_peaks, phase_acts, at_loss, in_backward = _phase_peaks(
        spec, setup, states, phases, stage_layers, logits=logits, step_temp=step_temp
    )
    activations = max(at_loss, in_backward)
    phase = max(phase_peaks, key=lambda name: phase_peaks[name])
    head_grads = _grad_shares(spec, setup, states.gradients, stage_layers)[0]
    transient = {"optimizer step": step_temp, "end of backward": 2 * head_grads}.get(phase, states.gathered)
    runtime_alloc = int(constant("runtime_overhead", "cublas_workspace_bytes"))
    peak = phase_peaks[phase] + runtime_alloc
    frag = 0.0  # the allocator's slack is planner/allocator.py's (with_reserved below)
    context = int(constant("runtime_overhead", "cuda_context_bytes"))
    overhead = int(peak * frag) + context
    terms = _terms(
        spec, setup, states, dtypes, dp=dp, layers=len(stage_layers), lora_params=lora_params,
        activations=activations, logits=logits, transient=transient, phase=phase, overhead=overhead,
        context=context, frag=frag,
    )  # fmt: skip
    device = MemoryBreakdown(  # with_reserved (below) adds peak_reserved and the allocator's slack
        weights=states.weights,
        adapters=states.adapters,
        gradients=states.gradients,
        optimizer=states.optimizer,
        master_weights=states.master,
        activations=activations,
        logits=logits,
        transient=transient,
        runtime_overhead=overhead,
        peak_allocated=peak,
        device_total=peak + overhead,
        peak_phase=phase,
        terms=terms,
    )
    device = with_reserved(spec, device, seq_len=setup.seq_len)
    return TrainMemory(
        device=device,
        host_bytes=states.host,
        params=model_params + lora_params,
        trainable_params=lora_params if setup.trains_adapters else model_params,
        phase_activations=phase_acts,
    )


def _terms(
    spec: ModelSpec, setup: TrainSetup, states: _States, dtypes: StateDtypes, *, dp: int, layers: int, lora_params: int,
    activations: int, logits: int, transient: int, phase: str, overhead: int, context: int, frag: float,
) -> tuple[Term, ...]:  # fmt: skip
    """Each number of the breakdown with the formula that gave it and, for constants, their source."""
    par = setup.parallel
    tp = par.tp
    trainable_here = states.trainable_here
    return (
        Term(
            name="weights",
            value_bytes=states.weights,
            formula=f"{total_params(spec):,} params by dtype/quant ({setup.quant}), /tp{tp}, {layers} blocks/stage"
            + (f", /dp{dp} (ZeRO-3)" if par.zero == 3 else ""),
        ),
        Term(
            name="adapters",
            value_bytes=states.adapters,
            formula=f"{lora_params:,} LoRA params × {dtype_bytes(dtypes.adapters)} B ({dtypes.adapters})"
            + (f", /tp{tp}" if tp > 1 else "")
            + (f" /dp{dp} (ZeRO-3)" if par.zero == 3 else ""),
        ),
        Term(
            name="gradients",
            value_bytes=states.gradients,
            formula=f"{trainable_here:,} trainable × {dtype_bytes(dtypes.gradients)} B ({dtypes.gradients})"
            + (f" / dp{dp}" if par.zero >= 2 else ""),
        ),
        Term(
            name="optimizer",
            value_bytes=states.optimizer,
            formula=f"{setup.optimizer} state for {trainable_here:,} params ({dtypes.optimizer} moments)"
            + (f" / dp{dp}" if par.zero >= 1 else "")
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
        Term(
            name="activations",
            value_bytes=activations,
            formula=f"saved tensors of {layers} blocks for {setup.micro_batch}×{setup.seq_len} tokens"
            + (" with checkpointing" if setup.grad_ckpt else ""),
        ),
        Term(
            name="logits",
            value_bytes=logits,
            formula=f"{setup.micro_batch * setup.seq_len} tokens × {spec.vocab_size // tp} vocab × 3 fp32 loss tensors (log_softmax output and two gradients)",
        ),
        Term(name="transient", value_bytes=transient, formula=f"at the peak ({phase})"),
        Term(
            name="runtime_overhead",
            value_bytes=overhead,
            formula=f"CUDA context {format_gib(context)} + {frag:.0%} allocator slack",
            source=constant_source("runtime_overhead", "cuda_context_bytes"),
        ),
    )
