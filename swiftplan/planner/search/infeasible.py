"""When nothing fits: by how much, and the smallest changes that would fit, each checked with the estimator.

Every suggestion is backed by an evaluation of a concrete plan: QLoRA (when pins left it out), a
shorter sequence or context (the longest that fits, by binary search), offload to host RAM (how much
it would need), more GPUs of the same type (the smallest count that fits), and the smallest catalog
GPU that fits. Feasibility checks use the leanest variant of each structure at micro-batch 1 with
checkpointing, which is the least memory the space offers. Pure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Literal

from swiftplan.errors import SwiftplanError
from swiftplan.planner.hardware import Cluster, list_accelerators
from swiftplan.planner.search.candidate import Candidate, Layout, ServeCandidate, cluster_text
from swiftplan.planner.search.evaluate import Evaluation, Objective, ServeEvaluator, TrainEvaluator
from swiftplan.planner.search.pins import Pins
from swiftplan.planner.search.serve_space import build_serve_space
from swiftplan.planner.search.space import build_train_space
from swiftplan.planner.setup import TrainSetup
from swiftplan.planner.speed import ServeSpeed
from swiftplan.planner.workload import ServeWorkload
from swiftplan.units import GiB, format_gib

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


@dataclass(frozen=True, kw_only=True, slots=True)
class Diagnosis:
    """Why nothing fits and what would."""

    closest: Evaluation
    """The plan nearest to fitting."""
    summary: str
    """One sentence: what the closest plan needs against the budget."""
    suggestions: tuple[Suggestion, ...]
    """Changes that fit, smallest first."""
    no_fix: str = (
        "No single change checked (QLoRA, shorter sequence, offload, more or bigger GPUs) makes it fit."
    )
    """What to say when no suggestion fits: the changes that were checked, for this task."""


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


class _Train:
    """Feasibility checks for training, sharing the user's pins, workload and limits."""

    def __init__(self, base: TrainEvaluator, pins: Pins) -> None:
        self.base, self.pins = base, pins

    def evaluator(
        self,
        *,
        cluster: Cluster | None = None,
        pins: Pins | None = None,
        seq: int | None = None,
        host_ram_bytes: int | None | Literal["same"] = "same",
    ) -> TrainEvaluator:
        base = self.base
        cluster = cluster or base.cluster
        space = build_train_space(
            base.spec, cluster, pins or self.pins, base.space.engine, global_batch=base.workload.global_batch
        )
        workload = base.workload if seq is None else replace(base.workload, seq_len=seq)
        host = base.host_ram_bytes if isinstance(host_ram_bytes, str) else host_ram_bytes
        return TrainEvaluator(
            base.spec, cluster, workload, space, headroom=base.headroom, host_ram_bytes=host
        )

    @staticmethod
    def lean_set(evaluator: TrainEvaluator) -> list[Candidate]:
        """The leanest variant of every checkpointed structure at micro-batch 1, QLoRA and sharded ones first."""
        space = evaluator.space
        ckpt = True if True in space.grad_ckpt else space.grad_ckpt[0]
        mb = space.micro_batches[0] if space.micro_batches else 1
        leans = {evaluator.lean(s.replace(micro_batch=mb)) for s in space.structures() if s.grad_ckpt == ckpt}
        return sorted(
            leans,
            key=lambda c: (c.method != "qlora", -c.zero, c.offload == "none", c.layout.gpus, c.simplicity()),
        )

    def fits(self, evaluator: TrainEvaluator, candidates: list[Candidate] | None = None) -> Evaluation | None:
        return _first_fit(evaluator.evaluate(c) for c in (candidates or self.lean_set(evaluator)))


def _describe(evaluation: Evaluation) -> str:
    c = evaluation.candidate
    if isinstance(c, ServeCandidate):
        return f"{c.quant} weights, KV {c.kv_dtype}, tp {c.tp}, {c.concurrency} sequence(s) per replica"
    layout = c.layout
    parts = [c.family if c.quant in ("none", "nf4", "nf4-dq") else f"{c.family} on {c.quant}"]
    if c.zero:
        parts.append(f"ZeRO-{c.zero}" + (f" + offload {c.offload}" if c.offload != "none" else ""))
    if layout.tp > 1 or layout.pp > 1:
        parts.append(f"tp {layout.tp} pp {layout.pp}")
    parts.append(f"{layout.gpus} GPU{'s' if layout.gpus > 1 else ''}, micro-batch {c.micro_batch}")
    return ", ".join(parts)


