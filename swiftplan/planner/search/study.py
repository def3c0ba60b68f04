"""The Optuna mechanics of `fit`: the study, its samplers, running it, resuming it and polishing its best.

`Run` holds one search's evaluated structures and the objective Optuna calls. An exhaustive study walks a
queue with a sampler that proposes the queued structures in order (branch and bound when a speed bound is
given); otherwise TPE samples under the trials' constraints (`Trial.set_constraint`). Pure apart from the
storage URL the caller passes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

from swiftplan.errors import SwiftplanError
from swiftplan.planner.search.candidate import Candidate, ServeCandidate
from swiftplan.planner.search.evaluate import CONSTRAINTS, Evaluation, Objective

CandidateT = TypeVar("CandidateT", Candidate, ServeCandidate)


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
    prune: bool = True
    """Exhaustive studies skip structures whose speed bound cannot win (same answer, fewer estimates)."""


PATIENCE = 25
"""A TPE study stops after this many trials in a row that propose nothing new (it has converged)."""


class Params(Protocol[CandidateT]):
    """How one kind of candidate maps to Optuna parameters (`TrainParams`, `ServeParams`)."""

    @property
    def size(self) -> int:
        """Points the study can propose."""
        ...

    @property
    def searches_capacity(self) -> bool:
        """Whether the adapter shape is searched (Pareto mode then also maximises adapter capacity)."""
        ...

    def structures(self) -> list[CandidateT]: ...

    def suggest(self, trial: Any) -> CandidateT: ...

    def params_of(self, candidate: CandidateT) -> dict[str, Any]: ...

    def encode(self, candidate: CandidateT) -> dict[str, Any]: ...

    def decode(self, encoded: dict[str, Any]) -> CandidateT: ...

    def neighbours(self, candidate: CandidateT) -> list[CandidateT]: ...


def shape_of(candidate: Any) -> tuple:
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


class Run(Generic[CandidateT]):
    """One search: the study, the parameter mapping and the evaluated structures.

    An exhaustive study walks `queue` in order. With a `bound` (a lower bound on a structure's objective
    from the speed model alone) it is branch and bound: the queue is sorted best bound first, and a
    structure whose bound cannot beat the best feasible plan of each family it belongs to, nor the
    fifth-best plan shape, is skipped without a trial or a memory estimate. The winner, the runners-up
    and the per-family lines are the same as without pruning.
    """

    def __init__(
        self,
        params: Params[CandidateT],
        evaluate: Callable[[CandidateT], Evaluation[CandidateT]],
        settings: SearchSettings,
        *,
        bound: Callable[[CandidateT], float] | None = None,
        families: tuple[Callable[[CandidateT], bool], ...] = (),
    ) -> None:
        self.params: Params[CandidateT] = params
        self.evaluate: Callable[[CandidateT], Evaluation[CandidateT]] = evaluate
        self.settings = settings
        self.results: dict[CandidateT, Evaluation[CandidateT]] = {}
        self.with_capacity = settings.pareto and params.searches_capacity
        self.bound: Callable[[CandidateT], float] | None = bound
        self.families: tuple[Callable[[CandidateT], bool], ...] = families
        self.pruning = False
        self.family_best: dict[int, float] = {}
        self.shape_best: dict[tuple, float] = {}
        self.pruned: set[CandidateT] = set()
        self.queue: list[CandidateT] = []
        self.cursor = 0

    def _record(self, evaluation: Evaluation[CandidateT]) -> None:
        if not evaluation.feasible:
            return
        value = evaluation.objective(self.settings.objective)
        for index, member in enumerate(self.families):
            if member(evaluation.candidate):
                self.family_best[index] = min(value, self.family_best.get(index, math.inf))
        shape = shape_of(evaluation.candidate)
        self.shape_best[shape] = min(value, self.shape_best.get(shape, math.inf))

    def _prunable(self, structure: CandidateT) -> bool:
        if not self.pruning or self.bound is None:
            return False
        shapes = sorted(self.shape_best.values())
        threshold = shapes[4] if len(shapes) > 4 else math.inf
        for index, member in enumerate(self.families):
            if member(structure):
                threshold = max(threshold, self.family_best.get(index, math.inf))
        return self.bound(structure) > threshold

    def remaining(self) -> bool:
        """Skip queued structures that can no longer win (counted as pruned); True if any is left."""
        while self.cursor < len(self.queue):
            structure = self.queue[self.cursor]
            if structure in self.results:
                self.cursor += 1
            elif self._prunable(structure):
                self.pruned.add(structure)
                self.cursor += 1
            else:
                return True
        return False

    def next_point(self) -> dict[str, Any]:
        """Parameters of the next queued structure worth evaluating (exhaustive studies)."""
        if not self.remaining():
            return self.params.params_of(self.queue[-1])  # never reached: the study stops first
        self.cursor += 1
        return self.params.params_of(self.queue[self.cursor - 1])

    def objective(self, trial: Any) -> float | list[float]:
        structure = self.params.suggest(trial)
        evaluation = self.results.get(structure)
        if evaluation is None:
            evaluation = self.results[structure] = self.evaluate(structure)
            self._record(evaluation)
        for name, value in zip(CONSTRAINTS, evaluation.constraints(), strict=True):
            trial.set_constraint(name, value)
        trial.set_user_attr("candidate", self.params.encode(structure))
        if self.settings.pareto:
            return evaluation.pareto_values(self.with_capacity)
        return evaluation.objective(self.settings.objective)

    def ranked(self) -> list[Evaluation[CandidateT]]:
        return sorted(self.results.values(), key=lambda e: e.rank_key(self.settings.objective))


def list_sampler(optuna: Any, run: Run[Any]) -> Any:
    """A sampler that proposes the run's queued structures in order, one per trial (exhaustive enumeration
    without Optuna's waiting queue, whose per-trial scan makes enqueueing thousands of trials quadratic)."""

    class ListSampler(optuna.samplers.BaseSampler):
        def __init__(self) -> None:
            self.assigned: dict[int, dict[str, Any]] = {}

        def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
            return {}

        def sample_relative(self, study: Any, trial: Any, search_space: Any) -> dict[str, Any]:
            return {}

        def sample_independent(self, study: Any, trial: Any, name: str, distribution: Any) -> Any:
            if trial.number not in self.assigned:
                self.assigned[trial.number] = run.next_point()
            return self.assigned[trial.number].get(name, distribution.choices[0])

    return ListSampler()


