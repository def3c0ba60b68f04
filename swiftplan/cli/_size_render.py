"""How `swiftplan size` shows its answer: a rich table, JSON, or CSV."""

from __future__ import annotations

import csv
import io
import math
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from rich.markup import escape
from rich.table import Table

from swiftplan.cli._output import console, print_json, print_unfolded
from swiftplan.planner.sizing.prices import Price
from swiftplan.planner.sizing.rank import (
    Constraints,
    Option,
    Ranking,
    budget_shortfall,
    explain,
)
from swiftplan.planner.sizing.result import SizingResult
from swiftplan.units import GiB, format_duration, format_usd
from swiftplan.usecases.describe import fit_command_line
from swiftplan.usecases.size import SizeOutcome

CSV_COLUMNS = (
    "rank", "status", "accelerator_id", "accelerator", "vendor", "gpus", "nodes", "plan", "time_s",
    "tokens_per_s", "headroom_gib", "usd_per_gpu_hour", "rent_usd", "purchase_usd", "usd_per_million_tokens",
    "tokens_per_usd", "ttft_s", "per_user_decode_tokens_per_s", "reason_kind", "reason",
)  # fmt: skip
"""CSV header; the plan's own fields (method, rank, quant, ... or quant, kv_dtype, tp, replicas ...) follow."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SizeReport:
    """Everything `size` prints."""

    model: str
    task: str
    objective: str
    workload: Mapping[str, Any]
    constraints: Constraints
    ranking: Ranking
    result: SizingResult
    prices: Mapping[str, Price]
    notes: tuple[str, ...]
    elapsed_s: float
    top: int
    next_command: str | None = None
    """The `swiftplan fit` command that plans the recommended option in full."""
    runtime: Mapping[str, Any] | None = None
    """The runtime profile sized under and each default it applied (RuntimeChoice.to_json)."""

    @classmethod
    def of(cls, outcome: SizeOutcome, *, elapsed_s: float, top: int) -> SizeReport:
        """The report of a size outcome."""
        fit = outcome.next_fit
        return cls(
            model=outcome.model, task=outcome.task, objective=outcome.objective, workload=outcome.workload,
            constraints=outcome.constraints, ranking=outcome.ranking, result=outcome.result, prices=outcome.prices,
            notes=outcome.notes, elapsed_s=elapsed_s, top=top,
            next_command=None if fit is None else f"{fit_command_line(fit)} -o plan.yaml",
            runtime=None if outcome.runtime is None else outcome.runtime.to_json(),
        )  # fmt: skip

    @property
    def search_line(self) -> str:
        r = self.result
        if self.task == "serve":
            return (
                f"planned {r.searched} accelerators ({r.clusters} weight × KV-cache × tensor-parallel shapes; "
                f"{r.estimates:,} estimates) in {self.elapsed_s:.2f} s"
            )
        return (
            f"considered {r.clusters} clusters ({r.searched} searched, {r.pruned} skipped by a bound; "
            f"{r.estimates:,} estimates) in {self.elapsed_s:.2f} s"
        )


def option_json(option: Option, rank: int | None = None) -> dict[str, Any]:
    """One option as JSON: hardware, plan, figures and (when rejected) the reason."""
    return {
        "rank": rank,
        "accelerator_id": option.accelerator_id,
        "accelerator": option.accelerator,
        "vendor": option.vendor,
        "gpus": option.gpus,
        "nodes": option.nodes,
        "hardware": option.hardware,
        "plan": option.plan or None,
        "plan_fields": dict(option.plan_fields) or None,
        "time_s": option.time_s,
        "tokens_per_s": option.tokens_per_s,
        "headroom_bytes": option.headroom_bytes,
        "usd_per_gpu_hour": option.usd_per_gpu_hour,
        "purchase_usd_per_gpu": option.purchase_usd_per_gpu,
        "rent_usd": option.rent_usd,
        "purchase_usd": option.purchase_usd,
        "usd_per_million_tokens": option.usd_per_million_tokens,
        "tokens_per_usd": option.tokens_per_usd,
        **dict(option.extra),
        "feasible": option.feasible,
        "reason_kind": option.reason_kind or None,
        "reason": option.reason or None,
    }


def report_json(report: SizeReport) -> dict[str, Any]:
    """The whole answer as one JSON object."""
    ranking = report.ranking
    used = {o.accelerator_id for o in ranking.ranked}

    def pick(option: Option | None) -> dict[str, Any] | None:
        if option is None:
            return None
        return option_json(option, ranking.ranked.index(option) + 1)

    return {
        "task": report.task,
        "model": report.model,
        "objective": report.objective,
        "money": ranking.mode,
        "workload": dict(report.workload),
        "runtime": None if report.runtime is None else dict(report.runtime),
        "constraints": asdict(report.constraints),
        "recommended": pick(ranking.recommended),
        "cheapest": pick(ranking.cheapest),
        "fastest": pick(ranking.fastest),
        "explanations": list(explain(ranking)),
        "options": [option_json(o, i + 1) for i, o in enumerate(ranking.ranked)],
        "rejected": [option_json(o) for o in ranking.rejected],
        "prices": [asdict(p) for acc_id, p in report.prices.items() if acc_id in used],
        "notes": list(report.notes),
        "search": {
            "considered": report.result.clusters,
            "searched": report.result.searched,
            "pruned": report.result.pruned,
            "estimates": report.result.estimates,
        },
        "next": report.next_command,
        "elapsed_s": report.elapsed_s,
    }


def csv_text(report: SizeReport) -> str:
    """Every option (ranked first, then rejected) as CSV."""
    ranking = report.ranking
    plan_keys: list[str] = []
    for option in (*ranking.ranked, *ranking.rejected):
        plan_keys += [k for k in option.plan_fields if k not in plan_keys]
    out = io.StringIO()
    writer = csv.DictWriter(
        out, fieldnames=[*CSV_COLUMNS, *plan_keys], extrasaction="ignore", lineterminator="\n"
    )
    writer.writeheader()
    rows = [(i + 1, o) for i, o in enumerate(ranking.ranked)] + [(None, o) for o in ranking.rejected]
    for rank, option in rows:
        data = option_json(option, rank)
        data.update(
            status="ok" if option.feasible else "rejected",
            headroom_gib=None if option.headroom_bytes is None else round(option.headroom_bytes / GiB, 3),
            **dict(option.plan_fields),
        )
        writer.writerow({k: "" if v is None else v for k, v in data.items()})
    return out.getvalue()


def _gib(value: int | None) -> str:
    return "—" if value is None else f"{value / GiB:.1f} GiB"


def _money(value: float | None, per: str = "") -> str:
    return "—" if value is None else f"{format_usd(value)}{per}"


def table_rows(ranking: Ranking, top: int) -> list[tuple[int, str, Option]]:
    """(rank, tag, option) rows for the table: the best option of each accelerator, best first, at most
    `top`, plus the cheapest and fastest options wherever they rank."""
    highlights = {
        id(o): tag
        for tag, o in (
            ("fastest", ranking.fastest),
            ("cheapest", ranking.cheapest),
            ("★", ranking.recommended),
        )
        if o is not None
    }
    rows: list[tuple[int, str, Option]] = []
    seen: set[str] = set()
    for index, option in enumerate(ranking.ranked):
        tag = highlights.get(id(option), "")
        if (option.accelerator_id not in seen and len(rows) < top) or tag:
            rows.append((index + 1, tag, option))
        seen.add(option.accelerator_id)
    return rows


TEXT_MIN_COLUMNS = 24
"""Narrowest the hardware and plan columns get before numeric columns are left out instead."""
TRAIN_DROPPABLE = ("buy", "$/M tok", "headroom")
"""Training columns left out, in this order, until the table fits the terminal (all stay in --wide/--json)."""
SERVE_DROPPABLE = ("tok/$", "buy", "tok/s/user", "headroom", "TTFT")
"""Serving columns left out, in this order, until the table fits the terminal."""


def _table(title: str, columns: list[tuple[str, list[str]]]) -> Table:
    """A table from (header, cells) columns; columns with nothing to show ('—' everywhere) are left out."""
    table = Table(title=title, title_justify="left")
    kept = [(header, cells) for header, cells in columns if any(cell != "—" for cell in cells)]
    for header, _ in kept:
        text = header in ("hardware", "plan")
        table.add_column(header, justify="left" if text else "right", overflow="fold")
    for row in range(len(kept[0][1]) if kept else 0):
        table.add_row(*(cells[row] for _, cells in kept), style="bold green" if row == 0 else None)
    return table


def _needed_width(columns: list[tuple[str, list[str]]]) -> int:
    """Terminal columns the table needs: numeric cells on one line, hardware and plan wrapped to no
    less than TEXT_MIN_COLUMNS, plus rich's borders and padding (3 per column, 1 for the edge)."""
    widths = []
    for header, cells in columns:
        if not any(cell != "—" for cell in cells):
            continue
        widest = max(len(header), *(len(cell) for cell in cells))
        widths.append(min(TEXT_MIN_COLUMNS, widest) if header in ("hardware", "plan") else widest)
    return sum(widths) + 3 * len(widths) + 1


