"""The objective's lines of the training breakdown: what the reference, reward and value models and the
paired or generated sequences add, each with its formula and source. Only words; numbers come from
`objective_memory`."""

from __future__ import annotations

from swiftplan.planner.breakdown import Term
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.objective_memory import ObjectiveStates
from swiftplan.planner.setup import TrainSetup

_TRL = "huggingface/trl 1.16.0"
_REFERENCE_SOURCES = {
    "model": f"{_TRL} trainer/dpo_trainer.py:908-929 (a separate frozen model unless PEFT or precomputed), "
    "prepared with the policy's DeepSpeed/FSDP sharding (:984-990)",
    "adapters-off": f"{_TRL} trainer/dpo_trainer.py:1328-1334 (PEFT: the reference is the policy with adapters disabled)",
    "precomputed": f"{_TRL} trainer/dpo_config.py:227 precompute_ref_log_probs (log-probs computed before training)",
}


def objective_terms(
    spec: ModelSpec, setup: TrainSetup, states: ObjectiveStates, *, dp: int
) -> tuple[Term, ...]:
    """Reference and PPO auxiliary-model terms (none for SFT and reference-free methods)."""
    objective = setup.objective
    if objective.kind == "sft":
        return ()
    kind = states.reference_kind
    if kind == "none":
        formula = f"none: {objective.kind} has no reference" + (
            " (GRPO without --kl: beta 0)" if objective.kind == "grpo" else ""
        )
    elif kind == "model":
        formula = "frozen copy of the model's weights in the base dtype/quantization" + (
            f" / dp{dp} (sharded like the policy under ZeRO-3/FSDP)" if states.sharded and dp > 1 else ""
        )
    elif kind == "adapters-off":
        formula = "0: the policy with its LoRA adapters disabled (no second copy); one extra no-grad forward"
    else:
        formula = "0: reference log-probs precomputed in a pass over the data before training"
    terms = [
        Term(
            name="reference",
            value_bytes=states.reference,
            formula=formula,
            source=_REFERENCE_SOURCES.get(kind, ""),
        )
    ]
    if objective.kind == "ppo":
        terms.append(
            Term(
                name="aux_models",
                value_bytes=states.reward_model + states.value_model,
                formula=f"value model trained like the policy (weights + adapters + gradients + optimizer, "
                f"{states.value_model / 2**30:.2f} GiB) + frozen reward model ({states.reward_model / 2**30:.2f} GiB)",
                source=f"{_TRL} PPO: policy and value wrapped together (PolicyAndValueWrapper), reward model frozen",
            )
        )
    return tuple(terms)


def sequences_formula(setup: TrainSetup) -> str:
    """Sequences with gradients per micro-batch, as the user reads them."""
    objective = setup.objective
    b = setup.micro_batch
    if objective.paired:
        return f"{2 * b} ({b} pair{'s' if b > 1 else ''}: chosen + rejected concatenated)"
    if objective.kind == "ppo":
        return f"{2 * b} ({b} completions through the policy and the value model)"
    if objective.kind == "grpo":
        assert objective.rollout is not None
        return f"{b} (completions of {objective.rollout.num_generations} per prompt)"
    return str(b)


def sequences_source(setup: TrainSetup) -> str:
    """Where the batch shape of the objective comes from."""
    objective = setup.objective
    if objective.paired:
        return f"{_TRL} trainer/dpo_trainer.py:1299 one forward over [chosen, rejected] (logps.chunk(2))"
    if objective.kind == "grpo":
        return f"{_TRL} trainer/grpo_config.py:480 (num_generations), per_device_train_batch_size counts completions"
    return ""
