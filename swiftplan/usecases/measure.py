"""`fit --measure`: run the best candidates of a fit for a few real steps and record them in its study."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def check_layers(model: str, layers: int | None) -> None:
    """--measure-layers cuts the model to fewer decoder layers: more than it has would build a bigger model
    than the one planned (99,999 layers of a 0.5B model exhausted a machine's memory)."""
    if layers is None:
        return
    from swiftplan.errors import SwiftplanError
    from swiftplan.usecases import inputs

    spec = inputs.resolve_model(model)
    if layers > spec.num_layers:
        raise SwiftplanError(
            f"--measure-layers {layers:,} is more than the {spec.num_layers} layers of {spec.name}: it builds "
            "the measured model with fewer layers, never more.",
            hint=f"Use --measure-layers 1-{spec.num_layers}, or drop it to measure the full depth.",
        )


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
