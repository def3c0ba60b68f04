"""What each training rank holds at rest: base weights, adapters, gradients, optimizer state, master copy, the
parameters ZeRO-3/FSDP gather, and what offload moves to host RAM, after tensor/pipeline/data-parallel sharding.

`planner/train_memory.py` adds the step's activations, logits and temporaries to these; the rules:
- tensor parallelism divides matrices by tp; pipeline parallelism keeps ceil(layers / pp) blocks per stage;
- ZeRO-1 shards optimizer state (and master weights) over dp, ZeRO-2 also gradients, ZeRO-3 (FSDP full
  shard) also parameters, plus the gathered ones in flight;
- offload moves the optimizer state to host RAM, under DeepSpeed ZeRO-2/3 the gradient partition too (its
  fp32 copy in the CPU optimizer's buffer: stage_1_and_2.py copy_grads_in_partition, stage3.py
  grad_partitions_flat_buffer on the offload device), and with ZeRO-3 the parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from swiftplan.planner.adapters import adapter_params, is_targeted, lora_params_for
from swiftplan.planner.architecture import (
    largest_param_elements,
    layer_linears,
    layer_params,
    total_params,
)
from swiftplan.planner.dtypes import dtype_bytes
from swiftplan.planner.fsdp_memory import fsdp_gathered_bytes
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.objective_memory import (
    ObjectiveStates,
    objective_states,
)
from swiftplan.planner.optimizer_temporaries import matrix_shape_sum
from swiftplan.planner.runtime_features import fsdp_cpu_offload_states
from swiftplan.planner.runtime_terms import (
    grads_on_host,
    reduce_bucket_bytes,
    saved_module_params,
    shard_degree,
    sharding_stage,
    zero3_live_parameter_bytes,
    zero3_replayed,
    zero_sharded,
)
from swiftplan.planner.setup import LoraSetup, TrainSetup
from swiftplan.planner.states import (
    gradient_bytes,
    master_weight_bytes,
    optimizer_state_bytes,
    state_dtypes,
)
from swiftplan.planner.weights import bnb_quant_state_bytes, layer_weight_bytes, outer_weight_bytes
from swiftplan.planner.zero3_trace import zero3_gathered


def reward_head_params(spec: ModelSpec, setup: TrainSetup) -> int:
    """Parameters a reward model does not have: AutoModelForSequenceClassification replaces an untied LM
    head (vocab × hidden) with a hidden × 1 score head (transformers modeling_*ForSequenceClassification);
    a tied head is the embedding, which stays."""
    if setup.objective.kind != "rm" or spec.tie_word_embeddings:
        return 0
    return spec.vocab_size * spec.hidden_size - spec.hidden_size


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
def _layer_adapter_params(spec: ModelSpec, lora: LoraSetup, layer: int) -> int:
    """LoRA parameters of one block (blocks differ only as dense vs MoE, hence first and last)."""
    return sum(
        lora_params_for(lin, lora)
        for lin in layer_linears(spec, layer)
        if is_targeted(lin, lora, spec.model_type)
    )


def gradient_shares(spec: ModelSpec, setup: TrainSetup, grads: int, layers: range) -> tuple[int, int, int]:
    """(LM head + final norm, one block, untied embedding) shares of the gradient bytes `grads`."""
    if grads == 0:
        return 0, 0, 0
    if setup.trains_adapters:
        assert setup.lora is not None
        total = adapter_params(spec, setup.lora)
        per_layer = max(_layer_adapter_params(spec, setup.lora, i) for i in {layers[0], layers[-1]})
        return 0, grads * per_layer // max(total, 1), 0
    total = total_params(spec) - reward_head_params(spec, setup)
    head = spec.vocab_size * spec.hidden_size + spec.hidden_size
    per_layer = max(layer_params(spec, i) for i in layers)
    embedding = 0 if spec.tie_word_embeddings else spec.vocab_size * spec.hidden_size
    if setup.objective.kind == "rm":  # no LM head: the (tied or not) embedding's gradient arrives last
        head, embedding = spec.hidden_size, spec.vocab_size * spec.hidden_size
    return grads * head // total, grads * per_layer // total, grads * embedding // total


@dataclass(frozen=True, kw_only=True, slots=True)
class DeviceStates:
    """Per-device bytes of the parameter-sized terms after sharding and offload."""

    weights: int
    adapters: int
    gradients: int
    optimizer: int
    master: int
    gathered: int
    """ZeRO-3: the most gathered or in flight at once (DeepSpeed: `zero3_trace`, prefetching included)."""
    host: int
    """Offloaded to host RAM, all data-parallel ranks together."""
    trainable_here: int
    """Trainable parameters of this device's model-parallel shard."""
    saved_modules: int = 0
    """Parameters of modules trained in full next to LoRA (modules_to_save), this shard."""
    bucket: int = 0
    """DeepSpeed's gradient reduce bucket(s), counted with the gradients."""
    quant_constants: int = 0
    """bitsandbytes' 4-bit constants kept whole on every rank when the weights are sharded (in `weights`)."""
    objective: ObjectiveStates = ObjectiveStates()
    """Reference, reward and value models the objective adds (planner/objective_memory.py)."""

    @property
    def static(self) -> int:
        """Bytes alive through the whole step: weights, adapters, optimizer, master and the objective's models."""
        extra = self.objective.reference + self.objective.reward_model + self.objective.value_model
        return self.weights + self.adapters + self.optimizer + self.master + extra