def _fit_text(evaluation: Evaluation) -> str:
    return f"{_describe(evaluation)}: {format_gib(evaluation.device_total_bytes, 1)} per device"


def _summary(closest: Evaluation) -> str:
    budget = closest.estimate.device_memory_bytes if closest.estimate else 0
    if closest.estimate is None:
        return f"No candidate could be estimated: {closest.error}"
    text = (
        f"Nothing fits. The closest plan ({_describe(closest)}) needs {format_gib(closest.device_total_bytes, 1)} "
        f"per device; the limit is {format_gib(closest.limit_bytes, 1)} of {format_gib(budget, 1)}"
    )
    if closest.memory_over_bytes > 0:
        text += f", {format_gib(closest.memory_over_bytes, 1)} over"
    if closest.host_over_bytes > 0:
        text += (
            f"; its offloaded state needs {format_gib(closest.host_bytes_per_node, 0)} of host RAM per node, "
            f"{format_gib(closest.host_over_bytes, 0)} more than --host-ram"
        )
    if closest.latency_over > 0:
        text += "; it misses the latency targets"
    return text + "."


def _seconds(value: float) -> str:
    return f"{value:.3g} s"


def _times(ratio: float) -> str:
    """'1.6×', '12×', '10,400×'."""
    return f"{ratio:.2g}×" if ratio < 10 else f"{ratio:,.0f}×"


def _latency_miss(workload: ServeWorkload, plans: list[Evaluation]) -> str:
    """The best time to first token and per-user decode speed any plan within memory reaches, against the
    targets it misses (empty when no plan has a speed or every target is met)."""
    speeds = [
        p.estimate.speed
        for p in plans
        if p.estimate is not None and p.memory_over_bytes <= 0 and isinstance(p.estimate.speed, ServeSpeed)
    ]
    if not speeds:
        return ""
    parts = []
    ttft = min(speed.ttft_s for speed in speeds)
    if workload.ttft_s is not None and ttft > workload.ttft_s:
        parts.append(
            f"its time to first token is at best {_seconds(ttft)}, against --ttft {workload.ttft_s:g} s "
            f"({_times(ttft / workload.ttft_s)} the target)"
        )
    decode = max(speed.per_user_decode_tokens_per_s for speed in speeds)
    if workload.decode_tps is not None and decode < workload.decode_tps:
        parts.append(
            f"it decodes at best {decode:,.3g} tokens/s per user, against --decode-tps {workload.decode_tps:g} "
            f"({1 - decode / workload.decode_tps:.0%} short)"
        )
    return " and ".join(parts)


def _serve_summary(closest: Evaluation, workload: ServeWorkload, plans: list[Evaluation]) -> str:
    """The summary, with what the latency targets miss by when a plan fits memory but is too slow."""
    text = _summary(closest)
    miss = _latency_miss(workload, plans)
    if not miss:
        return text
    if closest.latency_over > 0:
        return (
            text.removesuffix("; it misses the latency targets.")
            + f"; it misses the latency targets: {miss}."
        )
    return text.removesuffix(".") + f". The plans within memory miss the latency targets: {miss}."


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


def _qlora_suggestion(checks: _Train) -> Suggestion | None:
    """QLoRA, when the pins left it out and it fits."""
    if "qlora" in checks.base.space.methods:
        return None
    try:
        qlora = checks.evaluator(pins=replace(checks.pins, methods=("qlora",), quants=None, precisions=None))
    except SwiftplanError:
        return None
    plan = checks.fits(qlora)
    if plan is None:
        return None
    return Suggestion(change="QLoRA", text=f"QLoRA (--method qlora): {_fit_text(plan)}.", evaluation=plan)


def _shorter_sequence(checks: _Train) -> Suggestion | None:
    """The longest sequence (a multiple of 256) at which one of the five leanest plans fits."""
    evaluator = checks.base
    seq = evaluator.workload.seq_len
    if seq <= 256:
        return None
    leans = sorted(checks.lean_set(evaluator), key=lambda c: evaluator.evaluate(c).device_total_bytes)[:5]
    plan = _largest_fitting(
        256, seq - 1, 256, lambda length: checks.fits(checks.evaluator(seq=length), leans)
    )
    if plan is None or plan.estimate is None or not isinstance(plan.estimate.setup, TrainSetup):
        return None
    text = f"a shorter sequence, --seq {plan.estimate.setup.seq_len}: {_fit_text(plan)}."
    return Suggestion(change="shorter sequence", evaluation=plan, text=text)


