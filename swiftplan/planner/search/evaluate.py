"""A candidate → its estimate, the objective values and whether it satisfies the constraints. Pure.

Training: time to train = dataset tokens × epochs / tokens per second; cost = hours × catalog price ×
GPUs used (GPU-hours when the catalog has no price). Constraints: the device total stays within
budget × (1 − headroom), and offloaded state fits the host RAM of each node. The micro-batch is not
searched: memory grows with it and, without pipeline parallelism, speed never falls with it, so the
evaluator takes the largest that fits (with pipeline stages, where more micro-batches shrink the
bubble, it compares every size that fits). Likewise the choices that only change memory (optimizer,
precision, NF4 double quantization, ZeRO stage within a sharding class): the leanest variant sets the
micro-batch, the others are tried at the larger sizes too (with adapters, pure half precision and amp are
not ordered by memory: `needs_at_least`), then the most conventional variant that fits at that micro-batch
with the same objective wins.

Serving: the sequences per replica are the most that fit the KV budget and meet the latency targets
(or the requested concurrency split over the replicas); throughput is decode tokens/s over all
replicas, cost is per million generated tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Generic, Literal, TypeVar

from swiftplan.errors import SwiftplanError
from swiftplan.planner.adapters import adapter_params
from swiftplan.planner.architecture import total_params
from swiftplan.planner.estimate import Estimate, estimate_serving, estimate_training
from swiftplan.planner.hardware import Cluster
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.objective_speed import objective_speed
from swiftplan.planner.plan import host_bytes_per_node, serving_economics, training_economics
from swiftplan.planner.search.candidate import Candidate, Layout, ServeCandidate, ServeWorkload, TrainWorkload
from swiftplan.planner.search.serve_space import ServeSpace
from swiftplan.planner.search.space_choices import MAX_MICRO_BATCH, TrainSpace, memory_weight, needs_at_least
from swiftplan.planner.speed import ServeSpeed
from swiftplan.planner.workload import replica_concurrency
from swiftplan.units import GiB

Objective = Literal["time", "cost", "throughput"]
OBJECTIVES: tuple[Objective, ...] = ("time", "cost", "throughput")
CONSTRAINTS = ("device_memory_gib_over", "host_ram_gib_over", "latency_miss")
"""Names of the constraint values (Optuna `Trial.set_constraint`), in `Evaluation.constraints()` order."""
INVALID = 1e30
"""Objective value of a candidate the estimator rejects (never the best)."""
MAX_CONCURRENCY = 4096
"""Most sequences per serving replica considered."""

CandidateT_co = TypeVar("CandidateT_co", bound="Candidate | ServeCandidate", covariant=True)


@dataclass(frozen=True, kw_only=True, slots=True)
class Evaluation(Generic[CandidateT_co]):
    """One candidate's estimate, objective values and constraint margins."""

    candidate: CandidateT_co
    """What was evaluated (micro-batch or concurrency chosen)."""
    estimate: Estimate | None
    """The estimator's answer; None when it rejected the set-up (see `error`)."""
    error: str = ""
    """Why the set-up is invalid, when it is."""
    limit_bytes: int
    """Device memory the plan may use: budget × (1 − headroom) (serving: × gpu_memory_utilization)."""
    host_bytes_per_node: int = 0
    """Host RAM per node for offloaded state."""
    host_limit_bytes: int | None = None
    """Host RAM per node available for offload; None = unbounded."""
    tokens_per_s: float = 0.0
    """Training tokens/s over the GPUs used; serving: generated tokens/s over all replicas."""
    time_s: float = INVALID
    """Training: seconds to train. Serving: seconds per generated token seen by one user."""
    gpu_hours: float = INVALID
    """Training: GPU-hours to train. Serving: GPU-hours per million generated tokens."""
    cost_usd: float | None = None
    """gpu_hours × catalog price; None when the catalog has no price."""
    latency_over: float = 0.0
    """Serving: relative miss of the latency targets (0 when met)."""
    gpus: int = 1
    """GPUs the plan uses."""

    @property
    def device_total_bytes(self) -> int:
        """Per-device total the estimator predicts (what nvidia-smi would show)."""
        return self.estimate.memory.device_total if self.estimate else 1 << 62

    @property
    def memory_over_bytes(self) -> int:
        """Bytes over the allowed device memory (negative: spare)."""
        return self.device_total_bytes - self.limit_bytes

    @property
    def host_over_bytes(self) -> int:
        """Bytes over the host RAM limit (negative: spare)."""
        if self.host_limit_bytes is None:
            return -1
        return self.host_bytes_per_node - self.host_limit_bytes

    @property
    def feasible(self) -> bool:
        """Valid, within device memory and host RAM, and meeting the latency targets."""
        return self.estimate is not None and all(c <= 0 for c in self.constraints())

    def constraints(self) -> list[float]:
        """Optuna constraint values (≤ 0 is satisfied): device GiB over, host GiB over, latency miss."""
        if self.estimate is None:
            return [INVALID, 0.0, 0.0]
        return [self.memory_over_bytes / GiB, self.host_over_bytes / GiB, self.latency_over]

    @property
    def cost(self) -> float:
        """Dollars where a price is known, else GPU-hours (same ordering on one accelerator type)."""
        return self.cost_usd if self.cost_usd is not None else self.gpu_hours

    @property
    def headroom_fraction(self) -> float:
        """Share of device memory left free at the peak."""
        if self.estimate is None:
            return -1.0
        return 1 - self.device_total_bytes / self.estimate.device_memory_bytes

    @property
    def capacity(self) -> int:
        """Trainable parameters (adapter capacity)."""
        return self.estimate.trainable_params if self.estimate else 0

    def objective(self, objective: Objective) -> float:
        """The value to minimise."""
        if self.estimate is None:
            return INVALID
        if objective == "throughput":
            return -self.tokens_per_s
        return self.cost if objective == "cost" else self.time_s

    def pareto_values(self, with_capacity: bool) -> list[float]:
        """Values to minimise in Pareto mode: time, cost, −headroom (and −adapter capacity)."""
        values = [self.time_s, self.cost, -self.headroom_fraction]
        if with_capacity:
            values.append(-float(self.capacity))
        return values if self.estimate is not None else [INVALID] * len(values)

    def rank_key(self, objective: Objective) -> tuple:
        """Sort key: feasible first, then by objective (infeasible: by how far over), then simplicity."""
        if self.feasible:
            return (0, self.objective(objective), self.candidate.simplicity())
        return (1, sum(max(0.0, c) for c in self.constraints()), self.candidate.simplicity())


