"""How `swiftplan fit` shows a `FitOutcome`: the plan table, the winner's breakdown, why other families
lost, a better plan another engine could run, the infeasibility diagnosis, and the command to run next;
plus the same as JSON. Sentences come from `usecases.describe`."""

from __future__ import annotations

import shlex
from dataclasses import asdict
from typing import Any

from rich.table import Table

from swiftplan.cli._output import console, fits_terminal, print_json, print_unfolded
from swiftplan.planner.search.candidate import Candidate, ServeCandidate
from swiftplan.planner.search.evaluate import Evaluation
from swiftplan.planner.search.infeasible import Diagnosis
from swiftplan.planner.search.optimize import SearchResult
from swiftplan.units import GiB, format_duration
from swiftplan.usecases.describe import (
    candidate_summary,
    cost_text,
    engine_line,
    family_line,
    next_command,
    quant_label,
    search_line,
    sharding_label,
)

PARETO_ROWS = 15
"""Most Pareto plans shown in the table."""


def _table(title: str, columns: tuple[str, ...], left: tuple[str, ...]) -> Table:
    table = Table(title=title, title_justify="left")
    for name in columns:
        table.add_column(name, justify="left" if name in left else "right", overflow="fold")
    return table


def _train_table(title: str, rows: list[Evaluation], attention: tuple[str, ...], pareto: bool) -> Table:
    columns = ("#", "method", "rank", "quant", "numerics", "batch×accum", "ckpt", "ZeRO", "TP/PP/DP",
               "GiB/device", "tokens/s", "time", _cost_header(rows))  # fmt: skip
    table = _table(
        title,
        columns + (("headroom", "trainable") if pareto else ()),
        ("method", "rank", "quant", "numerics", "ckpt", "ZeRO", "TP/PP/DP"),
    )
    for i, e in enumerate(rows, 1):
        c = e.candidate
        assert isinstance(c, Candidate) and e.estimate is not None
        setup: Any = e.estimate.setup
        row = [
            str(i), c.family, "-" if c.method == "full" else f"{c.rank} {c.targets_label(attention)}", quant_label(c),
            f"{c.precision} {c.optimizer}", f"{c.micro_batch}×{setup.grad_accum}", "yes" if c.grad_ckpt else "no",
            sharding_label(c), f"{c.layout.tp}/{c.layout.pp}/{c.layout.dp}",
            f"{e.device_total_bytes / GiB:.1f}/{e.estimate.device_memory_bytes / GiB:.0f}", f"{e.tokens_per_s:,.0f}",
            format_duration(e.time_s), cost_text(e),
        ]  # fmt: skip
        if pareto:
            row += [f"{e.headroom_fraction:.0%}", f"{e.capacity / 1e6:,.1f}M"]
        table.add_row(*row, style="bold" if i == 1 and not pareto else None)
    return table


def _serve_table(title: str, rows: list[Evaluation]) -> Table:
    columns = ("#", "quant", "KV", "TP×replicas", "seqs/replica", "max context", "GiB/device", "decode tok/s",
               "per user", "TTFT", "per 1M tokens")  # fmt: skip
    table = _table(title, columns, ("quant", "KV"))
    for i, e in enumerate(rows, 1):
        c = e.candidate
        assert isinstance(c, ServeCandidate) and e.estimate is not None
        speed: Any = e.estimate.speed
        table.add_row(
            str(i), c.quant, c.kv_dtype, f"{c.tp}×{max(1, e.gpus // c.tp)}", str(c.concurrency),
            f"{e.estimate.max_context:,}", f"{e.device_total_bytes / GiB:.1f}/{e.estimate.device_memory_bytes / GiB:.0f}",
            f"{e.tokens_per_s:,.0f}", f"{speed.per_user_decode_tokens_per_s:.1f}", f"{speed.ttft_s:.2f} s", cost_text(e),
            style="bold" if i == 1 else None,
        )  # fmt: skip
    return table


def spread(rows: list[Evaluation], limit: int) -> list[Evaluation]:
    """At most `limit` rows, evenly spaced from the fastest to the slowest (both kept)."""
    if len(rows) <= limit:
        return rows
    step = (len(rows) - 1) / (limit - 1)
    return [rows[round(i * step)] for i in range(limit)]


def _cost_header(rows: list[Evaluation]) -> str:
    """'cost' when every row has a price, else 'GPU-hours' (what cost_text then prints)."""
    return "cost" if all(e.cost_usd is not None for e in rows) else "GPU-hours"


