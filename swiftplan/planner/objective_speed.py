"""Step time of preference and RL objectives (pure): the policy's training step on its sequences,
plus the reference's no-grad forward, and for GRPO/PPO the rollout (the serving speed model at the
rollout engine's concurrency), the weight sync to the engine and sleep mode's offload round trip.

TRL's GRPOTrainer (1.16) generates, scores and then trains, one after the other, in colocate and in
server mode alike, so the parts add up."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from swiftplan.planner.architecture import matmul_params_per_token
from swiftplan.planner.dtypes import compute_dtype
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.objective import resolve_reference
from swiftplan.planner.objective_memory import (
    kto_kl_forward,
    policy_setup,
    reference_forward_sequences,
    reference_passes,
    rollout_engine_setup,
)
from swiftplan.planner.serve_memory import kv_cache_bytes_per_token, serve_memory, serve_weight_bytes
from swiftplan.planner.setup import TrainSetup
from swiftplan.planner.speed import (
    _BOUND_OF_PART,
    FLOPS_PER_MAC,
    TrainSpeed,
    attention_flops_per_token,
    serve_speed,
    train_speed,
)
from swiftplan.planner.train_efficiency import training_mfu

if TYPE_CHECKING:
    from swiftplan.planner.hardware import Cluster

WEIGHT_SYNC_COPIES = 2
"""A colocated engine's load_weights reads the trainer's (merged) weights and writes its own copy:
two passes over the weights in device memory (trl 1.16 grpo_trainer `_move_model_to_vllm`)."""


def _forward_s(spec: ModelSpec, setup: TrainSetup, cluster: Cluster, *, sequences: int) -> float:
    """No-grad forward time of `sequences` × seq_len tokens per micro-batch, every micro-batch of a step, at the
    training MFU curve's efficiency for that micro-batch (planner/train_efficiency.py)."""
    par = setup.parallel
    tokens = sequences * setup.seq_len * setup.grad_accum
    flops = tokens * (
        FLOPS_PER_MAC * matmul_params_per_token(spec) + attention_flops_per_token(spec, setup.seq_len)
    )
    # the MFU curve at these forwards' own micro-batch (as the training step's), not the family's ceiling
    mfu = training_mfu(
        cluster.accelerator,
        tokens_per_micro_batch=sequences * setup.seq_len,
        params=matmul_params_per_token(spec),
    )
    peak = cluster.accelerator.dense_flops(compute_dtype(setup.precision)) * mfu
    return flops / (peak * par.tp * par.pp)


def _reference_s(spec: ModelSpec, setup: TrainSetup, cluster: Cluster) -> float:
    """The reference's (and KTO's KL) no-grad forwards per step (precomputed: the pass before training, per
    step of one epoch); nothing without a reference."""
    kind = resolve_reference(setup.objective, trains_adapters=setup.trains_adapters)
    # precomputed log-probs cost the same forward once over the data before training: counted per step as
    # for one epoch, so precomputing wins on memory, not on time
    sequences = reference_forward_sequences(setup) * reference_passes(setup) if kind != "none" else 0
    if kto_kl_forward(setup):
        sequences += setup.micro_batch
    return _forward_s(spec, setup, cluster, sequences=sequences) if sequences else 0.0