def device_states(spec: ModelSpec, setup: TrainSetup, stage_layers: range, dp: int) -> DeviceStates:
    """Weights, adapters, gradients, optimizer state and master copy on one device (ZeRO shards them
    over dp: 1 the optimizer state and master, 2 also gradients, 3 also parameters; offload moves
    the optimizer state, and with optimizer+params the parameters, to host RAM)."""
    par, dtypes, knobs = setup.parallel, state_dtypes(setup), setup.runtime
    model_parallel = par.tp * par.pp
    lora_params = adapter_params(spec, setup.lora) if setup.trains_adapters and setup.lora else 0
    saved = saved_module_params(spec, knobs) // model_parallel
    no_head = reward_head_params(spec, setup)  # a reward model has a score head instead of the LM head
    trainable_here = (
        lora_params if setup.trains_adapters else total_params(spec) - no_head
    ) // model_parallel + saved
    weights = _weights_on_device(spec, setup, stage_layers) - no_head * dtype_bytes(dtypes.weights) // par.tp
    wb, sb = dtype_bytes(dtypes.weights), dtype_bytes(dtypes.saved)
    # modules_to_save: a trainable copy in the module dtype (bf16 under TRL's k-bit cast), its gradient and
    # optimizer state in it too
    adapters = lora_params * dtype_bytes(dtypes.adapters) // model_parallel + saved * sb
    grads = gradient_bytes(trainable_here - saved, dtype_bytes(dtypes.gradients)) + gradient_bytes(saved, sb)
    optim = optimizer_state_bytes(trainable_here - saved, setup.optimizer, dtype_bytes(dtypes.optimizer),
                                  matrix_shape_sum=matrix_shape_sum(spec) // model_parallel)  # fmt: skip
    optim += optimizer_state_bytes(
        saved, setup.optimizer, sb, matrix_shape_sum=saved and 2 * (spec.vocab_size + spec.hidden_size)
    )
    if knobs.optimizer_in_backward:  # one gradient at a time (torchtune optimizer_in_bwd), each in its own
        # dtype: a modules_to_save copy's in the module's (traced: tests/test_trace_knobs.py)
        largest = min(largest_param_elements(spec), trainable_here - saved)
        each_saved = saved // max(1, len(knobs.modules_to_save))
        grads = max(gradient_bytes(largest, dtype_bytes(dtypes.gradients)), gradient_bytes(each_saved, sb))
    master = master_weight_bytes(trainable_here, dtype_bytes(dtypes.master)) if dtypes.master else 0
    stage, shards = sharding_stage(setup), shard_degree(setup, dp)
    optim, master, grads = zero_sharded(setup, dp, optimizer=optim, master=master, gradients=grads)
    gathered = 0
    # a bitsandbytes 4-bit base's constants stay whole on every rank when the weights are sharded
    constants = bnb_quant_state_bytes(spec, stage_layers, quant=setup.quant, double_quant=setup.double_quant,
                                      tp=par.tp) if stage == 3 or knobs.fsdp != "none" else 0  # fmt: skip
    weights -= constants
    if stage == 3:
        weights, adapters = weights // shards, adapters // shards
        if zero3_replayed(setup):
            # the most the step holds gathered or in flight: a module, a recompute's block, what the reuse
            # window keeps, what the prefetcher runs ahead
            held = zero3_gathered(spec, setup).base
            gathered = zero3_live_parameter_bytes(spec, knobs, weight_bytes=wb, tp=par.tp, held_elements=held)
        elif knobs.fsdp != "none":  # two blocks and the root unit, as FSDP gathers them (runtime_features)
            gathered = fsdp_gathered_bytes(spec, setup, stage_layers, wb)
        else:  # the block computed and the one prefetched
            gathered = 2 * max(layer_params(spec, i) for i in stage_layers) * wb // par.tp
    elif knobs.fsdp != "none":  # shard_grad_op: shards at rest, units gathered forward to backward (traced)
        weights, adapters = weights // shards, adapters // shards
        gathered = fsdp_gathered_bytes(spec, setup, stage_layers, wb)
    bucket = reduce_bucket_bytes(spec, knobs, stage=stage, grad_bytes=dtype_bytes(dtypes.gradients))
    grads += bucket
    host = 0
    if par.offload in ("optimizer", "optimizer+params"):
        host += (optim + master) * dp
        optim, master = 0, 0
        if grads_on_host(setup):  # reduced in the bucket(s), kept in the CPU optimizer's fp32 buffer
            partition = grads - bucket
            host += partition * 4 // dtype_bytes(dtypes.gradients) * dp
            grads = bucket
    if par.offload == "optimizer+params":
        host += (weights + adapters) * dp
        weights, adapters = 0, 0
    if knobs.fsdp_cpu_offload:  # shards in host RAM, gathered unit(s) on the device (runtime_features)
        off = fsdp_cpu_offload_states(spec, setup, stage_layers, weights=weights, adapters=adapters, rest=grads + optim + master, bytes_=(wb, dtype_bytes(dtypes.gradients)))  # fmt: skip
        weights, adapters, grads, gathered, optim, master, host = off.weights, off.adapters, off.gradients, off.gathered, 0, 0, host + off.host * dp  # fmt: skip
    weights += constants  # never offloaded either: a module attribute, not a parameter
    trained_here = weights + adapters + grads + optim + master
    extra = objective_states(
        spec, setup, stage_layers, shards=shards, stage=stage, trained_state_bytes=trained_here
    )
    return DeviceStates(weights=weights, adapters=adapters, gradients=grads, optimizer=optim, master=master,
                   gathered=gathered, host=host, trainable_here=trainable_here, saved_modules=saved,
                   bucket=bucket, quant_constants=constants, objective=extra)  # fmt: skip
