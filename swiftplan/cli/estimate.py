"""`swiftplan estimate MODEL`: memory breakdown and speed of one configuration."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from swiftplan.cli._output import console, print_json
from swiftplan.cli.objective_options import (
    TASK_HELP,
    CompletionLenOpt,
    JobTask,
    KlOpt,
    NumGenerationsOpt,
    PromptLenOpt,
    ReferenceOpt,
    RolloutEngineOpt,
    RolloutGpusOpt,
    RolloutMemoryOpt,
    RolloutOpt,
    RolloutSleepOpt,
    RolloutTpOpt,
)
from swiftplan.cli.options import (
    ActivationOffloadOpt,
    AdapterDtypeOpt,
    CkptEveryOpt,
    CkptPositionOpt,
    DoraOpt,
    DsAutoBucketsOpt,
    DsBucketsOpt,
    DsOverlapCommOpt,
    EnforceEagerOpt,
    ExpandableOpt,
    Float8Opt,
    FsdpCpuOffloadOpt,
    FsdpOpt,
    FsdpShardGroupOpt,
    FsdpShardingOpt,
    KeepOutputOpt,
    LossChunksOpt,
    LossChunkTokensOpt,
    LossOpt,
    MaxLiveOpt,
    MaxReuseOpt,
    ModulesToSaveOpt,
    OptimizerImplOpt,
    OptimizerInBackwardOpt,
    PaddingOpt,
    PrefetchBucketOpt,
    ReduceBucketOpt,
    RuntimeOpt,
    build_serve_setup,
    build_train_setup,
    given_options,
)
from swiftplan.cli.vision_options import (
    ImageSizeOpt,
    ImagesPerSampleOpt,
    ImageTokensOpt,
    TrainAlignerOpt,
    TrainVitOpt,
    VideoFramesOpt,
    vision_args,
)
from swiftplan.planner.estimate import Estimate
from swiftplan.planner.speed import TrainSpeed
from swiftplan.units import format_gib

EPILOG = """
Examples:

  swiftplan estimate Qwen/Qwen2.5-7B --method lora --rank 64 --batch 2 --seq 2048 --gpus rtx4090

  swiftplan estimate Qwen/Qwen2.5-72B --method qlora --gpus rtx4090 --json

  swiftplan estimate meta-llama/Llama-3.1-70B --method full --zero 3 --offload optimizer --gpus 8xA100-80G

  swiftplan estimate Qwen/Qwen2.5-7B --task serve --context 8192 --concurrency 32 --gpus L40S

  swiftplan estimate ./my-model/config.json --method lora --gpus 2xrtx3090

  swiftplan estimate Qwen/Qwen2.5-7B --runtime hf --gpus rtx4090 --json      (TRL SFTTrainer's defaults)

  swiftplan estimate Qwen/Qwen2.5-7B --method full --runtime torch --optimizer-impl fused --gpus H100

  swiftplan estimate Qwen/Qwen2.5-VL-7B-Instruct --method lora --images-per-sample 2 --image-size 1024x1024 --gpus rtx4090

  swiftplan estimate plan.yaml          (a plan file written by `swiftplan fit -o`)
"""


Task = JobTask


def render_estimate(estimate: Estimate) -> None:
    """Print the breakdown table, the verdict and the speed."""
    mem = estimate.memory
    table = Table(
        title=f"{estimate.model.name} on {estimate.cluster.describe()} — per device", title_justify="left"
    )
    table.add_column("term")
    table.add_column("GiB", justify="right")
    table.add_column("how")
    for term in mem.terms:
        if (
            term.value_bytes
            or term.name in ("weights", "activations", "reference")
            or term.name.startswith("vision_")
        ):
            table.add_row(term.name, f"{term.value_bytes / 2**30:.2f}", term.formula)
    table.add_section()
    table.add_row(
        "[bold]peak allocated[/]",
        f"[bold]{mem.peak_allocated / 2**30:.2f}[/]",
        f"at {mem.peak_phase} (torch.cuda.max_memory_allocated)",
    )
    table.add_row(
        "[bold]peak reserved[/]",
        f"[bold]{mem.peak_reserved / 2**30:.2f}[/]",
        "allocated + allocator rounding and fragmentation (torch.cuda.max_memory_reserved)",
    )
    table.add_row(
        "[bold]device total[/]",
        f"[bold]{mem.device_total / 2**30:.2f}[/]",
        "reserved + CUDA context + NCCL buffers: what nvidia-smi would show",
    )
    table.add_row("device memory", f"{estimate.device_memory_bytes / 2**30:.2f}", "")
    console.print(table)
    for term in mem.terms:  # vision-language terms cite the code they follow
        if term.source and term.name.startswith(("vision_", "encoder_")):
            console.print(f"[dim]{term.name}: {term.source}[/]", highlight=False)
    verdict = "[green]fits[/]" if estimate.fits else "[red]does not fit[/]"
    why = (
        " the step fits, but the rollout engine cannot start in its share (see the note below);"
        if estimate.rollout_sequences == 0 and estimate.headroom_bytes >= 0
        else ""
    )
    console.print(
        f"{verdict}:{why} {format_gib(mem.device_total)} of {format_gib(estimate.device_memory_bytes)} "
        f"({format_gib(abs(estimate.headroom_bytes))} {'free' if estimate.headroom_bytes >= 0 else 'over'}); "
        f"largest term: {mem.dominant()}."
    )
    if estimate.host_bytes:
        console.print(f"host RAM for offloaded state: {format_gib(estimate.host_bytes)}")
    console.print(f"params {estimate.params:,}  trainable {estimate.trainable_params:,}")
    speed = estimate.to_json()["speed"]
    for note in estimate.notes:
        console.print(f"[yellow]note:[/] {note}")
    if estimate.speed is None:
        return
    if estimate.task == "train":
        console.print(
            f"speed: {speed['tokens_per_s']:,.0f} tokens/s, {speed['step_time_s']:.2f} s/step, bound by {speed['bound']} "
            f"({speed['flops_per_token'] / 1e9:.1f} GFLOP/token at {speed['mfu_prior']:.0%} MFU prior)"
        )
        render_objective(estimate)
    else:
        console.print(
            f"serving: max {estimate.max_concurrency} sequences of {estimate.setup.context} tokens; "  # type: ignore[union-attr]
            f"max context {estimate.max_context} at concurrency {estimate.setup.concurrency}; "  # type: ignore[union-attr]
            f"prefill {speed['prefill_tokens_per_s']:,.0f} tok/s, TTFT {speed['ttft_s']:.2f} s, "
            f"decode {speed['tokens_per_s']:,.0f} tok/s total ({speed['per_user_decode_tokens_per_s']:.1f}/user), {speed['bound']}-bound"
        )


_STEP_PARTS = {"compute": "policy forward/backward", "reference": "reference forward", "rollout": "generation",
               "weight_sync": "weight sync", "sleep_wake": "sleep/wake", "comm": "communication"}  # fmt: skip


def render_objective(estimate: Estimate) -> None:
    """For preference and RL tasks: what the objective is planned as and where the step's time goes."""
    setup = estimate.setup
    objective = getattr(setup, "objective", None)
    if objective is None or objective.kind == "sft" or not isinstance(estimate.speed, TrainSpeed):
        return
    parts = estimate.speed.breakdown_s
    shown = ", ".join(f"{label} {parts[k]:.2f} s" for k, label in _STEP_PARTS.items() if parts.get(k))
    console.print(f"step time: {shown}", highlight=False)
    rollout = objective.rollout
    if rollout is not None:
        where = (f"a vLLM server on {rollout.gpus} GPU(s) of their own" if rollout.placement == "server"
                 else "the trainer's generate()" if rollout.engine == "hf"
                 else f"vLLM colocated on each training GPU at {rollout.memory_fraction:g} of its memory"
                 + (" with sleep mode" if rollout.sleep else ""))  # fmt: skip
        console.print(
            f"rollout: {rollout.num_generations} completions per prompt of {rollout.completion_len} tokens after "
            f"{rollout.prompt_len}-token prompts, on {where}",
            highlight=False,
        )


_PLAN_FILE_OPTIONS = ("task", "method", "precision", "quant", "rank", "targets", "lora_dropout", "dora", "optimizer", "batch",
                      "seq", "grad_accum", "grad_ckpt", "attention", "kbit_upcast", "zero", "offload", "gpus", "tp",
                      "pp", "context", "concurrency", "kv_dtype", "gpu_memory_utilization", "engine",
                      "expandable_segments", "variable_lengths", "runtime", "loss", "loss_chunks", "loss_chunk_tokens",
                      "optimizer_impl", "modules_to_save", "optimizer_in_backward", "ckpt_every", "ckpt_position", "activation_offload", "fsdp_cpu_offload", "float8", "adapter_dtype", "keep_output", "padding", "packing", "fsdp", "fsdp_sharding",
                      "fsdp_shard_group", "ds_buckets", "reduce_bucket_elements", "prefetch_bucket_elements", "max_live_parameters", "max_reuse_distance", "ds_auto_buckets", "ds_overlap_comm", "images_per_sample", "image_size", "image_tokens", "video_frames",
                      "train_vit", "train_aligner")  # fmt: skip


def render_engine(outcome: Any) -> None:
    """Whether the plan's engine can run it, and which engines could."""
    if not outcome.engine_reasons:
        console.print(f"engine: {outcome.engine.name} can run it", highlight=False)
        return
    console.print(
        f"[red]engine {outcome.engine.name} cannot run it:[/] " + " ".join(outcome.engine_reasons),
        highlight=False,
    )
    if outcome.other_engines:
        names = ", ".join(
            e.name + ("" if e.runnable else " (not launched by swiftplan yet)") for e in outcome.other_engines
        )
        console.print(f"engines that could: {names}", highlight=False)


def render_prediction_check(outcome: Any) -> None:
    """For a plan file: whether today's estimate is the prediction the file holds."""
    if outcome.plan is None:
        return
    if not outcome.changed:
        console.print(
            f"matches the plan file's prediction (made {outcome.plan.created:%Y-%m-%d} by swiftplan {outcome.plan.swiftplan_version})",
            highlight=False,
        )
    else:
        from swiftplan.usecases.estimate import WHY_DIFFERS

        console.print(f"[yellow]differs from the plan file's prediction in: {', '.join(outcome.changed)}[/] "
                      f"({WHY_DIFFERS})", highlight=False)  # fmt: skip


def estimate_json(outcome: Any) -> dict[str, Any]:
    """`estimate --json`: the estimate, the engine verdict and, for a plan file, the prediction check."""
    from dataclasses import asdict

    payload = outcome.estimate.to_json()
    payload["engine"] = {"name": outcome.engine.name, "runs": not outcome.engine_reasons,
                         "reasons": list(outcome.engine_reasons), "engines_that_could": [e.name for e in outcome.other_engines]}  # fmt: skip
    if outcome.runtime is not None:
        payload["runtime"] = outcome.runtime.to_json()
    if outcome.plan is not None:
        payload["prediction"] = asdict(outcome.prediction)
        payload["prediction_matches_plan"] = not outcome.changed
        payload["prediction_changed"] = list(outcome.changed)
    return payload


def _opt(*names: str, help: str) -> Any:
    return typer.Option(*names, help=help)


ModelArg = Annotated[
    str,
    typer.Argument(
        help="Catalog name/alias, hub id, path to a config.json (or its directory), or a plan file (.yaml)."
    ),
]
TaskOpt = Annotated[JobTask, _opt("--task", help=TASK_HELP)]
MethodOpt = Annotated[str, _opt("--method", help="full | lora | qlora")]
PrecisionOpt = Annotated[str, _opt("--precision", help="bf16 | fp16 | fp32 | amp-bf16 | amp-fp16")]
QuantOpt = Annotated[
    str, _opt("--quant", help="none | nf4 | int8 | gptq | awq | fp8 (qlora defaults to nf4)")
]
RankOpt = Annotated[int, _opt("--rank", help="LoRA rank.")]
TargetsOpt = Annotated[str, _opt("--targets", help="Comma-separated module names, or all-linear.")]
DropoutOpt = Annotated[
    float, _opt("--lora-dropout", help="LoRA dropout (adds a mask and a copy per target).")
]
OptimizerOpt = Annotated[
    str, _opt("--optimizer", help="adamw | adamw-8bit | paged-adamw-8bit | sgd | adafactor")
]
BatchOpt = Annotated[int, _opt("--batch", help="Micro-batch per device (sequences).")]
SeqOpt = Annotated[int, _opt("--seq", help="Sequence length (tokens).")]
AccumOpt = Annotated[int, _opt("--grad-accum", help="Gradient accumulation steps.")]
CkptOpt = Annotated[bool, _opt("--grad-ckpt/--no-grad-ckpt", help="Gradient checkpointing.")]
AttentionOpt = Annotated[str, _opt("--attention", help="sdpa | flash | eager")]
UpcastOpt = Annotated[
    bool,
    _opt(
        "--kbit-upcast",
        help="QLoRA/int8 base prepared with peft's prepare_model_for_kbit_training (TRL-style): non-quantized parameters and activations in fp32.",
    ),
]
ZeroOpt = Annotated[int, _opt("--zero", help="ZeRO stage 0-3.")]
OffloadOpt = Annotated[str, _opt("--offload", help="none | optimizer | optimizer+params")]
GpusOpt = Annotated[str, _opt("--gpus", help="Cluster: rtx4090, 4xA100-80G, 2x8xH100, or auto (probe).")]
TpOpt = Annotated[int, _opt("--tp", help="Tensor-parallel degree.")]
PpOpt = Annotated[int, _opt("--pp", help="Pipeline-parallel degree.")]
ContextOpt = Annotated[int, _opt("--context", help="Serving: tokens per sequence.")]
ConcurrencyOpt = Annotated[int, _opt("--concurrency", help="Serving: concurrent sequences.")]
KvOpt = Annotated[str, _opt("--kv-dtype", help="Serving: auto | fp8")]
UtilOpt = Annotated[
    float,
    typer.Option(
        "--gpu-memory-utilization",
        help="Serving: the engine's memory fraction (default: the --runtime profile's, 0.92 for vllm; 0.9 where "
        "the profile sets none, or without --runtime).",
        show_default=False,
    ),
]
EngineOpt = Annotated[
    str | None,
    _opt(
        "--engine",
        help="Check against this engine (default: swiftplan for training, vLLM or builtin for serving).",
    ),
]
VariableLengthsOpt = Annotated[
    bool,
    _opt(
        "--variable-lengths",
        help="Samples of many lengths, not packed: more allocator fragmentation, and padded batches (--padding) "
        "give SDPA a mask per block.",
    ),
]
PackingOpt = Annotated[
    bool,
    _opt(
        "--packing",
        help="Samples packed into full --seq rows (position ids / flash-attn varlen): no padding, one shape.",
    ),
]
JsonOpt = Annotated[bool, _opt("--json", help="Print one JSON object.")]


def estimate_command(
    ctx: typer.Context,
    model: ModelArg,
    task: TaskOpt = Task.train,
    method: MethodOpt = "lora",
    precision: PrecisionOpt = "bf16",
    quant: QuantOpt = "none",
    rank: RankOpt = 16,
    targets: TargetsOpt = "q_proj,v_proj",
    lora_dropout: DropoutOpt = 0.05,
    dora: DoraOpt = False,
    optimizer: OptimizerOpt = "adamw",
    batch: BatchOpt = 1,
    seq: SeqOpt = 2048,
    grad_accum: AccumOpt = 1,
    grad_ckpt: CkptOpt = True,
    attention: AttentionOpt = "sdpa",
    kbit_upcast: UpcastOpt = False,
    zero: ZeroOpt = 0,
    offload: OffloadOpt = "none",
    gpus: GpusOpt = "rtx4090",
    tp: TpOpt = 1,
    pp: PpOpt = 1,
    context: ContextOpt = 4096,
    concurrency: ConcurrencyOpt = 1,
    kv_dtype: KvOpt = "auto",
    gpu_memory_utilization: UtilOpt = 0.9,
    enforce_eager: EnforceEagerOpt = False,
    engine: EngineOpt = None,
    expandable_segments: ExpandableOpt = None,
    variable_lengths: VariableLengthsOpt = False,
    packing: PackingOpt = False,
    runtime: RuntimeOpt = None,
    loss: LossOpt = None,
    loss_chunks: LossChunksOpt = None,
    loss_chunk_tokens: LossChunkTokensOpt = None,
    optimizer_impl: OptimizerImplOpt = None,
    modules_to_save: ModulesToSaveOpt = None,
    optimizer_in_backward: OptimizerInBackwardOpt = None,
    fsdp: FsdpOpt = None,
    fsdp_sharding: FsdpShardingOpt = None,
    fsdp_shard_group: FsdpShardGroupOpt = None,
    ds_buckets: DsBucketsOpt = None,
    reduce_bucket_elements: ReduceBucketOpt = None,
    prefetch_bucket_elements: PrefetchBucketOpt = None,
    max_live_parameters: MaxLiveOpt = None,
    max_reuse_distance: MaxReuseOpt = None,
    ds_auto_buckets: DsAutoBucketsOpt = None,
    ds_overlap_comm: DsOverlapCommOpt = None,
    ckpt_every: CkptEveryOpt = None,
    ckpt_position: CkptPositionOpt = None,
    padding: PaddingOpt = None,
    activation_offload: ActivationOffloadOpt = None,
    fsdp_cpu_offload: FsdpCpuOffloadOpt = None,
    float8: Float8Opt = None,
    adapter_dtype: AdapterDtypeOpt = None,
    keep_output: KeepOutputOpt = None,
    reference: ReferenceOpt = "auto",
    prompt_len: PromptLenOpt = None,
    num_generations: NumGenerationsOpt = 8,
    completion_len: CompletionLenOpt = 512,
    rollout: RolloutOpt = "colocate",
    rollout_engine: RolloutEngineOpt = None,
    rollout_gpus: RolloutGpusOpt = 0,
    rollout_memory: RolloutMemoryOpt = None,
    rollout_sleep: RolloutSleepOpt = False,
    rollout_tp: RolloutTpOpt = 1,
    kl: KlOpt = None,
    images_per_sample: ImagesPerSampleOpt = None,
    image_size: ImageSizeOpt = None,
    image_tokens: ImageTokensOpt = None,
    video_frames: VideoFramesOpt = None,
    train_vit: TrainVitOpt = None,
    train_aligner: TrainAlignerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Memory breakdown (per device) and predicted speed of one configuration."""
    outcome = _estimate(ctx, dict(locals()))
    if as_json:
        payload = estimate_json(outcome)
        if outcome.plan is None:
            payload["allocator"]["packing"] = packing
        print_json(payload)
        return
    render_estimate(outcome.estimate)
    if packing:
        console.print(PACKED, highlight=False)
    if outcome.runtime is not None:
        console.print(outcome.runtime.describe(), highlight=False)
    render_engine(outcome)
    render_prediction_check(outcome)
    if (note := _accum_note(outcome, typed="grad_accum" in given_options(ctx))) is not None:
        console.print(note, highlight=False)
    if outcome.plan is None and not outcome.estimate.fits:
        console.print(_fit_pointer(outcome, model, gpus, options=ctx.params), highlight=False)


def _accum_note(outcome: Any, *, typed: bool) -> str | None:
    """GRPO without a typed --grad-accum: the accumulation raised so that a step is whole prompts, said."""
    setup = outcome.estimate.setup
    rollout = getattr(setup, "objective", None) and setup.objective.rollout
    if (
        typed
        or outcome.plan is not None
        or not rollout
        or setup.objective.kind != "grpo"
        or setup.grad_accum == 1
    ):
        return None
    return (f"--task grpo: --grad-accum {setup.grad_accum} so that a step generates whole prompts of --num-generations "
            f"{rollout.num_generations} (TRL refuses less); pass --grad-accum to choose it.")  # fmt: skip


def _fit_pointer(outcome: Any, model: str, gpus: str, *, options: dict[str, Any]) -> str:
    """For a job that does not fit: the `swiftplan fit` command that checks the smallest changes that would, for the
    same job (its task and objective, sequence or context and load, runtime); the set-up choices
    (method, quantization, batch, offload, layout) are left to fit to search."""
    import shlex

    from swiftplan.planner.setup import ServeSetup
    from swiftplan.usecases.describe import objective_args

    setup = outcome.estimate.setup
    args = [model, "--gpus", gpus]
    if isinstance(setup, ServeSetup):
        args += ["--task", "serve", "--context", str(setup.context), "--concurrency", str(setup.concurrency)]
        changes = "a shorter context, quantization, more or bigger GPUs"
    else:
        args += objective_args(setup.objective)
        if setup.seq_len != 2048 and setup.objective.rollout is None:
            args += ["--seq", str(setup.seq_len)]
        changes = "QLoRA, a shorter sequence, offload, more or bigger GPUs"
    if outcome.runtime is not None and options.get("runtime"):
        args += ["--runtime", options["runtime"]]
    args += vision_args(options)
    return (f"to make it fit: `swiftplan fit {shlex.join(args)}` checks the smallest changes that would "
            f"({changes}), each with the estimator")  # fmt: skip


def _estimate(ctx: typer.Context, options: dict[str, Any]) -> Any:
    """The estimate use case's outcome for a plan file, or for the set-up the options describe."""
    from swiftplan.errors import SwiftplanError
    from swiftplan.plan_file import is_plan_path
    from swiftplan.usecases import estimate as usecase

    model = options["model"]
    if is_plan_path(model):  # a plan file from `swiftplan fit -o`: its own model, hardware, set-up and engine
        _check_plan_path(model)
        if given := given_options(ctx, _PLAN_FILE_OPTIONS):
            flags = ", ".join("--" + n.replace("_", "-") for n in given)
            raise SwiftplanError(f"{model} is a plan file: it fixes the model, hardware and set-up, so {flags} cannot apply.",
                                 hint="Drop those options, or estimate the model by name with them.")  # fmt: skip
        return usecase.estimate_plan_file(model)
    from swiftplan.planner.allocator import AllocatorSettings
    from swiftplan.usecases.inputs import resolve_cluster

    _check_packing(options)
    cluster = resolve_cluster(options["gpus"])
    # --variable-lengths goes with the set-up: the allocator's many shapes follow from it and the runtime's padding
    allocator = AllocatorSettings(expandable_segments=bool(options["expandable_segments"]))
    options = _image_runtime(options, cluster)
    setup, runtime = _setup(ctx, options, cluster)
    return usecase.estimate_setup(model, cluster, setup, options["engine"], allocator, runtime)


def _image_runtime(options: dict[str, Any], cluster: Any) -> dict[str, Any]:
    """Training with images and neither --runtime nor --engine typed: estimated for the engine fit plans images for
    (usecases.fit_engine.image_engine: the first that trains a vision-language model on its images) under its
    runtime, so that estimate and fit count the same job alike; the runtime and engine lines say which."""
    from swiftplan.cli.objective_options import is_serving
    from swiftplan.usecases.vision_inputs import VISION_OPTIONS

    images = any(options.get(name) is not None for name in VISION_OPTIONS)
    if not images or is_serving(options["task"]) or options["runtime"] or options["engine"]:
        return options
    from swiftplan.usecases.fit_engine import image_engine

    engine = image_engine(cluster)
    return options | {"runtime": engine.runtime, "engine": engine.name}


def _check_plan_path(model: str) -> None:
    """A MODEL ending in .yaml/.yml names a plan file: one that is missing or not a file is said so first."""
    from pathlib import Path

    from swiftplan.errors import SwiftplanError

    path = Path(model).expanduser()
    if not path.exists():
        raise SwiftplanError(f"Cannot read plan file {model}: it does not exist.",
                             hint="Write one with `swiftplan fit MODEL --gpus GPUS -o plan.yaml`, or check the path.")  # fmt: skip
    if not path.is_file():
        raise SwiftplanError(
            f"Cannot read plan file {model}: it is not a file.", hint="Give the path of a plan .yaml file."
        )


_SERVE_IDLE = ("method", "rank", "targets", "lora_dropout", "dora", "optimizer", "batch", "seq", "grad_accum", "grad_ckpt",
               "kbit_upcast", "zero", "offload", "pp", "variable_lengths")  # fmt: skip
"""estimate options that only describe training: --task serve refuses them when typed."""


def _refuse_training_options(ctx: typer.Context, o: dict[str, Any]) -> None:
    """Training options typed with --task serve: one message naming them, instead of a plan that ignores them."""
    from swiftplan.errors import SwiftplanError

    flags = ["--" + n.replace("_", "-") for n in given_options(ctx, _SERVE_IDLE)]
    if "grad_ckpt" in given_options(ctx, ("grad_ckpt",)):
        flags[flags.index("--grad-ckpt")] = "--grad-ckpt" if o["grad_ckpt"] else "--no-grad-ckpt"
    if str(o["precision"]).startswith("amp-"):
        flags.append(f"--precision {o['precision']}")
    if flags:
        verb = "describes" if len(flags) == 1 else "describe"
        raise SwiftplanError(f"{', '.join(flags)} {verb} a training job; --task serve would ignore "
                             f"{'it' if len(flags) == 1 else 'them'}.",
                             hint="Drop those options for a serving estimate (--precision takes bf16, fp16 or fp32 there), "
                             "or leave out --task serve to estimate training.")  # fmt: skip


def _refuse_overridden_quant(ctx: typer.Context, o: dict[str, Any]) -> None:
    """--method qlora with a typed --quant none: refused as fit refuses it, not silently planned as nf4."""
    from swiftplan.errors import SwiftplanError

    if o["method"] == "qlora" and o["quant"] == "none" and given_options(ctx, ("quant",)):
        raise SwiftplanError(
            "--method qlora trains LoRA on a 4-bit base, so it contradicts --quant none.",
            hint="Leave --quant out (QLoRA defaults to nf4) or give nf4, fp4 or nf4-torchao; "
            "for LoRA on an unquantized base use --method lora.",
        )


PACKED = (
    "packing: every micro-batch is --seq tokens of packed samples (position ids / flash-attn varlen, no padding), "
    "one tensor shape for the allocator; planner/lengths.py sizes fit --packing the same way"
)


def _check_packing(options: dict[str, Any]) -> None:
    """--packing is training batching with one shape: refused with --variable-lengths and for serving; --padding
    only says something with --variable-lengths."""
    from swiftplan.cli.objective_options import is_serving
    from swiftplan.cli.options import refuse_idle_padding
    from swiftplan.errors import SwiftplanError

    if not options["variable_lengths"] and not is_serving(options["task"]):
        refuse_idle_padding(options["padding"], rows="without --variable-lengths every row is a full --seq",
                            hint="Add --variable-lengths, or drop --padding.")  # fmt: skip
    if not options["packing"]:
        return
    if is_serving(options["task"]):
        raise SwiftplanError(
            "--packing packs training samples into --seq rows; it does not apply to --task serve."
        )
    if options["variable_lengths"]:
        raise SwiftplanError(
            "--packing makes every micro-batch the full --seq (one shape), so it contradicts --variable-lengths; "
            "pass one of them."
        )


def _setup(ctx: typer.Context, o: dict[str, Any], cluster: Any) -> tuple[Any, Any]:
    """The set-up the options describe, under the runtime profile (--runtime) they name."""
    from swiftplan.cli.objective_options import (
        build_objective,
        is_serving,
        objective_seq,
        refuse_objective_for_serving,
    )
    from swiftplan.cli.options import (
        RUNTIME_TRAIN_FLAGS,
        knob_values,
        refuse_idle_setup_knobs,
        refuse_knobs_for_serving,
        serve_runtime,
        train_runtime,
    )
    from swiftplan.planner.runtime import KNOB_FLAGS, SERVE_OPTIONS, refuse_eager_for_training

    knobs = knob_values(**{n: o[n] for n in KNOB_FLAGS if n in o})
    if not is_serving(o["task"]):
        refuse_eager_for_training(o["enforce_eager"])
        _refuse_overridden_quant(ctx, o)
        from swiftplan.planner.idle_knobs import refuse_idle_lora_options

        refuse_idle_lora_options(o["method"], given_options(ctx))
        choice = train_runtime(
            o["runtime"], knobs, {n: o[n] for n in given_options(ctx, RUNTIME_TRAIN_FLAGS)}
        )
        o = o | choice.setup_options()
        typed = given_options(ctx)
        objective = build_objective(o["task"], o, runtime=choice.knobs().name, given=typed)
        o["seq"] = objective_seq(objective, o["seq"], seq_given="seq" in typed)
        names = ("method", "precision", "quant", "rank", "targets", "lora_dropout", "optimizer", "batch", "seq",
                 "grad_accum", "grad_ckpt", "attention", "zero", "offload", "tp", "pp", "kbit_upcast", "dora")  # fmt: skip
        train = build_train_setup(cluster=cluster, runtime=choice.knobs(), objective=objective,
                                  variable_lengths=o["variable_lengths"], **{n: o[n] for n in names})  # fmt: skip
        refuse_idle_setup_knobs(knobs, train)
        if (
            "grad_accum" not in typed
        ):  # GRPO: a default accumulation that TRL would refuse is raised to whole prompts
            from dataclasses import replace

            from swiftplan.usecases.estimate import whole_prompt_accum

            train = replace(train, grad_accum=whole_prompt_accum(train, cluster))
        return _with_vision(train, o, serving=False), choice
    refuse_objective_for_serving(given_options(ctx))
    # expandable segments also shape a serving estimate's allocator (AllocatorSettings), so only they stay
    refuse_knobs_for_serving({k: v for k, v in knobs.items() if k != "expandable_segments"})
    _refuse_training_options(ctx, o)
    serving = serve_runtime(o["runtime"], {n: o[n] for n in given_options(ctx, SERVE_OPTIONS)})
    if serving is not None:
        o = o | serving.setup_options()
    setup = build_serve_setup(precision=o["precision"], quant=o["quant"], context=o["context"],
                              concurrency=o["concurrency"], kv_dtype=o["kv_dtype"],
                              gpu_memory_utilization=o["gpu_memory_utilization"], tp=o["tp"], cluster=cluster,
                              prefill_chunk=o.get("prefill_chunk"), runtime=o["runtime"],
                              eager=o["enforce_eager"])  # fmt: skip
    return _with_vision(setup, o, serving=True), serving


def _with_vision(setup: Any, options: dict[str, Any], *, serving: bool) -> Any:
    """`setup` carrying the images/video the vision options describe (unchanged when none was given)."""
    from dataclasses import replace

    from swiftplan.usecases.vision_inputs import build_vision_inputs

    vision = build_vision_inputs(options, serving=serving)
    return setup if vision is None else replace(setup, vision=vision)


def register(app: typer.Typer) -> None:
    """Add `estimate` to the CLI."""
    app.command("estimate", epilog=EPILOG)(estimate_command)