def _compact_table(title: str, rows: list[Evaluation], task: str, *, pareto: bool) -> Table:
    """The plans in five columns, each set-up in one line that wraps: fits 80 columns."""
    speed = "tokens/s" if task == "train" else "decode tok/s"
    cost = _cost_header(rows) if task == "train" else "per 1M tokens"
    columns = ("#", "plan", "GiB/device", speed, "time" if task == "train" else "TTFT", cost)
    table = _table(title, columns + (("headroom",) if pareto else ()), ("plan",))
    for i, e in enumerate(rows, 1):
        assert e.estimate is not None
        when = format_duration(e.time_s) if task == "train" else f"{e.estimate.speed.ttft_s:.2f} s"  # type: ignore[union-attr]
        table.add_row(
            str(i), candidate_summary(e),
            f"{e.device_total_bytes / GiB:.1f}/{e.estimate.device_memory_bytes / GiB:.0f}", f"{e.tokens_per_s:,.0f}",
            when, cost_text(e), *([f"{e.headroom_fraction:.0%}"] if pareto else []),
            style="bold" if i == 1 and not pareto else None,
        )  # fmt: skip
    return table


def _result_table(result: SearchResult, title: str, attention: tuple[str, ...], *, wide: bool) -> Table:
    """The plans table: the full one when it fits the terminal (or with --wide), else the compact one."""
    if result.pareto:
        rows = spread(list(result.pareto), PARETO_ROWS)
        shown = (
            f"{len(rows)} of {len(result.pareto)} shown, evenly spread; all in --json"
            if len(rows) < len(result.pareto)
            else f"{len(rows)} plans"
        )
        title = f"{title} — Pareto front ({shown}): time vs cost vs memory headroom"
    else:
        rows = [e for e in (result.best, *result.runners_up) if e is not None]
    full = (
        _train_table(title, rows, attention, bool(result.pareto))
        if result.task == "train"
        else _serve_table(title, rows)
    )
    if wide or fits_terminal(full):
        return full
    return _compact_table(title, rows, result.task, pareto=bool(result.pareto))


def _families(result: SearchResult) -> None:
    console.print("[bold]Why not the others:[/]")
    for outcome in result.families:
        console.print(f"  {family_line(outcome, result.best, result.objective)}", highlight=False)


def _variant_lines(outcome: Any) -> list[str]:
    """How each searched variant of the objective did against the winner."""
    from swiftplan.planner.search.objective_variants import describe_variant
    from swiftplan.usecases.describe import variant_line

    if not outcome.variants:
        return []
    winner = outcome.problem.workload.objective
    best, goal = outcome.result.best, outcome.problem.settings.objective
    return [
        variant_line(describe_variant(v.objective), v.best, best, goal, winner=v.objective == winner)
        for v in outcome.variants
    ]


def _variants(outcome: Any) -> None:
    if not outcome.variants:
        return
    console.print(f"[bold]Why not another {outcome.problem.workload.objective.kind} set-up:[/]")
    for line in _variant_lines(outcome):
        console.print(f"  {line}", highlight=False)


def _diagnosis(diagnosis: Diagnosis) -> None:
    console.print(f"[bold red]{diagnosis.summary}[/]", highlight=False)
    if diagnosis.suggestions:
        console.print("[bold]What would fit:[/]")
        for suggestion in diagnosis.suggestions:
            console.print(f"  • {suggestion.text}", highlight=False)
    else:
        console.print(diagnosis.no_fix, highlight=False)


def render_fit(
    outcome: Any, *, output: str | None, as_json: bool, measured: Any, elapsed_s: float, wide: bool = False
) -> None:
    """Print a `FitOutcome` (a table and sentences, or one JSON object). The plans table fits the terminal
    (a compact form below its full width) unless `wide` asks for every column."""
    if as_json:
        print_json(fit_json(outcome, output=output, measured=measured, elapsed_s=elapsed_s))
        return
    from swiftplan.cli.estimate import render_estimate
    from swiftplan.planner.search.pins import attention_targets

    problem, result = outcome.problem, outcome.result
    if result.best is None:
        if outcome.diagnosis is not None:
            _diagnosis(outcome.diagnosis)
        _families(result)
    else:
        title = f"Best plans for {problem.spec.name} on {problem.cluster.describe()} (objective: {problem.settings.objective})"
        table = _result_table(result, title, attention_targets(problem.spec), wide=wide)
        print_unfolded(table) if wide else console.print(table)
        for note in problem.notes:
            console.print(f"[dim]{note}[/]", highlight=False)
        render_estimate(result.best.estimate)
        _families(result)
        _variants(outcome)
    if outcome.alternative is not None:
        console.print(
            f"[bold]Another engine:[/] {engine_line(outcome.alternative, problem.engine.name, problem.settings.objective)}",
            highlight=False,
        )
    if result.best is None:
        for note in problem.notes:
            console.print(f"[dim]{note}[/]", highlight=False)
    console.print(
        f"[dim]{search_line(result, problem.settings.seed, elapsed_s)}; planned for engine {problem.engine.name}"
        f"{'' if problem.runtime is None else ', ' + problem.runtime.describe()}[/]",
        highlight=False,
    )
    if outcome.plan is not None and output:
        console.print(
            f"wrote {output}; next: {next_command(outcome.plan, output)}  (check it: swiftplan estimate {shlex.quote(output)})",
            highlight=False,
        )
    if measured is not None:
        from swiftplan.cli._fit_measure import render_measurements

        render_measurements(*measured)


