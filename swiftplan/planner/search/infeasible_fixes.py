"""The changes that would make a job fit, shared by training and serving: a `Suggestion` (the change, its
sentence and the plan that proves it), more GPUs of the same type (the smallest doubling that fits), the
smallest catalog GPU with more memory, the cheapest GPU that meets a serving job's latency targets, and the
binary search for the largest length or load that fits. Pure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from swiftplan.planner.hardware import Cluster, list_accelerators
from swiftplan.planner.search.candidate import Candidate, ServeCandidate, cluster_text
from swiftplan.planner.search.evaluate import Evaluation
from swiftplan.planner.search.infeasible_shortfall import _fit_text, _serve_fit_text
from swiftplan.planner.workload import ServeWorkload
from swiftplan.units import format_gib

MAX_SUGGESTED_GPUS = 64
"""Largest same-type cluster the "more GPUs" suggestion tries."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Suggestion:
    """One change that makes the job fit, with the plan that proves it."""

    change: str
    """Short name: 'QLoRA', 'shorter sequence', 'offload', 'more GPUs', 'bigger GPU'."""
    text: str
    """One sentence for the user."""
    evaluation: Evaluation | None
    """A plan that fits after the change (None for a negative finding)."""
    gpus: str | None = None
    """Cluster string to pass to --gpus, when the change is hardware."""


def _scaled(cluster: Cluster, gpus: int) -> Cluster:
    per_node = max(cluster.gpus_per_node, 8) if cluster.nodes == 1 else cluster.gpus_per_node
    if gpus <= per_node:
        return replace(cluster, gpus_per_node=gpus, nodes=1)
    return replace(cluster, gpus_per_node=per_node, nodes=gpus // per_node)


def _first_fit(evaluations: Iterable[Evaluation]) -> Evaluation | None:
    for evaluation in evaluations:
        if evaluation.feasible:
            return evaluation
    return None


def _largest_fitting(
    lo: int, hi: int, step: int, fits: Callable[[int], Evaluation | None]
) -> Evaluation | None:
    """Largest multiple of `step` in [lo, hi] for which `fits` returns a plan (fits is monotone)."""
    found = fits(lo)
    if found is None:
        return None
    a, b = lo // step, hi // step
    while a < b:
        mid = (a + b + 1) // 2
        plan = fits(mid * step)
        if plan is not None:
            a, found = mid, plan
        else:
            b = mid - 1
    return found


def _more_gpus(
    cluster: Cluster,
    fits: Callable[[Cluster], Evaluation | None],
    best: Callable[[Cluster], Evaluation | None],
    describe: Callable[[Evaluation], str] = _fit_text,
) -> Suggestion | None:
    """The smallest doubling of the GPU count that fits (lean check), shown with the best plan there."""
    gpus = cluster.world_size * 2
    while gpus <= MAX_SUGGESTED_GPUS:
        bigger = _scaled(cluster, gpus)
        plan = fits(bigger)
        if plan is not None:
            plan = best(bigger) or plan
            text = f"{gpus} × {cluster.accelerator.display_name} (--gpus {cluster_text(bigger)}): {describe(plan)}."
            return Suggestion(change="more GPUs", text=text, evaluation=plan, gpus=cluster_text(bigger))
        gpus *= 2
    return None


def _bigger_gpu(
    cluster: Cluster,
    leans: list[Evaluation],
    recheck: Callable[[Candidate | ServeCandidate, Cluster], Evaluation | None],
    headroom: float,
) -> Suggestion | None:
    """Smallest catalog GPU (same backend, more memory) that one of the lean plans fits. Memory per device
    does not depend on the GPU model, so the lean plans' totals pick the candidates; `recheck` estimates
    the plan on the new GPU (capabilities, speed, limits) before it is suggested."""
    current = cluster.memory_bytes_per_device
    others = [replace(cluster, accelerator=a, usable_memory_bytes=None) for a in list_accelerators()]
    options = sorted(
        (
            o
            for o in others
            if o.accelerator.backend == cluster.accelerator.backend and o.memory_bytes_per_device > current
        ),
        key=lambda o: (o.memory_bytes_per_device, o.accelerator.price_usd_per_hour or 1e9),
    )
    for other in options:
        acc = other.accelerator
        limit = other.memory_bytes_per_device * (1 - headroom)
        for lean in leans:
            if lean.estimate and lean.host_over_bytes <= 0 and lean.device_total_bytes <= limit:
                plan = recheck(lean.candidate, other)
                if plan is not None and plan.feasible:
                    text = f"{cluster_text(other)} ({acc.display_name}, {format_gib(acc.memory_bytes, 0)}): {_fit_text(plan)}."
                    return Suggestion(
                        change="bigger GPU", text=text, evaluation=plan, gpus=cluster_text(other)
                    )
    return None


def _faster_gpu(
    cluster: Cluster, fits_on: Callable[[Cluster], Evaluation | None], workload: ServeWorkload
) -> Suggestion | None:
    """The cheapest other catalog GPU (same backend and count; unpriced ones last) on which a plan meets
    the latency targets, when the job misses them on this one."""
    others = sorted(
        (
            a
            for a in list_accelerators()
            if a.backend == cluster.accelerator.backend and a.id != cluster.accelerator.id
        ),
        key=lambda a: (a.price_usd_per_hour is None, a.price_usd_per_hour or 0.0, a.id),
    )
    for acc in others:
        other = replace(cluster, accelerator=acc, usable_memory_bytes=None)
        plan = fits_on(other)
        if plan is not None:
            text = f"{cluster_text(other)}, {acc.display_name}: {_serve_fit_text(plan, workload)}."
            return Suggestion(change="faster GPU", text=text, evaluation=plan, gpus=cluster_text(other))
    return None