def _with_speed(estimate: Estimate) -> Estimate:
    """The estimate, or the reason it cannot be ranked: a search compares speeds, and an accelerator
    (or a compute dtype on it) without published throughput has none."""
    if estimate.speed is None:
        raise SwiftplanError(" ".join(estimate.notes) or "no speed estimate for this set-up")
    return estimate


def job_cluster(layout: Layout, cluster: Cluster, workload: TrainWorkload) -> Cluster:
    """The devices a training candidate occupies: its layout's, plus a rollout server's own GPUs
    (`estimate_training` takes those back out of training)."""
    extra = workload.objective.server_gpus
    if not extra:
        return layout.sub_cluster(cluster)
    total = layout.gpus + extra
    if total > cluster.world_size or (total > cluster.gpus_per_node and total % cluster.gpus_per_node):
        return layout.sub_cluster(cluster)  # estimate_training refuses: the server leaves too few GPUs
    return replace(layout, gpus=total).sub_cluster(cluster)


def _powers_of_two(limit: int) -> tuple[int, ...]:
    return tuple(1 << i for i in range(int(math.log2(max(1, limit))) + 1))


class TrainEvaluator:
    """Evaluates training candidates, memoised by candidate."""

    def __init__(
        self,
        spec: ModelSpec,
        cluster: Cluster,
        workload: TrainWorkload,
        space: TrainSpace,
        *,
        headroom: float = 0.05,
        host_ram_bytes: int | None = None,
    ) -> None:
        self.spec, self.cluster, self.workload, self.space = spec, cluster, workload, space
        self.headroom, self.host_ram_bytes = headroom, host_ram_bytes
        self.limit_bytes = int(cluster.memory_bytes_per_device * (1 - headroom))
        self.price = cluster.accelerator.price_usd_per_hour
        self.cache: dict[Candidate, Evaluation[Candidate]] = {}
        self.estimates = 0

    def micro_batches(self, structure: Candidate) -> tuple[int, ...]:
        """Sizes to consider: those that divide each data-parallel rank's share of the global batch (so
        micro-batch × accumulation × dp is the global batch), the pinned ones among them, up to
        MAX_MICRO_BATCH; a layout whose ranks do not divide the batch (`batch_layouts` keeps none from fit)
        takes the pins, else powers of two up to its share."""
        batch, dp = self.workload.global_batch, structure.layout.dp
        if batch % dp:
            per_rank = math.ceil(batch / dp)
            return self.space.micro_batches or _powers_of_two(min(MAX_MICRO_BATCH, per_rank))
        share = batch // dp
        sizes = tuple(b for b in range(1, min(MAX_MICRO_BATCH, share) + 1) if share % b == 0)
        if self.space.micro_batches is not None:
            return tuple(b for b in self.space.micro_batches if share % b == 0) or self.space.micro_batches
        return sizes

    def evaluate(self, candidate: Candidate) -> Evaluation[Candidate]:
        """The evaluation of one fully specified candidate (micro-batch set)."""
        cached = self.cache.get(candidate)
        if cached is not None:
            return cached
        self.estimates += 1
        sub = job_cluster(candidate.layout, self.cluster, self.workload)
        try:
            estimate = _with_speed(estimate_training(self.spec, candidate.setup(self.workload), sub))
        except SwiftplanError as error:
            result = Evaluation(
                candidate=candidate,
                estimate=None,
                error=error.message,
                limit_bytes=self.limit_bytes,
                host_limit_bytes=self.host_ram_bytes,
                gpus=sub.world_size,
            )
        else:
            tokens_per_s = estimate.training_speed.tokens_per_s
            time_s, gpu_hours, cost = training_economics(
                self.workload, tokens_per_s, gpus=sub.world_size, price_usd_per_hour=self.price
            )
            result = Evaluation(
                candidate=candidate,
                estimate=estimate,
                limit_bytes=self.limit_bytes,
                host_limit_bytes=self.host_ram_bytes,
                gpus=sub.world_size,
                host_bytes_per_node=host_bytes_per_node(estimate, candidate.layout, sub.nodes),
                tokens_per_s=tokens_per_s,
                time_s=time_s,
                gpu_hours=gpu_hours,
                cost_usd=cost,
            )
        self.cache[candidate] = result
        return result

    def best_micro_batch(self, structure: Candidate, objective: Objective = "time") -> Evaluation[Candidate]:
        """The structure at its best micro-batch: the largest that fits (see module docstring), or the
        smallest when none fits (the closest miss)."""
        sizes = self.micro_batches(structure)
        if structure.micro_batch:
            return self.evaluate(structure)
        lo, hi = 0, len(sizes) - 1  # memory grows with the micro-batch: binary search the largest that fits
        first = self.evaluate(structure.replace(micro_batch=sizes[0]))
        if not first.feasible:
            return first
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.evaluate(structure.replace(micro_batch=sizes[mid])).feasible:
                lo = mid
            else:
                hi = mid - 1
        if structure.layout.pp == 1:
            return self.evaluate(structure.replace(micro_batch=sizes[lo]))
        fitting = [self.evaluate(structure.replace(micro_batch=b)) for b in sizes[: lo + 1]]
        return min(fitting, key=lambda e: e.rank_key(objective))

    def optimistic(self, structure: Candidate, objective: Objective) -> float:
        """A lower bound on the structure's objective, from the speed model alone: speed at the largest
        micro-batch (with pipeline stages, the best of every size), as if memory did not matter."""
        lean = self.lean(structure)
        sizes = self.micro_batches(structure)
        if structure.layout.pp == 1:
            sizes = sizes[-1:]
        sub = job_cluster(structure.layout, self.cluster, self.workload)
        bound = math.inf
        for size in sizes:
            try:
                setup = lean.replace(micro_batch=size).setup(self.workload)
            except SwiftplanError:
                return -math.inf
            trainable = (
                adapter_params(self.spec, setup.lora)
                if setup.trains_adapters and setup.lora
                else total_params(self.spec)
            )
            try:
                tokens_per_s = objective_speed(
                    self.spec, setup, sub, trainable_params=trainable, train_world=structure.layout.gpus
                ).tokens_per_s
            except SwiftplanError:
                return -math.inf
            time_s = self.workload.total_tokens / tokens_per_s
            gpu_hours = time_s / 3600 * sub.world_size
            value = {"time": time_s, "throughput": -tokens_per_s}.get(
                objective, gpu_hours * self.price if self.price is not None else gpu_hours
            )
            bound = min(bound, value)
        return bound

    def lean(self, structure: Candidate) -> Candidate:
        """The variant of a structure that needs the least memory (preferred among equals)."""
        return self.space.lean(structure)

    def resolve(self, structure: Candidate, objective: Objective = "time") -> Evaluation[Candidate]:
        """The best variant of a structure at its best micro-batch (see module docstring)."""
        variants = self.space.variants(structure)
        best = self.best_micro_batch(self.lean(structure), objective)
        sizes = self.micro_batches(structure)
        if not structure.micro_batch:  # another variant may fit a size the lean one does not (needs_at_least)
            start = sizes.index(best.candidate.micro_batch) + 1 if best.feasible else 0
            leanest_first = sorted(variants, key=memory_weight)
            for size in sizes[start:]:
                fits = self._fitting_variants(leanest_first, size)
                if not fits:
                    break
                best = min([best, *fits] if best.feasible else fits, key=lambda e: e.rank_key(objective))
        if not best.feasible:
            return best
        failed: list[Candidate] = []
        for variant in variants:
            if any(needs_at_least(variant, f) for f in failed):
                continue  # needs at least as much memory as a variant that did not fit
            evaluation = self.evaluate(variant.replace(micro_batch=best.candidate.micro_batch))
            if evaluation.feasible and evaluation.objective(objective) <= best.objective(objective):
                return evaluation
            if not evaluation.feasible:
                failed.append(variant)
        return best

    def _fitting_variants(self, variants: list[Candidate], size: int) -> list[Evaluation[Candidate]]:
        """The variants that fit at micro-batch `size`, leanest first, skipping any that needs at least the
        memory of one that did not fit."""
        fits: list[Evaluation[Candidate]] = []
        failed: list[Candidate] = []
        for variant in variants:
            if any(needs_at_least(variant, f) for f in failed):
                continue
            evaluation = self.evaluate(variant.replace(micro_batch=size))
            if evaluation.feasible:
                fits.append(evaluation)
            else:
                failed.append(variant)
        return fits


