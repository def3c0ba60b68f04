"""What a training job optimizes: supervised fine-tuning, a preference method, reward modelling or an RL
method with rollouts. `ObjectiveSetup` says which, how the reference model is obtained and, for GRPO/PPO,
how completions are generated. Validated on construction; pure.

Conventions (those of TRL and ms-swift, whose trainers these describe):
- paired methods (dpo, orpo, simpo, cpo, rm): `micro_batch` counts pairs; chosen and rejected are
  concatenated into one forward of 2 × micro_batch sequences of `seq_len` tokens each;
- kto: `micro_batch` counts unpaired examples, plus the same number of mismatched KL sequences scored
  without gradients;
- grpo/ppo: `micro_batch` counts completions; each sequence is prompt_len + completion_len tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from swiftplan.errors import SwiftplanError

Objective = Literal["sft", "dpo", "kto", "orpo", "simpo", "cpo", "rm", "ppo", "grpo"]
Reference = Literal["auto", "model", "adapters-off", "precomputed", "none"]
RolloutPlacement = Literal["colocate", "server"]
RolloutEngine = Literal["vllm", "hf"]

OBJECTIVES: tuple[Objective, ...] = get_args(Objective)
REFERENCES: tuple[Reference, ...] = get_args(Reference)
ROLLOUT_PLACEMENTS: tuple[RolloutPlacement, ...] = get_args(RolloutPlacement)
ROLLOUT_ENGINES: tuple[RolloutEngine, ...] = get_args(RolloutEngine)

PAIRED: frozenset[Objective] = frozenset({"dpo", "orpo", "simpo", "cpo", "rm"})
"""Chosen and rejected sequences in one forward (2 × micro_batch)."""
REFERENCE_FREE: frozenset[Objective] = frozenset({"sft", "orpo", "simpo", "cpo", "rm"})
"""Methods whose loss has no reference model."""
WITH_ROLLOUTS: frozenset[Objective] = frozenset({"ppo", "grpo"})
"""Methods that generate their own completions every step."""


def _whole(kind: str, value: object, *, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        bound = "a positive integer" if minimum == 1 else f"an integer ≥ {minimum}"
        raise SwiftplanError(f"{kind} must be {bound}, got {value!r}.")
    return value


@dataclass(frozen=True, kw_only=True, slots=True)
class RolloutSetup:
    """How GRPO/PPO generate completions: how many, how long, on which devices and with what memory."""

    num_generations: int = 8
    """Completions sampled per prompt (TRL GRPOConfig.num_generations = 8; PPO samples one)."""
    prompt_len: int = 512
    """Prompt tokens per sequence."""
    completion_len: int = 512
    """Generated tokens per completion (TRL max_completion_length = 512)."""
    engine: RolloutEngine = "vllm"
    """vllm (TRL use_vllm, ms-swift use_vllm) or the training model's own generate() (hf)."""
    placement: RolloutPlacement = "colocate"
    """colocate: a vLLM engine inside each training process, sharing its GPU; server: a vLLM server on
    `gpus` devices of their own (trl vllm-serve / swift rollout)."""
    gpus: int = 0
    """server: devices the rollout server takes from the cluster."""
    memory_fraction: float = 0.3
    """colocate: vLLM's gpu_memory_utilization on the shared GPU (TRL's default 0.3); server: 0.9."""
    sleep: bool = False
    """colocate: vLLM sleep mode releases its weights and KV cache while the trainer steps."""
    tp: int = 1
    """Tensor-parallel degree of the rollout engine."""

    def __post_init__(self) -> None:
        _whole("--num-generations", self.num_generations)
        _whole("--prompt-len", self.prompt_len)
        _whole("--completion-len", self.completion_len)
        _whole("--rollout-tp", self.tp)
        _whole("--rollout-gpus", self.gpus, minimum=0)
        if self.engine not in ROLLOUT_ENGINES:
            raise SwiftplanError(f"Unknown rollout engine {self.engine!r}; valid values are: vllm, hf.")
        if self.placement not in ROLLOUT_PLACEMENTS:
            raise SwiftplanError(
                f"Unknown rollout placement {self.placement!r}; valid values are: colocate, server."
            )
        if not isinstance(self.memory_fraction, float | int) or not 0.05 <= self.memory_fraction <= 0.95:
            raise SwiftplanError(
                f"--rollout-memory must be a fraction of the GPU between 0.05 and 0.95, got {self.memory_fraction!r}."
            )
        if self.placement == "server":
            if self.engine != "vllm":
                raise SwiftplanError(
                    "A rollout server is a vLLM server; --rollout server needs --rollout-engine vllm."
                )
            if self.gpus < self.tp:
                raise SwiftplanError(
                    f"--rollout server needs --rollout-gpus of at least its --rollout-tp {self.tp}, got {self.gpus}.",
                    hint="Give the rollout server its own devices, e.g. --rollout-gpus 1 (or 2 with --rollout-tp 2).",
                )
            if self.gpus % self.tp:
                raise SwiftplanError(
                    f"--rollout-gpus {self.gpus} is not a multiple of --rollout-tp {self.tp}."
                )
            if self.sleep:
                raise SwiftplanError(
                    "vLLM sleep mode frees a colocated engine's memory; a rollout server has its own GPUs."
                )
        elif self.gpus:
            raise SwiftplanError(
                f"--rollout-gpus {self.gpus} applies to --rollout server; a colocated engine shares the training GPUs."
            )
        if self.engine == "hf" and self.tp != 1:
            raise SwiftplanError(
                f"--rollout-tp {self.tp} shards a vLLM rollout engine; the hf engine (--rollout-engine hf, ppo's "
                "default) generates with the trainer's own model at the training --tp and would ignore it.",
                hint="Drop --rollout-tp, or use --rollout-engine vllm.",
            )
        if self.engine == "hf" and (self.sleep or self.placement != "colocate"):
            raise SwiftplanError("generate() runs inside the trainer: no rollout server and no sleep mode.")

    @property
    def seq_len(self) -> int:
        """Tokens of one generated sequence, prompt included."""
        return self.prompt_len + self.completion_len