def evaluation_json(e: Evaluation) -> dict[str, Any]:
    """Stable JSON for one evaluated plan."""
    c = e.candidate
    fields = {name: getattr(c, name) for name in c.__slots__}
    if isinstance(c, Candidate):
        fields["layout"] = {"gpus": c.layout.gpus, "tp": c.layout.tp, "pp": c.layout.pp, "dp": c.layout.dp}
        fields["targets"] = list(c.targets)
    return {
        "candidate": fields, "summary": candidate_summary(e) if e.estimate else None, "feasible": e.feasible,
        "error": e.error or None, "device_total_bytes": e.device_total_bytes if e.estimate else None,
        "limit_bytes": e.limit_bytes, "host_bytes_per_node": e.host_bytes_per_node, "tokens_per_s": e.tokens_per_s,
        "time_s": e.time_s, "gpu_hours": e.gpu_hours, "cost_usd": e.cost_usd,
        "headroom_fraction": e.headroom_fraction, "trainable_params": e.capacity,
    }  # fmt: skip


def _diagnosis_json(diagnosis: Diagnosis) -> dict[str, Any]:
    return {
        "summary": diagnosis.summary,
        "closest": evaluation_json(diagnosis.closest),
        "suggestions": [
            {"change": s.change, "text": s.text, "gpus": s.gpus,
             "plan": evaluation_json(s.evaluation) if s.evaluation else None}
            for s in diagnosis.suggestions
        ],
    }  # fmt: skip


def result_json(result: SearchResult, diagnosis: Diagnosis | None) -> dict[str, Any]:
    """The search part of `fit --json`."""
    payload: dict[str, Any] = {
        "feasible": result.best is not None,
        "best": evaluation_json(result.best) if result.best else None,
        "runners_up": [evaluation_json(e) for e in result.runners_up],
        "pareto": [evaluation_json(e) for e in result.pareto],
        "families": [
            {"family": f.label, "searched": f.searched, "line": family_line(f, result.best, result.objective),
             "best": evaluation_json(f.best) if f.best else None,
             "closest": evaluation_json(f.closest) if f.closest else None}
            for f in result.families
        ],
        "search": {"sampler": result.sampler, "trials": result.trials, "structures_evaluated": len(result.evaluations),
                   "space_size": result.space_size, "pruned": result.pruned, "estimates": result.estimates},
    }  # fmt: skip
    if diagnosis is not None:
        payload["diagnosis"] = _diagnosis_json(diagnosis)
    return payload


def fit_json(outcome: Any, *, output: str | None, measured: Any, elapsed_s: float) -> dict[str, Any]:
    """`fit --json`: the problem, the search, the plan (as its file holds it) and the engine comparison."""
    from swiftplan.cli._fit_measure import measurements_json
    from swiftplan.plan_file import plan_dict

    problem, alternative = outcome.problem, outcome.alternative
    payload = {
        "task": problem.task, "model": problem.spec.name, "cluster": problem.cluster.describe(),
        "engine": problem.engine.name, "objective": problem.settings.objective, "notes": list(problem.notes),
        "runtime": None if problem.runtime is None else problem.runtime.to_json(),
        "workload": asdict(problem.workload),
        "lengths": None if problem.lengths is None else {
            **asdict(problem.lengths), "memory_seq_len": problem.workload.seq_len,
        },
        **result_json(outcome.result, outcome.diagnosis),
        "other_engine": None if alternative is None else {
            "line": engine_line(alternative, problem.engine.name, problem.settings.objective),
            "engines": [e.name for e in alternative.engines],
            "ratio": None if alternative.ratio == float("inf") else alternative.ratio,
            "plan": evaluation_json(alternative.evaluation),
        },
        "plan": plan_dict(outcome.plan) if outcome.plan else None,
        "plan_file": output if outcome.plan and output else None, "elapsed_s": elapsed_s,
        "objective_variants": [
            {"objective": asdict(v.objective), "best": evaluation_json(v.best) if v.best else None, "line": line}
            for v, line in zip(outcome.variants, _variant_lines(outcome), strict=True)
        ],
    }  # fmt: skip
    if measured is not None:
        payload["measurements"] = measurements_json(*measured)
    return payload
