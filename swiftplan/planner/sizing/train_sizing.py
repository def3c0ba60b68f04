"""Training sizing: the best fine-tuning plan on every candidate cluster, as ranked-to-be options. Pure.

Per accelerator: skip it when a price the objective needs is missing or it has no throughput figures;
per cluster (largest first, sharing what does not fit): skip it when buying it is over budget, when the
weights cannot fit (`candidates.weight_shortfall`) or when even its speed bound misses the deadline or
the rental budget; otherwise find the fastest plan that uses every GPU (`best_plan`). The model's
per-layer figures are cached across clusters, so later clusters cost little more than their own estimates.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Literal

from swiftplan.errors import SwiftplanError
from swiftplan.planner.capabilities import check
from swiftplan.planner.engines import Engine, Requirements, default_engine, engine_reasons, knob_requirements
from swiftplan.planner.hardware import Accelerator, Cluster
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.search.candidate import Candidate, TrainWorkload
from swiftplan.planner.search.evaluate import Evaluation, TrainEvaluator
from swiftplan.planner.search.pins import Pins
from swiftplan.planner.search.space import build_train_space
from swiftplan.planner.search.space_batch import split_global_batch
from swiftplan.planner.sizing.best_plan import MisfitMemo, best_training_plan, whole_cluster
from swiftplan.planner.sizing.candidates import (
    DEFAULT_MAX_NODES,
    DEFAULT_NETWORK_GBPS,
    candidate_clusters,
    weight_shortfall,
)
from swiftplan.planner.sizing.prices import Price, catalog_price
from swiftplan.planner.sizing.rank import (
    Constraints,
    Objective,
    Option,
    money_mode,
)
from swiftplan.planner.sizing.result import SizingResult, blank_option, skip_reason
from swiftplan.units import format_duration, format_gib, format_usd


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainJob:
    """The fine-tuning job to size."""

    workload: TrainWorkload
    """Tokens, sequence length, global batch, attention."""
    pins: Pins = Pins()
    """What the user fixed or forbade (method, quantization, ...), as for `fit`."""
    headroom: float = 0.05
    """Fraction of device memory kept free."""
    host_ram_bytes: int | None = 64 * 2**30
    """Host RAM per node for offloaded state; None = unbounded."""
    max_nodes: int = DEFAULT_MAX_NODES
    """Most nodes of 8 GPUs."""
    network_gbps: float = DEFAULT_NETWORK_GBPS
    """Network between nodes, Gb/s per node."""
    engine: Engine | None = None
    """Engine the plans must run on (the runtime's, engines.json); None = the default for each backend."""
    global_batch_typed: bool = False
    """The user typed the global batch: every cluster trains exactly it (layouts it does not split are skipped);
    otherwise each cluster rounds it up to split over all its training GPUs, as `fit` does."""

    def cluster_workload(self, cluster: Cluster) -> TrainWorkload:
        """The workload one cluster is sized for: a default global batch rounded up to a multiple of its training
        GPUs (× a pinned micro-batch, whole GRPO prompts), so that every layout using them all splits it."""
        if self.global_batch_typed:
            return self.workload
        objective = self.workload.objective
        ranks = max(1, cluster.world_size - objective.server_gpus)
        batch = split_global_batch(self.workload.global_batch, ranks, pins=self.pins, objective=objective)
        return replace(self.workload, global_batch=batch)

    def engine_for(self, cluster: Cluster) -> Engine:
        """The engine a cluster's plans are made for."""
        return self.engine or default_engine("train", cluster.accelerator.backend)

    def runtime_reasons(self, cluster: Cluster) -> list[str]:
        """What the runtime's engine cannot run of its settings on this cluster's backend (empty: all, or no
        engine named: a runtime no engine in the table runs is sized without one)."""
        if self.engine is None:
            return []
        knobs = self.workload.runtime
        needs = Requirements(backend=cluster.accelerator.backend, **knob_requirements(knobs))
        return engine_reasons(self.engine_for(cluster), needs)


def plan_fields(evaluation: Evaluation, workload: TrainWorkload) -> dict[str, Any]:
    """A training plan's choices (for JSON/CSV)."""
    c = evaluation.candidate
    assert isinstance(c, Candidate)
    return {
        "method": c.method,
        "lora_rank": c.rank or None,
        "quant": c.quant,
        "precision": c.precision,
        "optimizer": c.optimizer,
        "micro_batch": c.micro_batch,
        "grad_accum": c.grad_accum(workload),
        "grad_ckpt": c.grad_ckpt,
        "zero": c.zero,
        "offload": c.offload,
        "tp": c.layout.tp,
        "pp": c.layout.pp,
        "dp": c.layout.dp,
    }


def plan_summary(fields: Mapping[str, Any]) -> str:
    """E.g. 'QLoRA r16 nf4-dq, batch 2×4, ckpt, ZeRO-0, tp4/pp1/dp2' (micro-batch × accumulation)."""
    method = {"full": "full", "lora": "LoRA", "qlora": "QLoRA"}[fields["method"]]
    if fields["lora_rank"]:
        method += f" r{fields['lora_rank']}"
    if fields["quant"] != "none":
        method += f" {fields['quant']}"
    sharding = f"ZeRO-{fields['zero']}"
    if fields["offload"] != "none":
        sharding += f"+offload {fields['offload']}"
    parts = [
        method,
        f"batch {fields['micro_batch']}×{fields['grad_accum']}",
        "ckpt" if fields["grad_ckpt"] else "no ckpt",
        sharding,
        f"tp{fields['tp']}/pp{fields['pp']}/dp{fields['dp']}",
    ]
    return ", ".join(parts)


def _from_evaluation(base: Option, evaluation: Evaluation, workload: TrainWorkload) -> Option:
    assert evaluation.estimate is not None
    fields = plan_fields(evaluation, workload)
    return Option(
        **_hardware(base),
        plan=plan_summary(fields),
        plan_fields=MappingProxyType(fields),
        time_s=evaluation.time_s,
        tokens_per_s=evaluation.tokens_per_s,
        work_tokens=workload.total_tokens,
        headroom_bytes=evaluation.estimate.headroom_bytes,
    )


def _hardware(option: Option) -> dict[str, Any]:
    keys = (
        "accelerator_id",
        "accelerator",
        "vendor",
        "gpus",
        "nodes",
        "task",
        "usd_per_gpu_hour",
        "purchase_usd_per_gpu",
    )
    return {key: getattr(option, key) for key in keys}


def _no_fit_reason(closest: Evaluation | None, gpus: int) -> str:
    if closest is None:
        return "no plan fits"
    if closest.estimate is None:
        return f"no valid plan ({closest.error})"
    if closest.host_over_bytes > 0 and closest.memory_over_bytes <= 0:
        return f"doesn't fit: offload needs {format_gib(closest.host_over_bytes, 1)} more host RAM per node"
    at_least = "at least " if closest.gpus != gpus else ""  # learnt on a larger cluster
    return f"doesn't fit by {at_least}{format_gib(closest.memory_over_bytes, 1)} per GPU (closest plan)"


def _caps(
    option: Option, constraints: Constraints, objective: Objective
) -> dict[Literal["deadline", "budget"], float]:
    """Time limits a plan must meet: the deadline, and the budget as hours of rental."""
    caps: dict[Literal["deadline", "budget"], float] = {}
    if constraints.deadline_s is not None:
        caps["deadline"] = constraints.deadline_s
    mode = money_mode(objective, constraints)
    if constraints.budget_usd is not None and mode == "rent" and option.usd_per_gpu_hour:
        caps["budget"] = constraints.budget_usd / (option.gpus * option.usd_per_gpu_hour) * 3600
    return caps


def _capped_reason(kind: str, bound_s: float, constraints: Constraints, option: Option) -> str:
    if kind == "deadline":
        assert constraints.deadline_s is not None
        late = format_duration(bound_s - constraints.deadline_s)
        return f"misses the deadline by at least {late} (speed bound {format_duration(bound_s)})"
    assert constraints.budget_usd is not None and option.usd_per_gpu_hour is not None
    least = bound_s / 3600 * option.gpus * option.usd_per_gpu_hour
    return f"over budget by at least {format_usd(least - constraints.budget_usd)} (speed bound)"


def _plan_cluster(
    spec: ModelSpec,
    cluster: Cluster,
    base: Option,
    job: TrainJob,
    constraints: Constraints,
    objective: Objective,
    memo: MisfitMemo | None = None,
) -> tuple[Option, str, int]:
    """The option for one cluster, how it was decided ('searched', 'pruned' by a bound, or 'skipped' as
    unsupported), and the estimates made."""
    if reasons := job.runtime_reasons(cluster):
        return base.rejected("unsupported", " ".join(reasons)), "skipped", 0
    workload = job.cluster_workload(cluster)
    batch = workload.global_batch  # a step trains exactly this many sequences (micro × accumulation × dp)
    try:
        space = whole_cluster(
            build_train_space(spec, cluster, job.pins, job.engine_for(cluster), global_batch=batch), cluster
        )
    except SwiftplanError as error:
        return base.rejected("unsupported", error.message), "skipped", 0
    if not space.layouts:
        reason = (
            f"no parallel layout uses all {cluster.world_size} GPUs ({spec.num_heads} heads, {spec.num_layers} layers, "
            f"pins, data-parallel ranks dividing the global batch of {batch})"
        )
        return base.rejected("unsupported", reason), "skipped", 0
    if constraints.budget_usd is not None and money_mode(objective, constraints) == "buy":
        price = base.purchase_usd
        if price is not None and price > constraints.budget_usd:
            reason = f"over budget by {format_usd(price - constraints.budget_usd)} (purchase price {format_usd(price)})"
            return base.rejected("budget", reason), "pruned", 0
    gap = weight_shortfall(spec, cluster, space, headroom=job.headroom, host_ram_bytes=job.host_ram_bytes)
    if gap.short_bytes > 0:
        reason = (
            f"doesn't fit: the weights alone need {format_gib(gap.need_bytes, 1)} ({gap.method}), "
            f"{format_gib(gap.short_bytes, 1)} more than "
            + (f"{cluster.world_size} GPUs hold" if cluster.world_size > 1 else "one GPU holds")
        )
        return base.rejected("fit", reason), "pruned", 0
    evaluator = TrainEvaluator(
        spec, cluster, workload, space, headroom=job.headroom, host_ram_bytes=job.host_ram_bytes
    )
    caps = _caps(base, constraints, objective)
    cap_s = min(caps.values(), default=None)
    found = best_training_plan(evaluator, cap_s=cap_s, memo=memo)
    if found.capped:
        kind = min(caps, key=caps.__getitem__) if caps else "deadline"
        reason = _capped_reason(kind, found.speed_bound_s, constraints, base)
        return base.rejected(kind, reason), "pruned", evaluator.estimates
    if found.best is None:
        reason = _no_fit_reason(found.closest, cluster.world_size)
        if found.closest is None and found.weight_over_bytes is not None:
            reason = f"doesn't fit: the weights alone are {format_gib(found.weight_over_bytes, 1)} over per GPU in every layout"
        return base.rejected("fit", reason), "searched", evaluator.estimates
    return _from_evaluation(base, found.best, workload), "searched", evaluator.estimates


def size_training(
    spec: ModelSpec,
    accelerators: Iterable[Accelerator],
    job: TrainJob,
    *,
    objective: Objective,
    constraints: Constraints,
    prices: Mapping[str, Price] | None = None,
) -> SizingResult:
    """One option per candidate cluster of each allowed accelerator (see module docstring)."""
    options: list[Option] = []
    clusters = searched = pruned = estimates = 0
    for accelerator in accelerators:
        if not constraints.allows_hardware(accelerator.vendor, 1):
            continue
        price = (prices or {}).get(accelerator.id) or catalog_price(accelerator)
        skipped = skip_reason(accelerator, price, objective, constraints, task="train")
        if skipped is None and (reasons := check(accelerator, attention=job.workload.attention)):
            skipped = blank_option(accelerator, price, task="train").rejected(
                "unsupported", " ".join(reasons)
            )
        if skipped is not None:
            options.append(skipped)
            continue
        memo = MisfitMemo()
        clusters_of = candidate_clusters(
            [accelerator],
            max_nodes=job.max_nodes,
            network_gbps=job.network_gbps,
            max_gpus=constraints.max_gpus,
        )
        planned = []
        for cluster in reversed(clusters_of):  # largest first, so smaller clusters learn what cannot fit
            clusters += 1
            base = blank_option(
                accelerator, price, task="train", gpus=cluster.world_size, nodes=cluster.nodes
            )
            option, how, made = _plan_cluster(spec, cluster, base, job, constraints, objective, memo)
            planned.append(option)
            estimates += made
            searched += how == "searched"
            pruned += how == "pruned"
        options.extend(reversed(planned))
    return SizingResult(
        options=tuple(options), clusters=clusters, searched=searched, pruned=pruned, estimates=estimates
    )