def _bigger_train_gpu(checks: _Train) -> Suggestion | None:
    """The smallest catalog GPU one of the lean plans fits, re-estimated on it."""
    evaluator = checks.base
    leans = [evaluator.evaluate(c) for c in checks.lean_set(evaluator)]

    def recheck(candidate: Candidate | ServeCandidate, cluster: Cluster) -> Evaluation | None:
        if not isinstance(candidate, Candidate):
            return None
        try:
            other = checks.evaluator(cluster=cluster)
        except SwiftplanError:
            return None
        bare = candidate.replace(micro_batch=0)
        if bare not in other.space.variants(other.space.canonical(bare)):
            return None  # the new GPU cannot run this variant
        return other.evaluate(candidate)

    ordered = sorted(leans, key=lambda e: e.candidate.simplicity())
    return _bigger_gpu(evaluator.cluster, ordered, recheck, evaluator.headroom)


def diagnose_training(
    evaluator: TrainEvaluator, pins: Pins, closest: Evaluation, objective: Objective = "time"
) -> Diagnosis:
    """Explain a training search where no plan is feasible."""
    checks = _Train(evaluator, pins)

    def best(cluster: Cluster) -> Evaluation | None:
        from swiftplan.planner.search.optimize import SearchSettings, search_training

        return search_training(checks.evaluator(cluster=cluster), SearchSettings(objective=objective)).best

    found = (
        _qlora_suggestion(checks),
        _shorter_sequence(checks),
        _offload_plan(checks, evaluator.space.methods),
        _more_gpus(evaluator.cluster, lambda c: checks.fits(checks.evaluator(cluster=c)), best),
        _bigger_train_gpu(checks),
    )
    suggestions = tuple(s for s in found if s is not None)
    return Diagnosis(closest=closest, summary=_summary(closest), suggestions=suggestions)


def _offload_plan(checks: _Train, methods: tuple[str, ...]) -> Suggestion | None:
    """ZeRO-3 offloading parameters and optimizer state on all GPUs, with the host RAM it needs."""
    method = "lora" if "lora" in methods or "qlora" in methods else "full"
    pins = replace(
        checks.pins,
        methods=(method,),
        quants=("none",),
        zero=(3,),
        max_offload="optimizer+params",
        tp=None,
        pp=None,
        dp=None,
    )
    try:
        unbounded = checks.evaluator(pins=pins, host_ram_bytes=None)
    except SwiftplanError:
        return None
    world = unbounded.cluster.world_size
    structures = [
        s
        for s in unbounded.space.structures()
        if s.offload == "optimizer+params" and s.layout == Layout(gpus=world)
    ]
    if not structures:
        return None
    plan = checks.fits(
        unbounded, [unbounded.lean(s.replace(micro_batch=1, grad_ckpt=True)) for s in structures]
    )
    if plan is None:
        return None
    host = plan.host_bytes_per_node
    limit = checks.base.host_ram_bytes
    text = (
        f"ZeRO-3 offloading parameters and optimizer state ({plan.candidate.family}, bf16 base): "
        f"{format_gib(plan.device_total_bytes, 1)} per device, and {format_gib(host, 0)} of host RAM per node"
    )
    if limit is not None and host > limit:
        text += f" (--host-ram {max(1, -(-host // GiB))} or more; {format_gib(limit, 0)} is allowed now)"
    return Suggestion(change="offload", text=text + ".", evaluation=plan)


SERVE_NO_FIX = (
    "No single change checked (quantized weights, a shorter --context, a lower --concurrency, more GPUs, "
    "a bigger or faster GPU) makes it fit."
)
"""A serving diagnosis without a suggestion: the serving changes it checked."""