def create_study(run: Run[Any], settings: SearchSettings, sampler_name: str) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    if sampler_name == "exhaustive":
        sampler: Any = list_sampler(optuna, run)
    else:
        sampler = optuna.samplers.TPESampler(
            seed=settings.seed, multivariate=True, group=True, n_startup_trials=10
        )
    directions: list[Literal["minimize"]] | None = (
        ["minimize"] * (4 if run.with_capacity else 3) if settings.pareto else None
    )
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


def run_until(study: Any, run: Run[Any], distinct: int, max_trials: int) -> None:
    start = len(run.results)
    trials = stale = 0
    seen = start

    def stop(study_: Any, _trial: Any) -> None:
        nonlocal trials, stale, seen
        trials += 1
        stale = 0 if len(run.results) > seen else stale + 1
        seen = len(run.results)
        if seen - start >= distinct or trials >= max_trials or seen >= run.params.size or stale >= PATIENCE:
            study_.stop()

    if distinct > 0 and max_trials > 0:
        study.optimize(run.objective, callbacks=[stop], n_trials=max_trials)


def run_exhaustive(study: Any, run: Run[Any], seeds: int) -> None:
    """Evaluate the seeds, then every queued structure that can still win."""
    trials = 0

    def stop(study_: Any, _trial: Any) -> None:
        nonlocal trials
        trials += 1
        if trials >= seeds and not run.remaining():
            study_.stop()

    if seeds or run.remaining():
        study.optimize(run.objective, callbacks=[stop], n_trials=seeds + len(run.queue))


def resume(study: Any, run: Run[CandidateT]) -> None:
    """Re-evaluate the structures of a stored study so its trials count in the result."""
    for trial in study.get_trials(deepcopy=False):
        encoded = trial.user_attrs.get("candidate")
        if encoded is not None and trial.state.name == "COMPLETE":
            structure = run.params.decode(encoded)
            if structure not in run.results:
                run.results[structure] = run.evaluate(structure)
                run._record(run.results[structure])


def polish(study: Any, run: Run[CandidateT], budget: int, rounds: int = 3, top: int = 2) -> None:
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
