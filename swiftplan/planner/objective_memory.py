"""What a preference or RL objective adds to a training step's memory on one device (pure).

- the forward with gradients runs `sequences_per_example` × micro_batch sequences (chosen + rejected
  concatenated; PPO's value model beside the policy), and the loss scores only completion tokens;
- a reference: a frozen copy of the model's weights, or the policy with its adapters disabled (no
  weights), or log-probs precomputed before training (nothing on the device); its no-grad forward is
  a phase of its own — in TRL 1.16's DPOTrainer it runs after the policy forward, while the policy's
  saved activations are alive (trl/trainer/dpo_trainer.py:1299-1336); GRPO scores the reference while
  preparing the batch, before the policy forward (trl/trainer/grpo_trainer.py `_generate_and_score_completions`);
- PPO: a value model trained beside the policy and a frozen reward model;
- rollouts: a colocated vLLM engine owns `memory_fraction` of the GPU (all of the time, or only while
  generating under sleep mode); generate() (PPO, or --rollout-engine hf) holds a KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from swiftplan.planner import activations as act
from swiftplan.planner.calibration import constant
from swiftplan.planner.dtypes import dtype_bytes
from swiftplan.planner.logprob_kernels import (
    fused_head_activation_saving,
    kept_policy_logprob_bytes,
    no_grad_logprob_bytes,
    training_logprob_bytes,
)
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.objective import SFT, ObjectiveSetup, resolve_reference
from swiftplan.planner.serve_memory import kv_cache_bytes_per_token
from swiftplan.planner.setup import ServeSetup, TrainSetup
from swiftplan.planner.states import state_dtypes
from swiftplan.planner.weights import layer_weight_bytes, outer_weight_bytes


def scored_sequences(setup: TrainSetup) -> int:
    """Sequences the policy scores with gradients per micro-batch: both halves of a pair, else micro_batch."""
    return setup.micro_batch * setup.objective.sequences_per_example


def policy_setup(setup: TrainSetup) -> TrainSetup:
    """The set-up whose forward carries gradients: micro_batch × sequences per example (2 for paired
    methods and for PPO's policy + value forward), each of `seq_len` tokens."""
    objective = setup.objective
    per_example = objective.sequences_per_example
    if objective.kind == "ppo":
        per_example = 2  # policy and value model forwards over the same sequences
    if per_example == 1:
        return setup
    return replace(setup, micro_batch=setup.micro_batch * per_example)


def scored_tokens_per_sequence(setup: TrainSetup) -> int:
    """Tokens whose log-probs the loss needs: the completion of a rollout, the response of a pair
    (seq_len − prompt_len) — all tokens for SFT and when the prompt length is not given."""
    objective = setup.objective
    if objective.rollout is not None:
        return objective.rollout.completion_len
    if objective.kind != "sft" and 0 < objective.prompt_len < setup.seq_len:
        return setup.seq_len - objective.prompt_len
    return setup.seq_len


def logits_setup(setup: TrainSetup) -> TrainSetup:
    """The set-up the loss's logits are sized on: the scored tokens of every sequence with gradients
    (the policy's only under PPO: the value head scores one number per token)."""
    sequences = scored_sequences(setup)
    return replace(setup, micro_batch=sequences, seq_len=scored_tokens_per_sequence(setup), objective=SFT)


def objective_logits_bytes(spec: ModelSpec, setup: TrainSetup, *, tp: int) -> int:
    """Loss-side logits of the objective under its runtime's log-prob kernel (planner/logprob_kernels.py);
    0 for a reward model: its score head emits one value per sequence, no vocabulary."""
    if setup.objective.kind == "rm":
        return 0
    if setup.objective.kind == "sft":
        return act.logits_bytes(spec, setup, tp=tp)
    sequences = scored_sequences(setup)
    scored = scored_tokens_per_sequence(setup)
    return training_logprob_bytes(spec, setup, sequences=sequences, scored=scored, tp=tp)


def _model_weight_bytes(spec: ModelSpec, setup: TrainSetup, layers: range, *, tp: int) -> int:
    """One frozen copy of the model in the policy's module dtype and base quantization."""
    wb = dtype_bytes(state_dtypes(setup).weights)
    blocks = sum(
        layer_weight_bytes(spec, i, dtype_bytes=wb, quant=setup.quant, double_quant=setup.double_quant, tp=tp)
        for i in layers
    )
    return blocks + outer_weight_bytes(spec, dtype_bytes=wb, tp=tp)


@dataclass(frozen=True, kw_only=True, slots=True)
class ObjectiveStates:
    """Parameter-sized bytes the objective adds on one device."""

    reference: int = 0
    """A frozen reference copy (sharded like the policy's weights under ZeRO-3/FSDP full_shard)."""
    reward_model: int = 0
    """PPO: the frozen reward model."""
    value_model: int = 0
    """PPO: the value model's weights, gradients and optimizer state (trained like the policy)."""
    reference_kind: str = "none"
    """The resolved reference handling."""
    sharded: bool = False
    """The frozen copies are sharded over data-parallel ranks (ZeRO-3 / FSDP full_shard)."""
    full_copy: int = 0
    """One whole (unsharded) copy of the model's weights on this device's model-parallel shard: what
    ZeRO-3 gathers for generate()."""


def objective_states(
    spec: ModelSpec, setup: TrainSetup, layers: range, *, shards: int, stage: int, trained_state_bytes: int
) -> ObjectiveStates:
    """Reference, reward and value models on this device. `trained_state_bytes` is the policy's own
    weights + adapters + gradients + optimizer + master here (a PPO value model of the same
    architecture, trained the same way, holds as much)."""
    objective = setup.objective
    kind = resolve_reference(objective, trains_adapters=setup.trains_adapters)
    full = copy = _model_weight_bytes(spec, setup, layers, tp=setup.parallel.tp)
    if stage == 3:  # TRL prepares the reference with the policy's DeepSpeed/FSDP sharding
        copy //= shards
    reference = copy if kind == "model" else 0
    sharded = stage == 3 and shards > 1
    if objective.kind != "ppo":
        return ObjectiveStates(reference=reference, reference_kind=kind, sharded=sharded, full_copy=full)
    return ObjectiveStates(reference=reference, reward_model=copy, value_model=trained_state_bytes,
                           reference_kind=kind, sharded=sharded, full_copy=full)  # fmt: skip


def no_grad_forward_bytes(spec: ModelSpec, setup: TrainSetup, *, sequences: int, tp: int) -> int:
    """Peak of a forward without autograd over `sequences` × seq_len tokens: the larger of one block's
    working set (its input and output hidden states and the SwiGLU gate/up/product) and, after the
    blocks, the final hidden states beside the log-prob kernel (planner/logprob_kernels.py)."""
    batch = replace(setup, micro_batch=sequences)
    tokens = sequences * setup.seq_len
    hidden = act.block_input_bytes(spec, batch, tokens)
    working = 2 * hidden + act.forward_working_bytes(spec, batch, tokens) // tp
    scored = scored_tokens_per_sequence(setup)
    head = no_grad_logprob_bytes(
        spec, setup, sequences=sequences, scored=scored, seq_len=setup.seq_len, tp=tp
    )
    return max(working, hidden + head)


def reference_forward_bytes(spec: ModelSpec, setup: TrainSetup, reference_kind: str) -> int:
    """The no-grad reference (and KTO KL) forward's own bytes, with what the policy's log-prob path keeps
    for backward when the reference scores after it; 0 without a reference on the device."""
    if reference_kind in ("none", "precomputed"):
        return 0
    tp = setup.parallel.tp
    forward = no_grad_forward_bytes(spec, setup, sequences=reference_forward_sequences(setup), tp=tp)
    if not reference_runs_beside_policy(setup.objective):
        return forward
    sequences = scored_sequences(setup)
    scored = scored_tokens_per_sequence(setup)
    return forward + kept_policy_logprob_bytes(spec, setup, sequences=sequences, scored=scored, tp=tp)


def reference_forward_sequences(setup: TrainSetup) -> int:
    """Sequences one no-grad reference pass scores at once: both halves of a pair, a rollout
    micro-batch; KTO scores its examples and their mismatched KL sequences in two passes of micro_batch
    (trl 1.16 kto_trainer.py:1430-1436)."""
    return scored_sequences(setup)


def reference_passes(setup: TrainSetup) -> int:
    """No-grad reference passes per micro-batch (KTO: the KL sequences, then the completions)."""
    return 2 if setup.objective.kind == "kto" else 1


def adjusted_phases(spec: ModelSpec, setup: TrainSetup, phases: act.ActivationPhases) -> act.ActivationPhases:
    """The policy's saved activations as the objective's head changes them: a reward model's trained
    score head saves its B × S × H input and returns a B × S × H input gradient at the start of backward;
    TRL's fused head saves no input for a fully trained LM head (its masked copy is in the logits term)."""
    tokens = scored_sequences(setup) * setup.seq_len
    cb = act.activation_dtype_bytes(setup)
    saving = fused_head_activation_saving(spec, setup, tokens)
    # full fine-tuning already saves the head's input (activations.shared_bytes): only the input gradient adds
    copies = 1 if setup.method == "full" else 2
    score = copies * tokens * spec.hidden_size * cb if setup.objective.kind == "rm" else 0
    if not saving and not score:
        return phases
    # what the head saves is freed before the blocks' backward, so it reaches in_backward only without checkpointing
    shared_in_backward = min(phases.shared_in_backward, phases.shared - saving)
    return replace(phases, at_loss=phases.at_loss - saving + score, shared=phases.shared - saving,
                   in_backward=phases.in_backward - (phases.shared_in_backward - shared_in_backward),
                   shared_in_backward=shared_in_backward)  # fmt: skip


def reference_runs_beside_policy(objective: ObjectiveSetup) -> bool:
    """TRL 1.16 DPO/KTO score the reference after the policy forward (policy activations alive);
    GRPO/PPO score it while preparing the batch, before any activation is saved."""
    return objective.kind in ("dpo", "kto")


def kto_kl_forward(setup: TrainSetup) -> bool:
    """KTO also scores micro_batch mismatched KL sequences with the policy, without gradients."""
    return setup.objective.kind == "kto"


@dataclass(frozen=True, kw_only=True, slots=True)
class RolloutMemory:
    """The rollout engine's share of one training device."""

    during_training: int
    """Held while the trainer runs forward/backward/step (the whole pool, or sleep mode's residue)."""
    during_generation: int
    """Held while generating (the engine's pool, or generate()'s KV cache and sampling logits)."""
    engine_pool: int
    """Memory the vLLM engine was given (fraction × device), 0 for generate()."""
    formula: str
    """How the numbers were obtained."""


def generate_cache_bytes(spec: ModelSpec, setup: TrainSetup) -> int:
    """generate() inside the trainer: a KV cache for micro_batch sequences of prompt + completion in
    the compute dtype, plus fp32 logits of one decoding step."""
    cb = act.activation_dtype_bytes(setup)
    per_token = kv_cache_bytes_per_token(spec, kv_dtype_bytes=cb, tp=setup.parallel.tp)
    return int(setup.micro_batch * setup.seq_len * per_token) + setup.micro_batch * spec.vocab_size * 4


def rollout_memory(
    spec: ModelSpec, setup: TrainSetup, *, device_memory_bytes: int, states: ObjectiveStates | None = None
) -> RolloutMemory:
    """What the rollout engine holds on a training device (nothing for a rollout server). Under ZeRO-3,
    generate() runs inside GatheredParameters over the whole model (TRL ds3_gather_for_generation = True,
    trl 0.29.1 models/utils.py:134; PPO gathers the policy-and-value wrapper, ppo_trainer.py:484)."""
    rollout = setup.objective.rollout
    if rollout is None or rollout.placement == "server":
        return RolloutMemory(during_training=0, during_generation=0, engine_pool=0, formula="")
    if rollout.engine == "hf":
        cache = generate_cache_bytes(spec, setup)
        gathered = 0
        if states is not None and states.sharded:
            gathered = states.full_copy * (2 if setup.objective.kind == "ppo" else 1)
        return RolloutMemory(
            during_training=0, during_generation=cache + gathered, engine_pool=0,
            formula=f"generate(): KV cache of {setup.micro_batch} × {setup.seq_len} tokens + one step's fp32 logits"
            + (f" + the ZeRO-3-gathered model ({gathered / 2**30:.2f} GiB)" if gathered else ""),
        )  # fmt: skip
    pool = int(rollout.memory_fraction * device_memory_bytes)
    residual = int(constant("runtime_overhead", "vllm_sleep_residual_bytes")) if rollout.sleep else pool
    held = "sleep mode's residue while training" if rollout.sleep else "held throughout"
    return RolloutMemory(
        during_training=residual,
        during_generation=pool,
        engine_pool=pool,
        formula=f"colocated vLLM: {rollout.memory_fraction:g} × device memory ({held})",
    )


def rollout_engine_setup(spec: ModelSpec, setup: TrainSetup, *, generations_per_engine: int) -> ServeSetup:
    """The serving set-up of one rollout engine: the policy in the compute dtype at the rollout's
    tensor parallelism, sequences of prompt + completion, the step's generations at once."""
    rollout = setup.objective.rollout
    assert rollout is not None
    fraction = rollout.memory_fraction if rollout.placement == "colocate" else 0.9
    return ServeSetup(
        dtype="fp16" if setup.precision in ("fp16", "amp-fp16") else "bf16",
        context=rollout.seq_len,
        concurrency=max(1, generations_per_engine),
        tp=rollout.tp,
        gpu_memory_utilization=fraction,
    )
