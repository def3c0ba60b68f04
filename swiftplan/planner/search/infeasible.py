"""When nothing fits: by how much, and the smallest changes that would fit, each checked with the estimator.

Every suggestion is backed by an evaluation of a concrete plan: QLoRA (when pins left it out), a
shorter sequence or context (the longest that fits, by binary search), offload to host RAM (how much
it would need), more GPUs of the same type (the smallest count that fits), and the smallest catalog
GPU that fits. Feasibility checks use the leanest variant of each structure at micro-batch 1 with
checkpointing, which is the least memory the space offers. Pure.

This module holds the `Diagnosis` and the two entry points, training's and serving's; the sentences saying by
how much live in infeasible_shortfall, the changes both tasks share in infeasible_fixes, and training's own in
infeasible_train.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from swiftplan.errors import SwiftplanError
from swiftplan.planner.hardware import Cluster
from swiftplan.planner.search.candidate import Candidate, ServeCandidate
from swiftplan.planner.search.evaluate import Evaluation, Objective, ServeEvaluator, TrainEvaluator
from swiftplan.planner.search.infeasible_fixes import (
    Suggestion,
    _bigger_gpu,
    _faster_gpu,
    _first_fit,
    _largest_fitting,
    _more_gpus,
)
from swiftplan.planner.search.infeasible_shortfall import _fit_text, _serve_fit_text, _serve_summary, _summary
from swiftplan.planner.search.infeasible_train import (
    _bigger_train_gpu,
    _offload_plan,
    _qlora_suggestion,
    _shorter_sequence,
    _Train,
)
from swiftplan.planner.search.pins import Pins
from swiftplan.planner.search.serve_space import build_serve_space


@dataclass(frozen=True, kw_only=True, slots=True)
class Diagnosis:
    """Why nothing fits and what would."""

    closest: Evaluation
    """The plan nearest to fitting."""
    summary: str
    """One sentence: what the closest plan needs against the budget."""
    suggestions: tuple[Suggestion, ...]
    """Changes that fit, smallest first."""
    no_fix: str = (
        "No single change checked (QLoRA, shorter sequence, offload, more or bigger GPUs) makes it fit."
    )
    """What to say when no suggestion fits: the changes that were checked, for this task."""


def diagnose_training(
    evaluator: TrainEvaluator, pins: Pins, closest: Evaluation, objective: Objective = "time"
) -> Diagnosis:
    """Explain a training search where no plan is feasible."""
    checks = _Train(evaluator, pins)

    def best(cluster: Cluster) -> Evaluation | None:
        from swiftplan.planner.search.optimize import SearchSettings, search_training

        return search_training(checks.evaluator(cluster=cluster), SearchSettings(objective=objective)).best

    found = (
        _qlora_suggestion(checks),
        _shorter_sequence(checks),
        _offload_plan(checks, evaluator.space.methods),
        _more_gpus(evaluator.cluster, lambda c: checks.fits(checks.evaluator(cluster=c)), best),
        _bigger_train_gpu(checks),
    )
    suggestions = tuple(s for s in found if s is not None)
    return Diagnosis(closest=closest, summary=_summary(closest), suggestions=suggestions)


SERVE_NO_FIX = (
    "No single change checked (quantized weights, a shorter --context, a lower --concurrency, more GPUs, "
    "a bigger or faster GPU) makes it fit."
)
"""A serving diagnosis without a suggestion: the serving changes it checked."""


def diagnose_serving(
    evaluator: ServeEvaluator, pins: Pins, closest: Evaluation, objective: Objective = "throughput"
) -> Diagnosis:
    """Explain a serving search where no plan is feasible: by how much it misses memory or the latency
    targets, and the serving changes that would fit (quantization, context, concurrency, GPUs)."""
    suggestions: list[Suggestion] = []

    def make(
        cluster: Cluster | None = None,
        context: int | None = None,
        pins_: Pins | None = None,
        concurrency: int | None = None,
    ) -> ServeEvaluator:
        cluster = cluster or evaluator.cluster
        workload = evaluator.workload if context is None else replace(evaluator.workload, context=context)
        if concurrency is not None:
            workload = replace(workload, concurrency=concurrency)
        space = build_serve_space(evaluator.spec, cluster, pins_ or pins, evaluator.space.engine)
        return ServeEvaluator(evaluator.spec, cluster, workload, space, headroom=1 - evaluator.utilization)

    def fits(other: ServeEvaluator) -> Evaluation | None:
        return _first_fit(other.best_concurrency(s) for s in other.space.structures())

    leans = [evaluator.best_concurrency(s) for s in evaluator.space.structures()]
    slow = any(lean.latency_over > 0 and lean.memory_over_bytes <= 0 for lean in leans)

    def text(plan: Evaluation) -> str:
        return _serve_fit_text(plan, evaluator.workload) if slow else _fit_text(plan)

    if pins.quants is not None and "nf4" not in pins.quants:
        try:
            plan = fits(make(pins_=replace(pins, quants=None)))
        except SwiftplanError:
            plan = None
        if plan is not None:
            suggestions.append(
                Suggestion(change="quantization", text=f"quantized weights: {text(plan)}.", evaluation=plan)
            )
    context = evaluator.workload.context
    if context > 512:
        plan = _largest_fitting(512, context - 1, 512, lambda n: fits(make(context=n)))
        if plan is not None:
            shorter = f"a shorter context, --context {plan.estimate.setup.context}: {text(plan)}."  # type: ignore[union-attr]
            suggestions.append(Suggestion(change="shorter context", text=shorter, evaluation=plan))
    concurrency = evaluator.workload.concurrency
    if concurrency is not None and concurrency > 1:
        most = [0]  # the largest concurrency seen to fit

        def fits_at(n: int) -> Evaluation | None:
            plan = fits(make(concurrency=n))
            if plan is not None:
                most[0] = max(most[0], n)
            return plan

        plan = _largest_fitting(1, concurrency - 1, 1, fits_at)
        if plan is not None:
            lower = f"a lower --concurrency, {most[0]}: {text(plan)}."
            suggestions.append(Suggestion(change="lower concurrency", text=lower, evaluation=plan))

    def best(cluster: Cluster) -> Evaluation | None:
        from swiftplan.planner.search.optimize import SearchSettings, search_serving

        return search_serving(make(cluster=cluster), SearchSettings(objective=objective)).best

    def fits_on(cluster: Cluster) -> Evaluation | None:
        try:
            return fits(make(cluster=cluster))
        except SwiftplanError:
            return None

    more = _more_gpus(evaluator.cluster, fits_on, best, text)
    if more is not None:
        suggestions.append(more)

    def recheck(candidate: Candidate | ServeCandidate, cluster: Cluster) -> Evaluation | None:
        if not isinstance(candidate, ServeCandidate):
            return None
        try:
            other = make(cluster=cluster)
        except SwiftplanError:
            return None
        structure = candidate.replace(concurrency=0)
        return other.best_concurrency(structure) if structure in other.space.structures() else None

    other_gpu = _faster_gpu(evaluator.cluster, fits_on, evaluator.workload) if slow else None
    if other_gpu is None:
        other_gpu = _bigger_gpu(evaluator.cluster, leans, recheck, 1 - evaluator.utilization)
    if other_gpu is not None:
        suggestions.append(other_gpu)
    summary = _serve_summary(closest, evaluator.workload, leans)
    return Diagnosis(closest=closest, summary=summary, suggestions=tuple(suggestions), no_fix=SERVE_NO_FIX)
