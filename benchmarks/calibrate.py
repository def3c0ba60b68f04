"""Fit the caching-allocator constants on the FIT set of the published rows, and write them to
swiftplan/profiles/calibration.json with their source.

Procedure (small on purpose):
1. Rows: every measured row of benchmarks/data/published*.csv whose source `calibration_split.split_of`
   puts in the fit set and whose counter is `max_memory_reserved` (reserved_*). Rows with an unnamed counter
   are not used: they cannot say which quantity a constant should move.
2. For each row, the planner's estimate gives peak_allocated, the exact block rounding and the per-step
   (dynamic) bytes; predicted reserved = allocated + rounding + (dynamic_slack + length_slack x
   log2(length classes)) x dynamic.
3. Grid: dynamic_slack 0.00..0.50 step 0.01, length_slack 0.000..0.050 step 0.0025; keep the pair with the
   least sum of |log(predicted / published)| (least absolute deviation of the relative error; ties: smaller
   values). Nothing per row.
4. context_bytes_cuda: median over fit-set nvidia-smi rows of (published - our peak_reserved), if there
   are at least three such rows; otherwise the prior stays.

    python benchmarks/calibrate.py            # prints the fit; --write updates calibration.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from datetime import date
from pathlib import Path
from typing import Any

from calibration_split import split_of
from published_accuracy import ALL_CSVS, _estimate, _unit, read_rows
from published_rows import Skip, express

from swiftplan.errors import SwiftplanError
from swiftplan.planner.allocator import distinct_lengths, rounding_bytes
from swiftplan.planner.model_catalog import catalog_spec
from swiftplan.planner.setup import TrainSetup

CALIBRATION = Path(__file__).resolve().parent.parent / "swiftplan" / "profiles" / "calibration.json"
DYNAMIC_GRID = [i / 100 for i in range(51)]
LENGTH_GRID = [i * 0.0025 for i in range(21)]


def fit_points(csv_paths: tuple[Path, ...] = ALL_CSVS) -> dict[str, list[dict[str, Any]]]:
    """Per fit-set row: the published bytes and the parts of our estimate the constants act on."""
    out: dict[str, list[dict[str, Any]]] = {"reserved": [], "nvidia-smi": []}
    for row in read_rows(csv_paths):
        if row["source_kind"] != "measured" or split_of(row["source"]) != "fit":
            continue
        kind = "reserved" if row["metric"].startswith("reserved_") else None
        kind = "nvidia-smi" if row["metric"].startswith("nvidia_smi_") else kind
        if kind is None:
            continue
        try:
            expressed = express(row)
            spec = catalog_spec(expressed.model_id)
            mem = _estimate(spec, expressed).memory
        except (Skip, SwiftplanError):
            continue
        persistent = mem.weights + mem.adapters + mem.gradients + mem.optimizer + mem.master_weights
        seq = expressed.setup.seq_len if isinstance(expressed.setup, TrainSetup) else expressed.setup.context
        out[kind].append(
            {
                "id": row["id"],
                "published": float(row["value"]) * _unit(row),
                "allocated": mem.peak_allocated,
                "reserved": mem.peak_reserved,
                "rounding": rounding_bytes(spec, mem),
                "dynamic": max(0, mem.peak_allocated - persistent - mem.kv_cache),
                "log2_lengths": math.log2(distinct_lengths(seq, expressed.allocator)),
            }
        )
    return out


def loss(points: list[dict[str, Any]], dynamic_slack: float, length_slack: float) -> float:
    """Sum of |log(predicted reserved / published)| over the points."""
    total = 0.0
    for p in points:
        frac = dynamic_slack + length_slack * p["log2_lengths"]
        total += abs(math.log((p["allocated"] + p["rounding"] + frac * p["dynamic"]) / p["published"]))
    return total


def fit(points: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The grid's best constants and the rows they came from."""
    reserved = points["reserved"]
    best = min(
        ((loss(reserved, d, length), d, length) for d in DYNAMIC_GRID for length in LENGTH_GRID),
        key=lambda t: (round(t[0], 12), t[1], t[2]),
    )
    result: dict[str, Any] = {
        "dynamic_slack": best[1],
        "length_slack": best[2],
        "reserved_rows": [p["id"] for p in reserved],
        "loss": best[0],
    }
    smi = points["nvidia-smi"]
    if len(smi) >= 3:
        result["context_bytes_cuda"] = int(statistics.median(p["published"] - p["reserved"] for p in smi))
        result["nvidia_smi_rows"] = [p["id"] for p in smi]
    return result


def write(result: dict[str, Any], path: Path = CALIBRATION) -> None:
    """Put the fitted values, with their source, into calibration.json."""
    data = json.loads(path.read_text(encoding="utf-8"))
    section = data["allocator"]
    rows = ", ".join(result["reserved_rows"])
    how = (
        f"fitted on {len(result['reserved_rows'])} max_memory_reserved rows of benchmarks/data/published*.csv "
        f"fit set ({rows}), {date.today()}, benchmarks/calibrate.py (grid, least absolute log error)"
    )
    for name in ("dynamic_slack", "length_slack"):
        section[name] = {"value": result[name], "status": "fitted", "source": how}
    if "context_bytes_cuda" in result:
        smi = ", ".join(result["nvidia_smi_rows"])
        section["context_bytes_cuda"] = {
            "value": result["context_bytes_cuda"],
            "status": "fitted",
            "source": f"median of nvidia-smi - our peak_reserved over {len(result['nvidia_smi_rows'])} fit-set "
            f"rows ({smi}), {date.today()}, benchmarks/calibrate.py",
        }
    text = json.dumps(data, indent=2) + "\n"
    path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--write", action="store_true", help="update swiftplan/profiles/calibration.json")
    args = parser.parse_args(argv)
    result = fit(fit_points())
    print(json.dumps(result, indent=1))
    if args.write:
        write(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
