"""Fit the serving speed constants on the FIT set of the published decode rows, and write them to
swiftplan/profiles/calibration.json ("serving_efficiency") with their source.

Procedure (small on purpose):
1. Rows: every measured row of benchmarks/data/published*.csv whose metric is a decode metric
   (`published_rows.DECODE_METRICS`) and whose source `calibration_split.split_of` puts in the fit set.
   Each is expressed as a ServeSetup on its cluster (`published_rows.express`), exactly as
   `published_accuracy.py` compares it; rows it skips are skipped here too.
2. Constants fitted (named, shared by every row; nothing per row):
   - `bandwidth`: achieved fraction of memory bandwidth in a decode step (`speed.decode_memory_s`);
   - `allreduce_latency_s`: fixed seconds per tensor-parallel all-reduce (`speed.decode_allreduce_s`).
   `compute` stays at its prior: it is prefill's GEMM efficiency, and the decode rows' prefill is a few
   percent of their time at most. One bandwidth constant for every accelerator: the fit set is A100 rows and
   a single MI250X row, which cannot identify a constant per family.
3. Grid: bandwidth 0.40..1.00 step 0.01, allreduce_latency_s 0..60 us step 1 us; keep the pair with the least
   sum of |log(ours / published)|; ties: smaller values.
4. Trust check: the fit is repeated leaving each row out; a value on a grid edge, or whose leave-one-out
   range is wider than the value itself, is reported as not trusted (and the source says so).
The test-set rows are predicted with the fitted constants and their errors printed; they never move a constant.

    python benchmarks/fit_serving_speed.py           # prints the fit; --write updates calibration.json
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
from published_accuracy import ALL_CSVS, read_rows
from published_rows import DECODE_METRICS, Skip, decode_figure, express

from swiftplan.errors import SwiftplanError
from swiftplan.planner.model_catalog import catalog_spec
from swiftplan.planner.serve_memory import serve_memory
from swiftplan.planner.setup import ServeSetup
from swiftplan.planner.speed import ServeEfficiency, serve_efficiency, serve_speed

CALIBRATION = Path(__file__).resolve().parent.parent / "swiftplan" / "profiles" / "calibration.json"
BANDWIDTH_GRID = [round(0.40 + i / 100, 2) for i in range(61)]
LATENCY_GRID = [i * 1e-6 for i in range(61)]


def decode_points(split: str, csv_paths: tuple[Path, ...] = ALL_CSVS) -> list[dict[str, Any]]:
    """Measured decode rows of one split, each with what `serve_speed` needs to predict it."""
    points = []
    for row in read_rows(csv_paths):
        if row["metric"] not in DECODE_METRICS or row["source_kind"] != "measured":
            continue
        if split_of(row["source"]) != split:
            continue
        try:
            expressed = express(row)
        except (Skip, SwiftplanError):
            continue
        setup = expressed.setup
        assert isinstance(setup, ServeSetup)
        spec = catalog_spec(expressed.model_id)
        memory = serve_memory(spec, setup, device_memory_bytes=expressed.cluster.memory_bytes_per_device)
        points.append(
            {
                "id": row["id"],
                "row": row,
                "spec": spec,
                "setup": setup,
                "accelerator": expressed.cluster.accelerator,
                "weight_bytes": memory.device.weights,
                "kv_bytes_per_token": memory.kv_bytes_per_token,
                "published": float(row["value"]),
            }
        )
    return points


def predict(point: dict[str, Any], eff: ServeEfficiency) -> float:
    """Our figure for the point's metric under the constants `eff`."""
    speed = serve_speed(
        point["spec"],
        point["setup"],
        point["accelerator"],
        weight_bytes=point["weight_bytes"],
        kv_bytes_per_token=point["kv_bytes_per_token"],
        efficiency=eff,
    )
    return decode_figure(point["row"], point["setup"], speed)


def loss(points: list[dict[str, Any]], eff: ServeEfficiency) -> float:
    """Sum of |log(ours / published)| over the points."""
    return sum(abs(math.log(predict(p, eff) / p["published"])) for p in points)


