"""What each accelerator costs to rent and to buy, with the date and source of every figure. Pure.

Catalog prices come from `profiles/accelerators.json`: the rental price is the cheapest on-demand
quote per GPU-hour found when the catalog was compiled (`cloud_price`: provider, instance, date,
source), the purchase price is the launch list price (MSRP, `launch_price_usd`) dated by the release
date. Both go stale: cloud prices fall (and vary by region and commitment), street prices differ from
launch prices. A user price file overrides them per accelerator; `parse_price_overrides` validates its
parsed contents (the CLI reads the file).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources
from typing import Any

from swiftplan.errors import SwiftplanError
from swiftplan.planner.hardware import Accelerator, get_accelerator
from swiftplan.planner.values import is_positive_number

PRICE_KEYS = ("usd_per_gpu_hour", "purchase_usd", "source", "as_of")
"""Keys a price-file entry may have."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Price:
    """One accelerator's rental and purchase price, each with where it came from."""

    accelerator_id: str
    """Catalog id."""
    usd_per_gpu_hour: float | None = None
    """Rental price per GPU-hour in USD; None when unknown."""
    rent_source: str = ""
    """Who quoted the rental price and where it was read."""
    rent_as_of: str = ""
    """When the rental price was quoted (as precise as the source allows)."""
    purchase_usd: float | None = None
    """Purchase price of one GPU in USD; None when unknown."""
    purchase_source: str = ""
    """Where the purchase price comes from."""
    purchase_as_of: str = ""
    """When the purchase price was set (launch date for list prices)."""
    from_user: bool = False
    """True when a user price file set at least one of the figures."""

    def __post_init__(self) -> None:
        for name in ("usd_per_gpu_hour", "purchase_usd"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{self.accelerator_id}: {name} must be a positive number, got {value}")


@dataclass(frozen=True, kw_only=True, slots=True)
class PriceOverride:
    """One entry of a user price file; a field left out keeps the catalog figure."""

    accelerator_id: str
    """Catalog id the entry names (aliases resolved)."""
    values: Mapping[str, float | None]
    """usd_per_gpu_hour / purchase_usd given in the file (None: the file says there is no such price)."""
    source: str
    """The entry's source, or the file name when the entry gives none."""
    as_of: str
    """The entry's date (ISO 8601), or 'undated'."""


@lru_cache(maxsize=1)
def _raw_catalog() -> dict[str, dict[str, Any]]:
    text = resources.files("swiftplan.profiles").joinpath("accelerators.json").read_text(encoding="utf-8")
    return json.loads(text)["accelerators"]


def catalog_price(accelerator: Accelerator) -> Price:
    """The catalog's prices for one accelerator (nothing for a device the catalog does not know)."""
    entry = _raw_catalog().get(accelerator.id) if accelerator.from_catalog else None
    if entry is None:
        return Price(accelerator_id=accelerator.id)
    cloud = entry.get("cloud_price") or {}
    launch = entry.get("launch_price_usd")
    checked = (entry.get("verification") or {}).get("launch_msrp_usd", "")
    purchase_source = "launch list price (MSRP) in the accelerator catalog"
    if checked == "recalled":
        purchase_source += " (recalled, not re-read from a source)"
    elif checked:
        purchase_source += f" ({checked})"
    return Price(
        accelerator_id=accelerator.id,
        usd_per_gpu_hour=float(cloud["usd_per_gpu_hour"]) if cloud else None,
        rent_source=(
            f"{cloud['provider']} {cloud['instance']}, {cloud['pricing']} ({cloud['source']})"
            if cloud
            else ""
        ),
        rent_as_of=str(cloud.get("as_of", "")) if cloud else "",
        purchase_usd=float(launch) if launch is not None else None,
        purchase_source=purchase_source if launch is not None else "",
        purchase_as_of=f"launch {entry.get('release_date')}" if launch is not None else "",
    )


def _number(origin: str, key: str, name: str, value: Any) -> float | None:
    if value is None:
        return None
    if not is_positive_number(value):
        raise SwiftplanError(
            f"{origin}: {key}.{name} must be a positive number of US dollars, got {value!r}.",
            hint=f"Example: {key}: {{usd_per_gpu_hour: 2.1, purchase_usd: 30000}}.",
        )
    return float(value)


def _date(origin: str, key: str, value: Any, today: dt.date) -> str:
    if value is None:
        return "undated"
    day: dt.date | None = None
    if isinstance(value, dt.date):  # YAML reads an unquoted 2026-11-01 as a date (or a datetime)
        day = value.date() if isinstance(value, dt.datetime) else value
    elif isinstance(value, str):
        with contextlib.suppress(ValueError):
            day = dt.date.fromisoformat(value.strip())
    if day is not None:
        if day > today:
            raise SwiftplanError(
                f"{origin}: {key}.as_of is {day.isoformat()}, in the future (today is {today.isoformat()}).",
                hint="as_of is the day the price was quoted; give that date.",
            )
        return day.isoformat()
    raise SwiftplanError(
        f"{origin}: {key}.as_of must be a date like 2026-11-01, got {value!r}.",
        hint="Prices go stale; the date says how old yours is.",
    )


def parse_price_overrides(data: Any, origin: str, today: dt.date | None = None) -> tuple[PriceOverride, ...]:
    """Validate a parsed price file: a mapping of accelerator id → {usd_per_gpu_hour, purchase_usd,
    source, as_of}. Unknown accelerators and keys, non-positive prices and bad or future dates (after
    `today`, default the local date) raise SwiftplanError naming `origin` and the entry."""
    example = "h100-sxm: {usd_per_gpu_hour: 2.1, purchase_usd: 30000, source: 'my quote', as_of: 2026-11-01}"
    today = today or dt.date.today()
    if data is None:
        raise SwiftplanError(f"{origin}: the price file is empty.", hint=f"Example line: {example}")
    if not isinstance(data, Mapping) or not data:
        raise SwiftplanError(
            f"{origin}: a price file maps accelerator ids to prices, got {type(data).__name__}.",
            hint=f"Example line: {example}",
        )
    out: dict[str, PriceOverride] = {}
    for key, entry in data.items():
        try:
            accelerator = get_accelerator(str(key))
        except SwiftplanError as error:
            raise SwiftplanError(f"{origin}: {error.message}", hint=error.hint) from None
        if not isinstance(entry, Mapping):
            raise SwiftplanError(
                f"{origin}: {key} must map to prices, got {entry!r}.", hint=f"Example line: {example}"
            )
        unknown = sorted(str(k) for k in entry if k not in PRICE_KEYS)
        if unknown:
            raise SwiftplanError(
                f"{origin}: {key} has unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(PRICE_KEYS)}."
            )
        values = {
            name: _number(origin, str(key), name, entry[name]) for name in PRICE_KEYS[:2] if name in entry
        }
        if not values:
            raise SwiftplanError(f"{origin}: {key} gives neither usd_per_gpu_hour nor purchase_usd.")
        source = entry.get("source")
        if source is not None and (not isinstance(source, str) or not source.strip()):
            raise SwiftplanError(f"{origin}: {key}.source must be text, got {source!r}.")
        if accelerator.id in out:
            raise SwiftplanError(f"{origin}: {accelerator.id} appears twice (as {key!r} and an alias).")
        out[accelerator.id] = PriceOverride(
            accelerator_id=accelerator.id,
            values=values,
            source=source.strip() if source else origin,
            as_of=_date(origin, str(key), entry.get("as_of"), today),
        )
    return tuple(out.values())


def apply_override(price: Price, override: PriceOverride) -> Price:
    """`price` with the figures the override gives replaced, each with the override's source and date."""
    changes: dict[str, Any] = {"from_user": True}
    if "usd_per_gpu_hour" in override.values:
        changes |= {
            "usd_per_gpu_hour": override.values["usd_per_gpu_hour"],
            "rent_source": override.source,
            "rent_as_of": override.as_of,
        }
    if "purchase_usd" in override.values:
        changes |= {
            "purchase_usd": override.values["purchase_usd"],
            "purchase_source": override.source,
            "purchase_as_of": override.as_of,
        }
    return replace(price, **changes)


def price_table(
    accelerators: Iterable[Accelerator], overrides: Iterable[PriceOverride] = ()
) -> dict[str, Price]:
    """Accelerator id → price: the catalog's, with the user's overrides applied."""
    table = {acc.id: catalog_price(acc) for acc in accelerators}
    for override in overrides:
        if override.accelerator_id in table:
            table[override.accelerator_id] = apply_override(table[override.accelerator_id], override)
    return table
