"""Training MFU: the share of dense peak FLOP/s a training step reaches, by accelerator family.

    mfu(t, N) = mfu_max(family) × t / (t + tokens_half) × N / (N + params_half)

t is the tokens one device runs through per micro-step (micro_batch × seq_len), N the model's matmul parameters
per token (its active parameters: for a mixture of experts, the experts one token uses).

Why this shape: a micro-step costs its FLOPs at the family's best achievable rate plus work that does not
grow with the tokens. Two such costs are named. Each matmul reads its weights once per pass whatever t is,
and a bf16 GEMM over t tokens does about t FLOPs per byte of weight read, so below the accelerator's ridge
point (peak FLOP/s ÷ memory bandwidth, about 150 FLOP/B on an A100) it waits on memory; with the time
t·F/peak + c of t tokens the utilisation is t / (t + c·peak/F), the first factor. Kernel launches, norms,
activations and the optimizer step do not shrink with the model's width, so a small model spends a larger
share of each step outside the matmuls that MFU counts: the second factor (1 when params_half is 0).
Both factors are at most 1, so `mfu_max` is a ceiling that no set-up exceeds (the search's compute floor
relies on it).

The constants are calibration data (profiles/calibration.json "training_efficiency"): one ceiling per
family and the two half-points shared by all families, fitted by benchmarks/fit_training_speed.py on the
fit set of published throughput rows (benchmarks/data/published_train_speed.csv); a constant the fit set
cannot inform stays a documented prior, and its source says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from swiftplan.errors import SwiftplanError
from swiftplan.planner.calibration import constant

if TYPE_CHECKING:
    from swiftplan.planner.hardware import Accelerator

Family = Literal["datacenter", "consumer", "apple", "npu"]
SECTION = "training_efficiency"


@dataclass(frozen=True, kw_only=True, slots=True)
class MfuCurve:
    """Achievable training MFU of one accelerator family as a function of the micro-batch and the model."""

    mfu_max: float
    """The family's ceiling: MFU of a large model at a large micro-batch."""
    tokens_half: float
    """Tokens per micro-batch at which the token factor is one half."""
    params_half: float
    """Model parameters at which the size factor is one half (0: no size dependence)."""

    def __post_init__(self) -> None:
        if not 0 < self.mfu_max <= 1:
            raise ValueError(f"mfu_max must be in (0, 1], got {self.mfu_max!r}")
        if self.tokens_half < 0 or self.params_half < 0:
            raise ValueError(f"half-points must be >= 0, got {self.tokens_half!r}, {self.params_half!r}")

    def at(self, *, tokens_per_micro_batch: float, params: float) -> float:
        """MFU of a micro-batch of `tokens_per_micro_batch` tokens through a model of `params` parameters."""
        if tokens_per_micro_batch <= 0:
            raise SwiftplanError(
                f"tokens per micro-batch must be positive to estimate training speed, got {tokens_per_micro_batch!r}: "
                "use a micro-batch of at least 1 sequence of at least 1 token."
            )
        if params <= 0:
            raise SwiftplanError(
                f"the model's parameter count must be positive to estimate training speed, got {params!r}: "
                "check the model's architecture (hidden size, layers, vocabulary)."
            )
        tokens_factor = tokens_per_micro_batch / (tokens_per_micro_batch + self.tokens_half)
        size_factor = params / (params + self.params_half)
        return self.mfu_max * tokens_factor * size_factor


def family(accelerator: Accelerator) -> Family:
    """The calibration family of an accelerator: Apple (MPS), Ascend (NPU), GeForce/RTX consumer cards, or datacenter."""
    if accelerator.backend == "mps":
        return "apple"
    if accelerator.backend == "npu":
        return "npu"
    name = accelerator.name.lower()
    return "consumer" if "geforce" in name or "rtx" in name else "datacenter"


def mfu_curve(accelerator: Accelerator) -> MfuCurve:
    """The calibrated MFU curve of the accelerator's family."""
    return MfuCurve(
        mfu_max=constant(SECTION, family(accelerator)),
        tokens_half=constant(SECTION, "tokens_half"),
        params_half=constant(SECTION, "params_half"),
    )


def training_mfu(accelerator: Accelerator, *, tokens_per_micro_batch: float, params: float) -> float:
    """Achievable training MFU on `accelerator` for this micro-batch size and model size (module docstring)."""
    return mfu_curve(accelerator).at(tokens_per_micro_batch=tokens_per_micro_batch, params=params)
