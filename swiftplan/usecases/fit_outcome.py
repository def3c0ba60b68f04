"""What a fit search found (`FitOutcome`: the study's result, a diagnosis when nothing fits, the winning plan,
a clearly better plan another engine could run, the objective's variants) and the `Plan` an evaluated candidate
becomes (`plan_from`, what `fit -o` writes).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from swiftplan import __version__
from swiftplan.errors import SwiftplanError
from swiftplan.planner.engines import Engine
from swiftplan.planner.layout import Layout
from swiftplan.planner.objective import ObjectiveSetup
from swiftplan.planner.plan import Plan, predict
from swiftplan.planner.search.candidate import Candidate, ServeCandidate
from swiftplan.planner.search.evaluate import Evaluation
from swiftplan.planner.search.infeasible import Diagnosis
from swiftplan.planner.search.optimize import SearchResult
from swiftplan.planner.workload import TrainWorkload
from swiftplan.usecases.fit_problem import FitProblem


@dataclass(frozen=True, kw_only=True, slots=True)
class EngineAlternative:
    """A better plan that needs an engine other than the one planned for."""

    evaluation: Evaluation
    """The better plan."""
    engines: tuple[Engine, ...]
    """Engines in the table that could run it."""
    ratio: float
    """How much better on the objective (> 1)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class VariantResult:
    """One searched variant of the objective (reference handling, rollout placement) and its best plan."""

    objective: ObjectiveSetup
    best: Evaluation | None
    """Its best plan; None when nothing fits."""


@dataclass(frozen=True, kw_only=True, slots=True)
class FitOutcome:
    """What `fit` found."""

    problem: FitProblem
    result: SearchResult
    diagnosis: Diagnosis | None
    """When nothing fits: by how much and what would."""
    plan: Plan | None
    """The winning plan."""
    alternative: EngineAlternative | None
    """A plan another engine could run, when clearly better."""
    elapsed_s: float
    variants: tuple[VariantResult, ...] = ()
    """The objective's variants searched beside the winner's (empty for SFT and serving)."""


def plan_from(problem: FitProblem, evaluation: Evaluation) -> Plan:
    """The `Plan` for one evaluated candidate of `problem` (what `fit -o` writes)."""
    estimate = evaluation.estimate
    if estimate is None:
        raise SwiftplanError(f"That candidate has no estimate: {evaluation.error}")
    candidate = evaluation.candidate
    if isinstance(candidate, Candidate):
        from swiftplan.planner.search.evaluate import job_cluster

        layout = candidate.layout
        assert isinstance(problem.workload, TrainWorkload)
        hardware = job_cluster(layout, problem.cluster, problem.workload)
    else:
        assert isinstance(candidate, ServeCandidate)
        hardware = problem.cluster
        layout = Layout(gpus=hardware.world_size, tp=candidate.tp)
    return Plan(
        model=problem.model,
        model_source=problem.spec.source or problem.spec.name,
        task=problem.task,
        engine=problem.engine.name,
        objective=problem.settings.objective,
        offered=problem.offered,
        hardware=hardware,
        layout=layout,
        setup=estimate.setup,
        workload=problem.workload,
        prediction=predict(estimate, workload=problem.workload, layout=layout, hardware=hardware),
        created=dt.datetime.now(dt.timezone.utc).replace(microsecond=0),
        swiftplan_version=__version__,
    )
