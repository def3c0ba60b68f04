"""The dashboard's search: the fit use case (`usecases.fit`), reporting every candidate as it is evaluated.

`prepare` turns the form's `JobRequest` and the chosen hardware into the use case's `FitProblem`;
`run_search` runs it with a callback that sees each newly evaluated structure (and may raise
`SearchCancelled` to stop the study); `snapshot` turns the candidates so far into the scatter's points.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from swiftplan.planner.hardware import Cluster
from swiftplan.planner.objective import (
    OBJECTIVES,
    ObjectiveSetup,
    runtime_kl,
    runtime_rollout_memory,
    whole_prompts,
)
from swiftplan.planner.search.evaluate import INVALID, Evaluation
from swiftplan.planner.search.pins import Pins
from swiftplan.planner.setup import parse_choice
from swiftplan.tui.job import JobRequest
from swiftplan.units import format_duration, format_gib
from swiftplan.usecases.describe import candidate_summary
from swiftplan.usecases.fit import FitOutcome, FitProblem, FitRequest, prepare_fit, search_fit
from swiftplan.usecases.storage import check_storage_url

PointKind = Literal["infeasible", "feasible", "front", "best"]
Problem = FitProblem


class SearchCancelled(Exception):
    """Raised from the candidate callback to stop a running study."""


def fit_request(job: JobRequest, *, host_ram_bytes: int) -> FitRequest:
    """The fit request the form describes (the same options `swiftplan fit` takes; the runtime, and its
    overridden knobs for training); `host_ram_bytes` (the probed or default figure) unless the form sets one.
    A data or lengths file counts the dataset's tokens, as fit's --data/--lengths do without --dataset-tokens."""
    pins = (
        Pins(methods=job.methods, quants=job.quants, ranks=job.ranks)
        if job.task == "train"
        else Pins(quants=job.quants)
    )
    training = training_objective(job)
    seq, batch = job.seq_len, job.global_batch
    if training.rollout is not None:  # a rollout's sequence is prompt + completion, its batch whole prompts
        generations = training.rollout.num_generations
        seq, batch = training.rollout.seq_len, whole_prompts(batch, generations)
    counted = job.data is not None or job.lengths is not None  # the file's tokens replace the typed count
    return FitRequest(
        model=job.model, gpus="auto", task=job.task, objective=job.objective, pareto=job.pareto, pins=pins,
        dataset_tokens=None if counted else job.dataset_tokens, data=job.data, lengths=job.lengths,
        packing=job.packing, variable_lengths=job.variable_lengths,
        epochs=job.epochs, global_batch=batch, seq_len=seq,
        context=job.context, concurrency=job.concurrency, ttft_s=job.ttft_s, decode_tps=job.decode_tps,
        headroom=job.headroom, host_ram_bytes=host_ram_bytes if job.host_ram_bytes is None else job.host_ram_bytes,
        seed=job.seed, trials=job.trials, storage=job.storage, study_name=job.study_name,
        runtime=job.runtime or None, training=training,
        runtime_options=dict(job.runtime_options) if job.task == "train" else {}, eager=job.eager, dora=job.dora,
        vision=job.vision,
    )  # fmt: skip


def training_objective(job: JobRequest) -> ObjectiveSetup:
    """The form's training objective with fit's defaults for its runtime (GRPO's KL penalty and the
    colocated rollout engine's memory fraction)."""
    kind = parse_choice("task", job.training, OBJECTIVES)
    objective = ObjectiveSetup(kind=kind, kl=runtime_kl(kind, job.runtime))
    if objective.rollout is None:
        return objective
    return replace(
        objective, rollout=replace(objective.rollout, memory_fraction=runtime_rollout_memory(job.runtime))
    )


def prepare(job: JobRequest, cluster: Cluster, *, host_ram_bytes: int) -> FitProblem:
    """Resolve the model and build the search, exactly as `swiftplan fit` does, on the chosen hardware."""
    request = fit_request(job, host_ram_bytes=host_ram_bytes)
    problem = prepare_fit(request, cluster=cluster)
    check_storage_url(request.storage)  # last, as fit: opening a new storage creates it
    return problem


def run_search(problem: FitProblem, on_candidate: Callable[[Evaluation], None]) -> FitOutcome:
    """Run the study; `on_candidate` sees every structure evaluated, and may raise SearchCancelled."""
    return search_fit(problem, on_candidate)


# --- what the live view shows ---------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Point:
    """One candidate in the scatter."""

    memory_bytes: int
    """Predicted device total per GPU."""
    time_s: float
    """Training: time to train; serving: seconds per generated token for one user."""
    kind: PointKind
    """How it is drawn: over a limit, within limits, on the time-vs-memory front, or the best so far."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SearchSnapshot:
    """The search as the live view shows it."""

    search_id: int
    """Which search (a restarted search gets a new id; stale reports are dropped)."""
    evaluated: int
    """Distinct candidates evaluated so far."""
    feasible: int
    """How many of them fit."""
    best_line: str
    """The best plan so far in one line ('' until one fits)."""
    points: tuple[Point, ...]
    """Candidates with an estimate."""
    limit_bytes: int
    """Device memory a plan may use (budget less headroom)."""
    budget_bytes: int
    """Device memory."""
    y_label: str
    """What the y axis measures."""


def best_line(evaluation: Evaluation, task: str) -> str:
    """The best-so-far line: the plan, its speed and its memory."""
    speed = f"{evaluation.tokens_per_s:,.0f} tok/s"
    if task == "train":
        speed += f", {format_duration(evaluation.time_s)}"
    return f"{candidate_summary(evaluation)} — {speed}, {format_gib(evaluation.device_total_bytes, 1)}/GPU"


def time_memory_front(evaluations: Iterable[Evaluation]) -> set[Any]:
    """Candidates of the feasible plans no other beats on both time and memory."""
    feasible = sorted((e for e in evaluations if e.feasible), key=lambda e: (e.device_total_bytes, e.time_s))
    front, fastest = set(), float("inf")
    for evaluation in feasible:
        if evaluation.time_s < fastest:
            front.add(evaluation.candidate)
            fastest = evaluation.time_s
    return front


def snapshot(search_id: int, problem: Problem, evaluations: Sequence[Evaluation]) -> SearchSnapshot:
    """The live view of the candidates evaluated so far."""
    objective = problem.settings.objective
    ranked = sorted(evaluations, key=lambda e: e.rank_key(objective))
    best = ranked[0] if ranked and ranked[0].feasible else None
    front = time_memory_front(evaluations)
    points = []
    for evaluation in evaluations:
        if evaluation.estimate is None or evaluation.time_s >= INVALID:
            continue
        kind: PointKind = "infeasible"
        if best is not None and evaluation.candidate == best.candidate:
            kind = "best"
        elif evaluation.candidate in front:
            kind = "front"
        elif evaluation.feasible:
            kind = "feasible"
        points.append(Point(memory_bytes=evaluation.device_total_bytes, time_s=evaluation.time_s, kind=kind))
    return SearchSnapshot(
        search_id=search_id,
        evaluated=len(evaluations),
        feasible=sum(1 for e in evaluations if e.feasible),
        best_line=best_line(best, problem.task) if best else "",
        points=tuple(points),
        limit_bytes=problem.evaluator.limit_bytes,
        budget_bytes=problem.cluster.memory_bytes_per_device,
        y_label="time to train" if problem.task == "train" else "s/token per user",
    )
