"""The size use case: request → model, catalog and prices → every cluster sized → ranked options → the
`fit` request that plans the recommended one in full.

`swiftplan size` parses its options into a `SizeRequest`, calls `plan_size`, and renders the `SizeOutcome`;
its "next:" command is `describe.fit_command_line(outcome.next_fit)`. The request and its checks live in
size_request, the training and serving sizing runs in size_runs; this module ranks their options, picks the
runtime to size under, and writes the next fit request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from swiftplan.errors import SwiftplanError
from swiftplan.planner.estimate import check_rollout_tp
from swiftplan.planner.hardware import Accelerator, get_accelerator, list_accelerators
from swiftplan.planner.runtime import (
    DEFAULT_TRAIN_RUNTIME,
    RuntimeChoice,
    choose_runtime,
)
from swiftplan.planner.sizing.prices import Price, price_table
from swiftplan.planner.sizing.rank import Constraints, Objective, Option, Ranking, rank
from swiftplan.planner.sizing.result import SizingResult
from swiftplan.usecases import inputs
from swiftplan.usecases.fit_request import FitRequest
from swiftplan.usecases.size_request import MAX_NODES_LIMIT as MAX_NODES_LIMIT
from swiftplan.usecases.size_request import SizeRequest, SizeTask, _check_vision, _with_dora
from swiftplan.usecases.size_runs import _size_serving, _size_training


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
    if request.task != "serve":
        check_rollout_tp(spec, request.training)  # the model's heads; each cluster's GPUs when it is sized
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