def _fitted_table(
    title: str, columns: list[tuple[str, list[str]]], droppable: tuple[str, ...], *, wide: bool
) -> tuple[Table, tuple[str, ...]]:
    """The table, and the columns left out so that it fits the terminal (none with `wide`)."""
    shown = {header for header, cells in columns if any(cell != "—" for cell in cells)}
    dropped: tuple[str, ...] = ()
    for header in () if wide else [h for h in droppable if h in shown]:
        if _needed_width([c for c in columns if c[0] not in dropped]) <= console.width:
            break
        dropped += (header,)
    return _table(title, [column for column in columns if column[0] not in dropped]), dropped


def _train_table(
    report: SizeReport, rows: list[tuple[int, str, Option]], *, wide: bool
) -> tuple[Table, tuple[str, ...]]:
    options = [option for _, _, option in rows]
    columns = [
        ("#", [f"{rank} {tag}".strip() for rank, tag, _ in rows]),
        ("hardware", [o.hardware for o in options]),
        ("plan", [o.plan for o in options]),
        ("headroom", [_gib(o.headroom_bytes) for o in options]),
        ("time", [format_duration(o.time_s or 0.0) for o in options]),
        ("rent", [_money(o.rent_usd) for o in options]),
        ("buy", [_money(o.purchase_usd) for o in options]),
        ("$/M tok", [_money(o.usd_per_million_tokens) for o in options]),
    ]
    title = f"{report.model}: fine-tuning hardware (objective: {report.objective})"
    return _fitted_table(title, columns, TRAIN_DROPPABLE, wide=wide)


