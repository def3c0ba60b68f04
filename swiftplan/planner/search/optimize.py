"""The search behind `swiftplan fit`: one Optuna study over the plan structures, summarised.

Each trial proposes a structure (method, quantization kind, checkpointing, sharding class, GPUs/tp/pp,
and with --rank auto the adapter shape); the evaluator picks the memory-only variants and the micro-batch
(or concurrency) and returns the objective, and the trial's constraints (device memory, host RAM, latency;
`Trial.set_constraint`) tell the sampler where the feasible region is. Spaces up to EXHAUSTIVE_MAX
structures are enumerated by branch and bound on a speed bound (exact); larger ones are sampled by TPE
from a few enqueued heuristic seeds, then polished by trying every one-choice change of the best plans.
The result is the winner, runners-up of other shapes, the best (or closest) plan of each family and, in
Pareto mode, the front. The Optuna mechanics live in `study.py`. Pure apart from the storage URL.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from swiftplan.planner.search.candidate import Candidate, ServeCandidate
from swiftplan.planner.search.evaluate import (
    Evaluation,
    Objective,
    ServeEvaluator,
    TrainEvaluator,
)
from swiftplan.planner.search.params import ServeParams, TrainParams
from swiftplan.planner.search.seeds import serve_seeds, train_seeds
from swiftplan.planner.search.study import (
    Run,
    SearchSettings,
    create_study,
    polish,
    resume,
    run_exhaustive,
    run_until,
    shape_of,
)


@dataclass(frozen=True, kw_only=True, slots=True)
class FamilyOutcome:
    """The best a family of plans managed, for the "why not" lines."""

    label: str
    """'full', 'LoRA', 'QLoRA', 'single GPU without offload', ..."""
    best: Evaluation | None
    """Best feasible plan of the family."""
    closest: Evaluation | None
    """When none is feasible: the one closest to fitting."""
    searched: bool
    """False when pins or the hardware excluded the family."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SearchResult:
    """What the search found."""

    task: str
    """'train' or 'serve'."""
    objective: Objective
    """The objective minimised."""
    best: Evaluation | None
    """The winning plan; None when nothing is feasible."""
    runners_up: tuple[Evaluation, ...]
    """The best feasible plans of other shapes (method, quantization, layout, sharding, checkpointing)."""
    pareto: tuple[Evaluation, ...]
    """Pareto mode: the non-dominated feasible plans, fastest first."""
    closest: Evaluation | None
    """The plan nearest to feasibility (the best plan when one is feasible)."""
    families: tuple[FamilyOutcome, ...]
    """Per family: best or closest."""
    evaluations: tuple[Evaluation, ...] = field(repr=False)
    """Every distinct structure evaluated, at its chosen micro-batch/concurrency."""
    trials: int
    """Trials in the study (including resumed and duplicate ones)."""
    space_size: int
    """Structural candidates in the space."""
    pruned: int = 0
    """Structures skipped because their speed bound could not win (exhaustive studies)."""
    estimates: int
    """Estimator calls made."""
    sampler: str
    """Sampler used."""
    study: Any = field(default=None, repr=False, compare=False)
    """The Optuna study (for `fit --measure` to add its measured trials to)."""


EXHAUSTIVE_MAX = 8000
"""Spaces up to this many structures are enumerated by branch and bound: a structure's speed bound costs
~0.1 ms and nearly all structures are pruned on it, while a TPE trial costs 3-9 ms of sampler time, so
below this size enumeration is both exact and faster (benchmarks/results/search_quality.md: 4,940
structures in ~1 s). Every default space up to 64 GPUs, and --rank auto on 8 GPUs, is below it."""
TPE_TRIALS = 150
"""Distinct structures a TPE study evaluates in larger spaces."""


def auto_trials(space_size: int) -> int:
    """Distinct structures to evaluate when not told: all of a small space, TPE_TRIALS of a large one."""
    return space_size if space_size <= EXHAUSTIVE_MAX else TPE_TRIALS


def _pareto_front(evaluations: Iterable[Evaluation], with_capacity: bool) -> list[Evaluation]:
    feasible = [e for e in evaluations if e.feasible]
    values = [e.pareto_values(with_capacity) for e in feasible]
    front = []
    for i, vi in enumerate(values):
        dominated = any(
            all(a <= b for a, b in zip(vj, vi, strict=True))
            and any(a < b for a, b in zip(vj, vi, strict=True))
            for j, vj in enumerate(values)
            if j != i
        )
        if not dominated:
            front.append(feasible[i])
    unique = {e.candidate: e for e in front}
    return sorted(unique.values(), key=lambda e: (e.time_s, e.candidate.simplicity()))


def _families(run: Run, labels: list[tuple[str, Callable[[Any], bool], bool]]) -> tuple[FamilyOutcome, ...]:
    out = []
    for label, member, searched in labels:
        members = [e for e in run.results.values() if member(e.candidate)]
        feasible = sorted(
            (e for e in members if e.feasible), key=lambda e: e.rank_key(run.settings.objective)
        )
        closest = min(members, key=lambda e: e.rank_key(run.settings.objective), default=None)
        out.append(
            FamilyOutcome(
                label=label,
                best=feasible[0] if feasible else None,
                closest=None if feasible else closest,
                searched=searched and bool(members),
            )
        )
    return tuple(out)


