"""The fit search: the study, run once per variant of a preference or RL objective (the best kept) with each
evaluated candidate reported to a watcher; the diagnosis when nothing fits; a note when the plan leaves training
GPUs idle; and the search without the engine's limits (serving: on each other engine) for a plan another engine
could run clearly better.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from swiftplan.errors import SwiftplanError
from swiftplan.planner.engines import (
    engines_that_run,
    serve_requirements,
    train_requirements,
)
from swiftplan.planner.hardware import Cluster
from swiftplan.planner.plan import Plan
from swiftplan.planner.search.evaluate import Evaluation
from swiftplan.planner.search.optimize import SearchResult, SearchSettings
from swiftplan.planner.search.serve_space import engine_runtime
from swiftplan.planner.setup import ServeSetup
from swiftplan.planner.workload import ServeWorkload, TrainWorkload
from swiftplan.usecases.fit_engine import engine_cluster
from swiftplan.usecases.fit_outcome import EngineAlternative, FitOutcome, VariantResult, plan_from
from swiftplan.usecases.fit_problem import FitProblem, _evaluator
from swiftplan.usecases.fit_request import FitTask

ENGINE_WIN_MARGIN = 0.02
"""A plan another engine could run is mentioned when it beats the chosen engine's by more than this."""


class _Reporting:
    """The evaluator with its top-level entry points reporting each result (one call per structure)."""

    def __init__(self, inner: Any, report: Callable[[Evaluation], None]) -> None:
        self._inner, self._report = inner, report

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def resolve(self, structure: Any, objective: Any = "time") -> Evaluation:
        return self._done(self._inner.resolve(structure, objective))

    def evaluate(self, candidate: Any) -> Evaluation:
        return self._done(self._inner.evaluate(candidate))

    def best_concurrency(self, structure: Any, objective: Any = "throughput") -> Evaluation:
        return self._done(self._inner.best_concurrency(structure, objective))

    def _done(self, evaluation: Evaluation) -> Evaluation:
        self._report(evaluation)
        return evaluation


def _search(evaluator: Any, settings: SearchSettings, task: FitTask) -> SearchResult:
    from swiftplan.planner.search.optimize import search_serving, search_training

    return search_training(evaluator, settings) if task == "train" else search_serving(evaluator, settings)


def requirements_of(evaluation: Evaluation, cluster: Cluster) -> Any:
    """What an evaluated plan asks of an engine."""
    estimate = evaluation.estimate
    assert estimate is not None
    backend = cluster.accelerator.backend
    if isinstance(estimate.setup, ServeSetup):
        return serve_requirements(estimate.setup, backend=backend, gpus=evaluation.gpus,
                                  accelerator=cluster.accelerator)  # fmt: skip
    return train_requirements(estimate.setup, backend=backend, gpus=evaluation.gpus)


def _alternative(problem: FitProblem, best: Evaluation | None) -> EngineAlternative | None:
    """A clearly better plan that another engine in the table could run (searched without the engine's limits)."""
    request = problem.request
    if not request.compare_engines or request.pareto:
        return None
    if request.task == "serve":
        return _serve_alternative(problem, best)
    offered = problem.offered_cluster
    try:
        free = _evaluator(problem.spec, offered, problem.workload, problem.pins, None, request,
                          problem.evaluator.host_ram_bytes if request.task == "train" else 0)  # fmt: skip
    except SwiftplanError:
        return None
    result = _search(free, replace(problem.settings, storage=None, study_name=None), request.task)
    other = result.best
    if other is None or other.estimate is None:
        return None
    goal = problem.settings.objective
    ratio = _advantage(other, best, goal)
    if ratio <= 1 + ENGINE_WIN_MARGIN:
        return None
    engines = tuple(
        e
        for e in engines_that_run(requirements_of(other, offered), request.task)
        if e.name != problem.engine.name
    )
    return EngineAlternative(evaluation=other, engines=engines, ratio=ratio) if engines else None


def _serve_alternative(problem: FitProblem, best: Evaluation | None) -> EngineAlternative | None:
    """The best serving plan of each other engine, searched under its limits and timed with its own runtime
    (its per-step decode cost), when clearly better than the chosen engine's."""
    from swiftplan.planner.engines import list_engines

    assert isinstance(problem.workload, ServeWorkload)
    request, found = problem.request, None
    backend = problem.offered_cluster.accelerator.backend
    for engine in list_engines("serve"):
        backends = engine.allowed("backend", backend)
        if engine.name == problem.engine.name or (backends is not None and backend not in backends):
            continue
        try:
            cluster = engine_cluster(engine, problem.offered_cluster, [])
            workload = replace(problem.workload, runtime=engine_runtime(engine))
            evaluator = _evaluator(problem.spec, cluster, workload, problem.pins, engine, request, 0)
        except SwiftplanError:  # the engine does not run on these devices or with these pins
            continue
        other = _search(evaluator, replace(problem.settings, storage=None, study_name=None), "serve").best
        if other is None or other.estimate is None:
            continue
        ratio = _advantage(other, best, problem.settings.objective)
        if ratio > 1 + ENGINE_WIN_MARGIN and (found is None or ratio > found.ratio):
            found = EngineAlternative(evaluation=other, engines=(engine,), ratio=ratio)
    return found