def _serve_table(
    report: SizeReport, rows: list[tuple[int, str, Option]], *, wide: bool
) -> tuple[Table, tuple[str, ...]]:
    options = [option for _, _, option in rows]

    def per_user(o: Option) -> str:
        value = o.extra.get("per_user_decode_tokens_per_s")
        return f"{value:,.0f}" if value else "—"

    columns = [
        ("#", [f"{rank} {tag}".strip() for rank, tag, _ in rows]),
        ("hardware", [o.hardware for o in options]),
        ("plan", [o.plan for o in options]),
        ("headroom", [_gib(o.headroom_bytes) for o in options]),
        ("TTFT", [f"{o.extra.get('ttft_s', 0):.2f} s" for o in options]),
        ("tok/s/user", [per_user(o) for o in options]),
        ("tok/s", [f"{o.tokens_per_s or 0:,.0f}" for o in options]),
        ("rent", [_money(o.rent_usd, "/h") for o in options]),
        ("$/M tok", [_money(o.usd_per_million_tokens) for o in options]),
        ("tok/$", ["—" if o.tokens_per_usd is None else f"{o.tokens_per_usd:,.0f}" for o in options]),
        ("buy", [_money(o.purchase_usd) for o in options]),
    ]
    title = f"{report.model}: serving hardware (objective: {report.objective})"
    return _fitted_table(title, columns, SERVE_DROPPABLE, wide=wide)


def _sizes(options: list[Option]) -> str:
    counts = sorted({o.gpus for o in options})
    return "/".join(str(c) for c in counts) + (" GPU" if counts == [1] else " GPUs")


def _closest(kind: str, group: list[Option], ranking: Ranking) -> Option:
    """The option of a group closest to running: the cheapest over budget, else the largest."""
    if kind == "budget":
        return min(group, key=lambda o: (_or_inf(o.money(ranking.mode)), o.gpus))
    return max(group, key=lambda o: o.gpus)


def _or_inf(value: float | None) -> float:
    return math.inf if value is None else value


def rejected_lines(ranking: Ranking) -> list[str]:
    """Hardware that cannot run the job: one line per accelerator (sizes with the same kind of reason
    merged, the reason of the one closest to running shown: the largest, or over budget the cheapest), and
    one line for all accelerators without the price needed."""
    no_price: dict[str, list[str]] = {}
    by_accelerator: dict[str, list[Option]] = {}
    for option in ranking.rejected:
        if option.reason_kind == "price":
            no_price.setdefault(option.reason, []).append(option.accelerator_id)
        else:
            by_accelerator.setdefault(option.accelerator, []).append(option)
    lines = []
    for accelerator, options in by_accelerator.items():
        groups: dict[str, list[Option]] = {}
        for option in options:
            groups.setdefault(option.reason_kind, []).append(option)
        parts = []
        for kind, group in groups.items():
            closest = _closest(kind, group, ranking)
            if closest.task == "serve":
                parts.append(closest.reason)
            elif kind == "budget" and len(group) > 1:
                gpus = f"{closest.gpus} GPU" + ("s" if closest.gpus > 1 else "")
                least = ", the least over" if closest.money(ranking.mode) is not None else ""
                parts.append(f"{_sizes(group)}: {closest.reason} with {gpus}{least}")
            else:
                parts.append(f"{_sizes(group)}: {closest.reason}")
        lines.append(f"{accelerator}: " + "; ".join(parts))
    for reason, ids in no_price.items():
        lines.append(
            f"{reason.split(' (')[0]}: {', '.join(sorted(set(ids)))} (pass --prices FILE to add prices)"
        )
    return lines


