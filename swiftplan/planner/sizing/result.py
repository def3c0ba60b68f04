"""What a sizing run returns, and the checks both tasks make before planning an accelerator. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from swiftplan.planner.hardware import Accelerator
from swiftplan.planner.setup import Task
from swiftplan.planner.sizing.prices import Price
from swiftplan.planner.sizing.rank import Constraints, Objective, Option, price_check


@dataclass(frozen=True, kw_only=True, slots=True)
class SizingResult:
    """Every option considered (with a plan, or with the reason it has none) and what the run did."""

    options: tuple[Option, ...]
    """One per cluster planned (training) or per accelerator (serving), plus one per accelerator skipped
    before planning (no price, unsupported)."""
    clusters: int
    """Clusters (or accelerator × tensor-parallel shapes, serving) considered."""
    searched: int
    """Clusters whose plans were searched."""
    pruned: int
    """Clusters skipped by a bound: the weights cannot fit, or even the speed bound misses the deadline or budget."""
    estimates: int
    """Estimator calls made."""


def blank_option(
    accelerator: Accelerator, price: Price, *, task: Task, gpus: int = 1, nodes: int = 1
) -> Option:
    """An option without a plan yet (marked as having none), carrying the hardware and its prices."""
    return Option(
        accelerator_id=accelerator.id,
        accelerator=accelerator.display_name,
        vendor=accelerator.vendor,
        gpus=gpus,
        nodes=nodes,
        task=task,
        usd_per_gpu_hour=price.usd_per_gpu_hour,
        purchase_usd_per_gpu=price.purchase_usd,
        reason="not planned",
        reason_kind="unsupported",
    )


def skip_reason(
    accelerator: Accelerator, price: Price, objective: Objective, constraints: Constraints, *, task: Task
) -> Option | None:
    """The accelerator as a rejected option when it need not be planned (a price the objective or a
    constraint needs is missing, or the catalog has no throughput figure), else None."""
    blank = blank_option(accelerator, price, task=task)
    checked = price_check(blank, objective, constraints)
    if checked is not blank:
        return checked
    if accelerator.dense_flops_basis("bf16") is None:
        return blank.rejected(
            "unsupported", "no published throughput figure, so time and cost cannot be estimated"
        )
    return None
