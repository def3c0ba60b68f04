"""A finished search as the plan view shows it: the plans to choose from, each with its plan file,
memory breakdown against the device budget, speed and bound; why other families lost; and the command
that runs a saved plan. Pure (the model was resolved before the search)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from swiftplan.planner.breakdown import TENSOR_TERMS
from swiftplan.planner.plan import Plan
from swiftplan.planner.search.candidate import Candidate
from swiftplan.planner.search.evaluate import Evaluation
from swiftplan.tui.search import SearchSnapshot
from swiftplan.units import format_duration, format_gib
from swiftplan.usecases.describe import (
    candidate_summary,
    cost_text,
    engine_line,
    family_line,
    next_command,
    search_line,
)
from swiftplan.usecases.fit import FitOutcome, FitProblem, plan_from

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
    plan: Plan
    """The plan `save_plan` writes."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SearchOutcome:
    """Everything the plan view shows after a search."""

    search_id: int
    """The search it answers."""
    title: str
    """Model, cluster, task and objective."""
    runtime_line: str
    """The runtime planned for, the defaults it applied and the knobs set over them ('' for serving)."""
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


def run_command(plan: Plan, path: str) -> str:
    """The command that carries out a saved plan."""
    return next_command(plan, path)


def _speed_lines(evaluation: Evaluation, task: str) -> tuple[str, ...]:
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
            f"time to train {format_duration(evaluation.time_s)} · {evaluation.gpu_hours:,.1f} GPU-h"
            + (
                f" · cost {cost_text(evaluation)}"
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
        f"longest context {estimate.max_context:,} · {cost_text(evaluation)} per 1M tokens",
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


def make_choice(evaluation: Evaluation, problem: FitProblem) -> PlanChoice:
    """A plan on offer, with its plan (as `swiftplan fit -o` writes it)."""
    estimate = evaluation.estimate
    assert estimate is not None
    is_train = isinstance(evaluation.candidate, Candidate)
    time = format_duration(evaluation.time_s) if is_train else f"{evaluation.time_s * 1000:.0f} ms/tok"
    columns = (
        f"{evaluation.device_total_bytes / 2**30:.1f}/{estimate.device_memory_bytes / 2**30:.0f}",
        f"{evaluation.tokens_per_s:,.0f}",
        time,
        cost_text(evaluation),
    )
    return PlanChoice(
        summary=candidate_summary(evaluation),
        columns=columns,
        memory=_memory(evaluation),
        speed_lines=_speed_lines(evaluation, problem.task),
        plan=plan_from(problem, evaluation),
    )


def _spread(rows: list[Evaluation], limit: int) -> list[Evaluation]:
    if len(rows) <= limit:
        return rows
    step = (len(rows) - 1) / (limit - 1)
    return [rows[round(i * step)] for i in range(limit)]


def _diagnosis(outcome: FitOutcome) -> tuple[str, ...]:
    result, diagnosis = outcome.result, outcome.diagnosis
    if result.best is not None:
        return ()
    if diagnosis is None:
        return ("No valid plan: every candidate was rejected.",)
    lines = [diagnosis.summary]
    lines += [f"• {s.text}" for s in diagnosis.suggestions] or [diagnosis.no_fix]
    return tuple(lines)


def runtime_line(problem: FitProblem) -> str:
    """'runtime hf (its defaults: loss fused_head, ...); set: fsdp fsdp2, fsdp_cpu_offload true'."""
    from swiftplan.tui.knobs import override_text

    if problem.runtime is None:
        return ""
    line = problem.runtime.describe()
    overrides = {k: v for k, v in problem.request.runtime_options.items() if k in problem.runtime.options}
    return line + (f"; set: {override_text(overrides)}" if overrides else "")


def outcome(search_id: int, fit: FitOutcome, final: SearchSnapshot) -> SearchOutcome:
    """The plan view for a finished search."""
    problem, result = fit.problem, fit.result
    if result.best is None:
        rows: list[Evaluation] = []
    elif result.pareto:
        rows = _spread(list(result.pareto), PLAN_ROWS)
    else:
        rows = [result.best, *result.runners_up]
    notes = [note for note in problem.notes if not note.startswith("workload:")]
    if fit.alternative is not None:
        notes.append(engine_line(fit.alternative, problem.engine.name, problem.settings.objective))
    return SearchOutcome(
        search_id=search_id,
        title=problem.title,
        runtime_line=runtime_line(problem),
        choices=tuple(make_choice(e, problem) for e in rows),
        family_lines=tuple(family_line(f, result.best, result.objective) for f in result.families),
        diagnosis=_diagnosis(fit),
        search_line=search_line(result, problem.settings.seed),
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
