"""The fastest training plan that uses a whole cluster: branch and bound without a study. Pure.

`size` asks the same question of hundreds of clusters, so it skips Optuna and walks the fit search's
structures directly, best speed bound first (`TrainEvaluator.optimistic`, the speed at the largest
micro-batch as if memory did not matter), resolving each (`TrainEvaluator.resolve`: largest micro-batch
that fits, most conventional memory-only variant) until the next bound cannot beat the best plan found.
That is the fit search's exhaustive answer for the time objective, with only whole-cluster layouts: a plan
that leaves GPUs idle is a smaller cluster, which `size` plans on its own. On one cluster, cost and cost
per token are time × GPUs × price, so the fastest plan is also the cheapest.

Three things keep it fast without changing the answer. Speed bounds are computed a group at a time
(structures sharing method, checkpointing and adapter shape share a compute floor, `compute_floor_s`),
only when the search reaches the group's floor, in the same order as sorting every bound. Structures
whose weights alone exceed one GPU are never estimated. And an accelerator's clusters are planned
largest first, sharing a `MisfitMemo`: what does not fit at a data-parallel degree does not fit at a
smaller one.
"""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass, replace

from swiftplan.errors import SwiftplanError
from swiftplan.planner.dtypes import compute_dtype
from swiftplan.planner.hardware import Cluster
from swiftplan.planner.search.candidate import Candidate
from swiftplan.planner.search.evaluate import Evaluation, TrainEvaluator
from swiftplan.planner.search.space_choices import TrainSpace, sharding_class
from swiftplan.planner.sizing.candidates import device_weight_floor_bytes
from swiftplan.planner.speed import efficiency_prior, train_flops_per_token


@dataclass(frozen=True, kw_only=True, slots=True)
class ClusterPlan:
    """What the search found on one cluster."""

    best: Evaluation | None
    """The fastest feasible plan; None when nothing fits (or nothing could meet the time cap)."""
    closest: Evaluation | None
    """When nothing fits: the plan nearest to fitting (fit's order: smallest constraint overshoot); it may
    come from a larger cluster of the memo, whose overshoot is a lower bound for this one."""
    speed_bound_s: float
    """A lower bound on the time of any plan on this cluster (from the speed model alone)."""
    structures: int
    """Structures in the space."""
    resolved: int
    """Structures resolved (the rest were ruled out by their speed bound, the weight floor or the memo)."""
    capped: bool = False
    """True when even the speed bound exceeds the time cap, so nothing was resolved."""
    weight_over_bytes: int | None = None
    """When structures were ruled out because their weights alone exceed one GPU: the smallest excess."""


def whole_cluster(space: TrainSpace, cluster: Cluster) -> TrainSpace:
    """The space with only the layouts that use every GPU of the cluster."""
    layouts = tuple(layout for layout in space.layouts if layout.gpus == cluster.world_size)
    return replace(space, layouts=layouts)


