"""`fit --measure`: run the best candidates of a fit for a few real steps and record them in its study.

`check_measure` holds the refusals every view gives before the search (`swiftplan fit --measure` and the
dashboard's job form); `measure_top` runs the measurement after it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from swiftplan.errors import SwiftplanError

MEASURE_DEVICES: tuple[Literal["cuda", "cpu"], ...] = ("cuda", "cpu")
"""Where --measure runs: this machine's CUDA (or ROCm) GPU, or the CPU for a smoke run."""


@dataclass(frozen=True, kw_only=True, slots=True)
class MeasureOptions:
    """How the top candidates are measured (fit's --measure-* flags), checked by `check_measure`."""

    top_k: int = 3
    """Candidates run, best predicted first (--measure-top)."""
    steps: int = 3
    """Timed optimizer steps per candidate after one warm-up (--measure-steps)."""
    layers: int | None = None
    """Decoder layers of the measured model (--measure-layers); None: the model's full depth."""
    device: Literal["cuda", "cpu"] = "cuda"
    """torch device type (--measure-device)."""
    seed: int = 0
    """Seed of the random init and the random token batches (fit's --seed)."""


def check_layers(model: str, layers: int | None) -> None:
    """--measure-layers cuts the model to fewer decoder layers: more than it has would build a bigger model
    than the one planned (99,999 layers of a 0.5B model exhausted a machine's memory)."""
    if layers is None:
        return
    from swiftplan.usecases import inputs

    spec = inputs.resolve_model(model)
    if layers > spec.num_layers:
        raise SwiftplanError(
            f"--measure-layers {layers:,} is more than the {spec.num_layers} layers of {spec.name}: it builds "
            "the measured model with fewer layers, never more.",
            hint=f"Use --measure-layers 1-{spec.num_layers}, or drop it to measure the full depth.",
        )


def check_measure(request: Any, *, top_k: int, steps: int, layers: int | None, device: str) -> MeasureOptions:
    """The measure options for a fit request, or one SwiftplanError saying why they cannot run: a serving
    task, image options (the random init is the language model alone), a device other than cuda/cpu, counts
    below 1, more layers than the model has, no CUDA device for 'cuda' (or no torch)."""
    if request.task == "serve":
        raise SwiftplanError("--measure times training candidates; it does not apply to --task serve.")
    if request.vision is not None:
        raise SwiftplanError(
            "--measure times the language model alone (a random init, without the vision tower or images), so it "
            "cannot rank plans with image options.",
            hint="Drop --measure to rank by the estimate (images counted), or the image options to time the text.",
        )
    if device not in MEASURE_DEVICES:
        raise SwiftplanError(f"--measure-device takes cuda or cpu, got {device!r}.")
    for flag, value in (("--measure-top", top_k), ("--measure-steps", steps), ("--measure-layers", layers)):
        if value is not None and value < 1:
            raise SwiftplanError(f"{flag} must be at least 1, got {value}.")
    check_layers(request.model, layers)
    if device == "cuda":
        from swiftplan.extras import needs

        with needs("measure"):
            from swiftplan.executors.measure import require_cuda

            require_cuda()
    return MeasureOptions(
        top_k=top_k,
        steps=steps,
        layers=layers,
        device="cuda" if device == "cuda" else "cpu",
        seed=request.seed,
    )


def measure_top(
    outcome: Any, *, top_k: int, steps: int, layers: int | None, device: str, seed: int,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[Any], list[Any]]:  # fmt: skip
    """(evaluations, measurements) of the outcome's best `top_k` plans, each run by the train executor's
    own model and optimizer; the measurements are added to the study as trials (OOM pruned).

    `progress` hears before each candidate that runs; an exception it raises stops the measurement there (how
    the dashboard cancels it: the candidate running is not interrupted)."""
    from swiftplan.executors.measure import measure_candidates, record_trials

    result = outcome.result
    evaluations = [e for e in [result.best, *result.runners_up] if e is not None and e.estimate][:top_k]
    measured = measure_candidates(outcome.problem.model, [e.estimate.setup for e in evaluations], steps=steps,
                                  layers=layers, device=device, seed=seed, progress=progress)  # fmt: skip
    if result.study is not None:
        record_trials(result.study, evaluations, measured, objective=outcome.problem.settings.objective)
    return evaluations, measured
