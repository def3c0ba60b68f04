"""`swiftplan fit MODEL --gpus CLUSTER`: search for the best plan that fits, and write it as a plan file.

A view: the options are parsed into a `FitRequest`, `usecases.fit.plan_fit` does the work, and
`_fit_render` shows the outcome.
"""

from __future__ import annotations

import time
from enum import Enum
from typing import Annotated, Any

import typer

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
    is_serving,
    objective_pins,
    objective_request,
    refuse_objective_for_serving,
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
    given_options,
    refuse_estimate_only_quant,
    refuse_idle_padding,
)
from swiftplan.cli.vision_options import (
    ImageSizeOpt,
    ImagesPerSampleOpt,
    ImageTokensOpt,
    TrainAlignerOpt,
    TrainVitOpt,
    VideoFramesOpt,
)
from swiftplan.errors import SwiftplanError
from swiftplan.planner.objective import SFT
from swiftplan.usecases.vision_inputs import build_vision_inputs

EPILOG = """
Examples:

  swiftplan fit Qwen/Qwen2.5-7B --gpus rtx3060

  swiftplan fit Qwen/Qwen2.5-72B --gpus 8xA100-80G --dataset-tokens 1.5B --objective cost -o plan.yaml

  swiftplan fit meta-llama/Llama-3.1-8B --gpus 2xrtx4090 --method lora --rank 64 --no-quant --zero 3

  swiftplan fit Qwen/Qwen2.5-7B --gpus a100 --rank auto --pareto

  swiftplan fit Qwen/Qwen2.5-7B --gpus rtx4090 --data train.jsonl   (memory sized on the longest padded batch)

  swiftplan fit Qwen/Qwen2.5-7B --task serve --context 8192 --decode-tps 20 --gpus L40S

  swiftplan fit Qwen/Qwen2.5-14B --gpus a100-80g --storage sqlite:///study.db   (run again to resume)

  swiftplan fit Qwen/Qwen2.5-VL-7B-Instruct --gpus rtx4090 --images-per-sample 2 --image-size 1024x1024

Plans are made for an engine that can run them (--engine; swiftplan's own loop for training, vLLM or
the built-in server for serving; a serving plan's decode is timed with that engine's per-step cost);
when another engine would run a clearly better plan, fit says so.
Pins take one value; a comma-separated list allows only those values (--method lora,qlora).
Exit status: 0 with a plan, 1 when nothing fits (the diagnosis says what would), 2 for bad input.
"""


Task = JobTask


class Objective(str, Enum):
    time = "time"
    cost = "cost"
    throughput = "throughput"


def _opt(*names: str, help: str) -> Any:
    return typer.Option(*names, help=help)


