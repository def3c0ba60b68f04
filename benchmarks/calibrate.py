"""Fit the caching-allocator constants on the FIT set of the published rows, and write them to
swiftplan/profiles/calibration.json with their source.

Procedure (small on purpose):
1. Rows: every measured row of benchmarks/data/published*.csv whose source `calibration_split.split_of`
   puts in the fit set and whose counter is `max_memory_reserved` (reserved_*). Rows with an unnamed counter
   are not used: they cannot say which quantity a constant should move. Each row is estimated under the
   runtime profile of the framework that measured it, as of the measurement (`published_rows.runtime_knobs`):
   a term the runtime adds (foreach AdamW's step temporary, DeepSpeed buckets) is the planner's, not slack.
2. For each row, the planner's estimate gives peak_allocated, the exact block rounding and the per-step
   (dynamic) bytes; predicted reserved = allocated + rounding + (dynamic_slack + length_slack x
   log2(length classes)) x dynamic.
3. Only length_slack is fitted. `dynamic_slack`, the slack when every step has the same shapes, is derived
   from traced runs replayed through the allocator's rules (`allocator_replay.py`) and held here; the length
   effect depends on the data's real length distribution, which only the published runs have.
4. Grid: length_slack 0.000..0.300 step 0.0025 (0.3 per doubling: a
   run with 32 length classes may hold 1.5 x its per-step bytes in cached blocks of unusable sizes, the
   most a slab of freed activations of 5 size octaves can strand); keep the value(s) with the least sum of
   |log(predicted / published)|; ties: smaller values. Nothing per row.
5. Trust check: the fit is repeated leaving each row out; a fitted value on a grid edge, or whose
   leave-one-out range is wider than the value itself, is reported as not trusted and not written: the
   constant keeps its value, and its source records the fit.
6. context_bytes_cuda: median over fit-set nvidia-smi rows of (published - our peak_reserved - our other
   memory outside the allocator, e.g. NCCL buffers), if there
   are at least three such rows; otherwise the prior stays.

    python benchmarks/calibrate.py            # prints the fit; --write updates calibration.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

from calibration_split import split_of
from fit_rules import leave_one_out_text, note_untrusted
from published_accuracy import ALL_CSVS, _estimate, _unit, read_rows
from published_rows import Skip, express

from swiftplan.errors import SwiftplanError
from swiftplan.planner.allocator import AllocatorParams, context_bytes, distinct_lengths, rounding_bytes
from swiftplan.planner.setup import TrainSetup

CALIBRATION = Path(__file__).resolve().parent.parent / "swiftplan" / "profiles" / "calibration.json"
LENGTH_GRID = [i * 0.0025 for i in range(121)]


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
            spec = expressed.spec
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
                # outside the allocator besides the CUDA context (NCCL buffers): not the context's to absorb
                "outside": mem.device_total
                - mem.peak_reserved
                - context_bytes(expressed.cluster.accelerator.backend),
                "rounding": rounding_bytes(spec, mem),
                "dynamic": max(0, mem.peak_allocated - persistent - mem.kv_cache),
                "log2_lengths": math.log2(distinct_lengths(seq, expressed.allocator)),
            }
        )
    return out


def loss(points: list[dict[str, Any]], dynamic_slack: float, length_slack: float) -> float:
    """Sum of |log(predicted reserved / published)| over the points (the fixed-shape fraction at each point's
    per-step bytes, as the planner takes it: AllocatorParams.fixed_slack)."""
    params = replace(AllocatorParams.from_calibration(), dynamic_slack=dynamic_slack)
    total = 0.0
    for p in points:
        frac = params.fixed_slack(p["dynamic"]) + length_slack * p["log2_lengths"]
        total += abs(math.log((p["allocated"] + p["rounding"] + frac * p["dynamic"]) / p["published"]))
    return total


def _grid_fit(points: list[dict[str, Any]], dynamic_grid: list[float]) -> tuple[float, float, float]:
    """(loss, dynamic_slack, length_slack) of the grid's best pair."""
    return min(
        ((loss(points, d, length), d, length) for d in dynamic_grid for length in LENGTH_GRID),
        key=lambda t: (round(t[0], 12), t[1], t[2]),
    )


def fit(points: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The grid's best constants, the rows they came from, and whether the fit can be trusted."""
    reserved = points["reserved"]
    fixed_shape_rows = [p["id"] for p in reserved if p["log2_lengths"] == 0]
    dynamic_grid = [AllocatorParams.from_calibration().dynamic_slack]  # derived by allocator_replay.py
    best = _grid_fit(reserved, dynamic_grid)
    fitted = ["length_slack"]
    leave_one_out = {
        p["id"]: _grid_fit([q for q in reserved if q is not p], dynamic_grid)[1:] for p in reserved
    }
    result: dict[str, Any] = {
        "dynamic_slack": best[1],
        "length_slack": best[2],
        "fitted": fitted,
        "reserved_rows": [p["id"] for p in reserved],
        "fixed_shape_rows": fixed_shape_rows,
        "loss": best[0],
        "leave_one_out": leave_one_out,
        "implied_fraction": {
            p["id"]: round((p["published"] - p["allocated"] - p["rounding"]) / max(p["dynamic"], 1), 3)
            for p in reserved
        },
    }
    values = [v[1] for v in leave_one_out.values()]
    spread = max(values) - min(values)
    result["trusted"] = {
        "length_slack": LENGTH_GRID[0] < result["length_slack"] < LENGTH_GRID[-1]
        and spread <= result["length_slack"]
    }
    smi = points["nvidia-smi"]
    if len(smi) >= 3:
        result["context_bytes_cuda"] = int(
            statistics.median(p["published"] - p["reserved"] - p["outside"] for p in smi)
        )
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
    for name in result["fitted"]:
        trust = leave_one_out_text({v[1] for v in result["leave_one_out"].values()})
        if not result["trusted"][name]:
            note_untrusted(section[name], value=result[name], rows=rows, trust=trust, today=str(date.today()))
            continue
        held = f" with dynamic_slack held at {result['dynamic_slack']:g} (derived: allocator_replay.py)"
        section[name] = {"value": result[name], "status": "fitted", "source": how + held + trust}
    if "context_bytes_cuda" in result:
        smi = ", ".join(result["nvidia_smi_rows"])
        section["context_bytes_cuda"] = {
            "value": result["context_bytes_cuda"],
            "status": "fitted",
            "source": f"median of nvidia-smi - our peak_reserved - our other memory outside the allocator (NCCL "
            f"buffers) over {len(result['nvidia_smi_rows'])} fit-set "
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
