"""The fastest training plan that uses a whole cluster: branch and bound without a study. Pure.

`size` asks the same question of dozens of clusters, so it skips Optuna and walks the fit search's
structures directly, best speed bound first (`TrainEvaluator.optimistic`, the speed at the largest
micro-batch as if memory did not matter), resolving each (`TrainEvaluator.resolve`: largest micro-batch
that fits, most conventional memory-only variant) until the next bound cannot beat the best plan found.
That is the fit search's exhaustive answer for the time objective, with only whole-cluster layouts: a plan
that leaves GPUs idle is a smaller cluster, which `size` plans on its own. A small budget per cluster keeps
`size` fast: after the first feasible plan, at most SEARCH_BUDGET more structures are resolved (on the
models and clusters of benchmarks/size_speed.py the best plan was always among them; `swiftplan fit` on
the chosen cluster searches without the budget). On one cluster, cost and cost
per token are time × GPUs × price, so the fastest plan is also the cheapest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from swiftplan.planner.hardware import Cluster
from swiftplan.planner.search.evaluate import Evaluation, TrainEvaluator
from swiftplan.planner.search.space import TrainSpace

SEARCH_BUDGET = 8
"""Structures resolved after the first feasible one before the search of a cluster stops."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ClusterPlan:
    """What the search found on one cluster."""

    best: Evaluation | None
    """The fastest feasible plan; None when nothing fits (or nothing could meet the time cap)."""
    closest: Evaluation | None
    """When nothing fits: the plan nearest to fitting (fit's order: smallest constraint overshoot)."""
    speed_bound_s: float
    """A lower bound on the time of any plan on this cluster (from the speed model alone)."""
    structures: int
    """Structures in the space."""
    resolved: int
    """Structures resolved (the rest were pruned by their bound)."""
    capped: bool = False
    """True when even the speed bound exceeds the time cap, so nothing was resolved."""
    exact: bool = True
    """False when the budget stopped the search before the bound proved the plan the fastest."""


def whole_cluster(space: TrainSpace, cluster: Cluster) -> TrainSpace:
    """The space with only the layouts that use every GPU of the cluster."""
    layouts = tuple(layout for layout in space.layouts if layout.gpus == cluster.world_size)
    return replace(space, layouts=layouts)


def best_training_plan(
    evaluator: TrainEvaluator, *, cap_s: float | None = None, budget: int | None = SEARCH_BUDGET
) -> ClusterPlan:
    """Fastest plan of the evaluator's space; `cap_s` skips the cluster when no plan can be that fast;
    `budget` (None: no limit) bounds the structures resolved after the first feasible one."""
    structures = list(evaluator.space.structures())
    bounds = {s: evaluator.optimistic(s, "time") for s in structures}
    order = sorted(structures, key=lambda s: (bounds[s], s.simplicity()))
    floor = max(0.0, bounds[order[0]]) if order else math.inf
    if not order or (cap_s is not None and floor > cap_s):
        return ClusterPlan(
            best=None, closest=None, speed_bound_s=floor, structures=len(structures), resolved=0, capped=True
        )
    best: Evaluation | None = None
    closest: Evaluation | None = None
    resolved = after_first = 0
    exact = True
    for structure in order:
        if best is not None and bounds[structure] > best.time_s:
            break
        if best is not None and budget is not None and after_first >= budget:
            exact = False
            break
        after_first += best is not None
        evaluation = evaluator.resolve(structure, "time")
        resolved += 1
        key = evaluation.rank_key("time")
        if evaluation.feasible:
            if best is None or key < best.rank_key("time"):
                best = evaluation
        elif closest is None or key < closest.rank_key("time"):
            closest = evaluation
    return ClusterPlan(
        best=best,
        closest=None if best is not None else closest,
        speed_bound_s=floor,
        structures=len(structures),
        resolved=resolved,
        exact=exact,
    )
