"""The size use case: request → model, catalog and prices → every cluster sized → ranked options → the
`fit` request that plans the recommended one in full.

`swiftplan size` parses its options into a `SizeRequest`, calls `plan_size`, and renders the `SizeOutcome`;
its "next:" command is `describe.fit_command_line(outcome.next_fit)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from swiftplan.errors import SwiftplanError
from swiftplan.planner.hardware import Accelerator, get_accelerator, list_accelerators
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.objective import SFT, ObjectiveSetup
from swiftplan.planner.runtime import (
    DEFAULT_TRAIN_RUNTIME,
    RuntimeChoice,
    choose_runtime,
    refuse_eager_for_training,
)
from swiftplan.planner.search.pins import Pins
from swiftplan.planner.setup import SERVE_RUNTIMES, AttentionImpl, parse_choice
from swiftplan.planner.sizing.candidates import DEFAULT_MAX_NODES, DEFAULT_NETWORK_GBPS
from swiftplan.planner.sizing.prices import Price, PriceOverride, price_table
from swiftplan.planner.sizing.rank import Constraints, Mode, Objective, Option, Ranking, rank
from swiftplan.planner.sizing.result import SizingResult
from swiftplan.planner.vision import VisionInputs
from swiftplan.planner.vision_tokens import language_tokens
from swiftplan.planner.workload import TrainWorkload
from swiftplan.units import GiB
from swiftplan.usecases import inputs
from swiftplan.usecases.fit_request import FitRequest
from swiftplan.usecases.fit_vision import check_vision as check_fit_vision
from swiftplan.usecases.fit_vision import vision_note

SizeTask = Literal["train", "serve"]
DATASET_TOKENS_ASSUMED = "assumed (pass --dataset-tokens)"
"""Where the token count came from when the request gives none (it only scales time and cost)."""


MAX_NODES_LIMIT = 256
"""Most --max-nodes size accepts: it sizes every node count from 2 up on every accelerator, so time grows
with it (a 0.5B model on a 2-core machine: 4 nodes 1.3 s, 256 nodes 5.5 s, 1,000 nodes 17 s, 10,000 over
a minute). A fine-tuning or serving job on more than 2,048 GPUs is planned directly with fit --gpus."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SizeRequest:
    """Everything `size` is asked, already parsed from its view's input."""

    model: str
    """Catalog name or alias, hub id, or a local config path."""
    task: SizeTask = "train"
    """Fine-tuning or serving."""
    objective: Objective | None = None
    """What ranks the options; None = purchase with mode buy, cost-per-token for serving, else cost."""
    mode: Mode | None = None
    """rent or buy: only hardware with that price; None: either."""
    budget_usd: float | None = None
    """Most dollars: rental cost of the job (serving: per hour), or the purchase price when buying."""
    deadline_s: float | None = None
    """Training: longest acceptable wall-clock time."""
    max_gpus: int | None = None
    """Most GPUs in all."""
    max_nodes: int = DEFAULT_MAX_NODES
    """Most nodes of 8 GPUs."""
    network_gbps: float = DEFAULT_NETWORK_GBPS
    """Network between nodes, Gb/s per node."""
    vendors: tuple[str, ...] | None = None
    """Only these vendors (any case); None allows all."""
    accelerators: tuple[str, ...] | None = None
    """Only these accelerators (catalog names or aliases); None: the whole catalog."""
    price_overrides: tuple[PriceOverride, ...] = ()
    """The user's prices, replacing the catalog's."""
    pins: Pins = field(default_factory=Pins)
    """Methods, quantizations and LoRA ranks allowed."""
    dataset_tokens: int | None = None
    """Tokens in one epoch; None assumes `inputs.DEFAULT_DATASET_TOKENS`."""
    epochs: float = 1.0
    seq_len: int = 2048
    global_batch: int = 16
    global_batch_typed: bool = False
    """The user typed --global-batch: every cluster trains exactly it; else each rounds it to split over its GPUs."""
    attention: AttentionImpl = "sdpa"
    context: int = 4096
    """Serving: tokens per sequence (with a request rate: prompt + output tokens)."""
    concurrency: int | None = None
    """Serving: sequences at once over all replicas."""
    request_rate: float | None = None
    """Serving: requests per second (with prompt_tokens and output_tokens)."""
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    ttft_s: float | None = None
    """Serving: largest acceptable time to first token."""
    eager: bool = False
    """Serving: decode without CUDA graphs (--enforce-eager)."""
    decode_tps: float | None = None
    """Serving: smallest acceptable decode tokens/s per user."""
    gpu_memory_utilization: float = 0.9
    headroom: float = 0.05
    """Fraction of device memory kept free."""
    host_ram_bytes: int = inputs.DEFAULT_HOST_RAM_BYTES
    """Host RAM per node for offload."""
    runtime: str | None = None
    """Runtime profile every cluster is sized under (profiles/runtimes); None = swiftplan's loop for training,
    today's serving defaults."""
    runtime_options: dict[str, Any] = field(default_factory=dict)
    training: ObjectiveSetup = SFT
    """Training: the objective (SFT, a preference method, RL with rollouts), sized as given (fit searches
    its reference handling and rollout placement)."""
    """What the user set over the profile: RuntimeKnobs fields (training), gpu_memory_utilization (serving)."""
    vision: VisionInputs | None = None
    """Vision-language models: each sequence's (serving: request's) images/video and, training, whether the tower
    and aligner train; every cluster is sized with them, as fit plans them. None = text only."""
    dora: bool = False
    """Training: the adapters are DoRA (--dora): LoRA and QLoRA only."""

    def __post_init__(self) -> None:
        self._check_money()
        if not 0 <= self.headroom < 0.9:
            raise SwiftplanError(f"--headroom must be in [0, 0.9), got {self.headroom}.")
        if self.max_gpus is not None and self.max_gpus < 1:
            raise SwiftplanError(f"--max-gpus must be at least 1, got {self.max_gpus}.")
        if self.max_nodes > MAX_NODES_LIMIT:
            raise SwiftplanError(
                f"--max-nodes {self.max_nodes} is more than size searches: it tries every node count from 2 "
                f"up, on every accelerator, so it takes at most {MAX_NODES_LIMIT} nodes ({MAX_NODES_LIMIT * 8:,} "
                "GPUs), which it answers in seconds.",
                hint="To check one larger cluster, plan it directly: swiftplan fit MODEL --gpus 1000x8xh100.",
            )
        if self.max_nodes < 1 or self.network_gbps <= 0 or self.host_ram_bytes < 0:
            raise SwiftplanError(
                "--max-nodes and --network-gbps must be positive and --host-ram zero or more."
            )
        if self.task == "serve":
            self._check_load()
        else:
            refuse_eager_for_training(self.eager)
            if (
                self.epochs <= 0
                or self.seq_len < 1
                or self.global_batch < 1
                or self.dataset_tokens_or_default <= 0
            ):
                raise SwiftplanError("--dataset-tokens, --epochs, --seq and --global-batch must be positive.")

    def _check_money(self) -> None:
        """The objective must use the price the mode keeps."""
        if self.mode == "buy" and self.goal in ("cost", "cost-per-token"):
            raise SwiftplanError(
                f"--objective {self.goal} ranks by rental price, which --buy does not use.",
                hint="With --buy use --objective purchase or time.",
            )
        if self.mode == "rent" and self.goal == "purchase":
            raise SwiftplanError("--objective purchase ranks by list price, which --rent does not use.")

    def _check_load(self) -> None:
        """Serving needs one load: a concurrency, or a request rate with its token counts."""
        if self.deadline_s is not None:
            raise SwiftplanError(
                "--deadline applies to training (--task sft); serving has --ttft and --decode-tps."
            )
        if self.request_rate is None and self.concurrency is None:
            raise SwiftplanError(
                "Serving sizing needs a load: --concurrency N, or --request-rate R --prompt-tokens P --output-tokens O."
            )
        if self.request_rate is not None and self.concurrency is not None:
            raise SwiftplanError("Give either --concurrency or --request-rate, not both.")
        if self.request_rate is not None and (self.prompt_tokens is None or self.output_tokens is None):
            raise SwiftplanError("--request-rate needs --prompt-tokens and --output-tokens.")

    @property
    def goal(self) -> Objective:
        """The objective, with the mode's and the task's default filled in."""
        if self.objective is not None:
            return self.objective
        return "purchase" if self.mode == "buy" else "cost-per-token" if self.task == "serve" else "cost"

    @property
    def dataset_tokens_or_default(self) -> int:
        """Tokens in one epoch, the assumed count when none was given."""
        return inputs.DEFAULT_DATASET_TOKENS if self.dataset_tokens is None else self.dataset_tokens

    @property
    def load_context(self) -> int:
        """Serving: tokens per sequence (prompt + output with a request rate)."""
        if (
            self.request_rate is not None
            and self.prompt_tokens is not None
            and self.output_tokens is not None
        ):
            return self.prompt_tokens + self.output_tokens
        return self.context