class ServeEvaluator:
    """Evaluates serving candidates, memoised by candidate."""

    def __init__(
        self,
        spec: ModelSpec,
        cluster: Cluster,
        workload: ServeWorkload,
        space: ServeSpace,
        *,
        headroom: float = 0.05,
    ) -> None:
        self.utilization = min(workload.gpu_memory_utilization, 1 - headroom)
        workload = replace(workload, gpu_memory_utilization=self.utilization)
        self.spec, self.cluster, self.workload, self.space = spec, cluster, workload, space
        self.limit_bytes = int(cluster.memory_bytes_per_device * self.utilization)
        self.price = cluster.accelerator.price_usd_per_hour
        self.cache: dict[ServeCandidate, Evaluation[ServeCandidate]] = {}
        self.estimates = 0

    def _latency_over(self, speed: ServeSpeed) -> float:
        over = 0.0
        if self.workload.ttft_s is not None:
            over += max(0.0, speed.ttft_s / self.workload.ttft_s - 1)
        if self.workload.decode_tps is not None:
            over += max(0.0, 1 - speed.per_user_decode_tokens_per_s / self.workload.decode_tps)
        return over

    def evaluate(self, candidate: ServeCandidate) -> Evaluation[ServeCandidate]:
        """The evaluation at the candidate's concurrency per replica."""
        cached = self.cache.get(candidate)
        if cached is not None:
            return cached
        self.estimates += 1
        replicas = self.cluster.world_size // candidate.tp
        gpus = self.cluster.world_size
        try:
            estimate = _with_speed(estimate_serving(self.spec, candidate.setup(self.workload), self.cluster))
        except SwiftplanError as error:
            result = Evaluation(
                candidate=candidate,
                estimate=None,
                error=error.message,
                limit_bytes=self.limit_bytes,
                gpus=gpus,
            )
        else:
            speed = estimate.serving_speed
            tps = replicas * speed.decode_tokens_per_s
            gpu_hours, cost = serving_economics(
                tps, gpus=self.cluster.world_size, price_usd_per_hour=self.price
            )
            result = Evaluation(
                candidate=candidate,
                estimate=estimate,
                limit_bytes=self.limit_bytes,
                gpus=gpus,
                tokens_per_s=tps,
                time_s=1 / speed.per_user_decode_tokens_per_s,
                gpu_hours=gpu_hours,
                cost_usd=cost,
                latency_over=self._latency_over(speed),
            )
        self.cache[candidate] = result
        return result

    def best_concurrency(
        self, structure: ServeCandidate, objective: Objective = "throughput"
    ) -> Evaluation[ServeCandidate]:
        """The requested concurrency split over the replicas, or the most sequences that fit and meet the targets."""
        if structure.concurrency:
            return self.evaluate(structure)
        replicas = self.cluster.world_size // structure.tp
        if self.workload.concurrency is not None:
            return self.evaluate(
                structure.replace(concurrency=replica_concurrency(self.workload.concurrency, replicas))
            )
        first = self.evaluate(structure.replace(concurrency=1))
        if not first.feasible or first.estimate is None or objective == "time":  # feasible has an estimate
            return first
        hi = min(MAX_CONCURRENCY, max(1, first.estimate.max_concurrency or 1))
        lo = 1
        while lo < hi:  # fits and latency both get worse with more sequences
            mid = (lo + hi + 1) // 2
            if self.evaluate(structure.replace(concurrency=mid)).feasible:
                lo = mid
            else:
                hi = mid - 1
        return self.evaluate(structure.replace(concurrency=lo))
