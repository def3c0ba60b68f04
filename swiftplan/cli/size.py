"""`swiftplan size MODEL`: which hardware to rent or buy for a job, and what it costs."""

from __future__ import annotations

import math
import re
import time
from enum import Enum
from typing import Annotated, Any

import typer

from swiftplan.cli.fit import check_epochs, parse_dataset_tokens
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
from swiftplan.planner.idle_knobs import refuse_idle_lora_options
from swiftplan.planner.objective import SFT
from swiftplan.units import GiB
from swiftplan.usecases.inputs import DEFAULT_HOST_RAM_BYTES
from swiftplan.usecases.vision_inputs import build_vision_inputs

EPILOG = """
Examples:

  swiftplan size Qwen/Qwen2.5-72B --task sft --method qlora --dataset-tokens 50M --deadline 48h

  swiftplan size Qwen/Qwen2.5-7B --task serve --concurrency 200 --context 8192

  swiftplan size Qwen/Qwen2.5-7B --dataset-tokens 1.5B --buy --budget 20000 --vendor nvidia

  swiftplan size meta-llama/Llama-3.1-70B --method lora --objective time --max-gpus 16 --plot cost_time.png

  swiftplan size Qwen/Qwen2.5-7B --task serve --request-rate 20 --prompt-tokens 1024 --output-tokens 256 --ttft 2

  swiftplan size Qwen/Qwen2.5-14B --prices my_prices.yaml --csv options.csv

  swiftplan size Qwen/Qwen2.5-7B --method full --runtime torch      (a plain loop: foreach AdamW, full loss)

  swiftplan size Qwen/Qwen2.5-VL-7B-Instruct --images-per-sample 2 --image-size 1024x1024 --dataset-tokens 50M

Objectives: cost (rental cost of the job; serving: per hour), time (wall clock; serving: per-token
latency), purchase (list price of the GPUs), cost-per-token (rental $ per million tokens).
A price file maps accelerator ids to {usd_per_gpu_hour, purchase_usd, source, as_of}; catalog
prices are dated snapshots and go stale. Exit status: 0 with a recommendation, 1 when no hardware
qualifies, 2 for bad input.
"""

DEFAULT_HOST_RAM_GIB = DEFAULT_HOST_RAM_BYTES / GiB
"""Host RAM per node assumed for offload, GiB (the --host-ram default)."""


Task = JobTask


class Objective(str, Enum):
    cost = "cost"
    time = "time"
    purchase = "purchase"
    cost_per_token = "cost-per-token"


_DURATION = re.compile(
    r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(m|min|mins|minutes?|h|hr|hrs|hours?|d|days?)?\s*$", re.I
)


def parse_duration(text: str) -> float:
    """'48h', '2d', '90m', '1.5 days', '36' (hours) → seconds."""
    match = _DURATION.match(text)
    if not match:
        raise SwiftplanError(f"Bad --deadline {text!r}.", hint="Examples: 48h, 2d, 90m, 36 (hours).")
    if float(match.group(1)) <= 0:
        raise SwiftplanError(
            f"--deadline {text!r} must be a positive duration.", hint="Examples: 48h, 2d, 90m, 36 (hours)."
        )
    unit = (match.group(2) or "h").lower()
    scale = 60 if unit.startswith("m") else 86400 if unit.startswith("d") else 3600
    return float(match.group(1)) * scale


def parse_usd(text: str) -> float:
    """'5000', '$5,000', '5k', '1.2M' → dollars."""
    raw = text.strip().lstrip("$").replace(",", "").replace("_", "").lower()
    scale = {"k": 1e3, "m": 1e6}.get(raw[-1:], 1.0)
    try:
        value = float(raw[:-1] if scale != 1.0 else raw) * scale
    except ValueError:
        raise SwiftplanError(f"Bad --budget {text!r}: give an amount of US dollars.",
                             hint="Examples: 5000, $12,000, 20k, 1.2M.") from None  # fmt: skip
    if not 0 < value < math.inf:
        raise SwiftplanError(f"--budget must be a positive, finite amount of US dollars, got {text!r}.",
                             hint="Examples: 5000, $12,000, 20k, 1.2M.")  # fmt: skip
    return value


