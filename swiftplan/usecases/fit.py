"""The fit use case: request → model and hardware → search space for the engine → study → diagnosis →
`Plan`. `swiftplan fit`, `swiftplan size` (its next command) and the dashboard all go through here.

`prepare_fit` resolves and validates everything and builds the evaluator; `search_fit` runs the study
(optionally reporting each evaluated candidate, which may raise to cancel), diagnoses an infeasible
job, builds the plan, and checks whether a plan the chosen engine cannot run would beat it by enough
to say so; `plan_fit` does both.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from swiftplan import __version__
from swiftplan.errors import SwiftplanError
from swiftplan.planner import model_limits
from swiftplan.planner.engines import (
    Engine,
    engines_that_run,
    serve_requirements,
    train_requirements,
)
from swiftplan.planner.estimate import training_world_size
from swiftplan.planner.hardware import Cluster
from swiftplan.planner.idle_knobs import knob_dict, refuse_idle_knobs
from swiftplan.planner.layout import Layout, cluster_text
from swiftplan.planner.lengths import LengthStats, rows_per_epoch
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.objective import SFT, ObjectiveSetup
from swiftplan.planner.plan import Plan, predict
from swiftplan.planner.runtime import (
    RuntimeChoice,
    refuse_eager_for_training,
)
from swiftplan.planner.search.candidate import Candidate, ServeCandidate
from swiftplan.planner.search.evaluate import Evaluation, Objective, ServeEvaluator, TrainEvaluator
from swiftplan.planner.search.infeasible import Diagnosis
from swiftplan.planner.search.objective_variants import ObjectivePins
from swiftplan.planner.search.optimize import SearchResult, SearchSettings
from swiftplan.planner.search.pins import Pins
from swiftplan.planner.search.serve_space import engine_runtime
from swiftplan.planner.setup import AttentionImpl, ServeSetup
from swiftplan.planner.vision import VisionInputs
from swiftplan.planner.vision_tokens import language_tokens
from swiftplan.planner.workload import ServeWorkload, TrainWorkload
from swiftplan.units import format_gib
from swiftplan.usecases import inputs
from swiftplan.usecases.fit_engine import (
    choose_runtime_engine,
    engine_cluster,
)

FitTask = Literal["train", "serve"]
ENGINE_WIN_MARGIN = 0.02
"""A plan another engine could run is mentioned when it beats the chosen engine's by more than this."""


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


@dataclass(frozen=True, kw_only=True, slots=True)
class FitProblem:
    """A request resolved: model, hardware, engine, workload, evaluator and search settings."""

    request: FitRequest
    model: str
    """The model reference a plan stores (local paths absolute)."""
    spec: ModelSpec
    cluster: Cluster
    """The hardware searched (for the built-in server: one of the offered GPUs)."""
    offered: str
    """The hardware as offered (--gpus text, or the probed cluster's catalog form)."""
    offered_cluster: Cluster
    """The hardware as offered (the engine may use part of it)."""
    engine: Engine
    workload: TrainWorkload | ServeWorkload
    pins: Pins
    evaluator: Any
    """`TrainEvaluator` or `ServeEvaluator`."""
    settings: SearchSettings
    notes: tuple[str, ...]
    """Workload, host RAM, cluster and price notes shown with the result."""
    lengths: LengthStats | None = None
    """The data's per-sample token lengths against --seq, when --data or --lengths was given."""
    runtime: RuntimeChoice | None = None
    """The runtime profile planned for and the defaults it applied (serving without --runtime: None)."""

    @property
    def task(self) -> FitTask:
        return self.request.task

    @property
    def title(self) -> str:
        """'Qwen/Qwen2.5-7B on 1 × NVIDIA GeForce RTX 4090 (train on swiftplan, objective: time)'."""
        mode = "Pareto front" if self.settings.pareto else f"objective: {self.settings.objective}"
        return f"{self.spec.name} on {self.cluster.describe()} ({self.task} on {self.engine.name}, {mode})"