@dataclass(frozen=True, kw_only=True, slots=True)
class SizeOutcome:
    """Every option ranked, why the others cannot run, and how to plan the recommended one in full."""

    request: SizeRequest
    model: str
    """The model's name as resolved."""
    workload: Mapping[str, Any]
    """The job as sized (for JSON)."""
    constraints: Constraints
    ranking: Ranking
    result: SizingResult
    prices: Mapping[str, Price]
    """Accelerator id → price used (catalog or the user's)."""
    notes: tuple[str, ...]
    """What the sizing assumed."""
    next_fit: FitRequest | None
    """The `fit` request that plans the recommended option in full (None when nothing qualifies)."""
    runtime: RuntimeChoice | None = None
    """The runtime profile sized under and the defaults it applied (serving without --runtime: None)."""

    @property
    def task(self) -> SizeTask:
        return self.request.task

    @property
    def objective(self) -> Objective:
        return self.request.goal


def constraints(request: SizeRequest) -> Constraints:
    """The request's limits on options, vendors checked against the catalog."""
    return Constraints(
        budget_usd=request.budget_usd,
        deadline_s=request.deadline_s,
        max_gpus=request.max_gpus,
        vendors=_vendors(request.vendors),
        mode=request.mode,
    )


def _vendors(wanted: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """The vendors asked for, lower case; unknown ones are an error naming the known ones."""
    if wanted is None:
        return None
    known = sorted({acc.vendor.lower() for acc in list_accelerators()})
    bad = [v for v in wanted if v.lower() not in known]
    if bad:
        raise SwiftplanError(
            f"Unknown --vendor {', '.join(bad)}.", hint=f"Known vendors: {', '.join(known)}."
        )
    return tuple(v.lower() for v in wanted)


def catalog(names: tuple[str, ...] | None) -> list[Accelerator]:
    """The accelerators to size: the named ones (each once), or the whole catalog."""
    if names is None:
        return list(list_accelerators())
    return list({acc.id: acc for acc in (get_accelerator(name) for name in names)}.values())


def _refuse_disjoint_filters(accelerators: list[Accelerator], limits: Constraints) -> None:
    """--accelerators and --vendor that leave no accelerator at all: say the filters contradict each other
    rather than report a job nothing can run."""
    vendors = limits.vendors
    if vendors is None or any(acc.vendor.lower() in vendors for acc in accelerators):
        return
    named = ", ".join(f"{acc.id} ({acc.vendor})" for acc in accelerators)
    raise SwiftplanError(
        f"--vendor {','.join(vendors)} and --accelerators {named} leave no accelerator to size: "
        f"{'none of them is' if len(accelerators) > 1 else 'it is not'} made by {' or '.join(vendors)}.",
        hint="Drop one of the two filters, or name accelerators of that vendor (swiftplan gpus lists them).",
    )


def _size_serving(
    request: SizeRequest, spec: ModelSpec, accelerators: list[Accelerator], limits: Constraints, prices: Mapping[str, Price],
    runtime: RuntimeChoice | None,
) -> tuple[SizingResult, dict[str, Any], list[str]]:  # fmt: skip
    """Serving: (sizing result, workload as sized, notes)."""
    from swiftplan.planner.sizing.serve_sizing import ServeLoad, size_serving

    memory_fraction = (
        request.gpu_memory_utilization
        if runtime is None
        else runtime.options.get("gpu_memory_utilization", request.gpu_memory_utilization)
    )
    load = ServeLoad(
        context=request.load_context, concurrency=request.concurrency, request_rate=request.request_rate,
        prompt_tokens=request.prompt_tokens, output_tokens=request.output_tokens, ttft_s=request.ttft_s,
        decode_tps=request.decode_tps, gpu_memory_utilization=memory_fraction, max_nodes=request.max_nodes,
        runtime=None if runtime is None else parse_choice("serving runtime", runtime.profile.name, SERVE_RUNTIMES),
        eager=request.eager, vision=request.vision,
    )  # fmt: skip
    result = size_serving(
        spec, accelerators, load, objective=request.goal, constraints=limits, pins=request.pins,
        headroom=request.headroom, prices=prices,
    )  # fmt: skip
    workload = {
        "context": load.context, "concurrency": load.concurrency, "request_rate": load.request_rate,
        "prompt_tokens": load.prompt_tokens, "output_tokens": load.output_tokens, "ttft_s": load.ttft_s,
        "decode_tps": load.decode_tps, "gpu_memory_utilization": load.gpu_memory_utilization, "eager": load.eager,
        "vision": None if request.vision is None else asdict(request.vision),
    }  # fmt: skip
    notes = [] if runtime is None else [runtime.describe()]
    if request.vision is not None:
        notes.append(vision_note(spec, request.vision, serving=True))
    if load.runtime is not None:
        notes.append(f"sized for {load.runtime}: its limits and its per-step decode cost time every option.")
    if request.pins.quants is None:
        notes.append(
            "weights sized in 16-bit or fp8; pass --quant none,fp8,int8,nf4 to allow bitsandbytes formats."
        )
    if request.ttft_s is None:
        notes.append(
            "TTFT assumes every sequence of a replica prefills at once (the worst case); pass --ttft to bound it."
        )
    return result, workload, notes


def _size_training(
    request: SizeRequest, spec: ModelSpec, accelerators: list[Accelerator], limits: Constraints, prices: Mapping[str, Price],
    runtime: RuntimeChoice | None,
) -> tuple[SizingResult, dict[str, Any], list[str]]:  # fmt: skip
    """Training: (sizing result, workload as sized, notes), every cluster planned under the runtime's knobs
    and for its engine (engines.json `runtime`; swiftplan's loop when the table has none)."""
    from swiftplan.planner.engines import runtime_engine
    from swiftplan.planner.sizing.train_sizing import TrainJob, size_training

    assert runtime is not None
    knobs = runtime.knobs()
    tokens = request.dataset_tokens_or_default
    sequences = -(
        -tokens // request.seq_len
    )  # the last, partial sequence carries its images too (as fit counts)
    image_tokens = language_tokens(spec, request.vision) * sequences
    workload = TrainWorkload(
        seq_len=request.seq_len, global_batch=request.global_batch, dataset_tokens=tokens,
        dataset_image_tokens=image_tokens, epochs=request.epochs, attention=request.attention, runtime=knobs,
        objective=request.training, vision=request.vision, dora=request.dora,
    )  # fmt: skip
    pins = request.pins
    if knobs.fsdp != "none":  # FSDP shards instead of DeepSpeed ZeRO
        pins = replace(pins, zero=(0,), max_offload="none")
    job = TrainJob(
        workload=workload, pins=pins, headroom=request.headroom, host_ram_bytes=request.host_ram_bytes,
        max_nodes=request.max_nodes, network_gbps=request.network_gbps,
        engine=runtime_engine(knobs.name, "train"), global_batch_typed=request.global_batch_typed,
    )  # fmt: skip
    result = size_training(spec, accelerators, job, objective=request.goal, constraints=limits, prices=prices)
    shown = {
        "dataset_tokens": tokens,
        "dataset_tokens_source": DATASET_TOKENS_ASSUMED if request.dataset_tokens is None else "--dataset-tokens",
        "epochs": request.epochs, "seq_len": request.seq_len, "global_batch": request.global_batch,
        "attention": request.attention, "host_ram_gib_per_node": request.host_ram_bytes / GiB,
        "runtime": knobs.name, "objective": asdict(request.training), "dataset_image_tokens": image_tokens, "dora": request.dora,
        "vision": None if request.vision is None else asdict(request.vision),
    }  # fmt: skip
    notes = [runtime.describe()]
    if request.vision is not None:
        notes.append(vision_note(spec, request.vision, serving=False))
    if job.engine is None:
        notes.append(
            f"no engine in swiftplan's table (profiles/engines.json) runs {runtime.profile.label} yet: sized under its "
            "defaults with swiftplan's search space; the next command plans for swiftplan's loop."
        )
    elif request.vision is not None and request.runtime is None:
        notes.append(
            f"sized for {job.engine.label}, the first engine swiftplan launches that trains on images (its own loop "
            "trains text only; pass --runtime to choose another); options it cannot run are left out."
        )
    elif job.engine.name != "swiftplan":
        notes.append(
            f"sized for {job.engine.label} (--runtime {knobs.name}); options it cannot run are left out."
        )
    notes.append(
        f"clusters: 1, 2, 4, 8 GPUs in one node or 2-{request.max_nodes} nodes of 8 over {request.network_gbps:g} Gb/s; "
        "GPUs without NVLink on every board (GeForce, RTX A6000, PCIe parts) talk over PCIe."
    )
    return result, shown, notes


def cluster_text(option: Option) -> str:
    """The `--gpus` text for an option's hardware: 'h100-sxm', '4xh100-sxm', '2x8xh100-sxm'."""
    if option.nodes > 1 and option.gpus == option.nodes * option.gpus_per_node:
        return f"{option.nodes}x{option.gpus_per_node}x{option.accelerator_id}"
    return option.accelerator_id if option.gpus == 1 else f"{option.gpus}x{option.accelerator_id}"


def next_fit(request: SizeRequest, option: Option) -> FitRequest:
    """The `fit` request that plans an option's hardware in full, with the size request's job, pins and
    runtime (left out when no engine runs that runtime, since fit plans for one that does)."""
    from swiftplan.planner.engines import runtime_engine

    model, gpus = inputs.model_reference(request.model), cluster_text(option)
    runtime = request.runtime
    if runtime is not None and runtime_engine(runtime, request.task) is None:
        runtime = None
    options = dict(request.runtime_options) if runtime is not None else {}
    if request.task == "serve":
        fields = option.plan_fields
        return FitRequest(
            model=model, gpus=gpus, task="serve", pins=replace(request.pins, quants=(fields["quant"],)),
            context=request.load_context,
            concurrency=request.concurrency or fields["replicas"] * fields["sequences_per_replica"],
            ttft_s=request.ttft_s, decode_tps=request.decode_tps,
            gpu_memory_utilization=request.gpu_memory_utilization, headroom=request.headroom,
            runtime=runtime, runtime_options=options, eager=request.eager, vision=request.vision,
        )  # fmt: skip
    host_ram = request.host_ram_bytes
    return FitRequest(
        model=model, gpus=gpus, pins=request.pins, dataset_tokens=request.dataset_tokens, epochs=request.epochs,
        global_batch=request.global_batch, seq_len=request.seq_len, attention=request.attention,
        headroom=request.headroom, host_ram_bytes=None if host_ram == inputs.DEFAULT_HOST_RAM_BYTES else host_ram,
        runtime=runtime, runtime_options=options, training=request.training, vision=request.vision, dora=request.dora,
    )  # fmt: skip


def plan_size(request: SizeRequest) -> SizeOutcome:
    """Size every cluster of the catalog (or the named accelerators) for the job and rank the options."""
    limits = constraints(request)
    accelerators = catalog(request.accelerators)
    _refuse_disjoint_filters(accelerators, limits)
    prices = price_table(accelerators, request.price_overrides)
    spec = inputs.resolve_model(request.model)
    runtime = size_runtime(request)
    _check_vision(request, spec)
    request = _with_dora(request, spec)
    size = _size_serving if request.task == "serve" else _size_training
    result, workload, notes = size(request, spec, accelerators, limits, prices, runtime)
    ranking = rank(result.options, request.goal, limits)
    best = ranking.recommended
    return SizeOutcome(
        request=request, model=spec.name, workload=workload, constraints=limits, ranking=ranking,
        result=result, prices=prices, notes=tuple(notes), next_fit=None if best is None else next_fit(request, best),
        runtime=runtime,
    )  # fmt: skip


OBJECTIVE_TRAIN_RUNTIME = "ms-swift"
"""Preference and RL jobs are sized under ms-swift's defaults unless --runtime says otherwise: swiftplan's own
loop trains SFT only, and ms-swift (swift rlhf) runs every objective (profiles/engines.json)."""
IMAGE_TRAIN_RUNTIME = "ms-swift"
"""Jobs with images are sized under ms-swift's defaults unless --runtime says otherwise: swiftplan's own loop
trains text only, and ms-swift is the first engine that trains on images (planner/engines.py
IMAGE_TRAIN_ENGINES), the one fit plans them for."""


def _with_dora(request: SizeRequest, spec: ModelSpec) -> SizeRequest:
    """--dora sizes DoRA adapters: LoRA and QLoRA only, and none on fused MoE experts (planner/dora.py)."""
    if not request.dora:
        return request
    from swiftplan.planner.dora import check_dora, dora_methods
    from swiftplan.planner.setup import LoraSetup

    check_dora(
        spec, LoraSetup(targets=("all-linear",), dora=True)
    )  # size adapts all-linear, as fit by default
    return replace(request, pins=replace(request.pins, methods=dora_methods(request.pins.methods)))


def _check_vision(request: SizeRequest, spec: ModelSpec) -> None:
    """Image options are refused as fit refuses them (a text-only model, an objective other than SFT) and, for
    training, with a --runtime whose engine does not train on images: before any cluster is sized."""
    if request.vision is None:
        return
    check_fit_vision(
        FitRequest(model=request.model, task=request.task, training=request.training, vision=request.vision),
        spec,
    )
    if request.task == "train" and request.runtime is not None:
        from swiftplan.usecases.fit_engine import require_image_runtime

        require_image_runtime(request.runtime)


def size_runtime(request: SizeRequest) -> RuntimeChoice | None:
    """The runtime profile to size under with the user's options over it (training: swiftplan's by default;
    serving: only when named)."""
    if request.task == "serve":
        if request.runtime is None:
            return None
        return choose_runtime(request.runtime, "serve", dict(request.runtime_options))
    default = DEFAULT_TRAIN_RUNTIME if request.vision is None else IMAGE_TRAIN_RUNTIME
    if request.training.kind != "sft":
        default = OBJECTIVE_TRAIN_RUNTIME
    return choose_runtime(request.runtime or default, "train", dict(request.runtime_options))