@dataclass(frozen=True, kw_only=True, slots=True)
class ObjectiveSetup:
    """The training objective and what it needs beside the policy: a reference and, for RL, rollouts."""

    kind: Objective = "sft"
    """sft, a preference method (dpo, kto, orpo, simpo, cpo), reward modelling (rm), or RL (ppo, grpo)."""
    reference: Reference = "auto"
    """Where the reference log-probs come from: a frozen copy of the model, the policy with its LoRA
    adapters disabled (TRL and ms-swift do this for LoRA), log-probs precomputed before training, or none.
    auto resolves per method and set-up (`resolve_reference`)."""
    prompt_len: int = 0
    """Paired/unpaired methods: prompt tokens of each sequence (not scored); 0 = unknown, all scored."""
    rollout: RolloutSetup | None = None
    """grpo/ppo: the rollout settings (defaults when None)."""
    kl: bool = False
    """grpo: a KL penalty to a reference (beta > 0); TRL's default beta is 0.0 (no reference),
    ms-swift's 0.04 — the runtime decides when the flag is not given."""

    def __post_init__(self) -> None:
        if self.kind not in OBJECTIVES:
            raise SwiftplanError(
                f"Unknown task {self.kind!r}; valid training tasks are: {', '.join(OBJECTIVES)}."
            )
        if self.reference not in REFERENCES:
            raise SwiftplanError(
                f"Unknown reference {self.reference!r}; valid values are: {', '.join(REFERENCES)}."
            )
        _whole("--prompt-len", self.prompt_len, minimum=0)
        if self.kind == "grpo" and self.rollout is not None and self.rollout.num_generations < 2:
            raise SwiftplanError(
                f"GRPO compares completions of one prompt: --num-generations must be at least 2, got "
                f"{self.rollout.num_generations}."
            )
        if self.kind in WITH_ROLLOUTS and self.rollout is None:
            # TRL's PPOTrainer generates with the policy's own generate(); GRPO defaults to vLLM here
            object.__setattr__(self, "rollout", RolloutSetup(engine="hf" if self.kind == "ppo" else "vllm"))
        if self.kind not in WITH_ROLLOUTS and self.rollout is not None:
            raise SwiftplanError(
                f"Rollout settings (--num-generations, --completion-len, --rollout …) apply to grpo and ppo, not --task {self.kind}."
            )
        if self.kind in REFERENCE_FREE and self.reference not in ("auto", "none"):
            raise SwiftplanError(
                f"--task {self.kind} has no reference model; --reference {self.reference} does not apply.",
                hint="dpo, kto, ppo and grpo (with a KL penalty) use a reference.",
            )
        if self.kind == "grpo" and not self.kl and self.reference not in ("auto", "none"):
            raise SwiftplanError(
                f"GRPO without a KL penalty loads no reference; --reference {self.reference} needs --kl.",
            )
        if self.kind in WITH_ROLLOUTS and self.reference == "precomputed":
            raise SwiftplanError(
                f"--task {self.kind} scores freshly generated completions; reference log-probs cannot be precomputed.",
                hint="Use --reference adapters-off (LoRA) or model.",
            )
        if self.kind != "grpo" and self.kl:
            raise SwiftplanError("--kl is GRPO's KL penalty; DPO, KTO and PPO always use their reference.")

    @property
    def paired(self) -> bool:
        """Chosen and rejected run as one concatenated batch."""
        return self.kind in PAIRED

    @property
    def sequences_per_example(self) -> int:
        """Sequences with gradients in one forward per micro-batch entry."""
        return 2 if self.paired else 1

    @property
    def server_gpus(self) -> int:
        """GPUs a rollout server takes from the cluster (0 when the rollout shares the training GPUs)."""
        rollout = self.rollout
        return rollout.gpus if rollout is not None and rollout.placement == "server" else 0

    @property
    def needs_reference(self) -> bool:
        """Whether the loss compares against a reference model."""
        if self.kind in REFERENCE_FREE:
            return False
        if self.kind == "grpo":
            return self.kl
        return True