@dataclass(frozen=True, kw_only=True, slots=True)
class EngineAlternative:
    """A better plan that needs an engine other than the one planned for."""

    evaluation: Evaluation
    """The better plan."""
    engines: tuple[Engine, ...]
    """Engines in the table that could run it."""
    ratio: float
    """How much better on the objective (> 1)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class VariantResult:
    """One searched variant of the objective (reference handling, rollout placement) and its best plan."""

    objective: ObjectiveSetup
    best: Evaluation | None
    """Its best plan; None when nothing fits."""


@dataclass(frozen=True, kw_only=True, slots=True)
class FitOutcome:
    """What `fit` found."""

    problem: FitProblem
    result: SearchResult
    diagnosis: Diagnosis | None
    """When nothing fits: by how much and what would."""
    plan: Plan | None
    """The winning plan."""
    alternative: EngineAlternative | None
    """A plan another engine could run, when clearly better."""
    elapsed_s: float
    variants: tuple[VariantResult, ...] = ()
    """The objective's variants searched beside the winner's (empty for SFT and serving)."""


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
    if request.task == "train":
        refuse_eager_for_training(request.eager)


def fingerprint(*parts: Any) -> str:
    """Short hash identifying a search problem (for resuming stored studies)."""
    return hashlib.sha1("|".join(repr(part) for part in parts).encode()).hexdigest()[:12]


def _evaluator(spec: ModelSpec, cluster: Cluster, workload: Any, pins: Pins, engine: Engine | None,
               request: FitRequest, host_bytes: int) -> Any:  # fmt: skip
    from swiftplan.planner.search.serve_space import build_serve_space
    from swiftplan.planner.search.space import build_train_space

    if isinstance(workload, TrainWorkload):
        train_space = build_train_space(spec, cluster, pins, engine, global_batch=workload.global_batch)
        return TrainEvaluator(
            spec, cluster, workload, train_space, headroom=request.headroom, host_ram_bytes=host_bytes
        )
    serve_space = build_serve_space(spec, cluster, pins, engine)
    return ServeEvaluator(spec, cluster, workload, serve_space, headroom=request.headroom)


def _length_stats(request: FitRequest, spec: ModelSpec, model: str, notes: list[str]) -> LengthStats | None:
    """Per-sample lengths from --data or --lengths, against --seq (training only); empty samples are left out,
    with a note."""
    if request.task != "train" or (request.data is None and request.lengths is None):
        return None
    if request.dataset_tokens is not None:
        raise SwiftplanError("Pass either --dataset-tokens or --data/--lengths, not both.")
    from swiftplan.planner.lengths import length_stats

    counted = inputs.sample_lengths(
        request.data, request.lengths, model, max_positions=spec.max_position_embeddings,
        task=request.training.kind,
    )  # fmt: skip
    exact = not counted.method.startswith("approximation")
    if counted.skipped:
        notes.append(f"{request.data or request.lengths}: {counted.skipped:,} empty sample(s) (0 tokens) skipped; "
                     f"planned on the other {len(counted.lengths):,}.")  # fmt: skip
    return length_stats(counted.lengths, request.seq_len, counted.method, exact=exact)


def _workload(
    request: FitRequest, spec: ModelSpec, model: str, notes: list[str], host: tuple[int, str],
    lengths: LengthStats | None = None, *, padding: str = "max_length",
) -> Any:  # fmt: skip
    if request.task == "serve":
        if (
            request.concurrency is None
            and request.ttft_s is None
            and request.decode_tps is None
            and request.goal == "throughput"
        ):
            notes.append("no --concurrency or latency target: each replica takes as many sequences as fit, which maximises "
                         "throughput at the cost of time to first token; pass --ttft / --decode-tps to bound it.")  # fmt: skip
        if request.pins.quants is None:
            notes.append(
                "weights searched in 16-bit or fp8; pass --quant none,fp8,int8,nf4 to allow bitsandbytes formats."
            )
        if request.vision is not None:
            notes.append(vision_note(spec, request.vision, serving=True))
        return ServeWorkload(context=request.context, concurrency=request.concurrency, ttft_s=request.ttft_s,
                             decode_tps=request.decode_tps, gpu_memory_utilization=request.gpu_memory_utilization,
                             eager=request.eager, vision=request.vision)  # fmt: skip
    seq = request.seq_len
    if lengths is None:
        tokens, source = inputs.dataset_tokens(
            request.dataset_tokens, request.data, model, max_positions=spec.max_position_embeddings
        )
    else:
        from swiftplan.planner.lengths import describe, memory_seq_len, trained_tokens

        # packed rows, or rows padded to --seq (--padding max_length), are all --seq long
        tokens, seq = (
            trained_tokens(lengths, request.packing),
            memory_seq_len(lengths, request.packing or padding == "max_length"),
        )
        source = f"{request.data or request.lengths}: {lengths.samples:,} samples, {lengths.method}"
        if tokens < lengths.total_tokens:
            source += f"; {lengths.total_tokens:,} before truncation at --seq {request.seq_len:,}"
        if (
            per_sample := request.training.sequences_per_example
        ) > 1:  # chosen and rejected, each padded to the pair's longer
            tokens *= per_sample
            source += f"; × {per_sample} sequences per pair (chosen and rejected)"
    sequences = -(-tokens // seq) if lengths is None else rows_per_epoch(lengths, request.packing)
    per_sequence = language_tokens(spec, request.vision)
    image_tokens = per_sequence * sequences
    text = f"{tokens:,} tokens" if request.vision is None else (
        f"{tokens:,} text tokens + {image_tokens:,} image tokens ({per_sequence:,} in each of {sequences:,} sequences)"
    )  # fmt: skip
    notes.append(
        f"workload: {text} × {request.epochs:g} epoch(s) ({source}), global batch "
        f"{request.global_batch} × {seq} tokens; host RAM for offload {format_gib(host[0], 0)} per node ({host[1]})."
    )
    if request.vision is not None:
        notes.append(vision_note(spec, request.vision, serving=False))
    if lengths is not None:
        notes.append(
            describe(lengths, request.packing, request.global_batch, padded_to_seq=padding == "max_length")
        )
        if seq < request.seq_len:
            notes.append(
                f"sized on the worst batch: no sample is longer than {seq:,} tokens"
                f"{'' if lengths.exact else ' (approximate lengths, with a 25% margin)'}, and batches are padded to "
                f"their longest sample, so memory is planned at --seq {seq:,} instead of {request.seq_len:,}; "
                "pass --packing to plan full sequences."
            )
        if note := _short_data_note(lengths, request):
            notes.append(note)
    return TrainWorkload(seq_len=seq, global_batch=request.global_batch, dataset_tokens=tokens,
                         dataset_image_tokens=image_tokens, epochs=request.epochs, attention=request.attention,
                         variable_lengths=request.samples_vary, vision=request.vision, dora=request.dora)  # fmt: skip


def vision_note(spec: ModelSpec, vision: VisionInputs, *, serving: bool) -> str:
    """What the images add to every candidate: the tokens per sequence (by the processor's rule) and the tower."""
    from swiftplan.planner.vision import require_vision_tower
    from swiftplan.planner.vision_tokens import visual_tokens

    tower = require_vision_tower(spec)
    tokens = visual_tokens(tower, vision)
    if serving:
        return (f"images counted: each request's {tokens.llm_tokens:,} image/video tokens ({tokens.rule}) are part "
                f"of its --context, and the {tower.family} vision tower and its encoder cache are in every plan's "
                "memory and speed.")  # fmt: skip
    trained = [part for part, frozen in (("vision tower", vision.freeze_vit), ("aligner", vision.freeze_aligner))
               if not frozen]  # fmt: skip
    return (f"images counted: every sequence holds --seq text tokens + {tokens.llm_tokens:,} image/video tokens "
            f"({tokens.rule}); the {tower.family} vision tower and aligner "
            f"({', '.join(trained) + ' trained' if trained else 'frozen'}) are in every plan's memory and speed.")  # fmt: skip


def check_vision(request: FitRequest, spec: ModelSpec) -> None:
    """Image options need a vision-language model (planner/vision.py's one message for a text-only model) and,
    for training, supervised fine-tuning: refused before the search, so they never read as "nothing fits"."""
    if request.vision is None:
        return
    from swiftplan.planner.vision import require_vision_tower

    require_vision_tower(spec)
    kind = request.training.kind
    if request.task == "train" and kind != "sft":
        raise SwiftplanError(
            f"--task {kind} with image options: images and video are planned for supervised fine-tuning; {kind}'s "
            f"paired, reference and rollout passes over the images are not modelled yet.",
            hint="Plan the SFT step with the image options, or the objective without them (text tokens only).",
        )


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


def _rollout_batch(request: FitRequest, notes: list[str]) -> FitRequest:
    """GRPO's global batch in whole prompts: rounded up to a multiple of --num-generations (TRL requires the
    generation batch to divide by it, trl 1.16 trainer/grpo_config.py:480), with a note naming both numbers; a
    step larger than the whole run (a single prompt's completions outnumbering the data) is refused."""
    from swiftplan.planner.objective import whole_prompts

    rollout, kind = request.training.rollout, request.training.kind
    if rollout is None:
        return request
    batch = request.global_batch
    if kind == "grpo" and batch % rollout.num_generations and "global_batch" in request.typed:
        # (a default batch was rounded with the cluster's GPUs already, `_split_default_batch`)
        batch = whole_prompts(batch, rollout.num_generations)
        notes.append(f"--task grpo: --global-batch {request.global_batch} completions rounded up to {batch}, whole "
                     f"prompts of --num-generations {rollout.num_generations} each (TRL requires the generation batch "
                     f"to divide by it); pass --global-batch as a multiple of {rollout.num_generations} to choose it.")  # fmt: skip
    step = batch * rollout.seq_len
    run = (request.dataset_tokens or inputs.DEFAULT_DATASET_TOKENS) * request.epochs
    if step > run and not {"global_batch", "num_generations"} & request.typed:
        notes.append(f"--task {kind}: one step of {batch:,} completions × {rollout.seq_len:,} tokens is more than the "
                     f"whole run's {run:,.0f} tokens: give --dataset-tokens the tokens the run trains.")  # fmt: skip
    elif step > run:
        raise SwiftplanError(
            f"--task {kind}: one step of {batch:,} completions × {rollout.seq_len:,} tokens (--global-batch, "
            f"--num-generations {rollout.num_generations}, prompt + completion) is {step:,} tokens, more than the whole "
            f"run's {run:,.0f}.",
            hint="Lower --num-generations (TRL's default is 8; DeepSeekMath's GRPO sampled 64 per question, "
            "arXiv:2402.03300) or --global-batch, or raise --dataset-tokens to the tokens the run trains.",
        )
    return replace(request, global_batch=batch)


def _split_default_batch(request: FitRequest, ranks: int, notes: list[str]) -> FitRequest:
    """A global batch the user did not type, rounded up so that every layout of the `ranks` training GPUs splits it
    (micro-batch × accumulation × dp = global batch), with a note; a typed one is kept, and layouts it does not
    split are not searched (`batch_layouts`)."""
    if "global_batch" in request.typed:
        return request
    from swiftplan.planner.objective import step_generations
    from swiftplan.planner.search.space import split_global_batch

    batch = split_global_batch(request.global_batch, ranks, pins=request.pins, objective=request.training)
    generations = step_generations(request.training)
    if batch == request.global_batch:
        return request
    prompts = (
        f" in whole prompts of --num-generations {generations} (TRL requires it)" if generations > 1 else ""
    )
    notes.append(f"global batch {request.global_batch} (the default) rounded up to {batch} so that it splits over all "
                 f"{ranks} training GPUs (micro-batch × accumulation × data-parallel ranks){prompts}; pass "
                 f"--global-batch to choose it.")  # fmt: skip
    return replace(request, global_batch=batch)


def _short_data_note(lengths: LengthStats, request: FitRequest) -> str | None:
    """A data set smaller than one global batch: each epoch is one partial step (time and cost count the
    tokens it holds, not a full batch)."""
    rows = rows_per_epoch(lengths, request.packing)
    if rows >= request.global_batch:
        return None
    what = f"{rows:,} packed row(s)" if request.packing else f"{rows:,} sample(s)"
    return (
        f"the data holds {what}, fewer than one global batch of {request.global_batch}: each epoch is a single "
        f"partial step of {rows:,} sequence(s), and time and cost count those; --global-batch {rows} would "
        "plan the step as it runs."
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
    """--rank within the model's matrices; --rank auto keeps the ranks its smallest targeted matrix allows."""
    from swiftplan.planner.search.space import RANKS

    ranks = request.pins.ranks
    if ranks is None:
        return request
    if tuple(ranks) == RANKS:
        limit, _ = model_limits.rank_limit(spec, request.pins.targets)
        allowed = tuple(r for r in ranks if r <= limit) or (min(ranks),)
        return replace(request, pins=replace(request.pins, ranks=allowed))
    model_limits.check_rank(spec, max(ranks), request.pins.targets, "--rank")
    return request


def prepare_fit(request: FitRequest, *, cluster: Cluster | None = None) -> FitProblem:
    """Resolve and check the request and build the evaluator (no search yet). `cluster` skips resolving --gpus."""
    _check_request(request)
    model = inputs.model_reference(request.model)
    spec = inputs.resolve_model(model)
    check_vision(request, spec)
    offered_cluster = cluster or inputs.resolve_cluster(request.gpus)
    notes = [f"cluster note: {n}" for n in offered_cluster.notes]
    engine, runtime = choose_runtime_engine(request, offered_cluster, notes)
    searched = engine_cluster(engine, offered_cluster, notes)
    host = inputs.host_ram(request.host_ram_bytes, request.gpus)
    if request.task == "train":
        training_world_size(request.training, searched)  # a rollout server must leave GPUs to train on
        _check_rollout_lengths(request)
        request = _split_default_batch(request, training_world_size(request.training, searched), notes)
        request = _rollout_batch(request, notes)
        _check_targets(spec, request.pins, dora=request.dora)
        request = _dora_methods(request)
        request = _check_against_model(request, spec)
        from swiftplan.planner.capabilities import check

        if reasons := check(searched.accelerator, attention=request.attention):
            raise SwiftplanError(" ".join(reasons), hint="Use --attention sdpa.")
    length, flag = (request.seq_len, "--seq") if request.task == "train" else (request.context, "--context")
    if request.task == "train" and request.vision is not None:  # the images join each sequence
        length, flag = (
            length + language_tokens(spec, request.vision),
            "the sequence (--seq and the image tokens)",
        )
    if problem := model_limits.length_problem(spec, length, flag):
        notes.append(f"warning: {problem}")
    lengths = _length_stats(request, spec, model, notes)
    padding = runtime.knobs().padding if runtime is not None and request.task == "train" else "max_length"
    workload = _workload(request, spec, model, notes, host, lengths, padding=padding)
    if runtime is not None and isinstance(workload, TrainWorkload):
        # knob flags typed for a runtime whose own knobs leave them idle (--loss-chunks beside its full loss)
        refuse_idle_knobs(request.runtime_options, [knob_dict(runtime.knobs())])
        workload = replace(workload, runtime=runtime.knobs(), objective=request.training)
        if runtime.knobs().fsdp != "none":  # FSDP shards instead of ZeRO
            if request.pins.zero not in (None, (0,)) or request.pins.max_offload not in (None, "none"):
                raise SwiftplanError(
                    f"--fsdp {runtime.knobs().fsdp} shards instead of DeepSpeed ZeRO; --zero and --offload cannot apply with it."
                )
            request = replace(request, pins=replace(request.pins, zero=(0,), max_offload="none"))
    elif isinstance(workload, ServeWorkload):  # timed for the engine that serves it
        options = {} if runtime is None else runtime.setup_options()
        workload = replace(
            workload,
            runtime=engine_runtime(engine),
            **{k: v for k, v in options.items() if k == "gpu_memory_utilization"},
        )
    evaluator = _evaluator(spec, searched, workload, request.pins, engine, request, host[0])
    if searched.accelerator.price_usd_per_hour is None:
        notes.append(f"cost unknown: the catalog has no price for {searched.accelerator.display_name}; cost is shown in GPU-hours.")  # fmt: skip
    key = fingerprint(spec.name, cluster_text(searched), request.task, engine.name, workload, request.pins,
                      request.goal, request.pareto, request.headroom, host[0])  # fmt: skip
    settings = SearchSettings(
        objective=request.goal,
        pareto=request.pareto,
        seed=request.seed,
        trials=request.trials,
        storage=request.storage,
        study_name=request.study_name or (f"fit-{key}" if request.storage else None),
        fingerprint=f"{spec.name} on {cluster_text(searched)} ({request.task}) {key}",
    )
    offered = cluster_text(offered_cluster)
    return FitProblem(request=request, model=model, spec=spec, cluster=searched, offered=offered,
                      offered_cluster=offered_cluster, engine=engine,
                      workload=workload, pins=request.pins, evaluator=evaluator, settings=settings, notes=tuple(notes),
                      lengths=lengths, runtime=runtime)  # fmt: skip


class _Reporting:
    """The evaluator with its top-level entry points reporting each result (one call per structure)."""

    def __init__(self, inner: Any, report: Callable[[Evaluation], None]) -> None:
        self._inner, self._report = inner, report

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def resolve(self, structure: Any, objective: Any = "time") -> Evaluation:
        return self._done(self._inner.resolve(structure, objective))

    def evaluate(self, candidate: Any) -> Evaluation:
        return self._done(self._inner.evaluate(candidate))

    def best_concurrency(self, structure: Any, objective: Any = "throughput") -> Evaluation:
        return self._done(self._inner.best_concurrency(structure, objective))

    def _done(self, evaluation: Evaluation) -> Evaluation:
        self._report(evaluation)
        return evaluation


def _search(evaluator: Any, settings: SearchSettings, task: FitTask) -> SearchResult:
    from swiftplan.planner.search.optimize import search_serving, search_training

    return search_training(evaluator, settings) if task == "train" else search_serving(evaluator, settings)


def plan_from(problem: FitProblem, evaluation: Evaluation) -> Plan:
    """The `Plan` for one evaluated candidate of `problem` (what `fit -o` writes)."""
    estimate = evaluation.estimate
    if estimate is None:
        raise SwiftplanError(f"That candidate has no estimate: {evaluation.error}")
    candidate = evaluation.candidate
    if isinstance(candidate, Candidate):
        from swiftplan.planner.search.evaluate import job_cluster

        layout = candidate.layout
        assert isinstance(problem.workload, TrainWorkload)
        hardware = job_cluster(layout, problem.cluster, problem.workload)
    else:
        assert isinstance(candidate, ServeCandidate)
        hardware = problem.cluster
        layout = Layout(gpus=hardware.world_size, tp=candidate.tp)
    return Plan(
        model=problem.model,
        model_source=problem.spec.source or problem.spec.name,
        task=problem.task,
        engine=problem.engine.name,
        objective=problem.settings.objective,
        offered=problem.offered,
        hardware=hardware,
        layout=layout,
        setup=estimate.setup,
        workload=problem.workload,
        prediction=predict(estimate, workload=problem.workload, layout=layout, hardware=hardware),
        created=dt.datetime.now(dt.timezone.utc).replace(microsecond=0),
        swiftplan_version=__version__,
    )


def requirements_of(evaluation: Evaluation, cluster: Cluster) -> Any:
    """What an evaluated plan asks of an engine."""
    estimate = evaluation.estimate
    assert estimate is not None
    backend = cluster.accelerator.backend
    if isinstance(estimate.setup, ServeSetup):
        return serve_requirements(estimate.setup, backend=backend, gpus=evaluation.gpus)
    return train_requirements(estimate.setup, backend=backend, gpus=evaluation.gpus)


def _alternative(problem: FitProblem, best: Evaluation | None) -> EngineAlternative | None:
    """A clearly better plan that another engine in the table could run (searched without the engine's limits)."""
    request = problem.request
    if not request.compare_engines or request.pareto:
        return None
    if request.task == "serve":
        return _serve_alternative(problem, best)
    offered = problem.offered_cluster
    try:
        free = _evaluator(problem.spec, offered, problem.workload, problem.pins, None, request,
                          problem.evaluator.host_ram_bytes if request.task == "train" else 0)  # fmt: skip
    except SwiftplanError:
        return None
    result = _search(free, replace(problem.settings, storage=None, study_name=None), request.task)
    other = result.best
    if other is None or other.estimate is None:
        return None
    goal = problem.settings.objective
    ratio = _advantage(other, best, goal)
    if ratio <= 1 + ENGINE_WIN_MARGIN:
        return None
    engines = tuple(
        e
        for e in engines_that_run(requirements_of(other, offered), request.task)
        if e.name != problem.engine.name
    )
    return EngineAlternative(evaluation=other, engines=engines, ratio=ratio) if engines else None


def _serve_alternative(problem: FitProblem, best: Evaluation | None) -> EngineAlternative | None:
    """The best serving plan of each other engine, searched under its limits and timed with its own runtime
    (its per-step decode cost), when clearly better than the chosen engine's."""
    from swiftplan.planner.engines import list_engines

    assert isinstance(problem.workload, ServeWorkload)
    request, found = problem.request, None
    backend = problem.offered_cluster.accelerator.backend
    for engine in list_engines("serve"):
        backends = engine.allowed("backend", backend)
        if engine.name == problem.engine.name or (backends is not None and backend not in backends):
            continue
        try:
            cluster = engine_cluster(engine, problem.offered_cluster, [])
            workload = replace(problem.workload, runtime=engine_runtime(engine))
            evaluator = _evaluator(problem.spec, cluster, workload, problem.pins, engine, request, 0)
        except SwiftplanError:  # the engine does not run on these devices or with these pins
            continue
        other = _search(evaluator, replace(problem.settings, storage=None, study_name=None), "serve").best
        if other is None or other.estimate is None:
            continue
        ratio = _advantage(other, best, problem.settings.objective)
        if ratio > 1 + ENGINE_WIN_MARGIN and (found is None or ratio > found.ratio):
            found = EngineAlternative(evaluation=other, engines=(engine,), ratio=ratio)
    return found


def _advantage(other: Evaluation, best: Evaluation | None, goal: str) -> float:
    """How many times better `other` is than `best` on the objective (infinite when nothing else fits)."""
    if best is None:
        return float("inf")
    if goal == "throughput":
        return other.tokens_per_s / best.tokens_per_s if best.tokens_per_s > 0 else float("inf")
    if goal == "cost":
        return best.cost / other.cost if other.cost > 0 else 1.0
    return best.time_s / other.time_s if other.time_s > 0 else 1.0


def _variant_problems(problem: FitProblem) -> list[FitProblem]:
    """The problem once per variant of its objective (the request's own first); one for SFT and serving."""
    workload = problem.workload
    if not isinstance(workload, TrainWorkload) or workload.objective.kind == "sft":
        return [problem]
    from swiftplan.planner.search.objective_variants import objective_variants

    request = problem.request
    host = problem.evaluator.host_ram_bytes
    problems = []
    for variant in objective_variants(
        workload.objective, request.objective_pins, world_size=problem.cluster.world_size
    ):
        changed = replace(workload, objective=variant)
        try:
            evaluator = _evaluator(
                problem.spec, problem.cluster, changed, problem.pins, problem.engine, request, host
            )
        except SwiftplanError:
            continue
        settings = (
            problem.settings
            if variant == workload.objective
            else replace(problem.settings, storage=None, study_name=None)
        )
        problems.append(replace(problem, workload=changed, evaluator=evaluator, settings=settings))
    return problems or [problem]


def _best_variant(problems: list[FitProblem], results: list[SearchResult]) -> int:
    """Index of the variant whose best plan wins on the objective (the request's own when none fits)."""
    best = 0
    for i, result in enumerate(results):
        if (
            result.best is not None
            and _advantage(result.best, results[best].best, problems[i].settings.objective) > 1
        ):
            best = i
    return best


def search_fit(problem: FitProblem, on_candidate: Callable[[Evaluation], None] | None = None) -> FitOutcome:
    """Run the study for a prepared problem (once per variant of a preference/RL objective, keeping the best);
    `on_candidate` sees every structure evaluated (and may raise to stop)."""
    started = time.perf_counter()
    problems = _variant_problems(problem)
    if len(problems) == 1:
        return _search_one(problem, on_candidate, started)
    results = [_search(p.evaluator if on_candidate is None else _Reporting(p.evaluator, on_candidate), p.settings, p.task)
               for p in problems]  # fmt: skip
    winner = _best_variant(problems, results)
    outcome = _search_one(problems[winner], None, started, result=results[winner])
    variants = tuple(VariantResult(objective=p.workload.objective, best=r.best)  # type: ignore[union-attr]
                     for p, r in zip(problems, results, strict=True))  # fmt: skip
    return replace(outcome, variants=variants, elapsed_s=time.perf_counter() - started)


def _search_one(
    problem: FitProblem,
    on_candidate: Callable[[Evaluation], None] | None,
    started: float,
    *,
    result: SearchResult | None = None,
) -> FitOutcome:
    """Search one problem (or take its finished `result`), diagnose when nothing fits, and plan."""
    from swiftplan.planner.search import infeasible

    if result is None:
        evaluator = problem.evaluator if on_candidate is None else _Reporting(problem.evaluator, on_candidate)
        result = _search(evaluator, problem.settings, problem.task)
    diagnosis = None
    if result.best is None and result.closest is not None:
        diagnose = infeasible.diagnose_training if problem.task == "train" else infeasible.diagnose_serving
        diagnosis = diagnose(problem.evaluator, problem.pins, result.closest, problem.settings.objective)
    plan = plan_from(problem, result.best) if result.best is not None else None
    if plan is not None and (note := _idle_gpus_note(problem, plan)):
        problem = replace(problem, notes=(*problem.notes, note))
    alternative = _alternative(problem, result.best)
    return FitOutcome(problem=problem, result=result, diagnosis=diagnosis, plan=plan, alternative=alternative,
                      elapsed_s=time.perf_counter() - started)  # fmt: skip


def _idle_gpus_note(problem: FitProblem, plan: Plan) -> str | None:
    """When the plan leaves training GPUs idle because the global batch does not split over all of them
    (micro-batch × accumulation × data-parallel ranks = global batch): say so, and the batch that would not."""
    workload = problem.workload
    if not isinstance(workload, TrainWorkload):
        return None
    layout, batch = plan.layout, workload.global_batch
    world = problem.cluster.world_size - workload.objective.server_gpus
    model_parallel = layout.tp * layout.pp
    if layout.gpus >= world or world % model_parallel:
        return None
    ranks = world // model_parallel
    if batch % ranks == 0:
        return None
    from swiftplan.planner.search.space import split_global_batch

    better = split_global_batch(batch, ranks, pins=problem.pins, objective=workload.objective)
    return (
        f"the plan trains on {layout.gpus} of the {world} GPUs; the other {world - layout.gpus} idle: a step's "
        f"--global-batch {batch} sequences are micro-batch × accumulation × data-parallel ranks, and {ranks} ranks "
        f"do not divide {batch}. --global-batch {better} would put all {world} to work."
    )


def plan_fit(request: FitRequest) -> FitOutcome:
    """The fit use case: resolve, search, diagnose, plan."""
    return search_fit(prepare_fit(request))
