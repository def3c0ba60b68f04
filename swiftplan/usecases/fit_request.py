"""What `fit` is asked: the `FitRequest` a view parses its input into, and the checks on it that run before
any search (its numbers' ranges, an RL job's prompt and completion lengths, the LoRA targets and ranks against
the model, DoRA's methods), so that a bad option is refused naming its flag and never reads as "nothing fits".
`prepare_fit` (usecases/fit_problem.py) runs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from swiftplan.errors import SwiftplanError
from swiftplan.planner import model_limits
from swiftplan.planner.idle_knobs import refuse_idle_lora_options
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.objective import SFT, ObjectiveSetup
from swiftplan.planner.runtime import refuse_eager_for_training
from swiftplan.planner.search.evaluate import Objective
from swiftplan.planner.search.objective_variants import ObjectivePins
from swiftplan.planner.search.pins import Pins
from swiftplan.planner.setup import AttentionImpl
from swiftplan.planner.vision import VisionInputs
from swiftplan.usecases import inputs

FitTask = Literal["train", "serve"]


@dataclass(frozen=True, kw_only=True, slots=True)
class FitRequest:
    """Everything `fit` is asked, already parsed from its view's input."""

    model: str
    """Catalog name or alias, hub id, or a local config path."""
    gpus: str = "auto"
    """Cluster text ('rtx4090', '4xA100-80G', '2x8xH100') or 'auto' (probe)."""
    task: FitTask = "train"
    """Fine-tuning or serving."""
    engine: str | None = None
    """Engine to plan for; None = swiftplan for training, vLLM (or the built-in server) for serving."""
    objective: Objective | None = None
    """time | cost | throughput; None = time for training, throughput for serving."""
    pareto: bool = False
    """Return the Pareto front (time, cost, headroom)."""
    pins: Pins = field(default_factory=Pins)
    """What the user fixed or forbade."""
    dataset_tokens: int | None = None
    """Tokens in one epoch (exclusive with `data`)."""
    data: str | None = None
    """A data file to count tokens (and per-sample lengths) from."""
    lengths: str | None = None
    """A file of per-sample token lengths, one per line (exclusive with `data`)."""
    packing: bool = False
    """Samples are packed into full sequences (else each micro-batch is padded by the runtime's `padding`)."""
    variable_lengths: bool = False
    """The samples vary in length without a data or lengths file to say how (doctor's re-plan of a plan that said
    so): planned as padded batches (planner/padding.py)."""
    epochs: float = 1.0
    global_batch: int = 16
    """Sequences a step trains (completions for GRPO); unless `typed` holds it, a default fit rounds up to split over
    every training GPU (`split_global_batch`)."""
    seq_len: int = 2048
    attention: AttentionImpl = "sdpa"
    context: int = 4096
    concurrency: int | None = None
    ttft_s: float | None = None
    decode_tps: float | None = None
    gpu_memory_utilization: float = 0.9
    headroom: float = 0.05
    """Fraction of device memory kept free."""
    host_ram_bytes: int | None = None
    """Host RAM per node for offload; None = probed with 'auto', else 64 GiB."""
    seed: int = 0
    trials: int | None = None
    storage: str | None = None
    study_name: str | None = None
    compare_engines: bool = True
    """Also search without the engine's limits and report a better plan another engine could run."""
    runtime: str | None = None
    """Runtime profile to plan for (profiles/runtimes); None = the engine's (training: swiftplan's loop)."""
    runtime_options: dict[str, Any] = field(default_factory=dict)
    """RuntimeKnobs fields the user set, over the profile's defaults (training)."""
    training: ObjectiveSetup = SFT
    """The training objective (SFT, a preference method, RL with rollouts)."""
    objective_pins: ObjectivePins = ObjectivePins()
    """Which of the objective's choices the user fixed (the others are searched)."""
    eager: bool = False
    """Serving: decode without CUDA graphs (--enforce-eager): no graph pool, host-launch-bound steps."""
    vision: VisionInputs | None = None
    """Vision-language models: each sequence's images/video (and, training, whether the tower and aligner train);
    every candidate is planned with them. None = text only."""
    dora: bool = False
    """Training: every candidate's adapters are DoRA (--dora): LoRA and QLoRA only."""
    typed: frozenset[str] = frozenset()
    """The options the user typed (their parameter names): a typed --global-batch or --num-generations is kept as
    given, a default may be rounded to what the cluster splits."""

    @property
    def samples_vary(self) -> bool:
        """Training samples of many lengths, unpacked (--data, --lengths, or a plan that said so): batches padded by
        the runtime's `padding` (planner/padding.py)."""
        return bool(self.data or self.lengths or self.variable_lengths) and not self.packing

    @property
    def goal(self) -> Objective:
        """The objective, with the task's default filled in."""
        return self.objective or ("throughput" if self.task == "serve" else "time")


