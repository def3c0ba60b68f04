"""The global batch against the data-parallel ranks: a step trains micro-batch × accumulation × dp sequences,
so the global batch must split over the ranks. `split_global_batch` rounds a default batch up to the smallest
that splits (and holds whole GRPO prompts); `batch_layouts` keeps the layouts that split a given batch, or
says which batch would. Pure.
"""

from __future__ import annotations

import math

from swiftplan.errors import SwiftplanError
from swiftplan.planner.objective import ObjectiveSetup, step_generations
from swiftplan.planner.search.candidate import Layout
from swiftplan.planner.search.pins import Pins


def split_global_batch(batch: int, ranks: int, *, pins: Pins, objective: ObjectiveSetup) -> int:
    """The smallest global batch ≥ `batch` that every data-parallel degree of `ranks` training GPUs splits: a
    multiple of ranks × the smallest pinned micro-batch (each rank's share divides into micro-batches), and of a
    GRPO step's generations per prompt (whole prompts). A step trains micro-batch × accumulation × dp sequences, and
    every dp a layout of `ranks` GPUs can have divides `ranks`."""
    micro = min(pins.micro_batch) if pins.micro_batch else 1
    step = math.lcm(ranks * micro, step_generations(objective))
    return -(-batch // step) * step


def batch_layouts(
    layouts: tuple[Layout, ...], global_batch: int, micro_batches: tuple[int, ...] | None
) -> tuple[Layout, ...]:
    """The layouts that train exactly `global_batch` sequences a step: micro-batch × accumulation × data-parallel
    ranks = global batch, so the ranks divide it (and a pinned micro-batch divides each rank's share); a rank
    more than the batch has sequences would train on sequences the step does not have."""
    sizes = micro_batches or (1,)
    kept = tuple(
        layout
        for layout in layouts
        if global_batch % layout.dp == 0 and any((global_batch // layout.dp) % b == 0 for b in sizes)
    )
    if kept:
        return kept
    smallest = min(-(-global_batch // (layout.dp * b)) * layout.dp * b for layout in layouts for b in sizes)
    degrees = "/".join(str(d) for d in sorted({layout.dp for layout in layouts}))
    batch = f" with --batch {'/'.join(map(str, sizes))}" if micro_batches else ""
    raise SwiftplanError(
        f"--global-batch {global_batch} does not split evenly over the data-parallel degrees left (dp {degrees}){batch}: "
        f"a step trains micro-batch × accumulation × dp = global batch sequences.",
        hint=f"Use --global-batch {smallest} (the smallest that splits), or pin "
        + (
            f"a --dp and a --batch that divide {global_batch}."
            if micro_batches
            else f"a --dp that divides {global_batch}."
        ),
    )
