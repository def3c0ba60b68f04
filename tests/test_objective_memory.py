"""Preference and RL objectives in the planner: what each adds to memory and time, against SFT."""

from __future__ import annotations

from dataclasses import replace

import pytest

from swiftplan.errors import SwiftplanError
from swiftplan.planner.estimate import estimate_training
from swiftplan.planner.hardware import parse_cluster
from swiftplan.planner.model_catalog import catalog_spec, find_catalog_id
from swiftplan.planner.objective import ObjectiveSetup, RolloutSetup
from swiftplan.planner.setup import Parallelism, TrainSetup
from swiftplan.planner.train_memory import train_memory

GIB = 2**30


@pytest.fixture(scope="module")
def spec():
    model_id = find_catalog_id("Qwen/Qwen2.5-7B")
    assert model_id is not None
    return catalog_spec(model_id)


def _setup(kind: str, method: str = "lora", **objective: object) -> TrainSetup:
    obj = ObjectiveSetup(kind=kind, **objective)  # type: ignore[arg-type]
    seq = obj.rollout.seq_len if obj.rollout else 2048
    return TrainSetup(method=method, seq_len=seq, micro_batch=2, objective=obj)  # type: ignore[arg-type]


def test_paired_methods_run_chosen_and_rejected_in_one_forward(spec) -> None:
    sft = train_memory(spec, _setup("sft")).device
    doubled = train_memory(spec, replace(_setup("sft"), micro_batch=4)).device
    for kind in ("dpo", "orpo", "simpo", "cpo"):
        paired = train_memory(spec, _setup(kind)).device
        assert paired.activations == doubled.activations, kind
        assert paired.logits == doubled.logits > sft.logits, kind


def test_dpo_reference_follows_the_method(spec) -> None:
    weights = train_memory(spec, _setup("sft", "full")).device.weights
    lora = train_memory(spec, _setup("dpo")).device
    full = train_memory(spec, _setup("dpo", "full")).device
    precomputed = train_memory(spec, _setup("dpo", "full", reference="precomputed")).device
    assert lora.reference == 0 and full.reference == weights and precomputed.reference == 0
    assert any(t.name == "reference" and "adapters disabled" in t.formula for t in lora.terms)
    assert precomputed.peak_allocated < full.peak_allocated


def test_dpo_reference_forward_runs_beside_the_policy_activations(spec) -> None:
    """LoRA DPO without checkpointing: the reference forward comes while every saved activation is alive."""
    setup = replace(_setup("dpo"), grad_ckpt=False)
    memory = train_memory(spec, setup)
    assert memory.device.peak_phase == "reference forward"
    assert memory.phase_activations["reference forward"] == memory.device.activations
    no_ref = train_memory(spec, replace(setup, objective=ObjectiveSetup(kind="dpo", reference="precomputed")))
    assert "reference forward" not in no_ref.phase_activations


def test_reference_free_and_reward_model(spec) -> None:
    for kind in ("orpo", "simpo", "cpo", "rm"):
        memory = train_memory(spec, _setup(kind, "full")).device
        assert memory.reference == 0, kind
    assert train_memory(spec, _setup("rm")).device.logits == 0
    with pytest.raises(SwiftplanError, match="no reference"):
        ObjectiveSetup(kind="orpo", reference="model")


def test_grpo_colocated_engine_holds_its_fraction_of_the_gpu(spec) -> None:
    cluster = parse_cluster("H100")
    setup = _setup("grpo")
    estimate = estimate_training(spec, setup, cluster)
    engine = next(t for t in estimate.memory.terms if t.name == "rollout_engine")
    assert engine.value_bytes == int(0.3 * cluster.memory_bytes_per_device)
    # without sleep mode vLLM allocates through torch: its pool is in max_memory_reserved
    assert estimate.memory.peak_reserved - estimate.memory.peak_allocated >= engine.value_bytes
    asleep = estimate_training(spec, _setup("grpo", rollout=RolloutSetup(sleep=True)), cluster)
    assert asleep.memory.device_total < estimate.memory.device_total
    residue = next(t for t in asleep.memory.terms if t.name == "rollout_engine").value_bytes
    assert (
        asleep.memory.device_total - asleep.memory.peak_reserved >= residue
    )  # its CuMem pool, outside torch


def test_grpo_server_takes_its_gpus_from_training(spec) -> None:
    cluster = parse_cluster("8xH100")
    server = _setup("grpo", rollout=RolloutSetup(placement="server", gpus=2))
    estimate = estimate_training(spec, server, cluster)
    assert not any(t.name == "rollout_engine" for t in estimate.memory.terms)
    colocated = estimate_training(spec, _setup("grpo"), cluster)
    # six training ranks instead of eight: fewer tokens per step
    ratio = (estimate.training_speed.tokens_per_s * estimate.training_speed.step_time_s) / (
        colocated.training_speed.tokens_per_s * colocated.training_speed.step_time_s
    )
    assert ratio == pytest.approx(6 / 8)
    with pytest.raises(SwiftplanError, match="leaves none"):
        estimate_training(
            spec, _setup("grpo", rollout=RolloutSetup(placement="server", gpus=1)), parse_cluster("H100")
        )


def test_grpo_scores_only_completion_tokens_and_times_the_rollout(spec) -> None:
    setup = _setup("grpo", rollout=RolloutSetup(prompt_len=1536, completion_len=512))
    sft = replace(setup, objective=ObjectiveSetup())
    assert train_memory(spec, setup).device.logits == pytest.approx(train_memory(spec, sft).device.logits / 4)
    speed = estimate_training(spec, setup, parse_cluster("H100")).training_speed
    assert speed.breakdown_s["rollout"] > 0 and speed.breakdown_s["weight_sync"] > 0
    assert speed.step_time_s == pytest.approx(
        sum(v for k, v in speed.breakdown_s.items() if k not in ("comm", "bubble", "offload"))
        + speed.breakdown_s["comm"]
        + speed.breakdown_s["bubble"]
        + speed.breakdown_s["offload"]
    )