def _check_request(request: FitRequest) -> None:
    checks = (
        (request.epochs > 0, f"--epochs must be positive, got {request.epochs:g}."),
        (request.global_batch >= 1, f"--global-batch must be at least 1, got {request.global_batch}."),
        (request.seq_len >= 1, f"--seq must be at least 1 token, got {request.seq_len}."),
        (request.context >= 1, f"--context must be at least 1 token, got {request.context}."),
        (0 <= request.headroom < 0.9, f"--headroom must be in [0, 0.9), got {request.headroom:g}."),
        (request.trials is None or request.trials >= 1, f"--trials must be at least 1, got {request.trials}."),
        (request.concurrency is None or request.concurrency >= 1,
         f"--concurrency must be at least 1, got {request.concurrency}."),
        (request.ttft_s is None or request.ttft_s > 0, f"--ttft must be a positive number of seconds, got {request.ttft_s}."),
        (request.decode_tps is None or request.decode_tps > 0,
         f"--decode-tps must be a positive number of tokens/s, got {request.decode_tps}."),
        (0.05 <= request.gpu_memory_utilization <= 1.0,
         f"--gpu-memory-utilization must be between 0.05 and 1.0, got {request.gpu_memory_utilization:g}."),
    )  # fmt: skip
    for ok, message in checks:
        if not ok:
            raise SwiftplanError(message)
    if request.study_name is not None and not request.storage:
        raise SwiftplanError(
            f"--study-name {request.study_name!r} names the study kept in --storage; without --storage the "
            "study lives in memory and ends with the search, so the name would change nothing.",
            hint="Add --storage sqlite:///study.db to keep (and resume) the study, or drop --study-name.",
        )
    if request.task == "train":
        refuse_eager_for_training(request.eager)
        refuse_idle_lora_options(request.pins.methods, request.typed)


def _check_rollout_lengths(request: FitRequest) -> None:
    """An RL sequence is a prompt and the completion generated for it: --seq must be their sum, and neither a
    data file nor a lengths file can size it (the completions do not exist yet). Refused before the search,
    so an option clash never reads as "nothing fits"."""
    rollout, kind = request.training.rollout, request.training.kind
    if rollout is None:
        return
    if request.data or request.lengths:
        flag, value = ("--data", request.data) if request.data else ("--lengths", request.lengths)
        per_prompt = f"--num-generations {rollout.num_generations} × (prompt + completion) tokens"
        hint = f"give your longest prompt as --prompt-len and the tokens an epoch trains as --dataset-tokens (prompts × {per_prompt})"
        if request.lengths and not request.data:  # the prompts' lengths: the change itself
            prompts = inputs.sample_lengths(None, request.lengths, request.model).lengths
            longest = max(prompts)
            trained = len(prompts) * rollout.num_generations * (longest + rollout.completion_len)
            hint = (f"read as prompt lengths: --prompt-len {longest} (the longest) --dataset-tokens {trained} "
                    f"({len(prompts):,} prompts × {per_prompt})")  # fmt: skip
        raise SwiftplanError(
            f"--task {kind} generates its sequences: each is a prompt (--prompt-len {rollout.prompt_len}) and a "
            f"completion generated during training (--completion-len {rollout.completion_len}), so {flag} {value} "
            "cannot size them.",
            hint=f"Drop {flag}; {hint}.",
        )
    if request.seq_len != rollout.seq_len:
        raise SwiftplanError(
            f"--task {kind}: a sequence is its prompt and completion, --prompt-len {rollout.prompt_len} + "
            f"--completion-len {rollout.completion_len} = {rollout.seq_len}, but --seq is {request.seq_len}.",
            hint="Drop --seq and size the sequence with --prompt-len and --completion-len.",
        )


def _check_targets(spec: ModelSpec, pins: Pins, *, dora: bool = False) -> None:
    from swiftplan.planner.adapters import validate_targets
    from swiftplan.planner.dora import check_dora
    from swiftplan.planner.setup import LoraSetup

    for key in pins.targets or ():
        if key not in ("all-linear", "attention"):
            validate_targets(spec, LoraSetup(targets=tuple(key.split(","))))
    for key in pins.targets or ("all-linear",):
        if key != "attention":
            check_dora(spec, LoraSetup(targets=tuple(key.split(",")), dora=dora))


def _dora_methods(request: FitRequest) -> FitRequest:
    """--dora trains DoRA adapters: the search keeps LoRA and QLoRA (planner/dora.dora_methods)."""
    if not request.dora:
        return request
    from swiftplan.planner.dora import dora_methods

    return replace(request, pins=replace(request.pins, methods=dora_methods(request.pins.methods)))


def _check_against_model(request: FitRequest, spec: ModelSpec) -> FitRequest:
    """--rank within the model's matrices (--rank auto keeps the ranks its smallest targeted matrix allows), and
    --ckpt-every within its blocks."""
    from swiftplan.planner.search.space_choices import RANKS

    if "ckpt_every" in request.runtime_options:
        model_limits.check_ckpt_every(spec, request.runtime_options["ckpt_every"])
    ranks = request.pins.ranks
    if ranks is None:
        return request
    if tuple(ranks) == RANKS:
        limit, _ = model_limits.rank_limit(spec, request.pins.targets)
        allowed = tuple(r for r in ranks if r <= limit) or (min(ranks),)
        return replace(request, pins=replace(request.pins, ranks=allowed))
    model_limits.check_rank(spec, max(ranks), request.pins.targets, "--rank")
    return request