def rollout_engines(setup: TrainSetup, train_world: int) -> int:
    """Rollout engines generating in parallel: one per training rank group (colocate) or per
    `tp` server GPUs."""
    rollout = setup.objective.rollout
    assert rollout is not None
    if rollout.placement == "server":
        return max(1, rollout.gpus // rollout.tp)
    if rollout.engine == "hf":
        return max(1, train_world // (setup.parallel.tp * setup.parallel.pp))
    return max(1, train_world // rollout.tp)


def generations_per_step(setup: TrainSetup, train_world: int) -> int:
    """Completions generated per optimizer step: per-device batch × data-parallel ranks × accumulation
    (TRL generation_batch_size default, trl 1.16 trainer/grpo_config.py:521)."""
    dp = max(1, train_world // (setup.parallel.tp * setup.parallel.pp))
    return setup.micro_batch * dp * setup.grad_accum


def rollout_capacity(
    spec: ModelSpec, setup: TrainSetup, cluster: Cluster, train_world: int
) -> tuple[int, int]:
    """(completions one rollout engine generates per step, sequences its KV cache holds at once);
    0 sequences when its memory share does not even hold its weights and profiling workspace."""
    engines = rollout_engines(setup, train_world)
    per_engine = -(-generations_per_step(setup, train_world) // engines)
    serve = rollout_engine_setup(spec, setup, generations_per_engine=per_engine)
    return per_engine, serve_memory(
        spec, serve, device_memory_bytes=cluster.memory_bytes_per_device
    ).max_concurrency


def _rollout_parts(
    spec: ModelSpec, setup: TrainSetup, cluster: Cluster, train_world: int
) -> dict[str, float]:
    """Generation, weight-sync and sleep/wake seconds per optimizer step."""
    rollout = setup.objective.rollout
    assert rollout is not None
    per_engine, capacity = rollout_capacity(spec, setup, cluster, train_world)
    serve = rollout_engine_setup(spec, setup, generations_per_engine=per_engine)
    concurrency = max(1, min(per_engine, capacity))
    serve = replace(serve, concurrency=concurrency)
    weights = serve_weight_bytes(spec, serve)
    kv = kv_cache_bytes_per_token(spec, kv_dtype_bytes=2, tp=serve.tp, context=serve.context)
    speed = serve_speed(spec, serve, cluster.accelerator, weight_bytes=weights, kv_bytes_per_token=kv)
    waves = -(-per_engine // concurrency)
    generate_s = per_engine * rollout.prompt_len / speed.prefill_tokens_per_s
    generate_s += waves * rollout.completion_len / speed.per_user_decode_tokens_per_s
    full_weights = weights * serve.tp
    if rollout.engine == "hf":
        sync_s = 0.0  # generate() runs on the trained weights themselves
    elif rollout.placement == "server":  # NCCL broadcast from the trainer to the server
        sync_s = full_weights / min(
            cluster.accelerator.intra_node_bytes_per_s, cluster.inter_node_bytes_per_s
        )
    else:
        sync_s = WEIGHT_SYNC_COPIES * weights / (cluster.accelerator.memory_bandwidth_bytes_per_s or 400e9)
    pcie = cluster.accelerator.pcie_bytes_per_s or 16e9
    sleep_s = 2 * weights / pcie if rollout.sleep else 0.0  # offload the weights and bring them back
    return {"rollout": generate_s, "weight_sync": sync_s, "sleep_wake": sleep_s}


def objective_speed(
    spec: ModelSpec, setup: TrainSetup, cluster: Cluster, *, trainable_params: int, train_world: int
) -> TrainSpeed:
    """Step time and training tokens/s of `setup`'s objective on `train_world` training devices."""
    policy = policy_setup(setup)
    base = train_speed(spec, policy, cluster, trainable_params=trainable_params, world_size=train_world)
    if setup.objective.kind == "sft":
        return base
    parts = dict(base.breakdown_s)
    parts["reference"] = _reference_s(spec, setup, cluster)
    if setup.objective.rollout is not None:
        parts.update(_rollout_parts(spec, setup, cluster, train_world))
    step_s = base.step_time_s + sum(
        parts[k] for k in ("reference", "rollout", "weight_sync", "sleep_wake") if k in parts
    )
    tokens = base.tokens_per_s * base.step_time_s
    return replace(
        base,
        tokens_per_s=tokens / step_s,
        step_time_s=step_s,
        bound=_BOUND_OF_PART[max(parts, key=lambda k: parts[k])],
        breakdown_s=parts,
    )