def _list(flag: str, text: str | None, valid: tuple[str, ...] | None = None) -> tuple[str, ...] | None:
    from swiftplan.cli import _checks

    return _checks.split_list(flag, text) if valid is None else _checks.list_of(flag, text, valid)


def read_price_file(path: str) -> tuple[Any, ...]:
    """The overrides in a YAML price file (errors name the file; no traceback)."""
    import yaml

    from swiftplan.planner.sizing.prices import parse_price_overrides

    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except OSError as error:
        raise SwiftplanError(f"Cannot read --prices {path}: {error.strerror or error}.") from None
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise SwiftplanError(
            f"--prices {path} is not valid YAML{at}.",
            hint="Example: h100-sxm: {usd_per_gpu_hour: 2.1, purchase_usd: 30000, source: 'quote', as_of: 2026-11-01}",
        ) from None
    return parse_price_overrides(data, path)


def _pins(method: str | None, quant: str | None, no_quant: bool, rank: int | None, *, serving: bool) -> Any:
    from swiftplan.planner.search.pins import Pins
    from swiftplan.planner.search.serve_space import SERVE_QUANTS
    from swiftplan.planner.search.space_choices import TRAIN_QUANTS
    from swiftplan.planner.setup import METHODS

    if rank is not None and rank < 1:
        raise SwiftplanError(f"--rank must be at least 1, got {rank}.")
    refuse_estimate_only_quant(quant)
    quants = SERVE_QUANTS if serving else TRAIN_QUANTS
    return Pins(
        methods=_list("--method", method, METHODS),
        quants=("none",) if no_quant else _list("--quant", quant, quants),
        ranks=(rank,) if rank is not None else None,
    )


def _opt(*names: str, help: str) -> Any:
    return typer.Option(*names, help=help)


