"""How `swiftplan fit` shows a search result: the plan table, the winner's breakdown, why other
families lost, and the infeasibility diagnosis; plus the same as JSON."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from swiftplan.cli._output import console
from swiftplan.planner.search.candidate import Candidate, ServeCandidate
from swiftplan.planner.search.evaluate import Evaluation
from swiftplan.planner.search.infeasible import Diagnosis
from swiftplan.planner.search.optimize import FamilyOutcome, SearchResult
from swiftplan.units import GiB, format_gib


def duration(seconds: float) -> str:
    """'45 s', '12 min', '3.4 h', '2.1 days'."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _quant(c: Candidate) -> str:
    return {"nf4-dq": "nf4+dq"}.get(c.quant, c.quant)


def _sharding(c: Candidate) -> str:
    offload = {"none": "", "optimizer": "+opt", "optimizer+params": "+opt+params"}[c.offload]
    return f"{c.zero}{offload}"


def _cost(e: Evaluation) -> str:
    return (
        "unknown"
        if e.cost_usd is None
        else f"${e.cost_usd:,.0f}"
        if e.cost_usd >= 10
        else f"${e.cost_usd:.2f}"
    )


def _train_table(title: str, rows: list[Evaluation], attention: tuple[str, ...], pareto: bool) -> Table:
    table = Table(title=title, title_justify="left")
    for name, justify in (
        ("#", "right"),
        ("method", "left"),
        ("rank", "left"),
        ("quant", "left"),
        ("numerics", "left"),
        ("batch×accum", "right"),
        ("ckpt", "left"),
        ("ZeRO", "left"),
        ("TP/PP/DP", "left"),
        ("GiB/device", "right"),
        ("tokens/s", "right"),
        ("time", "right"),
        ("cost", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    if pareto:
        table.add_column("headroom", justify="right")
        table.add_column("trainable", justify="right")
    for i, e in enumerate(rows, 1):
        c = e.candidate
        assert isinstance(c, Candidate) and e.estimate is not None
        setup = e.estimate.setup
        rank = "-" if c.method == "full" else f"{c.rank} {c.targets_label(attention)}"
        row = [
            str(i),
            c.family,
            rank,
            _quant(c),
            f"{c.precision} {c.optimizer}",
            f"{c.micro_batch}×{setup.grad_accum}",  # type: ignore[union-attr]
            "yes" if c.grad_ckpt else "no",
            _sharding(c),
            f"{c.layout.tp}/{c.layout.pp}/{c.layout.dp}",
            f"{e.device_total_bytes / GiB:.1f}/{e.estimate.device_memory_bytes / GiB:.0f}",
            f"{e.tokens_per_s:,.0f}",
            duration(e.time_s),
            _cost(e),
        ]
        if pareto:
            row += [f"{e.headroom_fraction:.0%}", f"{e.capacity / 1e6:,.1f}M"]
        table.add_row(*row, style="bold" if i == 1 and not pareto else None)
    return table


def _serve_table(title: str, rows: list[Evaluation], replicas_of: Any) -> Table:
    table = Table(title=title, title_justify="left")
    for name in (
        "#",
        "quant",
        "KV",
        "TP×replicas",
        "seqs/replica",
        "max context",
        "GiB/device",
        "decode tok/s",
        "per user",
        "TTFT",
        "per 1M tokens",
    ):
        table.add_column(name, justify="left" if name in ("quant", "KV") else "right")
    for i, e in enumerate(rows, 1):
        c = e.candidate
        assert isinstance(c, ServeCandidate) and e.estimate is not None
        speed = e.estimate.speed
        table.add_row(
            str(i),
            c.quant,
            c.kv_dtype,
            f"{c.tp}×{replicas_of(c)}",
            str(c.concurrency),
            f"{e.estimate.max_context:,}",
            f"{e.device_total_bytes / GiB:.1f}/{e.estimate.device_memory_bytes / GiB:.0f}",
            f"{e.tokens_per_s:,.0f}",
            f"{speed.per_user_decode_tokens_per_s:.1f}",
            f"{speed.ttft_s:.2f} s",
            _cost(e) if e.cost_usd is not None else f"{e.gpu_hours:.2f} GPU-h",  # type: ignore[union-attr]
            style="bold" if i == 1 else None,
        )
    return table


_SIMPLER = (
    "fewer GPUs",
    "less tensor parallelism",
    "fewer pipeline stages",
    "a lower ZeRO stage",
    "no offload",
    "no quantization",
    "double quantization",
    "plain AdamW",
    "no paged optimizer",
    "pure precision",
    "checkpointing",
    "a higher rank",
    "a smaller micro-batch",
)


def _simpler(winner: Any, other: Any) -> str:
    """Which tie-break (Candidate.simplicity order) preferred the winner."""
    for reason, a, b in zip(_SIMPLER, winner.simplicity(), other.simplicity(), strict=False):
        if a != b:
            return reason if isinstance(winner, Candidate) else "simpler numerics"
    return "same plan"


def family_line(outcome: FamilyOutcome, best: Evaluation | None, objective: str) -> str:
    """One sentence on how a family did against the winner."""
    if not outcome.searched:
        return f"{outcome.label}: not searched (excluded by the options or not supported on this GPU)."
    if outcome.best is not None and best is not None:
        if outcome.best.candidate == best.candidate:
            return f"{outcome.label}: the winner."
        a, b = outcome.best, best
        if objective == "throughput":
            ratio, worse, what = (
                b.tokens_per_s / a.tokens_per_s,
                "lower throughput",
                f"{a.tokens_per_s:,.0f} tokens/s",
            )
        elif objective == "cost":
            ratio, worse, what = (
                a.cost / b.cost,
                "more expensive",
                _cost(a) if a.cost_usd is not None else f"{a.gpu_hours:,.1f} GPU-h",
            )
        else:
            ratio, worse, what = a.time_s / b.time_s, "slower", duration(a.time_s)
        if ratio < 1.005:
            return f"{outcome.label}: about as good ({what}); the winner is simpler ({_simpler(b.candidate, a.candidate)})."
        amount = f"{ratio:.1f}× " if ratio >= 2 else f"{ratio - 1:.0%} "
        return f"{outcome.label}: best plan is {amount}{worse} ({what})."
    if outcome.best is not None:
        return f"{outcome.label}: fits ({outcome.best.device_total_bytes / GiB:.1f} GiB per device)."
    closest = outcome.closest
    if closest is None or closest.estimate is None:
        return f"{outcome.label}: no valid plan."
    if closest.memory_over_bytes > 0:
        return (
            f"{outcome.label}: doesn't fit; the closest plan needs {format_gib(closest.device_total_bytes, 1)} per device, "
            f"{format_gib(closest.memory_over_bytes, 1)} over the {format_gib(closest.limit_bytes, 1)} limit."
        )
    if closest.host_over_bytes > 0:
        return (
            f"{outcome.label}: fits the GPU only by offloading {format_gib(closest.host_bytes_per_node, 0)} per node to host RAM, "
            f"{format_gib(closest.host_over_bytes, 0)} more than --host-ram allows."
        )
    return f"{outcome.label}: misses the latency targets."


PARETO_ROWS = 15
"""Most Pareto plans shown in the table."""


def _spread(rows: list[Evaluation], limit: int) -> list[Evaluation]:
    """At most `limit` rows, evenly spaced from the fastest to the slowest (both kept)."""
    if len(rows) <= limit:
        return rows
    step = (len(rows) - 1) / (limit - 1)
    return [rows[round(i * step)] for i in range(limit)]


def render_result(
    result: SearchResult, *, title: str, attention: tuple[str, ...], replicas_of: Any, notes: list[str]
) -> None:
    """Print the plan table (or the Pareto front) and the family lines."""
    if result.best is None:
        return
    if result.pareto:
        rows = _spread(list(result.pareto), PARETO_ROWS)
        shown = (
            f"{len(rows)} of {len(result.pareto)} shown, evenly spread; all in --json"
            if len(rows) < len(result.pareto)
            else f"{len(rows)} plans"
        )
        title = f"{title} — Pareto front ({shown}): time vs cost vs memory headroom"
    else:
        rows = [result.best, *result.runners_up]
    table = (
        _train_table(title, rows, attention, bool(result.pareto))
        if result.task == "train"
        else _serve_table(title, rows, replicas_of)
    )
    console.print(table)
    for note in notes:
        console.print(f"[dim]{note}[/]", highlight=False)


def render_families(result: SearchResult) -> None:
    """The "why not" lines."""
    console.print("[bold]Why not the others:[/]")
    for outcome in result.families:
        console.print(f"  {family_line(outcome, result.best, result.objective)}", highlight=False)


def render_diagnosis(diagnosis: Diagnosis, result: SearchResult) -> None:
    """What does not fit, by how much, and what would."""
    console.print(f"[bold red]{diagnosis.summary}[/]", highlight=False)
    render_families(result)
    if diagnosis.suggestions:
        console.print("[bold]What would fit:[/]")
        for suggestion in diagnosis.suggestions:
            console.print(f"  • {suggestion.text}", highlight=False)
    else:
        console.print(
            "No single change checked (QLoRA, shorter sequence, offload, more or bigger GPUs) makes it fit."
        )


def evaluation_json(e: Evaluation) -> dict[str, Any]:
    """Stable JSON for one evaluated plan."""
    c = e.candidate
    fields = {name: getattr(c, name) for name in c.__slots__}  # type: ignore[attr-defined]
    if isinstance(c, Candidate):
        fields["layout"] = {"gpus": c.layout.gpus, "tp": c.layout.tp, "pp": c.layout.pp, "dp": c.layout.dp}
        fields["targets"] = list(c.targets)
    return {
        "candidate": fields,
        "feasible": e.feasible,
        "error": e.error or None,
        "device_total_bytes": e.device_total_bytes if e.estimate else None,
        "limit_bytes": e.limit_bytes,
        "host_bytes_per_node": e.host_bytes_per_node,
        "tokens_per_s": e.tokens_per_s,
        "time_s": e.time_s,
        "gpu_hours": e.gpu_hours,
        "cost_usd": e.cost_usd,
        "headroom_fraction": e.headroom_fraction,
        "trainable_params": e.capacity,
    }


def result_json(result: SearchResult, diagnosis: Diagnosis | None) -> dict[str, Any]:
    """The search part of `fit --json`."""
    payload: dict[str, Any] = {
        "feasible": result.best is not None,
        "best": evaluation_json(result.best) if result.best else None,
        "runners_up": [evaluation_json(e) for e in result.runners_up],
        "pareto": [evaluation_json(e) for e in result.pareto],
        "families": [
            {
                "family": f.label,
                "searched": f.searched,
                "line": family_line(f, result.best, result.objective),
                "best": evaluation_json(f.best) if f.best else None,
                "closest": evaluation_json(f.closest) if f.closest else None,
            }
            for f in result.families
        ],
        "search": {
            "sampler": result.sampler,
            "trials": result.trials,
            "structures_evaluated": len(result.evaluations),
            "space_size": result.space_size,
            "pruned": result.pruned,
            "estimates": result.estimates,
        },
    }
    if diagnosis is not None:
        payload["diagnosis"] = {
            "summary": diagnosis.summary,
            "closest": evaluation_json(diagnosis.closest),
            "suggestions": [
                {
                    "change": s.change,
                    "text": s.text,
                    "gpus": s.gpus,
                    "plan": evaluation_json(s.evaluation) if s.evaluation else None,
                }
                for s in diagnosis.suggestions
            ],
        }
    return payload