class MisfitMemo:
    """Structures known not to fit one accelerator's GPUs, across cluster sizes.

    With everything else equal, a structure's device memory never grows with the data-parallel degree
    (ZeRO shards over it; gradient accumulation, and with it the buffers kept between micro-batches and
    the pipeline's in-flight micro-batches, only shrinks), so a structure whose leanest variant at the
    smallest micro-batch is over the device memory at some degree is over it at every smaller one, as
    long as both degrees are above 1: at dp 1 ZeRO is off, and without DeepSpeed's fp32 master copy and
    its fp32 gradient partition at the step a single GPU can hold what two ZeRO ranks cannot.
    NCCL's buffers (planner/comm_buffers.py) are the exception: they grow when the data-parallel group
    spans more nodes, so a misfit only proves the smaller degrees when it is over by more than its own.
    Planning an accelerator's clusters largest first lets the smaller ones skip those estimates.
    """

    def __init__(self) -> None:
        self._misfits: dict[tuple, list[tuple[int, Evaluation]]] = {}

    @staticmethod
    def _key(structure: Candidate) -> tuple:
        layout = structure.layout
        sharding = sharding_class(structure.zero, structure.offload)
        return (
            structure.method,
            structure.quant,
            structure.grad_ckpt,
            sharding,
            layout.tp,
            layout.pp,
            layout.dp > 1,
            structure.rank,
            structure.targets,
        )

    def misfit(self, structure: Candidate) -> Evaluation | None:
        """A recorded evaluation proving the structure cannot fit, if there is one."""
        for dp, evaluation in self._misfits.get(self._key(structure), ()):
            if dp >= structure.layout.dp:
                return evaluation
        return None

    def record(self, structure: Candidate, evaluation: Evaluation) -> None:
        """Remember a resolved structure that is over the device memory."""
        if evaluation.estimate is None:
            return
        comm = sum(t.value_bytes for t in evaluation.estimate.memory.terms if t.name == "comm_buffers")
        if evaluation.memory_over_bytes > comm:
            self._misfits.setdefault(self._key(structure), []).append((structure.layout.dp, evaluation))


def compute_floor_s(evaluator: TrainEvaluator, structure: Candidate) -> float:
    """A lower bound on the time of any plan of the structure: every token's FLOPs at the accelerator's
    efficiency prior on all GPUs at once (the roofline compute term, before dequantisation, communication,
    offload and pipeline bubbles are added). It depends only on the method, checkpointing and adapter
    shape, so one value serves a whole group of structures."""
    try:
        setup = evaluator.lean(structure).replace(micro_batch=1).setup(evaluator.workload)
    except SwiftplanError:
        return -math.inf
    accelerator = evaluator.cluster.accelerator
    peak = accelerator.dense_flops(compute_dtype(setup.precision)) * efficiency_prior(accelerator)
    flops = train_flops_per_token(evaluator.spec, setup) * evaluator.workload.total_tokens
    return flops / (peak * evaluator.cluster.world_size)


def _groups(evaluator: TrainEvaluator, structures: list[Candidate]) -> list[tuple[float, list[Candidate]]]:
    """Structures grouped by what sets their compute floor, lowest floor first."""
    groups: dict[tuple, list[Candidate]] = {}
    for structure in structures:
        key = (structure.method, structure.grad_ckpt, structure.rank, structure.targets)
        groups.setdefault(key, []).append(structure)
    floored = [(compute_floor_s(evaluator, members[0]), members) for members in groups.values()]
    return sorted(floored, key=lambda pair: pair[0])


class _BoundQueue:
    """Structures by speed bound, smallest first; a group's bounds are computed only when its compute floor
    comes up, so popping gives the same order as sorting every bound."""

    def __init__(self, evaluator: TrainEvaluator, structures: list[Candidate]) -> None:
        self.evaluator = evaluator
        self.groups = _groups(evaluator, structures)
        self.queue: list[tuple[float, tuple, int, Candidate]] = []
        self.tiebreak = itertools.count()

    def _next_floor(self) -> float:
        return self.groups[0][0] if self.groups else math.inf

    def _fill(self, floor_limit: float) -> None:
        """Queue the bounds of every group whose floor is at most `floor_limit`."""
        while self.groups and self.groups[0][0] <= floor_limit:
            for structure in self.groups.pop(0)[1]:
                bound = self.evaluator.optimistic(structure, "time")
                heapq.heappush(self.queue, (bound, structure.simplicity(), next(self.tiebreak), structure))

    def top_up(self, best_s: float) -> None:
        """Fill until the head of the queue is the smallest bound left (or the rest cannot beat best_s)."""
        while self.groups and (not self.queue or self.queue[0][0] >= self._next_floor()):
            if self._next_floor() > best_s:
                self.groups.clear()  # no plan of the remaining groups can be faster
                return
            self._fill(self._next_floor())

    def head_bound(self) -> float | None:
        """The smallest bound queued (None when empty)."""
        return self.queue[0][0] if self.queue else None

    def pop(self) -> tuple[float, Candidate]:
        """The structure with the smallest bound, and its bound."""
        bound, _, _, structure = heapq.heappop(self.queue)
        return bound, structure