def _advantage(other: Evaluation, best: Evaluation | None, goal: str) -> float:
    """How many times better `other` is than `best` on the objective (infinite when nothing else fits)."""
    if best is None:
        return float("inf")
    if goal == "throughput":
        return other.tokens_per_s / best.tokens_per_s if best.tokens_per_s > 0 else float("inf")
    if goal == "cost":
        return best.cost / other.cost if other.cost > 0 else 1.0
    return best.time_s / other.time_s if other.time_s > 0 else 1.0


def _variant_problems(problem: FitProblem) -> list[FitProblem]:
    """The problem once per variant of its objective (the request's own first); one for SFT and serving."""
    workload = problem.workload
    if not isinstance(workload, TrainWorkload) or workload.objective.kind == "sft":
        return [problem]
    from swiftplan.planner.search.objective_variants import objective_variants

    request = problem.request
    host = problem.evaluator.host_ram_bytes
    problems = []
    for variant in objective_variants(
        workload.objective, request.objective_pins, world_size=problem.cluster.world_size
    ):
        changed = replace(workload, objective=variant)
        try:
            evaluator = _evaluator(
                problem.spec, problem.cluster, changed, problem.pins, problem.engine, request, host
            )
        except SwiftplanError:
            continue
        settings = (
            problem.settings
            if variant == workload.objective
            else replace(problem.settings, storage=None, study_name=None)
        )
        problems.append(replace(problem, workload=changed, evaluator=evaluator, settings=settings))
    return problems or [problem]


def _best_variant(problems: list[FitProblem], results: list[SearchResult]) -> int:
    """Index of the variant whose best plan wins on the objective (the request's own when none fits)."""
    best = 0
    for i, result in enumerate(results):
        if (
            result.best is not None
            and _advantage(result.best, results[best].best, problems[i].settings.objective) > 1
        ):
            best = i
    return best


def search_fit(problem: FitProblem, on_candidate: Callable[[Evaluation], None] | None = None) -> FitOutcome:
    """Run the study for a prepared problem (once per variant of a preference/RL objective, keeping the best);
    `on_candidate` sees every structure evaluated (and may raise to stop)."""
    started = time.perf_counter()
    problems = _variant_problems(problem)
    if len(problems) == 1:
        return _search_one(problem, on_candidate, started)
    results = [_search(p.evaluator if on_candidate is None else _Reporting(p.evaluator, on_candidate), p.settings, p.task)
               for p in problems]  # fmt: skip
    winner = _best_variant(problems, results)
    outcome = _search_one(problems[winner], None, started, result=results[winner])
    variants = tuple(VariantResult(objective=p.workload.objective, best=r.best)  # type: ignore[union-attr]
                     for p, r in zip(problems, results, strict=True))  # fmt: skip
    return replace(outcome, variants=variants, elapsed_s=time.perf_counter() - started)


def _search_one(
    problem: FitProblem,
    on_candidate: Callable[[Evaluation], None] | None,
    started: float,
    *,
    result: SearchResult | None = None,
) -> FitOutcome:
    """Search one problem (or take its finished `result`), diagnose when nothing fits, and plan."""
    from swiftplan.planner.search import infeasible

    if result is None:
        evaluator = problem.evaluator if on_candidate is None else _Reporting(problem.evaluator, on_candidate)
        result = _search(evaluator, problem.settings, problem.task)
    diagnosis = None
    if result.best is None and result.closest is not None:
        diagnose = infeasible.diagnose_training if problem.task == "train" else infeasible.diagnose_serving
        diagnosis = diagnose(problem.evaluator, problem.pins, result.closest, problem.settings.objective)
    plan = plan_from(problem, result.best) if result.best is not None else None
    if plan is not None and (note := _idle_gpus_note(problem, plan)):
        problem = replace(problem, notes=(*problem.notes, note))
    alternative = _alternative(problem, result.best)
    return FitOutcome(problem=problem, result=result, diagnosis=diagnosis, plan=plan, alternative=alternative,
                      elapsed_s=time.perf_counter() - started)  # fmt: skip


def _idle_gpus_note(problem: FitProblem, plan: Plan) -> str | None:
    """When the plan leaves training GPUs idle because the global batch does not split over all of them
    (micro-batch × accumulation × data-parallel ranks = global batch): say so, and the batch that would not."""
    workload = problem.workload
    if not isinstance(workload, TrainWorkload):
        return None
    layout, batch = plan.layout, workload.global_batch
    world = problem.cluster.world_size - workload.objective.server_gpus
    model_parallel = layout.tp * layout.pp
    if layout.gpus >= world or world % model_parallel:
        return None
    ranks = world // model_parallel
    if batch % ranks == 0:
        return None
    from swiftplan.planner.search.space_batch import split_global_batch

    better = split_global_batch(batch, ranks, pins=problem.pins, objective=workload.objective)
    return (
        f"the plan trains on {layout.gpus} of the {world} GPUs; the other {world - layout.gpus} idle: a step's "
        f"--global-batch {batch} sequences are micro-batch × accumulation × data-parallel ranks, and {ranks} ranks "
        f"do not divide {batch}. --global-batch {better} would put all {world} to work."
    )
