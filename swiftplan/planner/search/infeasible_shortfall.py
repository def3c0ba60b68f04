"""By how much nothing fits, in the sentences a diagnosis is written in: the closest plan's memory against the
budget (and its host RAM against --host-ram), the latency targets a serving plan within memory misses and by how
much, and how a plan that fits after a change reads. Pure.
"""

from __future__ import annotations

from swiftplan.planner.search.candidate import ServeCandidate
from swiftplan.planner.search.evaluate import Evaluation
from swiftplan.planner.speed import ServeSpeed
from swiftplan.planner.workload import ServeWorkload
from swiftplan.units import format_gib


def _describe(evaluation: Evaluation) -> str:
    c = evaluation.candidate
    if isinstance(c, ServeCandidate):
        # "bf16 weights", as the plan tables say, not "none weights"
        weights = c.dtype if c.quant == "none" else c.quant
        return f"{weights} weights, KV {c.kv_dtype}, tp {c.tp}, {c.concurrency} sequence(s) per replica"
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
