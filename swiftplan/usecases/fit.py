"""The fit use case: request → model and hardware → search space for the engine → study → diagnosis →
`Plan`. `swiftplan fit`, `swiftplan size` (its next command) and the dashboard all go through here.

`prepare_fit` resolves and validates everything and builds the evaluator; `search_fit` runs the study
(optionally reporting each evaluated candidate, which may raise to cancel), diagnoses an infeasible
job, builds the plan, and checks whether a plan the chosen engine cannot run would beat it by enough
to say so; `plan_fit` does both.

The steps live in modules of their own: the request and its checks (fit_request), the workload built from it
(fit_workload), the image checks and notes that `size` shares (fit_vision), the resolved problem (fit_problem),
the search (fit_search) and what it found (fit_outcome). This module is the door the views use: it re-exports
those names and holds `plan_fit`.
"""

from __future__ import annotations

from swiftplan.usecases.fit_outcome import EngineAlternative, FitOutcome, VariantResult, plan_from
from swiftplan.usecases.fit_problem import FitProblem, prepare_fit
from swiftplan.usecases.fit_request import FitRequest, FitTask
from swiftplan.usecases.fit_search import search_fit

__all__ = [
    "EngineAlternative",
    "FitOutcome",
    "FitProblem",
    "FitRequest",
    "FitTask",
    "VariantResult",
    "plan_fit",
    "plan_from",
    "prepare_fit",
    "search_fit",
]


def plan_fit(request: FitRequest) -> FitOutcome:
    """The fit use case: resolve, search, diagnose, plan."""
    return search_fit(prepare_fit(request))
