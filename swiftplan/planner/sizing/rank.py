"""Options (one hardware choice each, with its plan and what it costs), constraints, and the ranking. Pure.

Training: time = tokens to process / tokens per second; renting costs time/3600 × GPUs × price per
GPU-hour; buying costs GPUs × list price; cost per million tokens = rental cost / tokens × 10^6.
Serving: renting costs GPUs × price per GPU-hour for each hour of service; cost per million generated
tokens = that hourly cost / (tokens per second × 3600) × 10^6; time = seconds per generated token seen
by one user.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal, get_args

from swiftplan.units import format_duration, format_usd

Objective = Literal["cost", "time", "purchase", "cost-per-token"]
OBJECTIVES: tuple[Objective, ...] = get_args(Objective)
Mode = Literal["rent", "buy"]
ReasonKind = Literal["", "fit", "deadline", "budget", "price", "unsupported", "load"]
"""Why an option cannot run the job: it does not fit, misses the deadline, is over budget, has no price
for the objective, the accelerator cannot run the method (or has no throughput figures), or cannot hold the
serving load within the GPU limit."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Option:
    """One hardware choice, its best plan and what it costs — or why it cannot run the job."""

    accelerator_id: str
    """Catalog id of the accelerator."""
    accelerator: str
    """Vendor and product name."""
    vendor: str
    """Vendor, as in the catalog."""
    gpus: int
    """Devices in all."""
    nodes: int = 1
    """Machines they sit in."""
    task: Literal["train", "serve"] = "train"
    """What the option is for."""
    plan: str = ""
    """One-line summary of the plan; empty when there is none."""
    plan_fields: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    """The plan's choices, for JSON and CSV."""
    reason: str = ""
    """Why it cannot run the job (empty when it can)."""
    reason_kind: ReasonKind = ""
    """Category of `reason`."""
    time_s: float | None = None
    """Training: wall-clock seconds for the job. Serving: seconds per generated token per user."""
    tokens_per_s: float | None = None
    """Training tokens/s over all GPUs, or generated tokens/s of the whole deployment."""
    work_tokens: float | None = None
    """Training: tokens the job processes (dataset × epochs)."""
    headroom_bytes: int | None = None
    """Device memory left free at the peak, per GPU."""
    usd_per_gpu_hour: float | None = None
    """Rental price per GPU-hour."""
    purchase_usd_per_gpu: float | None = None
    """Purchase price of one GPU."""
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    """Task-specific figures (serving: ttft_s, per-user tokens/s, replicas, tp)."""

    def __post_init__(self) -> None:
        if self.gpus < 1 or not 1 <= self.nodes <= self.gpus:
            raise ValueError(
                f"an option needs at least one GPU per node, got {self.gpus} GPUs in {self.nodes} nodes"
            )
        if bool(self.reason) != bool(self.reason_kind):
            raise ValueError("reason and reason_kind go together")
        if not self.reason and (self.time_s is None or not self.tokens_per_s or self.tokens_per_s <= 0):
            raise ValueError(
                f"{self.accelerator_id}: an option that runs needs its time and a positive speed"
            )

    @property
    def gpus_per_node(self) -> int:
        """Devices in the fullest node."""
        return -(-self.gpus // self.nodes)

    @property
    def hardware(self) -> str:
        """E.g. '8 × NVIDIA H100 SXM5 80GB' or '16 × NVIDIA H100 SXM5 80GB (2 nodes)'."""
        text = f"{self.gpus} × {self.accelerator}"
        return f"{text} ({self.nodes} nodes)" if self.nodes > 1 else text

    @property
    def feasible(self) -> bool:
        """Has a plan (constraints not yet applied)."""
        return not self.reason

    @property
    def rent_usd(self) -> float | None:
        """Training: rental cost of the whole job. Serving: rental cost per hour of service."""
        if self.usd_per_gpu_hour is None or self.time_s is None:
            return None
        hours = 1.0 if self.task == "serve" else self.time_s / 3600
        return hours * self.gpus * self.usd_per_gpu_hour

    @property
    def purchase_usd(self) -> float | None:
        """List price of every GPU."""
        return None if self.purchase_usd_per_gpu is None else self.gpus * self.purchase_usd_per_gpu

    @property
    def usd_per_million_tokens(self) -> float | None:
        """Rental dollars per million training tokens (training) or generated tokens (serving)."""
        if self.usd_per_gpu_hour is None or not self.tokens_per_s:
            return None
        return self.gpus * self.usd_per_gpu_hour / (self.tokens_per_s * 3600) * 1e6

    @property
    def tokens_per_usd(self) -> float | None:
        """Tokens per rental dollar."""
        per_million = self.usd_per_million_tokens
        return None if per_million is None else 1e6 / per_million

    def value(self, objective: Objective) -> float | None:
        """What the objective minimises; None when the price it needs is unknown."""
        return {
            "cost": self.rent_usd,
            "time": self.time_s,
            "purchase": self.purchase_usd,
            "cost-per-token": self.usd_per_million_tokens,
        }[objective]

    def money(self, mode: Mode) -> float | None:
        """Rental cost (rent) or purchase price (buy)."""
        return self.rent_usd if mode == "rent" else self.purchase_usd

    def rejected(self, kind: ReasonKind, reason: str) -> Option:
        """A copy marked as unable to run the job (the plan and figures are kept for the record)."""
        return replace(self, reason=reason, reason_kind=kind)


@dataclass(frozen=True, kw_only=True, slots=True)
class Constraints:
    """What the user requires of an option."""

    budget_usd: float | None = None
    """Most money to spend: rental cost of the job (serving: per hour) when renting, list price when buying."""
    deadline_s: float | None = None
    """Training: longest acceptable wall-clock time."""
    max_gpus: int | None = None
    """Most GPUs in all."""
    vendors: tuple[str, ...] | None = None
    """Allowed vendors (lower case); None allows all."""
    mode: Mode | None = None
    """rent: only accelerators with a rental price; buy: only those with a purchase price; None: either."""

    def __post_init__(self) -> None:
        for name in ("budget_usd", "deadline_s"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.max_gpus is not None and self.max_gpus < 1:
            raise ValueError(f"max_gpus must be at least 1, got {self.max_gpus}")

    def allows_hardware(self, vendor: str, gpus: int) -> bool:
        """Vendor and GPU count within the limits (checked before planning)."""
        if self.vendors is not None and vendor.lower() not in self.vendors:
            return False
        return self.max_gpus is None or gpus <= self.max_gpus


def money_mode(objective: Objective, constraints: Constraints) -> Mode:
    """Whose price counts for the budget and the 'cheapest' line: --buy/--rent, else buy for the
    purchase objective and rent otherwise."""
    if constraints.mode is not None:
        return constraints.mode
    return "buy" if objective == "purchase" else "rent"


def needs_price(objective: Objective, constraints: Constraints) -> tuple[Mode, ...]:
    """Prices an option must have to be ranked."""
    needed: set[Mode] = set()
    if objective in ("cost", "cost-per-token"):
        needed.add("rent")
    if objective == "purchase":
        needed.add("buy")
    if constraints.mode is not None:
        needed.add(constraints.mode)
    if constraints.budget_usd is not None:
        needed.add(money_mode(objective, constraints))
    return tuple(sorted(needed))


def price_check(option: Option, objective: Objective, constraints: Constraints) -> Option:
    """The option, rejected when a price the objective or a constraint needs is unknown."""
    for mode in needs_price(objective, constraints):
        if mode == "rent" and option.usd_per_gpu_hour is None:
            return option.rejected("price", "no rental price (pass --prices FILE)")
        if mode == "buy" and option.purchase_usd_per_gpu is None:
            return option.rejected("price", "no purchase price (pass --prices FILE)")
    return option


def apply_constraints(option: Option, objective: Objective, constraints: Constraints) -> Option:
    """The option, rejected with its reason when it breaks a constraint (an infeasible one as it is)."""
    if not option.feasible:
        return option
    option = price_check(option, objective, constraints)
    if not option.feasible:
        return option
    if constraints.deadline_s is not None and option.task == "train":
        assert option.time_s is not None
        late = option.time_s - constraints.deadline_s
        if late > 0:
            return option.rejected(
                "deadline",
                f"misses the deadline by {format_duration(late)} (takes {format_duration(option.time_s)})",
            )
    if constraints.budget_usd is not None:
        mode = money_mode(objective, constraints)
        spend = option.money(mode)
        assert spend is not None  # price_check
        if spend > constraints.budget_usd:
            what = "rental cost" if mode == "rent" else "purchase price"
            per = "/h" if mode == "rent" and option.task == "serve" else ""
            return option.rejected(
                "budget",
                f"over budget by {format_usd(spend - constraints.budget_usd)} ({what} {format_usd(spend)}{per})",
            )
    return option


def sort_key(option: Option, objective: Objective) -> tuple:
    """Best first: the objective, then fewer GPUs, then faster, then name (a stable order)."""
    value = option.value(objective)
    return (
        math.inf if value is None else value,
        option.gpus,
        math.inf if option.time_s is None else option.time_s,
        option.accelerator_id,
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class Ranking:
    """Options that can run the job, best first, and the ones that cannot, with their reasons."""

    objective: Objective
    """What was minimised."""
    mode: Mode
    """Whose price counts as 'cost' in the cheapest line and the budget."""
    ranked: tuple[Option, ...]
    """Options meeting every constraint, best first."""
    rejected: tuple[Option, ...]
    """Options that cannot run the job, each with its reason."""

    @property
    def recommended(self) -> Option | None:
        """The best option by the objective."""
        return self.ranked[0] if self.ranked else None

    @property
    def cheapest(self) -> Option | None:
        """Least money in `mode` (None when no option has that price)."""
        priced = [o for o in self.ranked if o.money(self.mode) is not None]
        cost_objective: Objective = "cost" if self.mode == "rent" else "purchase"
        return min(priced, key=lambda o: sort_key(o, cost_objective), default=None)

    @property
    def fastest(self) -> Option | None:
        """Shortest time (training: the job; serving: per-token latency)."""
        return min(self.ranked, key=lambda o: sort_key(o, "time"), default=None)


def rank(options: Iterable[Option], objective: Objective, constraints: Constraints) -> Ranking:
    """Apply the constraints, then order what is left by the objective. Hardware the vendor and GPU
    limits exclude is dropped (the callers do not plan it in the first place)."""
    allowed = [o for o in options if constraints.allows_hardware(o.vendor, o.gpus)]
    checked = [apply_constraints(o, objective, constraints) for o in allowed]
    ranked = sorted((o for o in checked if o.feasible), key=lambda o: sort_key(o, objective))
    rejected = [o for o in checked if not o.feasible]
    return Ranking(
        objective=objective,
        mode=money_mode(objective, constraints),
        ranked=tuple(ranked),
        rejected=tuple(rejected),
    )


def least_over_budget(ranking: Ranking) -> Option | None:
    """Of the options rejected only for the budget, the one that costs least (None when none has a price
    to compare): the smallest change that would let the job run is a budget of its price."""
    over = [o for o in ranking.rejected if o.reason_kind == "budget" and o.money(ranking.mode) is not None]
    return min(over, key=lambda o: (o.money(ranking.mode), o.gpus, o.accelerator_id), default=None)


def budget_shortfall(ranking: Ranking, budget_usd: float | None) -> str | None:
    """When nothing is within the budget: the cheapest option, what it costs and by how much it is over."""
    least = least_over_budget(ranking)
    if ranking.ranked or least is None or budget_usd is None:
        return None
    money = least.money(ranking.mode)
    assert money is not None
    per = "/h" if ranking.mode == "rent" and least.task == "serve" else ""
    verb = "costs" if ranking.mode == "rent" else "sells for"
    return (
        f"the cheapest option, {least.hardware}, {verb} {format_usd(money)}{per}: "
        f"{format_usd(money - budget_usd)}{per} over the --budget of {format_usd(budget_usd)}{per}; "
        f"a --budget of {format_usd(money)}{per} or more would allow it"
    )


def _figures(option: Option, mode: Mode) -> str:
    parts = []
    if option.task == "train":
        assert option.time_s is not None
        parts.append(format_duration(option.time_s))
    else:
        parts.append(f"{option.tokens_per_s:,.0f} tok/s")
    money = option.money(mode)
    if money is not None:
        per = "/h" if mode == "rent" and option.task == "serve" else ""
        parts.append(f"{format_usd(money)}{per} {'to rent' if mode == 'rent' else 'to buy'}")
    if option.task == "serve" and option.usd_per_million_tokens is not None:
        parts.append(f"{format_usd(option.usd_per_million_tokens)} per M tokens")
    return ", ".join(parts)


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b <= 0:
        return ""
    r = a / b
    return f"{r:.1f}×" if r >= 1.05 else ""


def explain(ranking: Ranking) -> tuple[str, ...]:
    """One line each for the recommended, the cheapest and the fastest option."""
    best = ranking.recommended
    if best is None:
        return ()
    goal = {
        "cost": "lowest rental cost for the job" if best.task == "train" else "lowest rental cost per hour",
        "time": "shortest time to finish" if best.task == "train" else "lowest per-token latency",
        "purchase": "lowest purchase price",
        "cost-per-token": "lowest cost per million tokens",
    }[ranking.objective]
    lines = [f"recommended: {best.hardware} — {goal}: {_figures(best, ranking.mode)}."]
    cheapest, fastest = ranking.cheapest, ranking.fastest
    if cheapest is not None:
        if cheapest is best:
            lines.append("cheapest: the recommended option.")
        else:
            slower = _ratio(cheapest.time_s, best.time_s)
            trade = f", {slower} slower than the recommended" if slower else ""
            lines.append(f"cheapest: {cheapest.hardware} — {_figures(cheapest, ranking.mode)}{trade}.")
    if fastest is not None:
        if fastest is best:
            lines.append("fastest: the recommended option.")
        else:
            pricier = _ratio(fastest.money(ranking.mode), best.money(ranking.mode))
            trade = f", {pricier} the recommended option's cost" if pricier else ""
            lines.append(f"fastest: {fastest.hardware} — {_figures(fastest, ranking.mode)}{trade}.")
    return tuple(lines)
