"""`fit --measure`: run the best candidates of a fit for a few real steps and record them in its study."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def measure_top(
    outcome: Any, *, top_k: int, steps: int, layers: int | None, device: str, seed: int,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[Any], list[Any]]:  # fmt: skip
    """(evaluations, measurements) of the outcome's best `top_k` plans, each run by the train executor's
    own model and optimizer; the measurements are added to the study as trials (OOM pruned)."""
    from swiftplan.executors.measure import measure_candidates, record_trials

    result = outcome.result
    evaluations = [e for e in [result.best, *result.runners_up] if e is not None and e.estimate][:top_k]
    measured = measure_candidates(outcome.problem.model, [e.estimate.setup for e in evaluations], steps=steps,
                                  layers=layers, device=device, seed=seed, progress=progress)  # fmt: skip
    if result.study is not None:
        record_trials(result.study, evaluations, measured, objective=outcome.problem.settings.objective)
    return evaluations, measured