def test_ppo_generate_under_zero3_gathers_policy_and_value(spec) -> None:
    """TRL's ds3_gather_for_generation: generate() runs on the whole gathered wrapper (policy + value)."""
    setup = replace(_setup("ppo", "full"), parallel=Parallelism(zero=3))
    memory = train_memory(spec, setup, world_size=8)
    assert "generation" in memory.phase_activations
    assert memory.rollout is not None
    assert memory.rollout.during_generation > 2 * train_memory(spec, _setup("sft", "full")).device.weights


def test_grpo_kl_needs_a_reference_and_ppo_holds_value_and_reward_models(spec) -> None:
    no_kl = train_memory(spec, _setup("grpo", "full")).device
    kl = train_memory(spec, _setup("grpo", "full", kl=True)).device
    assert no_kl.reference == 0 and kl.reference == no_kl.weights
    ppo = train_memory(spec, _setup("ppo")).device
    assert ppo.aux_models > 2 * ppo.weights * 0.99


def test_dpo_costs_a_reference_forward_even_when_precomputed(spec) -> None:
    """Precomputing moves the reference forward before training: the same time, less memory."""
    cluster = parse_cluster("A100-80G")
    on_device = estimate_training(spec, _setup("dpo", "full"), cluster)
    precomputed = estimate_training(spec, _setup("dpo", "full", reference="precomputed"), cluster)
    orpo = estimate_training(spec, _setup("orpo", "full"), cluster).training_speed
    assert on_device.training_speed.breakdown_s["reference"] > 0 == orpo.breakdown_s["reference"]
    assert precomputed.training_speed.step_time_s == pytest.approx(on_device.training_speed.step_time_s)
    assert precomputed.memory.device_total < on_device.memory.device_total


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: TrainSetup(seq_len=2048, objective=ObjectiveSetup(kind="grpo")), "prompt and completion"),
        (lambda: ObjectiveSetup(kind="dpo", rollout=RolloutSetup()), "apply to grpo and ppo"),
        (lambda: ObjectiveSetup(kind="grpo", reference="precomputed", kl=True), "cannot be precomputed"),
        (lambda: ObjectiveSetup(kind="dpo", kl=True), "KL penalty"),
        (lambda: RolloutSetup(placement="server"), "at least"),
        (lambda: RolloutSetup(gpus=2), "applies to --rollout server"),
        (lambda: RolloutSetup(memory_fraction=1.5), "between 0.05 and 0.95"),
        (lambda: ObjectiveSetup(kind="grpo", rollout=RolloutSetup(num_generations=1)), "at least 2"),
        (lambda: RolloutSetup(num_generations=0), "--num-generations"),
        (
            lambda: (
                TrainSetup(
                    method="full", objective=ObjectiveSetup(kind="dpo", reference="adapters-off")
                ).parallel
            ),
            None,
        ),
        (
            lambda: TrainSetup(seq_len=512, objective=ObjectiveSetup(kind="dpo", prompt_len=512)),
            "no response",
        ),
    ],
)
def test_bad_objectives_are_one_clear_error(build, message) -> None:
    if message is None:  # adapters-off with full fine-tuning is caught when the reference is resolved
        with pytest.raises(SwiftplanError, match="full fine-tuning has none"):
            train_memory(
                catalog_spec(find_catalog_id("Qwen/Qwen2.5-0.5B") or ""),
                TrainSetup(method="full", objective=ObjectiveSetup(kind="dpo", reference="adapters-off")),
            )
        return
    with pytest.raises(SwiftplanError, match=message):
        build()


def test_a_reward_model_has_a_score_head_instead_of_the_lm_head(spec) -> None:
    """AutoModelForSequenceClassification: an untied LM head (vocab × hidden) becomes hidden × 1."""
    sft = train_memory(spec, _setup("sft", "full"))
    rm = train_memory(spec, _setup("rm", "full"))
    head = spec.vocab_size * spec.hidden_size - spec.hidden_size
    assert sft.trainable_params - rm.trainable_params == head
    assert sft.device.weights - rm.device.weights == head * 2  # bf16


def test_ms_swift_log_probs_match_their_replay_on_fake_tensors(spec) -> None:
    """ms-swift 4.6's DPO scores bf16 logits row by row: the logits term and the policy's kept tensors at
    the reference pass, per token × vocab, are what benchmarks/trace_swift_logps.py measures."""
    pytest.importorskip("torch")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from trace_swift_logps import trace

    from swiftplan.planner.logprob_kernels import kept_policy_logprob_bytes
    from swiftplan.planner.runtime import apply_defaults, get_runtime, train_knobs

    profile = get_runtime("ms-swift", "train")
    setup = replace(
        _setup("dpo"), runtime=train_knobs(profile, apply_defaults(profile, {})[0]), micro_batch=1
    )
    per_entry = 2 * setup.seq_len * spec.vocab_size  # one pair of full sequences
    measured = trace(sequences=2, tokens=256)  # Qwen2.5-7B's hidden size and vocabulary
    logits = train_memory(spec, setup).device.logits
    assert logits / per_entry == pytest.approx(measured["backward peak"], rel=0.01)
    kept = kept_policy_logprob_bytes(spec, setup, sequences=2, scored=setup.seq_len, tp=1)
    assert kept / per_entry == pytest.approx(measured["after policy forward"], rel=0.01)