def price_lines(report: SizeReport, options: list[Option]) -> list[str]:
    """Where the prices behind the highlighted options come from, with their dates."""
    lines = []
    for acc_id in dict.fromkeys(o.accelerator_id for o in options):
        price = report.prices.get(acc_id)
        if price is None:
            continue
        if price.usd_per_gpu_hour is not None and report.ranking.mode == "rent":
            lines.append(
                f"{acc_id}: ${price.usd_per_gpu_hour:g}/GPU-h — {price.rent_source}, {price.rent_as_of or 'undated'}"
            )
        if price.purchase_usd is not None and (
            report.ranking.mode == "buy" or report.objective == "purchase"
        ):
            lines.append(
                f"{acc_id}: {format_usd(price.purchase_usd)}/GPU — {price.purchase_source}, {price.purchase_as_of}"
            )
    return lines


def render(report: SizeReport, *, wide: bool = False) -> None:
    """The rich view: the table (fitted to the terminal unless `wide`), the three explained choices, what
    cannot run and why, prices, notes."""
    ranking = report.ranking
    rows = table_rows(ranking, report.top)
    if rows:
        build = _train_table if report.task == "train" else _serve_table
        table, dropped = build(report, rows, wide=wide)
        print_unfolded(table) if wide else console.print(table)
        if dropped:
            console.print(
                f"[dim]left out to fit {console.width} columns: {', '.join(dropped)} (--wide, --json or --csv show them)[/]",
                highlight=False,
            )
        if len(ranking.ranked) > len(rows):
            what = "the best size of each accelerator" if report.task == "train" else "the top accelerators"
            console.print(
                f"[dim]{len(rows)} of {len(ranking.ranked)} options shown ({what}; --top N, --json or --csv for all)[/]",
                highlight=False,
            )
        for line in explain(ranking):
            head, _, rest = line.partition(": ")
            console.print(f"[bold]{head}:[/] {rest}", highlight=False)
    else:
        console.print("[bold red]No hardware in the catalog can run this job under the constraints.[/]")
        if shortfall := budget_shortfall(ranking, report.constraints.budget_usd):
            console.print(shortfall[0].upper() + shortfall[1:] + ".", highlight=False)
    lines = rejected_lines(ranking)
    if lines:
        console.print("\n[bold]Cannot run the job:[/]")
        for line in lines:
            console.print(f"  {line}", highlight=False)
    highlighted = [o for o in (ranking.recommended, ranking.cheapest, ranking.fastest) if o is not None]
    prices = price_lines(report, highlighted)
    if prices:
        console.print("\n[bold]Prices[/] (catalog snapshots go stale: check them, or pass --prices FILE):")
        for line in prices:
            console.print(f"  {line}", highlight=False)
    if report.next_command is not None:
        console.print(
            f"\nnext: [bold]{escape(report.next_command)}[/] (the exhaustive search there)", highlight=False
        )
    for note in report.notes:
        console.print(f"[dim]{note}[/]", highlight=False)
    console.print(f"[dim]{report.search_line}[/]", highlight=False)


def emit(report: SizeReport, *, as_json: bool, csv_path: str | None, wide: bool = False) -> None:
    """Print (or write) the report in the forms asked for."""
    if csv_path is not None:
        text = csv_text(report)
        if csv_path == "-":
            sys.stdout.write(text)
        else:
            try:
                with open(csv_path, "w", encoding="utf-8", newline="") as handle:
                    handle.write(text)
            except OSError as error:  # the path was checked up front; this is a full disk or a race
                from swiftplan.errors import SwiftplanError

                raise SwiftplanError(f"Cannot write --csv {csv_path}: {error.strerror or error}.") from None
    if as_json:
        print_json(report_json(report))
    elif csv_path != "-":
        render(report, wide=wide)
        if csv_path is not None:
            console.print(f"wrote {csv_path}", highlight=False)