def _grid_fit(points: list[dict[str, Any]], prior: ServeEfficiency) -> ServeEfficiency:
    best: tuple[float, ServeEfficiency] | None = None
    for bandwidth in BANDWIDTH_GRID:
        for latency in LATENCY_GRID:
            eff = replace(prior, bandwidth=bandwidth, allreduce_latency_s=latency)
            value = loss(points, eff)
            if best is None or value < best[0] - 1e-12:
                best = (value, eff)
    assert best is not None
    return best[1]


def _errors(points: list[dict[str, Any]], eff: ServeEfficiency) -> dict[str, float]:
    return {p["id"]: (predict(p, eff) - p["published"]) / p["published"] for p in points}


def _median_abs(errors: dict[str, float]) -> float | None:
    return statistics.median(abs(e) for e in errors.values()) if errors else None


def fit(csv_paths: tuple[Path, ...] = ALL_CSVS) -> dict[str, Any]:
    """The fitted constants, the rows used, leave-one-out ranges, and fit/test errors."""
    points = decode_points("fit", csv_paths)
    prior = serve_efficiency()
    if not points:
        return {"fitted": [], "rows": [], "why": "no fit-set decode rows"}
    best = _grid_fit(points, prior)
    loo = {p["id"]: _grid_fit([q for q in points if q is not p], prior) for p in points}
    result: dict[str, Any] = {
        "rows": [p["id"] for p in points],
        "bandwidth": best.bandwidth,
        "allreduce_latency_s": best.allreduce_latency_s,
        "leave_one_out": {k: [v.bandwidth, v.allreduce_latency_s] for k, v in loo.items()},
        "fitted": [],
        "trusted": {},
    }
    tp_rows = [p for p in points if p["setup"].tp > 1]
    grids = {"bandwidth": BANDWIDTH_GRID, "allreduce_latency_s": LATENCY_GRID}
    for i, name in enumerate(grids):
        if name == "allreduce_latency_s" and not tp_rows:
            continue  # no tensor-parallel fit row: the latency cannot be identified
        values = [v[i] for v in result["leave_one_out"].values()]
        value = result[name]
        edge = value in (grids[name][0], grids[name][-1])
        result["fitted"].append(name)
        result["trusted"][name] = not edge and (max(values) - min(values)) <= value
    fit_errors = _errors(points, best)
    test_errors = _errors(decode_points("test", csv_paths), best)
    result["fit_errors"] = fit_errors
    result["test_errors"] = test_errors
    result["fit_median_abs_error"] = _median_abs(fit_errors)
    result["test_median_abs_error"] = _median_abs(test_errors)
    result["prior_fit_median_abs_error"] = _median_abs(_errors(points, prior))
    return result


def write(result: dict[str, Any], path: Path = CALIBRATION) -> None:
    """Put the fitted values, with their source, into calibration.json's serving_efficiency section."""
    data = json.loads(path.read_text(encoding="utf-8"))
    section = data["serving_efficiency"]
    rows = ", ".join(result["rows"])
    how = (
        f"fitted on {len(result['rows'])} decode rows of benchmarks/data/published_decode.csv fit set ({rows}), "
        f"{date.today()}, benchmarks/fit_serving_speed.py (grid, least absolute log error)"
    )
    for i, name in enumerate(("bandwidth", "allreduce_latency_s")):
        if name not in result["fitted"]:
            continue
        loo = sorted({v[i] for v in result["leave_one_out"].values()})
        trust = f"; leave-one-out {loo[0]:g}..{loo[-1]:g}" + (
            "" if result["trusted"][name] else " (NOT TRUSTED: on the grid edge or wider than the value)"
        )
        section[name] = {"value": result[name], "status": "fitted", "source": how + trust}
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--write", action="store_true", help="update swiftplan/profiles/calibration.json")
    args = parser.parse_args(argv)
    result = fit()
    print(json.dumps({k: v for k, v in result.items() if k != "leave_one_out"}, indent=1))
    if args.write:
        write(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