def diagnose_serving(
    evaluator: ServeEvaluator, pins: Pins, closest: Evaluation, objective: Objective = "throughput"
) -> Diagnosis:
    """Explain a serving search where no plan is feasible: by how much it misses memory or the latency
    targets, and the serving changes that would fit (quantization, context, concurrency, GPUs)."""
    suggestions: list[Suggestion] = []

    def make(
        cluster: Cluster | None = None,
        context: int | None = None,
        pins_: Pins | None = None,
        concurrency: int | None = None,
    ) -> ServeEvaluator:
        cluster = cluster or evaluator.cluster
        workload = evaluator.workload if context is None else replace(evaluator.workload, context=context)
        if concurrency is not None:
            workload = replace(workload, concurrency=concurrency)
        space = build_serve_space(evaluator.spec, cluster, pins_ or pins, evaluator.space.engine)
        return ServeEvaluator(evaluator.spec, cluster, workload, space, headroom=1 - evaluator.utilization)

    def fits(other: ServeEvaluator) -> Evaluation | None:
        return _first_fit(other.best_concurrency(s) for s in other.space.structures())

    leans = [evaluator.best_concurrency(s) for s in evaluator.space.structures()]
    slow = any(lean.latency_over > 0 and lean.memory_over_bytes <= 0 for lean in leans)

    def text(plan: Evaluation) -> str:
        return _serve_fit_text(plan, evaluator.workload) if slow else _fit_text(plan)

    if pins.quants is not None and "nf4" not in pins.quants:
        try:
            plan = fits(make(pins_=replace(pins, quants=None)))
        except SwiftplanError:
            plan = None
        if plan is not None:
            suggestions.append(
                Suggestion(change="quantization", text=f"quantized weights: {text(plan)}.", evaluation=plan)
            )
    context = evaluator.workload.context
    if context > 512:
        plan = _largest_fitting(512, context - 1, 512, lambda n: fits(make(context=n)))
        if plan is not None:
            shorter = f"a shorter context, --context {plan.estimate.setup.context}: {text(plan)}."  # type: ignore[union-attr]
            suggestions.append(Suggestion(change="shorter context", text=shorter, evaluation=plan))
    concurrency = evaluator.workload.concurrency
    if concurrency is not None and concurrency > 1:
        most = [0]  # the largest concurrency seen to fit

        def fits_at(n: int) -> Evaluation | None:
            plan = fits(make(concurrency=n))
            if plan is not None:
                most[0] = max(most[0], n)
            return plan

        plan = _largest_fitting(1, concurrency - 1, 1, fits_at)
        if plan is not None:
            lower = f"a lower --concurrency, {most[0]}: {text(plan)}."
            suggestions.append(Suggestion(change="lower concurrency", text=lower, evaluation=plan))

    def best(cluster: Cluster) -> Evaluation | None:
        from swiftplan.planner.search.optimize import SearchSettings, search_serving

        return search_serving(make(cluster=cluster), SearchSettings(objective=objective)).best

    def fits_on(cluster: Cluster) -> Evaluation | None:
        try:
            return fits(make(cluster=cluster))
        except SwiftplanError:
            return None

    more = _more_gpus(evaluator.cluster, fits_on, best, text)
    if more is not None:
        suggestions.append(more)

    def recheck(candidate: Candidate | ServeCandidate, cluster: Cluster) -> Evaluation | None:
        if not isinstance(candidate, ServeCandidate):
            return None
        try:
            other = make(cluster=cluster)
        except SwiftplanError:
            return None
        structure = candidate.replace(concurrency=0)
        return other.best_concurrency(structure) if structure in other.space.structures() else None

    other_gpu = _faster_gpu(evaluator.cluster, fits_on, evaluator.workload) if slow else None
    if other_gpu is None:
        other_gpu = _bigger_gpu(evaluator.cluster, leans, recheck, 1 - evaluator.utilization)
    if other_gpu is not None:
        suggestions.append(other_gpu)
    summary = _serve_summary(closest, evaluator.workload, leans)
    return Diagnosis(closest=closest, summary=summary, suggestions=tuple(suggestions), no_fix=SERVE_NO_FIX)


def _serve_fit_text(plan: Evaluation, workload: ServeWorkload) -> str:
    """A serving plan that fits, with the time to first token and decode speed the targets asked about."""
    text = _fit_text(plan)
    speed = plan.estimate.speed if plan.estimate is not None else None
    if not isinstance(speed, ServeSpeed):
        return text
    if workload.ttft_s is not None:
        text += f", time to first token {_seconds(speed.ttft_s)}"
    if workload.decode_tps is not None:
        text += f", {speed.per_user_decode_tokens_per_s:,.3g} tokens/s per user"
    return text


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