SFT = ObjectiveSetup()
"""Plain supervised fine-tuning: today's `--task train`."""

ROLLOUT_MEMORY_BY_RUNTIME = {"ms-swift": 0.9}
"""Colocated vLLM memory fraction by runtime: ms-swift 4.6 vllm_gpu_memory_utilization = 0.9
(swift/rlhf_trainers/args_mixin.py:37); TRL 1.16 GRPOConfig 0.3 (trl/trainer/grpo_config.py:656) elsewhere."""
KL_BY_DEFAULT_RUNTIMES = frozenset({"ms-swift"})
"""Runtimes whose GRPO has a KL penalty by default: ms-swift 4.6 sets beta 0.04 when unset
(swift/arguments/rlhf_args.py:356); TRL 1.16 GRPOConfig.beta = 0.0 (trl/trainer/grpo_config.py:681)."""


def runtime_rollout_memory(runtime: str) -> float:
    """The colocated rollout engine's memory fraction `runtime` defaults to."""
    return ROLLOUT_MEMORY_BY_RUNTIME.get(runtime, RolloutSetup().memory_fraction)


def runtime_kl(kind: str, runtime: str) -> bool:
    """Whether `runtime`'s GRPO has a KL penalty (a reference) unless told otherwise."""
    return kind == "grpo" and runtime in KL_BY_DEFAULT_RUNTIMES


def step_generations(objective: ObjectiveSetup) -> int:
    """Completions a GRPO step groups per prompt (--num-generations); 1 for every other objective."""
    rollout = objective.rollout
    return rollout.num_generations if rollout is not None and objective.kind == "grpo" else 1


def whole_prompts(batch: int, generations: int) -> int:
    """`batch` completions rounded up to whole prompts of `generations` each (TRL requires the generation
    batch to divide by num_generations, trl 1.16 trainer/grpo_config.py:480)."""
    return -(-batch // generations) * generations


def resolve_reference(objective: ObjectiveSetup, *, trains_adapters: bool) -> Reference:
    """The reference actually used: `none` when the loss needs none; for `auto`, the policy with adapters
    disabled under LoRA (TRL DPOTrainer/GRPOTrainer, ms-swift) or a frozen copy for full fine-tuning."""
    if not objective.needs_reference:
        return "none"
    if objective.reference != "auto":
        if objective.reference == "adapters-off" and not trains_adapters:
            raise SwiftplanError(
                "--reference adapters-off disables LoRA adapters to get the reference; full fine-tuning has none.",
                hint="Use --reference model (a frozen copy) or precomputed.",
            )
        if objective.reference == "none":
            raise SwiftplanError(
                f"--task {objective.kind} needs a reference; valid: model, adapters-off, precomputed."
            )
        return objective.reference
    return "adapters-off" if trains_adapters else "model"
