"""The Optuna study behind `swiftplan fit`: structural choices sampled by TPE under constraints.

Each trial suggests the structural choices (method, quantization, precision, optimizer, checkpointing,
ZeRO/offload, GPUs/tp/pp, and with --rank auto the adapter shape); the evaluator picks the micro-batch
(or concurrency) and returns the objective, and the trial's constraints report device memory, host RAM and
latency margins (`Trial.set_constraint`) so TPE learns where the feasible region is. The study starts from a few enqueued
heuristic plans, skips parameter sets it has already evaluated (a cache keyed by candidate), and ends
with a local polish: every one-choice change of the best plans is enqueued as a trial. Small spaces
are enumerated exhaustively by the same study. Pure apart from the storage URL the caller passes.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from swiftplan.errors import SwiftplanError
from swiftplan.planner.search.evaluate import (
    CONSTRAINTS,
    Evaluation,
    Objective,
    ServeEvaluator,
    TrainEvaluator,
)
from swiftplan.planner.search.params import ServeParams, TrainParams
from swiftplan.planner.search.seeds import serve_seeds, train_seeds


@dataclass(frozen=True, kw_only=True, slots=True)
class SearchSettings:
    """How to search."""

    objective: Objective = "time"
    """What a single-objective search minimises (throughput is maximised)."""
    pareto: bool = False
    """Multi-objective: time, cost and memory headroom (and adapter capacity when the rank is searched)."""
    seed: int = 0
    """Sampler seed; the same seed and problem give the same plan."""
    trials: int | None = None
    """Distinct candidates to evaluate; None picks a number from the size of the space."""
    storage: str | None = None
    """Optuna storage URL (e.g. sqlite:///study.db); None keeps the study in memory."""
    study_name: str | None = None
    """Name of the study in the storage (resumed when it exists)."""
    fingerprint: str = ""
    """Identity of the problem (model, cluster, workload, pins); a resumed study must match it."""


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
    estimates: int
    """Estimator calls made."""
    sampler: str
    """Sampler used."""


EXHAUSTIVE_MAX = 1500
"""Spaces up to this many structures are enumerated: one structure costs ~1.3 ms to evaluate for an
80-layer model while a TPE trial costs 3-5 ms of sampler time on top, so below this size enumeration
is both exact and faster (benchmarks/results/search_quality.md)."""
TPE_TRIALS = 150
"""Distinct structures a TPE study evaluates in larger spaces."""
PATIENCE = 25
"""A TPE study stops after this many trials in a row that propose nothing new (it has converged)."""


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


def _shape(candidate: Any) -> tuple:
    if hasattr(candidate, "layout"):
        return (
            candidate.method,
            candidate.quant,
            candidate.layout,
            candidate.zero,
            candidate.offload,
            candidate.grad_ckpt,
        )
    return (candidate.quant, candidate.kv_dtype, candidate.tp)


class _Run:
    """One search: the study, the parameter mapping and the evaluated structures."""

    def __init__(
        self,
        params: TrainParams | ServeParams,
        evaluate: Callable[[Any], Evaluation],
        settings: SearchSettings,
    ) -> None:
        self.params, self.evaluate, self.settings = params, evaluate, settings
        self.results: dict[Any, Evaluation] = {}
        self.with_capacity = settings.pareto and params.searches_capacity

    def objective(self, trial: Any) -> float | list[float]:
        structure = self.params.suggest(trial)
        evaluation = self.results.get(structure)
        if evaluation is None:
            evaluation = self.results[structure] = self.evaluate(structure)
        for name, value in zip(CONSTRAINTS, evaluation.constraints(), strict=True):
            trial.set_constraint(name, value)
        trial.set_user_attr("candidate", self.params.encode(structure))
        if self.settings.pareto:
            return evaluation.pareto_values(self.with_capacity)
        return evaluation.objective(self.settings.objective)

    def ranked(self) -> list[Evaluation]:
        return sorted(self.results.values(), key=lambda e: e.rank_key(self.settings.objective))


def _list_sampler(optuna: Any, points: list[dict[str, Any]]) -> Any:
    """A sampler that proposes `points` in order, one per trial (exhaustive enumeration without Optuna's
    waiting queue, whose per-trial scan makes enqueueing thousands of trials quadratic)."""

    class ListSampler(optuna.samplers.BaseSampler):
        def __init__(self) -> None:
            self.next = 0
            self.assigned: dict[int, dict[str, Any]] = {}

        def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
            return {}

        def sample_relative(self, study: Any, trial: Any, search_space: Any) -> dict[str, Any]:
            return {}

        def sample_independent(self, study: Any, trial: Any, name: str, distribution: Any) -> Any:
            if trial.number not in self.assigned:
                self.assigned[trial.number] = points[min(self.next, len(points) - 1)]
                self.next += 1
            return self.assigned[trial.number].get(name, distribution.choices[0])

    return ListSampler()


def _create_study(
    run: _Run, settings: SearchSettings, sampler_name: str, points: list[dict[str, Any]]
) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    if sampler_name == "exhaustive":
        sampler: Any = _list_sampler(optuna, points)
    else:
        sampler = optuna.samplers.TPESampler(
            seed=settings.seed, multivariate=True, group=True, n_startup_trials=10
        )
    directions = ["minimize"] * (4 if run.with_capacity else 3) if settings.pareto else None
    try:
        study = optuna.create_study(
            storage=settings.storage,
            study_name=settings.study_name,
            sampler=sampler,
            load_if_exists=True,
            direction=None if settings.pareto else "minimize",
            directions=directions,
        )
    except ValueError as error:  # direction mismatch on resume, bad URL
        raise SwiftplanError(f"Cannot open the study: {error}.", hint="Use a new --study-name.") from error
    stored = study.user_attrs.get("fingerprint")
    if stored is None:
        study.set_user_attr("fingerprint", settings.fingerprint)
    elif stored != settings.fingerprint:
        raise SwiftplanError(
            f"Study {study.study_name!r} in {settings.storage} was created for a different problem ({stored}).",
            hint="Use a new --study-name, or repeat the original model, --gpus and workload options.",
        )
    return study


def _run_until(study: Any, run: _Run, distinct: int, max_trials: int) -> None:
    start = len(run.results)
    trials = stale = 0
    seen = len(run.results)

    def stop(study_: Any, _trial: Any) -> None:
        nonlocal trials, stale, seen
        trials += 1
        stale = 0 if len(run.results) > seen else stale + 1
        seen = len(run.results)
        if seen - start >= distinct or trials >= max_trials or seen >= run.params.size or stale >= PATIENCE:
            study_.stop()

    if distinct > 0 and max_trials > 0:
        study.optimize(run.objective, callbacks=[stop], n_trials=max_trials)


def _resume(study: Any, run: _Run) -> None:
    """Re-evaluate the structures of a stored study so its trials count in the result."""
    for trial in study.get_trials(deepcopy=False):
        encoded = trial.user_attrs.get("candidate")
        if encoded is not None:
            structure = run.params.decode(encoded)
            if structure not in run.results:
                run.results[structure] = run.evaluate(structure)


def _polish(study: Any, run: _Run, budget: int, rounds: int = 3, top: int = 2) -> None:
    """Enqueue every one-choice change of the best plans until none improves (at most `budget` trials)."""
    for _ in range(rounds):
        best_before = run.ranked()[:top]
        fresh = []
        for evaluation in best_before:
            for neighbour in run.params.neighbours(evaluation.candidate):
                if neighbour not in run.results and neighbour not in fresh:
                    fresh.append(neighbour)
        fresh = fresh[:budget]
        budget -= len(fresh)
        if not fresh:
            return
        for neighbour in fresh:
            study.enqueue_trial(run.params.params_of(neighbour), skip_if_exists=False)
        study.optimize(run.objective, n_trials=len(fresh))
        if run.ranked()[:top] == best_before:
            return


def _families(run: _Run, labels: list[tuple[str, Callable[[Any], bool], bool]]) -> tuple[FamilyOutcome, ...]:
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
    run: _Run,
    settings: SearchSettings,
    seeds: list[Any],
    family_labels: Any,
    task: str,
    estimates: Callable[[], int],
) -> SearchResult:
    size = run.params.size
    distinct = settings.trials if settings.trials is not None else auto_trials(size)
    sampler_name = "exhaustive" if distinct >= size else "tpe"
    pending: list[dict[str, Any]] = []
    study = _create_study(run, settings, sampler_name, pending)
    queued: list[Any] = []
    if study.get_trials(deepcopy=False):
        _resume(study, run)
    else:
        queued = list(dict.fromkeys(seeds))
        for seed in queued:
            study.enqueue_trial(run.params.params_of(seed))
    if sampler_name == "exhaustive":
        done = set(run.results) | set(queued)
        pending.extend(run.params.params_of(s) for s in run.params.structures() if s not in done)
        distinct = len(pending) + len(queued)
    _run_until(
        study, run, distinct, max_trials=distinct + (len(queued) if sampler_name == "exhaustive" else 50)
    )
    if not settings.pareto and sampler_name == "tpe":
        _polish(study, run, budget=max(10, distinct // 3))
    ranked = run.ranked()
    best = ranked[0] if ranked and ranked[0].feasible else None
    runners_up: list[Evaluation] = []
    shapes = {_shape(best.candidate)} if best else set()
    for evaluation in ranked[1:]:
        if evaluation.feasible and _shape(evaluation.candidate) not in shapes and len(runners_up) < 4:
            shapes.add(_shape(evaluation.candidate))
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
        estimates=estimates(),
        sampler=sampler_name,
    )


def search_training(evaluator: TrainEvaluator, settings: SearchSettings) -> SearchResult:
    """Run the training study and summarise it."""
    space = evaluator.space
    params = TrainParams(space, pareto=settings.pareto, micro_batches=evaluator.micro_batches)

    def evaluate(structure: Any) -> Evaluation:
        if settings.pareto:
            return evaluator.evaluate(evaluator.lean(structure))
        return evaluator.resolve(structure, settings.objective)

    run = _Run(params, evaluate, settings)
    world = evaluator.cluster.world_size

    def families(best: Evaluation | None) -> list[tuple[str, Callable[[Any], bool], bool]]:
        out = [
            (label, (lambda c, m=method: c.method == m), method in space.methods)
            for method, label in (("full", "full"), ("lora", "LoRA"), ("qlora", "QLoRA"))
        ]
        if world > 1:
            out.append(
                ("single GPU without offload", lambda c: c.layout.gpus == 1 and c.offload == "none", True)
            )
        elif best is not None and best.candidate.offload != "none":
            out.append(("without offload", lambda c: c.offload == "none", True))
        return out

    seeds = train_seeds(space, evaluator.cluster)
    return _search(run, settings, seeds, families, "train", lambda: evaluator.estimates)


def search_serving(evaluator: ServeEvaluator, settings: SearchSettings) -> SearchResult:
    """Run the serving study and summarise it."""
    space = evaluator.space
    params = ServeParams(space)
    run = _Run(params, lambda s: evaluator.best_concurrency(s, settings.objective), settings)

    def families(best: Evaluation | None) -> list[tuple[str, Callable[[Any], bool], bool]]:
        labels = {"none": "unquantized", "fp8": "fp8 weights", "int8": "int8 weights", "nf4": "nf4 weights"}
        return [(labels[q], (lambda c, q=q: c.quant == q), True) for q in space.quants]

    return _search(run, settings, serve_seeds(space), families, "serve", lambda: evaluator.estimates)
