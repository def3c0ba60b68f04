"""A finished search as the plan view shows it: the plans to choose from, each with its plan file,
memory breakdown against the device budget, speed and bound; why other families lost; and the command
that runs a saved plan. Pure (the model was resolved before the search)."""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass
from typing import Any

from swiftplan.plan_file import PlanFile
from swiftplan.planner.breakdown import TENSOR_TERMS
from swiftplan.planner.search.candidate import Candidate
from swiftplan.planner.search.evaluate import Evaluation
from swiftplan.planner.search.optimize import SearchResult
from swiftplan.tui.search import Problem, SearchSnapshot, candidate_summary
from swiftplan.units import format_gib

PLAN_ROWS = 15
"""Most plans offered (Pareto fronts are thinned evenly, as `fit` does)."""
MEMORY_TERMS = (*TENSOR_TERMS, "transient", "runtime_overhead")
"""Breakdown fields drawn as segments, in drawing order."""


@dataclass(frozen=True, kw_only=True, slots=True)
class MemoryBar:
    """One plan's per-device memory against the device."""

    terms: tuple[tuple[str, int], ...]
    """(term, bytes) of each non-zero term, in MEMORY_TERMS order (each at its own largest)."""
    peak_allocated_bytes: int
    """Live tensors at the peak."""
    device_total_bytes: int
    """Peak plus CUDA context and allocator slack (what nvidia-smi shows)."""
    limit_bytes: int
    """What a plan may use: the budget less headroom."""
    budget_bytes: int
    """Device memory."""
    peak_phase: str
    """When the peak happens."""
    host_bytes_per_node: int = 0
    """Offloaded state in host RAM."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PlanChoice:
    """One plan on offer."""

    summary: str
    """The plan in one line."""
    columns: tuple[str, ...]
    """The plan table's cells: GiB/GPU, tokens/s, time, cost."""
    memory: MemoryBar
    """Memory against the budget."""
    speed_lines: tuple[str, ...]
    """Speed, its bound, time and cost."""
    plan: PlanFile
    """The plan file `save_plan` writes."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SearchOutcome:
    """Everything the plan view shows after a search."""

    search_id: int
    """The search it answers."""
    title: str
    """Model, cluster, task and objective."""
    choices: tuple[PlanChoice, ...]
    """Best first, then runners-up of other shapes (or the Pareto front); empty when nothing fits."""
    family_lines: tuple[str, ...]
    """Why each other family lost (or how it did)."""
    diagnosis: tuple[str, ...]
    """When nothing fits: by how much, then each change that would fit."""
    search_line: str
    """How the search went."""
    notes: tuple[str, ...]
    """Cluster notes and caveats (unknown price)."""
    snapshot: SearchSnapshot
    """The final scatter."""


def run_command(plan: PlanFile, path: str) -> str:
    """The command that carries out a saved plan."""
    if plan.task == "serve":
        return f"swiftplan serve {shlex.quote(path)}"
    return f"swiftplan train {shlex.quote(path)} --data train.jsonl"


def _cost(evaluation: Evaluation) -> str:
    if evaluation.cost_usd is None:
        return f"{evaluation.gpu_hours:,.{1 if evaluation.gpu_hours >= 10 else 2}f} GPU-h"
    return f"${evaluation.cost_usd:,.0f}" if evaluation.cost_usd >= 10 else f"${evaluation.cost_usd:.2f}"


def _speed_lines(evaluation: Evaluation, task: str) -> tuple[str, ...]:
    from swiftplan.cli._fit_render import duration

    estimate = evaluation.estimate
    assert estimate is not None
    speed = estimate.to_json()["speed"]
    if speed["tokens_per_s"] is None:
        return ("speed unknown: the accelerator has no published throughput",)
    if task == "train":
        parts = [f"{name} {seconds:.2f} s" for name, seconds in speed["breakdown_s"].items() if seconds > 0]
        return (
            f"{speed['tokens_per_s']:,.0f} tokens/s · {speed['step_time_s']:.2f} s/step · bound by {speed['bound']}",
            f"{speed['flops_per_token'] / 1e9:.1f} GFLOP/token at a {speed['mfu_prior']:.0%} MFU prior; "
            f"step = {' + '.join(parts) or '0 s'}",
            f"time to train {duration(evaluation.time_s)} · {evaluation.gpu_hours:,.1f} GPU-h"
            + (
                f" · cost {_cost(evaluation)}"
                if evaluation.cost_usd is not None
                else " · no price in the catalog"
            ),
        )
    setup: Any = estimate.setup
    return (
        f"decode {speed['tokens_per_s']:,.0f} tokens/s in all ({speed['per_user_decode_tokens_per_s']:.1f} per user) "
        f"· bound by {speed['bound']}",
        f"prefill {speed['prefill_tokens_per_s']:,.0f} tokens/s · time to first token {speed['ttft_s']:.2f} s",
        f"{setup.concurrency} sequences of {setup.context:,} tokens per replica (at most {estimate.max_concurrency}); "
        f"longest context {estimate.max_context:,} · {_cost(evaluation)} per 1M tokens",
    )


def _memory(evaluation: Evaluation) -> MemoryBar:
    estimate = evaluation.estimate
    assert estimate is not None
    memory = estimate.memory
    return MemoryBar(
        terms=tuple((name, getattr(memory, name)) for name in MEMORY_TERMS if getattr(memory, name) > 0),
        peak_allocated_bytes=memory.peak_allocated,
        device_total_bytes=memory.device_total,
        limit_bytes=evaluation.limit_bytes,
        budget_bytes=estimate.device_memory_bytes,
        peak_phase=memory.peak_phase,
        host_bytes_per_node=evaluation.host_bytes_per_node,
    )


def make_choice(evaluation: Evaluation, problem: Problem) -> PlanChoice:
    """A plan on offer, with its plan file (as `swiftplan fit -o` writes it)."""
    from swiftplan.cli._fit_render import duration
    from swiftplan.plan_file import make_plan
    from swiftplan.planner.search.candidate import cluster_text

    estimate = evaluation.estimate
    assert estimate is not None
    is_train = isinstance(evaluation.candidate, Candidate)
    cluster = problem.cluster
    plan = make_plan(
        model=problem.spec.name,
        model_source=problem.spec.source or problem.spec.name,
        cluster=cluster_text(cluster),
        gpus_used=evaluation.gpus,
        usable_memory_bytes=cluster.usable_memory_bytes,
        objective=problem.settings.objective,
        workload=asdict(problem.workload),
        setup=estimate.setup,
        estimate_json=estimate.to_json(),
        host_bytes_per_node=evaluation.host_bytes_per_node,
        time_to_train_s=evaluation.time_s if is_train else None,
        gpu_hours=evaluation.gpu_hours,
        cost_usd=evaluation.cost_usd,
    )
    time = duration(evaluation.time_s) if is_train else f"{evaluation.time_s * 1000:.0f} ms/tok"
    columns = (
        f"{evaluation.device_total_bytes / 2**30:.1f}/{estimate.device_memory_bytes / 2**30:.0f}",
        f"{evaluation.tokens_per_s:,.0f}",
        time,
        _cost(evaluation),
    )
    return PlanChoice(
        summary=candidate_summary(evaluation),
        columns=columns,
        memory=_memory(evaluation),
        speed_lines=_speed_lines(evaluation, problem.request.task),
        plan=plan,
    )


def _spread(rows: list[Evaluation], limit: int) -> list[Evaluation]:
    if len(rows) <= limit:
        return rows
    step = (len(rows) - 1) / (limit - 1)
    return [rows[round(i * step)] for i in range(limit)]


def _diagnosis(problem: Problem, result: SearchResult) -> tuple[str, ...]:
    from swiftplan.planner.search import infeasible

    if result.best is not None or result.closest is None:
        return () if result.best is not None else ("No valid plan: every candidate was rejected.",)
    diagnose = (
        infeasible.diagnose_training if problem.request.task == "train" else infeasible.diagnose_serving
    )
    diagnosis = diagnose(problem.evaluator, problem.pins, result.closest)
    lines = [diagnosis.summary]
    lines += [f"• {s.text}" for s in diagnosis.suggestions] or [
        "No single change checked (QLoRA, shorter sequence, offload, more or bigger GPUs) makes it fit."
    ]
    return tuple(lines)


def outcome(search_id: int, problem: Problem, result: SearchResult, final: SearchSnapshot) -> SearchOutcome:
    """The plan view for a finished search."""
    from swiftplan.cli._fit_render import family_line

    if result.best is None:
        rows: list[Evaluation] = []
    elif result.pareto:
        rows = _spread(list(result.pareto), PLAN_ROWS)
    else:
        rows = [result.best, *result.runners_up]
    how = (
        f"{len(result.evaluations):,} evaluated, {result.pruned:,} pruned by a speed bound"
        if result.sampler == "exhaustive"
        else f"TPE, {len(result.evaluations):,} distinct in {result.trials} trials"
    )
    notes = [f"cluster: {note}" for note in problem.cluster.notes]
    if problem.cluster.accelerator.price_usd_per_hour is None:
        notes.append(
            f"cost in GPU-hours: the catalog has no price for {problem.cluster.accelerator.display_name}"
        )
    return SearchOutcome(
        search_id=search_id,
        title=problem.title,
        choices=tuple(make_choice(e, problem) for e in rows),
        family_lines=tuple(family_line(f, result.best, result.objective) for f in result.families),
        diagnosis=_diagnosis(problem, result),
        search_line=f"searched {result.space_size:,} structures ({how}; {result.estimates:,} estimates), "
        f"seed {problem.settings.seed}",
        notes=tuple(notes),
        snapshot=final,
    )


def memory_legend(bar: MemoryBar) -> str:
    """The sentence under the bar: peak, device total, limit, budget."""
    text = (
        f"peak {format_gib(bar.peak_allocated_bytes, 1)} at {bar.peak_phase} · device total "
        f"{format_gib(bar.device_total_bytes, 1)} · limit {format_gib(bar.limit_bytes, 1)} of "
        f"{format_gib(bar.budget_bytes, 1)}"
    )
    if bar.host_bytes_per_node:
        text += f" · host RAM {format_gib(bar.host_bytes_per_node, 1)}/node"
    return text
