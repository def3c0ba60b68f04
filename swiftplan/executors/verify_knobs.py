"""Which runtime knobs `swiftplan verify` can run in its fake-tensor trace (no torch import: the CLI
refuses the others before the trace extra is needed)."""

from __future__ import annotations

from swiftplan.errors import SwiftplanError
from swiftplan.planner.setup import RuntimeKnobs


def untraceable_knobs(knobs: RuntimeKnobs) -> list[str]:
    """What of the runtime the tracer cannot run on fake CPU tensors, one sentence each naming the flag;
    empty when it can run all of it."""
    reasons = []
    if knobs.loss == "fused_linear":
        reasons.append(
            "--loss fused_linear: Liger's and TRL's fused linear cross-entropy run Triton/custom autograd "
            "kernels that do not run on fake tensors (use --loss full or chunked here)"
        )
    if knobs.fsdp != "none":
        reasons.append(f"--fsdp {knobs.fsdp}: the tracer runs one process without a process group")
    if knobs.modules_to_save:
        reasons.append(
            f"--modules-to-save {','.join(knobs.modules_to_save)}: the tracer's peft model trains LoRA only"
        )
    if knobs.optimizer_in_backward:
        reasons.append("--optimizer-in-backward: the tracer steps the optimizer after backward")
    if knobs.float8:
        reasons.append(
            "--float8: torchao's Float8Linear is checked on its own in the tests, not swapped into the traced model"
        )
    return reasons


def refuse_untraceable(knobs: RuntimeKnobs) -> None:
    """One SwiftplanError listing every setting of `knobs` the tracer cannot run (nothing when it can)."""
    if reasons := untraceable_knobs(knobs):
        raise SwiftplanError(
            f"verify cannot trace runtime {knobs.name}'s " + "; ".join(reasons) + ".",
            hint="Override the setting with its flag, or `swiftplan estimate --runtime "
            f"{knobs.name} ...` for the analytic estimate alone.",
        )
