"""`swiftplan fit --measure`: time the top candidates on this machine's GPU (the hook the train executor fills).

Nothing here fakes a measurement: without a CUDA device the command says so, and until the train
executor exists `measure_candidates` refuses with a clear message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from swiftplan.errors import SwiftplanError
from swiftplan.planner.setup import TrainSetup


@dataclass(frozen=True, kw_only=True, slots=True)
class Measurement:
    """What a short real run of one candidate showed."""

    setup: TrainSetup
    """The set-up that ran."""
    peak_allocated_bytes: int
    """torch.cuda.max_memory_allocated() after the warm-up steps."""
    tokens_per_s: float
    """Measured training tokens per second."""


def cuda_available() -> bool:
    """Whether torch sees a CUDA (or ROCm) device; False without a GPU driver or without torch.

    The driver files are checked first so a machine without a GPU answers without importing torch."""
    import os
    import sys

    if sys.platform == "linux" and not any(
        os.path.exists(p) for p in ("/proc/driver/nvidia/version", "/dev/kfd")
    ):
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def require_cuda() -> None:
    """Raise the one-paragraph error `--measure` gives on a machine without a CUDA GPU."""
    if not cuda_available():
        raise SwiftplanError(
            "--measure runs the top candidates for a few steps on this machine's GPU, and no CUDA device was found "
            "(or torch is not installed).",
            hint="Drop --measure to plan from the model alone, or run it on the machine that will train.",
        )


def measure_candidates(model: str, setups: Sequence[TrainSetup], *, steps: int = 5) -> list[Measurement]:
    """Run each of the top-k set-ups for a few steps and measure memory and speed.

    The hook for the train executor (swiftplan.executors.train); until it lands this refuses.
    """
    raise SwiftplanError(
        f"--measure needs the train executor, which is not built yet; {len(setups)} candidate(s) were not measured.",
        hint="Drop --measure; the plan is the planner's prediction.",
    )