def _weight_prune(evaluator: TrainEvaluator, structures: list[Candidate]) -> tuple[list[Candidate], float]:
    """(structures whose weights fit one GPU, the smallest excess of the others or inf)."""
    over_floor = math.inf
    kept = []
    for structure in structures:
        excess = device_weight_floor_bytes(evaluator.spec, structure) - evaluator.limit_bytes
        if excess > 0:
            over_floor = min(over_floor, excess)
        else:
            kept.append(structure)
    return kept, over_floor


def _closer(candidate: Evaluation, closest: Evaluation | None) -> Evaluation:
    """The nearer to fitting of two misfits (fit's order)."""
    if closest is None or candidate.rank_key("time") < closest.rank_key("time"):
        return candidate
    return closest


def _branch_and_bound(
    evaluator: TrainEvaluator, queue: _BoundQueue, memo: MisfitMemo | None
) -> tuple[Evaluation | None, Evaluation | None, int]:
    """Resolve structures best bound first until no bound left can beat the best plan:
    (best plan, closest misfit, structures resolved)."""
    best: Evaluation | None = None
    closest: Evaluation | None = None
    resolved = 0
    while True:
        queue.top_up(best.time_s if best is not None else math.inf)
        if queue.head_bound() is None:
            break
        bound, structure = queue.pop()
        if best is not None and bound > best.time_s:
            break
        known = memo.misfit(structure) if memo is not None else None
        if known is not None:
            closest = _closer(known, closest)
            continue
        evaluation = evaluator.resolve(structure, "time")
        resolved += 1
        if memo is not None and not evaluation.feasible:
            memo.record(structure, evaluation)
        if not evaluation.feasible:
            closest = _closer(evaluation, closest)
        elif best is None or evaluation.rank_key("time") < best.rank_key("time"):
            best = evaluation
    return best, closest, resolved


def best_training_plan(
    evaluator: TrainEvaluator,
    *,
    cap_s: float | None = None,
    memo: MisfitMemo | None = None,
) -> ClusterPlan:
    """Fastest plan of the evaluator's space; `cap_s` skips the cluster when no plan can be that fast.
    Structures whose weights alone exceed one GPU (`candidates.device_weight_floor_bytes`), or that `memo`
    knows do not fit, are never estimated; structures found not to fit are added to `memo`.

    Structures are resolved in order of their speed bound, as in the fit search, but the bounds of a
    group are computed only when its compute floor (`compute_floor_s`) comes up: structures already
    queued whose bound is below the next group's floor go first, so the order is the same as sorting
    every bound, and groups the search never reaches cost nothing."""
    structures = list(evaluator.space.structures())
    kept, over_floor = _weight_prune(evaluator, structures)
    queue = _BoundQueue(evaluator, kept)
    queue.top_up(math.inf)
    head = queue.head_bound()
    floor = math.inf if head is None else max(0.0, head)
    weight_over = None if math.isinf(over_floor) else int(over_floor)
    if head is None:
        return ClusterPlan(best=None, closest=None, speed_bound_s=floor, structures=len(structures), resolved=0,
                           weight_over_bytes=weight_over)  # fmt: skip
    if cap_s is not None and floor > cap_s:
        return ClusterPlan(best=None, closest=None, speed_bound_s=floor, structures=len(structures), resolved=0,
                           capped=True)  # fmt: skip
    best, closest, resolved = _branch_and_bound(evaluator, queue, memo)
    return ClusterPlan(
        best=best,
        closest=None if best is not None else closest,
        speed_bound_s=floor,
        structures=len(structures),
        resolved=resolved,
        weight_over_bytes=weight_over,
    )