ModelArg = Annotated[
    str, typer.Argument(help="Catalog name/alias, hub id, or path to a config.json (or its directory).")
]
GpusOpt = Annotated[
    str, typer.Option("--gpus", help="Cluster: rtx4090, 4xA100-80G, 2x8xH100, or auto (probe).")
]
TaskOpt = Annotated[JobTask, typer.Option("--task", help=TASK_HELP)]
EngineOpt = Annotated[
    str | None,
    _opt(
        "--engine",
        help="Plan for this engine: swiftplan (training); vllm, sglang, lmdeploy or builtin (serving, decode timed "
        "with that engine's per-step cost).",
    ),
]
ObjectiveOpt = Annotated[
    Objective | None,
    _opt("--objective", help="time | cost | throughput (default: time for sft, throughput for serve)."),
]
ParetoOpt = Annotated[
    bool, typer.Option("--pareto", help="Return the Pareto front: time vs cost vs memory headroom.")
]
TokensOpt = Annotated[
    str | None,
    _opt(
        "--dataset-tokens",
        help="Text tokens in one epoch: 50M, 1.5B, ... (image options add the images' tokens).",
    ),
]
DataOpt = Annotated[
    str | None,
    _opt(
        "--data",
        help="Training data to count tokens from: .jsonl, .json, .csv, .parquet, or plain text (.txt, .md, .text).",
    ),
]
LengthsOpt = Annotated[
    str | None, _opt("--lengths", help="File of per-sample token lengths, one per line (instead of --data).")
]
PackingOpt = Annotated[
    bool,
    _opt(
        "--packing",
        help="Samples are packed into full --seq blocks (else padded as the runtime's --padding says).",
    ),
]
EpochsOpt = Annotated[float, typer.Option("--epochs", help="Passes over the data.")]
GlobalBatchOpt = Annotated[int, typer.Option("--global-batch", help="Sequences per optimizer step.")]
SeqOpt = Annotated[int, typer.Option("--seq", help="Tokens per sequence.")]
MethodOpt = Annotated[str | None, _opt("--method", help="Pin/allow: full, lora, qlora.")]
RankOpt = Annotated[
    str | None, _opt("--rank", help="LoRA rank (default 16), a list, or auto (search 4-256).")
]
TargetsOpt = Annotated[
    str | None, _opt("--targets", help="all-linear (default), attention, auto, or module names.")
]
QuantOpt = Annotated[
    str | None, _opt("--quant", help="Allow: none, int8, nf4, nf4-dq (serve: none, fp8, int8, nf4).")
]
NoQuantOpt = Annotated[bool, typer.Option("--no-quant", help="Forbid quantized bases/weights.")]
PrecisionOpt = Annotated[str | None, _opt("--precision", help="Allow: bf16, amp-bf16, fp16, amp-fp16, fp32.")]
OptimizerOpt = Annotated[
    str | None, _opt("--optimizer", help="Allow: adamw, adamw-8bit, paged-adamw-8bit, sgd, adafactor.")
]
CkptOpt = Annotated[
    bool | None, _opt("--grad-ckpt/--no-grad-ckpt", help="Pin gradient checkpointing (default: searched).")
]
ZeroOpt = Annotated[str | None, _opt("--zero", help="Allow ZeRO stages: 0,1,2,3.")]
OffloadOpt = Annotated[
    str | None, _opt("--max-offload", help="none | optimizer | optimizer+params (default).")
]
TpOpt = Annotated[str | None, _opt("--tp", help="Allow tensor-parallel degrees.")]
PpOpt = Annotated[str | None, _opt("--pp", help="Allow pipeline-parallel degrees.")]
DpOpt = Annotated[str | None, _opt("--dp", help="Allow data-parallel degrees.")]
BatchOpt = Annotated[
    str | None, _opt("--batch", help="Pin micro-batch sizes (default: the largest that fits).")
]
AttentionOpt = Annotated[str, typer.Option("--attention", help="sdpa | flash | eager")]
ContextOpt = Annotated[int, typer.Option("--context", help="Serving: tokens per sequence.")]
ConcurrencyOpt = Annotated[
    int | None,
    _opt("--concurrency", help="Serving: sequences at once over all replicas (default: as many as fit)."),
]
TtftOpt = Annotated[float | None, _opt("--ttft", help="Serving: largest acceptable time to first token, s.")]
DecodeOpt = Annotated[
    float | None, _opt("--decode-tps", help="Serving: smallest acceptable decode tokens/s per user.")
]
KvOpt = Annotated[str | None, _opt("--kv-dtype", help="Serving: allow auto, fp8.")]
UtilOpt = Annotated[float, typer.Option("--gpu-memory-utilization", help="Serving: vLLM memory fraction.")]
HeadroomOpt = Annotated[float, typer.Option("--headroom", help="Fraction of device memory kept free.")]
HostRamOpt = Annotated[
    float | None,
    _opt("--host-ram", help="Host RAM per node for offload, GiB (default 64; probed with --gpus auto)."),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Sampler seed.")]
TrialsOpt = Annotated[
    int | None,
    _opt(
        "--trials",
        help="Distinct structures to evaluate; fewer than the space uses TPE (default: all, by branch and bound, up to 8,000; else 150).",
    ),
]
StorageOpt = Annotated[
    str | None, _opt("--storage", help="Optuna storage URL to persist/resume, e.g. sqlite:///study.db.")
]
StudyOpt = Annotated[
    str | None, _opt("--study-name", help="Study name in --storage (default: derived from the problem).")
]
MeasureOpt = Annotated[
    bool,
    typer.Option(
        "--measure",
        help="Run the top candidates for a few real steps on this machine's GPU and rank them by measured tokens/s (needs CUDA).",
    ),
]
TopOpt = Annotated[int, typer.Option("--measure-top", "--top-k", help="Candidates --measure runs.")]
StepsOpt = Annotated[
    int, typer.Option("--measure-steps", help="Timed optimizer steps per candidate (after 1 warm-up).")
]
LayersOpt = Annotated[
    int | None,
    _opt("--measure-layers", help="Build the measured models with this many layers (faster; default: all)."),
]
DeviceOpt = Annotated[
    str,
    typer.Option(
        "--measure-device", help="cuda, or cpu for a slow smoke run (CPU timings do not rank GPU plans)."
    ),
]
OutputOpt = Annotated[
    str | None, _opt("-o", "--output", help="Write the winning plan as a plan file (YAML).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
WideOpt = Annotated[
    bool,
    typer.Option("--wide", help="Show every column of the plans table, even past the terminal's width."),
]


def _list(flag: str, text: str | None, valid: tuple[str, ...] | None = None) -> tuple[str, ...] | None:
    from swiftplan.cli import _checks

    return _checks.split_list(flag, text) if valid is None else _checks.list_of(flag, text, valid)


def _ints(flag: str, text: str | None) -> tuple[int, ...] | None:
    """A comma list of whole numbers, each within the flag's range."""
    from swiftplan.cli._checks import int_list

    low, high, what = _INT_RANGES[flag]
    return int_list(flag, text, minimum=low, maximum=high, what=what)


_INT_RANGES: dict[str, tuple[int, int | None, str]] = {
    "--rank": (1, None, "LoRA ranks are whole numbers of at least 1, e.g. 8,16,64, or auto"),
    "--zero": (0, 3, "ZeRO stages are 0-3"),
    "--tp": (1, None, "tensor-parallel degrees are at least 1"),
    "--pp": (1, None, "pipeline-parallel degrees are at least 1"),
    "--dp": (1, None, "data-parallel degrees are at least 1"),
    "--batch": (1, None, "micro-batch sizes are at least 1"),
}
"""List-valued pins: (smallest, largest or None, what is valid)."""


def parse_pins(**raw: Any) -> Any:
    """`Pins` from fit's pin options as typed (comma lists, 'auto' for rank and targets)."""
    from swiftplan.planner.search.pins import Pins
    from swiftplan.planner.search.serve_space import SERVE_QUANTS
    from swiftplan.planner.search.space_choices import ATTENTION, RANKS, TRAIN_QUANTS
    from swiftplan.planner.setup import ALL_LINEAR, KV_DTYPES, METHODS, OPTIMIZERS, PRECISIONS

    rank = raw.get("rank")
    ranks = RANKS if rank is not None and rank.strip().lower() == "auto" else _ints("--rank", rank)
    targets = _list("--targets", raw.get("targets"))
    if targets is not None:
        presets = (ALL_LINEAR, ATTENTION)
        if targets == ("auto",):
            targets = presets
        elif not all(t in presets for t in targets):
            targets = (",".join(targets),)  # one custom module list
    serving = is_serving(raw.get("task", "sft"))
    refuse_estimate_only_quant(raw.get("quant"))
    quant_choices = tuple(dict.fromkeys(SERVE_QUANTS if serving else TRAIN_QUANTS))
    quants = ("none",) if raw.get("no_quant") else _list("--quant", raw.get("quant"), quant_choices)
    ckpt = raw.get("grad_ckpt")
    return Pins(
        methods=_list("--method", raw.get("method"), METHODS), quants=quants,
        precisions=_list("--precision", raw.get("precision"), PRECISIONS),
        optimizers=_list("--optimizer", raw.get("optimizer"), OPTIMIZERS), grad_ckpt=None if ckpt is None else (ckpt,),
        zero=_ints("--zero", raw.get("zero")), max_offload=raw.get("max_offload"), tp=_ints("--tp", raw.get("tp")),
        pp=_ints("--pp", raw.get("pp")), dp=_ints("--dp", raw.get("dp")), micro_batch=_ints("--batch", raw.get("batch")),
        ranks=ranks, targets=targets, kv_dtypes=_list("--kv-dtype", raw.get("kv_dtype"), KV_DTYPES),
    )  # fmt: skip


MAX_DATASET_TOKENS = 10**15
"""Most --dataset-tokens fit and size take: the largest published pre-training corpora are tens of trillions of
tokens (Qwen3: 36T, arXiv:2505.09388 section 3.1), so 1,000T is far past any fine-tuning set."""
MAX_EPOCHS = 10_000
"""Most --epochs fit and size take (fine-tuning makes 1-10 passes; more data is more --dataset-tokens)."""


def parse_dataset_tokens(text: str | None) -> int | None:
    """--dataset-tokens as a count (None when not given), refused when not a count or above MAX_DATASET_TOKENS;
    fit and size both read it here."""
    from swiftplan.units import parse_token_count

    if text is None:
        return None
    try:
        tokens = parse_token_count(text)
    except ValueError as error:
        raise SwiftplanError(
            f"Bad --dataset-tokens {text!r}: {error}.", hint="Examples: 50M, 1.5B, 200k, 123456."
        ) from error
    if tokens > MAX_DATASET_TOKENS:
        raise SwiftplanError(
            f"--dataset-tokens {text} is {tokens:.3g} tokens, more than the {MAX_DATASET_TOKENS / 10**12:,.0f}T "
            f"({MAX_DATASET_TOKENS:.0e}) swiftplan plans for: the largest published pre-training corpora are tens of "
            "trillions of tokens (Qwen3's 36T), so this is far past any fine-tuning set.",
            hint="Give the tokens one epoch of your data holds, e.g. 50M, 1.5B or 2T; passes over it go in --epochs.",
        )
    return tokens


def check_epochs(epochs: float) -> None:
    """--epochs at most MAX_EPOCHS (its lower bound and finiteness are checked beside the other numbers)."""
    if epochs > MAX_EPOCHS:
        raise SwiftplanError(
            f"--epochs {epochs:g} is more passes over the data than swiftplan plans (at most {MAX_EPOCHS:,}): "
            "fine-tuning makes a few passes, and a time and cost for this many would mean nothing.",
            hint="Give the passes the run makes (1-3 is usual for fine-tuning); for more data, raise --dataset-tokens.",
        )


_PIN_NAMES = ("method", "rank", "targets", "quant", "no_quant", "precision", "optimizer", "grad_ckpt", "zero",
              "max_offload", "tp", "pp", "dp", "batch", "kv_dtype")  # fmt: skip


def fit_request(**options: Any) -> Any:
    """The `FitRequest` for fit's options (as the command receives them)."""
    from swiftplan.usecases.fit import FitRequest, FitTask

    task: FitTask = "serve" if is_serving(options["task"]) else "train"
    host_ram = options["host_ram"]
    training, _, seq = (
        objective_request(options) if task == "train" else (SFT, options["global_batch"], options["seq"])
    )
    global_batch = options["global_batch"]  # GRPO's whole prompts: fit rounds it up, with a note
    return FitRequest(
        model=options["model"], gpus=options["gpus"], task=task, engine=options["engine"],
        objective=options["objective"].value if options["objective"] else None, pareto=options["pareto"],
        pins=parse_pins(task=options["task"], **{name: options[name] for name in _PIN_NAMES}),
        dataset_tokens=parse_dataset_tokens(options["dataset_tokens"]) if task == "train" else None,
        data=options["data"] if task == "train" else None, epochs=options["epochs"],
        lengths=options["lengths"] if task == "train" else None, packing=options["packing"],
        global_batch=global_batch, seq_len=seq, attention=options["attention"],
        context=options["context"], concurrency=options["concurrency"], ttft_s=options["ttft"],
        decode_tps=options["decode_tps"], gpu_memory_utilization=options["gpu_memory_utilization"],
        headroom=options["headroom"], host_ram_bytes=None if host_ram is None else int(host_ram * 2**30),
        seed=options["seed"], trials=options["trials"], storage=options["storage"], study_name=options["study_name"],
        runtime=options["runtime"], runtime_options=_runtime_options(task, options),
        training=training, objective_pins=objective_pins(options.get("typed", ())),
        eager=options["enforce_eager"], vision=build_vision_inputs(options, serving=task == "serve"),
        dora=options["dora"],
        typed=frozenset(options.get("typed", ())),
    )  # fmt: skip


def _runtime_options(task: str, options: dict[str, Any]) -> dict[str, Any]:
    """What the user set over the runtime profile: the knob flags (training), --gpu-memory-utilization (serving)."""
    from swiftplan.cli.options import knob_values, serve_runtime, train_runtime
    from swiftplan.planner.runtime import KNOB_FLAGS

    if task == "serve":
        if options["runtime"] is None:  # no profile to override
            return {}
        serve_runtime(options["runtime"], {})  # --runtime checked here, naming the flag
        typed = "gpu_memory_utilization" in options.get("typed", ())
        return {"gpu_memory_utilization": options["gpu_memory_utilization"]} if typed else {}
    knobs = knob_values(**{n: options[n] for n in KNOB_FLAGS if n in options})
    if options["runtime"] is not None:
        train_runtime(
            options["runtime"], knobs
        )  # --runtime checked here: the flag named, the valid values listed
    return knobs


def fit_command(
    ctx: typer.Context,
    model: ModelArg,
    gpus: GpusOpt,
    task: TaskOpt = Task.sft,
    engine: EngineOpt = None,
    objective: ObjectiveOpt = None,
    pareto: ParetoOpt = False,
    dataset_tokens: TokensOpt = None,
    data: DataOpt = None,
    lengths: LengthsOpt = None,
    packing: PackingOpt = False,
    epochs: EpochsOpt = 1.0,
    global_batch: GlobalBatchOpt = 16,
    seq: SeqOpt = 2048,
    method: MethodOpt = None,
    rank: RankOpt = None,
    targets: TargetsOpt = None,
    dora: DoraOpt = False,
    quant: QuantOpt = None,
    no_quant: NoQuantOpt = False,
    precision: PrecisionOpt = None,
    optimizer: OptimizerOpt = None,
    grad_ckpt: CkptOpt = None,
    zero: ZeroOpt = None,
    max_offload: OffloadOpt = None,
    tp: TpOpt = None,
    pp: PpOpt = None,
    dp: DpOpt = None,
    batch: BatchOpt = None,
    attention: AttentionOpt = "sdpa",
    context: ContextOpt = 4096,
    concurrency: ConcurrencyOpt = None,
    ttft: TtftOpt = None,
    decode_tps: DecodeOpt = None,
    kv_dtype: KvOpt = None,
    gpu_memory_utilization: UtilOpt = 0.9,
    enforce_eager: EnforceEagerOpt = False,
    headroom: HeadroomOpt = 0.05,
    host_ram: HostRamOpt = None,
    seed: SeedOpt = 0,
    trials: TrialsOpt = None,
    storage: StorageOpt = None,
    study_name: StudyOpt = None,
    measure: MeasureOpt = False,
    measure_top: TopOpt = 3,
    measure_steps: StepsOpt = 3,
    measure_layers: LayersOpt = None,
    measure_device: DeviceOpt = "cuda",
    output: OutputOpt = None,
    as_json: JsonOpt = False,
    wide: WideOpt = False,
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
    expandable_segments: ExpandableOpt = None,
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
) -> None:
    """Search the training (or serving) plans for the best one that fits, with Optuna."""
    started = time.perf_counter()
    _fit(dict(locals()), started=started)


def _fit(options: dict[str, Any], *, started: float) -> None:
    """Plan, save the plan, time the top candidates when asked, and show the outcome."""
    from swiftplan.cli._fit_render import render_fit
    from swiftplan.usecases.fit import plan_fit

    wide = options.pop("wide")
    ctx = options.pop("ctx")
    options["typed"] = set(given_options(ctx))
    _check_options(options)
    request = fit_request(**options)
    from swiftplan.usecases.storage import check_storage_url

    check_storage_url(request.storage)  # last: opening a new storage creates it
    measure_options = _measure_options(request, **options) if options["measure"] else None
    outcome = plan_fit(request)
    output, as_json = options["output"], options["as_json"]
    if outcome.plan is not None and output:
        from swiftplan.plan_file import save_plan

        save_plan(outcome.plan, output)
    measured = None
    if measure_options is not None and outcome.plan is not None:
        from swiftplan.cli._fit_measure import measure as measure_candidates

        measured = measure_candidates(outcome, as_json=as_json, **measure_options)
    render_fit(
        outcome,
        output=output,
        as_json=as_json,
        measured=measured,
        elapsed_s=time.perf_counter() - started,
        wide=wide,
    )
    if outcome.plan is None:
        raise typer.Exit(1)


_TRAIN_ONLY = ("method", "rank", "targets", "dora", "packing", "precision", "optimizer", "grad_ckpt", "zero", "max_offload", "pp", "dp",
               "batch", "dataset_tokens", "data", "lengths", "loss", "loss_chunks", "loss_chunk_tokens", "optimizer_impl",
               "modules_to_save", "optimizer_in_backward", "fsdp", "fsdp_sharding", "fsdp_shard_group",
               "ds_buckets", "reduce_bucket_elements", "prefetch_bucket_elements", "max_live_parameters", "max_reuse_distance", "ds_auto_buckets", "ds_overlap_comm", "ckpt_every", "ckpt_position", "activation_offload", "fsdp_cpu_offload", "float8",
               "adapter_dtype", "keep_output", "expandable_segments")  # fmt: skip
"""fit options the serving search does not read."""
_SERVE_ONLY = ("concurrency", "ttft", "decode_tps", "kv_dtype")
"""fit options the training search does not read."""


def _check_options(options: dict[str, Any]) -> None:
    """What the request does not check: --attention, the seed, the plan file's path."""
    from swiftplan.cli import _checks

    _checks.one_of("--attention", options["attention"], _checks.ATTENTIONS)
    for flag in (
        "--epochs",
        "--ttft",
        "--decode-tps",
        "--host-ram",
        "--headroom",
        "--gpu-memory-utilization",
    ):
        _checks.finite(flag, options[flag[2:].replace("-", "_")])
    check_epochs(options["epochs"])
    _checks.between("--seed", options["seed"], 0, 2**32 - 1)
    serving = is_serving(options["task"])
    typed = options.get("typed", ())
    _refuse_idle_measure_options(options, typed)
    if serving:
        refuse_objective_for_serving(typed)
    for name in _SERVE_ONLY if not serving else _TRAIN_ONLY:
        if name in typed:
            flag = "--" + name.replace("_", "-")
            task = "--task serve" if not serving else "training (--task sft)"
            raise SwiftplanError(f"{flag} only applies to {task}; it would be ignored here.",
                                 hint=f"Drop {flag}, or plan for {task}.")  # fmt: skip
    if not serving and not (options["lengths"] or options["data"]):
        refuse_idle_padding(options["padding"], rows="without --lengths or --data fit plans full --seq rows",
                            hint="Give fit the data (--data or --lengths), or drop --padding.")  # fmt: skip
    if not serving and options["packing"]:
        refuse_idle_padding(options["padding"], rows="--packing makes every row a full --seq of packed samples",
                            hint="Drop --padding, or --packing to plan padded batches.")  # fmt: skip
    _checks.output_file("-o/--output", options["output"])


_MEASURE_ONLY = ("measure_top", "measure_steps", "measure_layers", "measure_device")
"""fit options only --measure reads."""


def _refuse_idle_measure_options(options: dict[str, Any], typed: Any) -> None:
    """--measure-* without --measure would change nothing."""
    if not options["measure"] and (idle := [n for n in _MEASURE_ONLY if n in typed]):
        flags = ", ".join("--" + n.replace("_", "-") for n in idle)
        raise SwiftplanError(
            f"{flags} {'sets' if len(idle) == 1 else 'set'} how --measure runs the top candidates; without "
            f"--measure fit runs none, so {'it' if len(idle) == 1 else 'they'} would change nothing.",
            hint=f"Add --measure to time the candidates, or drop {flags}.",
        )


def _measure_options(request: Any, **options: Any) -> dict[str, Any]:
    """The --measure-* flags checked by the measure use case (the refusals the dashboard gives too)."""
    from dataclasses import asdict

    from swiftplan.usecases.measure import check_measure

    top, steps, layers, device = (options[f"measure_{k}"] for k in ("top", "steps", "layers", "device"))
    return asdict(check_measure(request, top_k=top, steps=steps, layers=layers, device=device))


def register(app: typer.Typer) -> None:
    """Add `fit` to the CLI."""
    app.command("fit", epilog=EPILOG)(fit_command)