def _search(
    run: Run,
    settings: SearchSettings,
    seeds: list[Any],
    family_labels: Any,
    task: str,
    estimates: Callable[[], int],
) -> SearchResult:
    size = run.params.size
    distinct = settings.trials if settings.trials is not None else auto_trials(size)
    sampler_name = "exhaustive" if distinct >= size else "tpe"
    study = create_study(run, settings, sampler_name)
    queued: list[Any] = []
    if study.get_trials(deepcopy=False):
        resume(study, run)
    else:
        queued = list(dict.fromkeys(seeds))
        for seed in queued:
            study.enqueue_trial(run.params.params_of(seed))
    if sampler_name == "exhaustive":
        run.queue = [s for s in run.params.structures() if s not in run.results and s not in queued]
        if run.bound is not None and settings.prune and not settings.pareto:
            bounds = {s: run.bound(s) for s in run.queue}
            run.queue.sort(key=bounds.__getitem__)
            run.bound = lambda s: bounds.get(s, -math.inf)  # seeds are never pruned
            run.pruning = True
        run_exhaustive(study, run, len(queued))
    else:
        run_until(study, run, distinct, max_trials=distinct + 50)
    if not settings.pareto and sampler_name == "tpe":
        polish(study, run, budget=max(10, distinct // 3))
    ranked = run.ranked()
    best = ranked[0] if ranked and ranked[0].feasible else None
    runners_up: list[Evaluation] = []
    shapes = {shape_of(best.candidate)} if best else set()
    for evaluation in ranked[1:]:
        if evaluation.feasible and shape_of(evaluation.candidate) not in shapes and len(runners_up) < 4:
            shapes.add(shape_of(evaluation.candidate))
            runners_up.append(evaluation)
    return SearchResult(
        task=task,
        objective=settings.objective,
        best=best,
        runners_up=tuple(runners_up),
        pareto=tuple(_pareto_front(run.results.values(), run.with_capacity)) if settings.pareto else (),
        closest=ranked[0] if ranked else None,
        families=_families(run, family_labels(best)),
        evaluations=tuple(ranked),
        trials=len(study.get_trials(deepcopy=False)),
        space_size=size,
        pruned=len(run.pruned),
        estimates=estimates(),
        sampler=sampler_name,
        study=study,
    )


METHOD_FAMILIES = (("full", "full"), ("lora", "LoRA"), ("qlora", "QLoRA"))


def _method_is(method: str) -> Callable[[Candidate], bool]:
    return lambda c: c.method == method


def _quant_is(quant: str) -> Callable[[ServeCandidate], bool]:
    return lambda c: c.quant == quant


def search_training(evaluator: TrainEvaluator, settings: SearchSettings) -> SearchResult:
    """Run the training study and summarise it."""
    space = evaluator.space
    params = TrainParams(space, pareto=settings.pareto, micro_batches=evaluator.micro_batches)

    def evaluate(structure: Candidate) -> Evaluation[Candidate]:
        if settings.pareto:
            return evaluator.evaluate(evaluator.lean(structure))
        return evaluator.resolve(structure, settings.objective)

    world = evaluator.cluster.world_size
    by_method = [(label, _method_is(method)) for method, label in METHOD_FAMILIES]

    def single_gpu(c: Candidate) -> bool:
        return c.layout.gpus == 1 and c.offload == "none"

    def no_offload(c: Candidate) -> bool:
        return c.offload == "none"

    run = Run(
        params, evaluate, settings, bound=lambda s: evaluator.optimistic(s, settings.objective),
        families=(*(member for _, member in by_method), single_gpu, no_offload),
    )  # fmt: skip

    def families(best: Evaluation[Candidate] | None) -> list[tuple[str, Callable[[Candidate], bool], bool]]:
        out = [
            (label, member, method in space.methods)
            for (label, member), (method, _) in zip(by_method, METHOD_FAMILIES, strict=True)
        ]
        if world > 1:
            out.append(("single GPU without offload", single_gpu, True))
        elif best is not None and best.candidate.offload != "none":
            out.append(("without offload", no_offload, True))
        return out

    seeds = train_seeds(space, evaluator.cluster)
    return _search(run, settings, seeds, families, "train", lambda: evaluator.estimates)


def search_serving(evaluator: ServeEvaluator, settings: SearchSettings) -> SearchResult:
    """Run the serving study and summarise it."""
    space = evaluator.space
    params = ServeParams(space)
    run = Run(params, lambda s: evaluator.best_concurrency(s, settings.objective), settings)

    def families(
        best: Evaluation[ServeCandidate] | None,
    ) -> list[tuple[str, Callable[[ServeCandidate], bool], bool]]:
        labels = {"none": "unquantized", "fp8": "fp8 weights", "int8": "int8 weights", "nf4": "nf4 weights"}
        return [(labels[q], _quant_is(q), True) for q in space.quants]

    return _search(run, settings, serve_seeds(space), families, "serve", lambda: evaluator.estimates)
