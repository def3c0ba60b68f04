"""What a job must do: `TrainWorkload` (tokens, batch, epochs) and `ServeWorkload` (context, load, latency). Pure."""

from __future__ import annotations

from dataclasses import dataclass, field

from swiftplan.planner.objective import SFT, ObjectiveSetup
from swiftplan.planner.setup import SERVE_RUNTIMES, AttentionImpl, RuntimeKnobs, ServeRuntime, parse_choice
from swiftplan.planner.vision import VisionInputs


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainWorkload:
    """What the training job must do."""

    seq_len: int = 2048
    """Tokens per sequence."""
    global_batch: int = 16
    """Sequences per optimizer step, all data-parallel ranks together (pairs for paired methods,
    completions for GRPO/PPO)."""
    dataset_tokens: int = 100_000_000
    """Text tokens in one epoch."""
    dataset_image_tokens: int = 0
    """Image and video tokens the language model reads in one epoch beside the text: every sequence's
    images (`vision`), counted by the model's processor rule (0 without images)."""
    epochs: float = 1.0
    """Passes over the data."""
    attention: AttentionImpl = "sdpa"
    """Attention kernel."""
    lora_dropout: float = 0.05
    """LoRA dropout (changes activation memory)."""
    dora: bool = False
    """Every candidate's adapters are DoRA (planner/dora.py)."""
    variable_lengths: bool = False
    """The samples differ in length and are not packed (fit --data/--lengths without --packing): padded batches
    (RuntimeKnobs.padding) give SDPA a mask (planner/padding.py)."""
    runtime: RuntimeKnobs = field(default_factory=RuntimeKnobs)
    """The runtime's knobs every candidate is planned with (profiles/runtimes; not searched)."""
    objective: ObjectiveSetup = SFT
    """What is optimized (SFT, a preference method, RL with rollouts); every candidate shares it."""
    vision: VisionInputs | None = None
    """Vision-language models: each sequence's images/video and whether the tower and aligner train; None =
    text only. Every candidate shares it."""

    @property
    def total_tokens(self) -> float:
        """Tokens the language model processes over the whole run, image tokens included (as tokens/s counts them)."""
        return (self.dataset_tokens + self.dataset_image_tokens) * self.epochs


@dataclass(frozen=True, kw_only=True, slots=True)
class ServeWorkload:
    """What the serving deployment must sustain."""

    context: int = 4096
    """Tokens per sequence (prompt + output)."""
    concurrency: int | None = None
    """Concurrent sequences over all replicas; None = as many as fit and meet the latency targets."""
    ttft_s: float | None = None
    """Largest acceptable time to first token, seconds."""
    decode_tps: float | None = None
    """Smallest acceptable decode speed per user, tokens/s."""
    gpu_memory_utilization: float = 0.9
    """vLLM's memory fraction."""
    runtime: ServeRuntime = "vllm"
    """Serving engine every candidate's speed is planned for (its per-step decode cost; the engine that
    serves the plan runs it)."""
    eager: bool = False
    """Every candidate decodes without CUDA graphs (--enforce-eager; `ServeSetup.eager`)."""
    vision: VisionInputs | None = None
    """Vision-language models: each request's images/video (their tokens are part of `context`); None = text only."""

    def __post_init__(self) -> None:
        parse_choice("serving runtime", self.runtime, SERVE_RUNTIMES)


def replica_concurrency(concurrency: int, replicas: int) -> int:
    """Sequences each of `replicas` replicas holds when they share `concurrency` over all of them: the load split
    evenly, rounded up (what `fit` writes as serve.concurrency, and what the plan predicts per replica)."""
    return -(-concurrency // max(1, replicas))