ModelArg = Annotated[str, typer.Argument(help="Catalog name/alias, hub id, or path to a config.json.")]
TaskOpt = Annotated[JobTask, typer.Option("--task", help=TASK_HELP)]
ObjectiveOpt = Annotated[
    Objective | None,
    _opt(
        "--objective",
        help="cost | time | purchase | cost-per-token (default: cost; serve: cost-per-token; --buy: purchase).",
    ),
]
BuyOpt = Annotated[bool, typer.Option("--buy", help="Only hardware with a purchase price.")]
RentOpt = Annotated[bool, typer.Option("--rent", help="Only hardware with a rental price.")]
BudgetOpt = Annotated[
    str | None,
    _opt(
        "--budget",
        help="Most US dollars: rental cost of the job (serving: per hour), or purchase price with --buy.",
    ),
]
DeadlineOpt = Annotated[str | None, _opt("--deadline", help="Training: finish within 48h, 2d, 90m.")]
MaxGpusOpt = Annotated[int | None, _opt("--max-gpus", help="Most GPUs in all.")]
MaxNodesOpt = Annotated[int, typer.Option("--max-nodes", help="Most nodes of 8 GPUs (1-256).")]
NetworkOpt = Annotated[float, typer.Option("--network-gbps", help="Network between nodes, Gb/s per node.")]
VendorOpt = Annotated[str | None, _opt("--vendor", help="Only these vendors: nvidia, amd, huawei, apple.")]
AcceleratorsOpt = Annotated[
    str | None, _opt("--accelerators", help="Only these accelerators: h100-sxm,a100-80gb-sxm.")
]
PricesOpt = Annotated[str | None, _opt("--prices", help="YAML price file overriding the catalog prices.")]
MethodOpt = Annotated[str | None, _opt("--method", help="Allow: full, lora, qlora (default: all).")]
QuantOpt = Annotated[
    str | None,
    _opt("--quant", help="Allow: none, int8, nf4 (serve: none, fp8, int8, nf4; default none, fp8)."),
]
NoQuantOpt = Annotated[bool, typer.Option("--no-quant", help="Forbid quantized bases/weights.")]
RankOpt = Annotated[int | None, _opt("--rank", help="LoRA rank (default 16).")]
TokensOpt = Annotated[
    str | None, _opt("--dataset-tokens", help="Tokens in one epoch: 50M, 1.5B (default 100M).")
]
EpochsOpt = Annotated[float, typer.Option("--epochs", help="Passes over the data.")]
SeqOpt = Annotated[int, typer.Option("--seq", help="Tokens per sequence.")]
GlobalBatchOpt = Annotated[int, typer.Option("--global-batch", help="Sequences per optimizer step.")]
AttentionOpt = Annotated[str, typer.Option("--attention", help="sdpa | flash | eager")]
ContextOpt = Annotated[int, typer.Option("--context", help="Serving: tokens per sequence.")]
ConcurrencyOpt = Annotated[
    int | None, _opt("--concurrency", help="Serving: sequences at once over all replicas.")
]
RateOpt = Annotated[
    float | None,
    _opt("--request-rate", help="Serving: requests per second (with --prompt-tokens, --output-tokens)."),
]
PromptOpt = Annotated[int | None, _opt("--prompt-tokens", help="Serving: prompt tokens per request.")]
OutputTokensOpt = Annotated[
    int | None, _opt("--output-tokens", help="Serving: generated tokens per request.")
]
TtftOpt = Annotated[float | None, _opt("--ttft", help="Serving: largest acceptable time to first token, s.")]
DecodeOpt = Annotated[
    float | None, _opt("--decode-tps", help="Serving: smallest acceptable decode tokens/s per user.")
]
UtilOpt = Annotated[float, typer.Option("--gpu-memory-utilization", help="Serving: vLLM memory fraction.")]
HeadroomOpt = Annotated[float, typer.Option("--headroom", help="Fraction of device memory kept free.")]
HostRamOpt = Annotated[float, typer.Option("--host-ram", help="Host RAM per node for offload, GiB.")]
TopOpt = Annotated[int, typer.Option("--top", help="Options shown in the table.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
CsvOpt = Annotated[str | None, _opt("--csv", help="Write every option as CSV to this file ('-': stdout).")]
PlotOpt = Annotated[
    str | None, _opt("--plot", help="Draw cost vs time of the feasible options to a PNG (needs matplotlib).")
]


def _check_numbers(o: dict[str, Any]) -> None:
    """Each number in range, one flag per message (before any sizing is done)."""
    from swiftplan.cli._checks import at_least, between, one_of, positive

    for flag, name in (("--max-gpus", "max_gpus"), ("--max-nodes", "max_nodes"), ("--seq", "seq"),
                       ("--global-batch", "global_batch"), ("--context", "context"), ("--concurrency", "concurrency"),
                       ("--prompt-tokens", "prompt_tokens"), ("--output-tokens", "output_tokens")):  # fmt: skip
        at_least(flag, o[name], 1)
    positive("--epochs", o["epochs"])
    check_epochs(o["epochs"])
    refuse_idle_padding(o.get("padding"), rows="size plans full --seq rows",
                        hint="Drop --padding; `swiftplan fit --lengths FILE --padding ...` plans on the data's lengths.")  # fmt: skip
    positive("--network-gbps", o["network_gbps"], unit=" Gb/s")
    positive("--request-rate", o["request_rate"], unit=" requests/s")
    positive("--ttft", o["ttft"], unit=" s")
    positive("--decode-tps", o["decode_tps"], unit=" tokens/s")
    at_least("--host-ram", o["host_ram"], 0, unit=" GiB")
    between("--gpu-memory-utilization", o["gpu_memory_utilization"], 0.05, 1.0)
    if not 0 <= o["headroom"] < 0.9:
        raise SwiftplanError(f"--headroom must be at least 0 and below 0.9, got {o['headroom']:g}.")
    from swiftplan.cli._checks import ATTENTIONS

    one_of("--attention", o["attention"], ATTENTIONS)


def _check_outputs(*, top: int, as_json: bool, csv_path: str | None, plot: str | None) -> None:
    """The output options agree with each other, their files can be written (and --plot has matplotlib)."""
    from swiftplan.cli._checks import output_file

    output_file("--csv", csv_path)
    output_file("--plot", plot)
    if plot is not None:
        from swiftplan.cli._size_plot import plot_path

        plot_path(plot)  # matplotlib installed, and a format it writes
    if as_json and csv_path == "-":
        raise SwiftplanError("--json and --csv - both write to stdout; give --csv a file name.")
    if top < 1:
        raise SwiftplanError(f"--top must be at least 1, got {top}.")


_TRAIN_ONLY = ("method", "rank", "dora", "dataset_tokens", "epochs", "seq", "global_batch", "deadline", "host_ram",
               "attention", "network_gbps")  # fmt: skip
"""size options only training reads: --task serve refuses them when typed."""
_SERVE_ONLY = ("context", "concurrency", "request_rate", "prompt_tokens", "output_tokens", "ttft", "decode_tps",
               "gpu_memory_utilization")  # fmt: skip
"""size options only serving reads: a training --task refuses them when typed."""


def refuse_other_task_options(task: Any, typed: Any) -> None:
    """Options typed for the other task (one message naming them all), instead of a sizing that ignores them."""
    serving = is_serving(task)
    idle = [n for n in (_TRAIN_ONLY if serving else _SERVE_ONLY) if n in typed]
    if not idle:
        return
    flags = ", ".join("--" + n.replace("_", "-") for n in idle)
    one = len(idle) == 1
    if serving:
        raise SwiftplanError(f"{flags} {'describes' if one else 'describe'} a training job; size --task serve would "
                             f"ignore {'it' if one else 'them'}.",
                             hint="Drop those options to size serving (it sizes --context tokens per sequence for "
                             "--concurrency or --request-rate), or leave out --task serve to size training.")  # fmt: skip
    name = str(getattr(task, "value", task))
    raise SwiftplanError(f"{flags} {'describes' if one else 'describe'} a serving job; size --task {name} (training) "
                         f"would ignore {'it' if one else 'them'}.",
                         hint="Drop those options to size training, or add --task serve to size serving.")  # fmt: skip


def size_request(**options: Any) -> Any:
    """The `SizeRequest` for size's options (as the command receives them)."""
    from swiftplan.usecases.size import SizeRequest

    o = options
    serving = is_serving(o["task"])
    if serving:
        refuse_objective_for_serving(o.get("typed", ()))
    refuse_other_task_options(o["task"], o.get("typed", ()))
    refuse_idle_lora_options(o["method"], o.get("typed", ()))
    if o["buy"] and o.get("rent"):
        raise SwiftplanError("--buy and --rent contradict each other: --buy sizes hardware to purchase (its list price), "
                             "--rent hardware to rent (its hourly price).",
                             hint="Pass one of them, or neither to size hardware with either price.")  # fmt: skip
    training, global_batch, seq = objective_request(o) if not serving else (SFT, o["global_batch"], o["seq"])
    return SizeRequest(
        model=o["model"], task="serve" if serving else "train", objective=o["objective"].value if o["objective"] else None,
        mode="buy" if o["buy"] else "rent" if o.get("rent") else None,
        budget_usd=parse_usd(o["budget"]) if o["budget"] is not None else None,
        deadline_s=parse_duration(o["deadline"]) if o["deadline"] is not None else None,
        max_gpus=o["max_gpus"], max_nodes=o["max_nodes"], network_gbps=o["network_gbps"],
        vendors=_list("--vendor", o["vendor"]), accelerators=_list("--accelerators", o["accelerators"]),
        price_overrides=read_price_file(o["prices"]) if o["prices"] else (),
        pins=_pins(o["method"], o["quant"], o["no_quant"], o["rank"], serving=serving),
        dataset_tokens=None if serving else parse_dataset_tokens(o["dataset_tokens"]), epochs=o["epochs"], seq_len=seq,
        global_batch=global_batch, global_batch_typed="global_batch" in o.get("typed", ()), attention=o["attention"], context=o["context"], concurrency=o["concurrency"],
        request_rate=o["request_rate"], prompt_tokens=o["prompt_tokens"], output_tokens=o["output_tokens"],
        ttft_s=o["ttft"], decode_tps=o["decode_tps"], gpu_memory_utilization=o["gpu_memory_utilization"],
        headroom=o["headroom"], host_ram_bytes=int(o["host_ram"] * GiB),
        runtime=o["runtime"], runtime_options=_runtime_options(serving, o, o.get("memory_fraction_typed", False)),
        training=training, eager=o["enforce_eager"], vision=build_vision_inputs(o, serving=serving),
        dora=o["dora"],
    )  # fmt: skip


def _runtime_options(serving: bool, o: dict[str, Any], typed: bool) -> dict[str, Any]:
    """What the user set over the runtime profile (--runtime checked here, naming the flag): the knob flags
    for training, --gpu-memory-utilization for serving when it was `typed`."""
    from swiftplan.cli.options import knob_values, refuse_knobs_for_serving, serve_runtime, train_runtime
    from swiftplan.planner.runtime import KNOB_FLAGS

    knobs = knob_values(**{n: o[n] for n in KNOB_FLAGS if n in o})
    if serving:
        refuse_knobs_for_serving(knobs)
        given = {"gpu_memory_utilization": o["gpu_memory_utilization"]} if typed else {}
        serve_runtime(o["runtime"], given)
        return given if o["runtime"] is not None else {}
    train_runtime(o["runtime"], knobs)
    return knobs


def _show(
    outcome: Any,
    *,
    top: int,
    as_json: bool,
    csv_path: str | None,
    plot: str | None,
    elapsed_s: float,
    wide: bool = False,
) -> None:
    """Print (or write) the outcome in the forms asked for, and draw the plot."""
    from swiftplan.cli._size_render import SizeReport, emit

    report = SizeReport.of(outcome, elapsed_s=elapsed_s, top=top)
    emit(report, as_json=as_json, csv_path=csv_path, wide=wide)
    if plot is not None:
        from swiftplan.cli._size_plot import draw, plot_path

        plot = plot_path(plot)
        draw(report, plot)
        if not as_json and csv_path != "-":
            from swiftplan.cli._output import console

            console.print(f"wrote {plot}", highlight=False)


WideOpt = Annotated[
    bool, typer.Option("--wide", help="Show every column of the table, even past the terminal's width.")
]


def size_command(
    ctx: typer.Context,
    model: ModelArg,
    task: TaskOpt = Task.sft,
    objective: ObjectiveOpt = None,
    buy: BuyOpt = False,
    rent: RentOpt = False,
    budget: BudgetOpt = None,
    deadline: DeadlineOpt = None,
    max_gpus: MaxGpusOpt = None,
    max_nodes: MaxNodesOpt = 4,
    network_gbps: NetworkOpt = 100.0,
    vendor: VendorOpt = None,
    accelerators: AcceleratorsOpt = None,
    prices: PricesOpt = None,
    method: MethodOpt = None,
    quant: QuantOpt = None,
    no_quant: NoQuantOpt = False,
    rank: RankOpt = None,
    dora: DoraOpt = False,
    dataset_tokens: TokensOpt = None,
    epochs: EpochsOpt = 1.0,
    seq: SeqOpt = 2048,
    global_batch: GlobalBatchOpt = 16,
    attention: AttentionOpt = "sdpa",
    context: ContextOpt = 4096,
    concurrency: ConcurrencyOpt = None,
    request_rate: RateOpt = None,
    prompt_tokens: PromptOpt = None,
    output_tokens: OutputTokensOpt = None,
    ttft: TtftOpt = None,
    decode_tps: DecodeOpt = None,
    gpu_memory_utilization: UtilOpt = 0.9,
    enforce_eager: EnforceEagerOpt = False,
    headroom: HeadroomOpt = 0.05,
    host_ram: HostRamOpt = DEFAULT_HOST_RAM_GIB,
    top: TopOpt = 15,
    as_json: JsonOpt = False,
    csv_path: CsvOpt = None,
    plot: PlotOpt = None,
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
    """Which hardware to rent or buy for a fine-tuning or serving job, ranked, with what it costs."""
    started = time.perf_counter()
    _check_numbers(locals())
    _check_outputs(top=top, as_json=as_json, csv_path=csv_path, plot=plot)
    typed = "gpu_memory_utilization" in given_options(ctx, ("gpu_memory_utilization",))
    options = {name: value for name, value in locals().items() if name not in ("wide", "ctx", "typed")}
    request = size_request(**options, memory_fraction_typed=typed, typed=set(given_options(ctx)))
    from swiftplan.usecases.size import plan_size

    outcome = plan_size(request)
    elapsed_s = time.perf_counter() - started
    _show(outcome, top=top, as_json=as_json, csv_path=csv_path, plot=plot, elapsed_s=elapsed_s, wide=wide)
    if outcome.ranking.recommended is None:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add `size` to the CLI."""
    app.command("size", epilog=EPILOG)(size_command)
