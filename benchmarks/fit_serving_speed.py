"""Fit the serving speed constants on the FIT set of the published decode rows, and write them to
swiftplan/profiles/calibration.json ("serving_efficiency") with their source.

Procedure (small on purpose):
1. Rows: every measured row of benchmarks/data/published*.csv whose metric is a decode metric
   (`published_rows.DECODE_METRICS`) and whose source `calibration_split.split_of` puts in the fit set.
   Each is expressed as a ServeSetup on its cluster (`published_rows.express`, the engine from the row's
   runtime column), exactly as `published_accuracy.py` compares it; rows it skips are skipped here too.
2. Constants fitted (named, shared by every row of their kind; nothing per row):
   - `bandwidth`: achieved fraction of memory bandwidth in a decode step on HBM devices, `bandwidth_gddr` on
     GDDR devices (`speed.decode_bandwidth_efficiency`; the catalog's memory_type);
   - `allreduce_latency_s`: fixed seconds per tensor-parallel all-reduce (`speed.decode_allreduce_s`);
   - `step_overhead_<engine>_s`: fixed host seconds per decode step of each engine with fit rows
     (`speed.decode_step_overhead_s`);
   - `eager_launch_per_layer_s`: host seconds to launch one layer's kernels in a decode step without CUDA
     graphs (`speed.decode_host_launch_s`), on the rows that decode eagerly (vLLM V0 past 8192 tokens).
   `compute` stays at its prior: it is prefill's GEMM efficiency, and the decode rows' prefill is a few
   percent of their time at most. A constant no fit row moves (no GDDR row, no tensor-parallel row, no row
   of an engine) is not fitted.
3. Search: coordinate descent over 1-D grids — bandwidths 0.40..1.00 step 0.01, allreduce_latency_s
   0..60 us step 1 us, each step overhead 0..20 ms step 0.1 ms, the eager launch time per layer 0..1 ms step
   10 us — each coordinate set in turn to its grid
   value with the least sum of |log(ours / published)| over the rows it moves (ties: the smaller value),
   until a whole sweep changes nothing; run from six fixed starts (`STARTS`), the end point of least loss
   kept (the loss is flat along bandwidth vs per-step cost, so one start can stop short).
4. Trust check: the fit is repeated leaving each row out (starting from the full fit); a value on a grid
   edge, fitted on one row, or whose leave-one-out range is wider than the value itself is not trusted:
   `--write` records it in the constant's source and keeps the committed value (the rule of
   benchmarks/calibrate.py and benchmarks/fit_training_speed.py).
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
from fit_rules import leave_one_out_text, note_untrusted
from published_accuracy import ALL_CSVS, read_rows
from published_rows import DECODE_METRICS, Skip, decode_figure, express

from swiftplan.errors import SwiftplanError
from swiftplan.planner.serve_memory import serve_memory
from swiftplan.planner.setup import SERVE_RUNTIMES, ServeSetup
from swiftplan.planner.speed import (
    ServeEfficiency,
    is_gddr,
    serve_efficiency,
    serve_speed,
    step_overhead_name,
)

CALIBRATION = Path(__file__).resolve().parent.parent / "swiftplan" / "profiles" / "calibration.json"
BANDWIDTH_GRID = [round(0.40 + i / 100, 2) for i in range(61)]
LATENCY_GRID = [i * 1e-6 for i in range(61)]
OVERHEAD_GRID = [round(i * 1e-4, 4) for i in range(201)]
LAUNCH_GRID = [round(i * 1e-5, 5) for i in range(101)]
STARTS = tuple(
    {"bandwidth": b, "bandwidth_gddr": b, "allreduce_latency_s": 30e-6, "overhead": o, "launch": 2e-4}
    for b in (0.5, 0.7, 0.9)
    for o in (0.0, 0.005)
)
"""Where the coordinate descent starts (the best end point is kept): low, middle and high bandwidths, with
no per-step cost and with 5 ms; fixed, so the fit does not depend on the committed values."""


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
        spec = expressed.spec
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


def constants_moved(points: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Each constant the points can identify, with the points it moves."""
    moved: dict[str, list[dict[str, Any]]] = {
        "bandwidth": [p for p in points if not is_gddr(p["accelerator"])],
        "bandwidth_gddr": [p for p in points if is_gddr(p["accelerator"])],
        "allreduce_latency_s": [p for p in points if p["setup"].tp > 1],
    }
    for runtime in SERVE_RUNTIMES:
        moved[step_overhead_name(runtime)] = [p for p in points if p["setup"].runtime == runtime]
    moved["eager_launch_per_layer_s"] = [p for p in points if p["setup"].decodes_eagerly]
    return {name: rows for name, rows in moved.items() if rows}


def _grid(name: str) -> list[float]:
    if name.startswith("bandwidth"):
        return BANDWIDTH_GRID
    if name == "eager_launch_per_layer_s":
        return LAUNCH_GRID
    return LATENCY_GRID if name == "allreduce_latency_s" else OVERHEAD_GRID


def _value(eff: ServeEfficiency, name: str) -> float:
    if name.startswith("step_overhead_"):
        return next(v for r, v in eff.step_overhead_s.items() if step_overhead_name(r) == name)
    return float(getattr(eff, name))


def _with(eff: ServeEfficiency, name: str, value: float) -> ServeEfficiency:
    if name.startswith("step_overhead_"):
        overhead = {r: value if step_overhead_name(r) == name else v for r, v in eff.step_overhead_s.items()}
        return replace(eff, step_overhead_s=overhead)
    return replace(eff, **{name: value})


def _descend(points: list[dict[str, Any]], start: ServeEfficiency) -> ServeEfficiency:
    """Coordinate descent from `start` over each identifiable constant's grid (module docstring, step 3)."""
    moved = constants_moved(points)
    eff = start
    for _ in range(50):
        before = eff
        for name, rows in moved.items():
            best = min(_grid(name), key=lambda v: (loss(rows, _with(eff, name, v)), v))
            eff = _with(eff, name, best)
        if eff == before:
            return eff
    raise RuntimeError("coordinate descent did not settle in 50 sweeps")


def start_point(prior: ServeEfficiency, start: dict[str, float]) -> ServeEfficiency:
    """`prior` with the fitted constants at one of `STARTS`."""
    eff = replace(
        prior,
        bandwidth=start["bandwidth"],
        bandwidth_gddr=start["bandwidth_gddr"],
        allreduce_latency_s=start["allreduce_latency_s"],
    )
    return replace(
        eff,
        step_overhead_s={r: start["overhead"] for r in eff.step_overhead_s},
        eager_launch_per_layer_s=start["launch"],
    )


def _best_fit(points: list[dict[str, Any]], prior: ServeEfficiency) -> ServeEfficiency:
    """The descent from each of `STARTS`; the end point of least loss (ties: the first)."""
    ends = [_descend(points, start_point(prior, start)) for start in STARTS]
    return min(ends, key=lambda eff: loss(points, eff))


def _errors(points: list[dict[str, Any]], eff: ServeEfficiency) -> dict[str, float]:
    return {p["id"]: (predict(p, eff) - p["published"]) / p["published"] for p in points}


def _median_abs(errors: dict[str, float]) -> float | None:
    return statistics.median(abs(e) for e in errors.values()) if errors else None


def by_runtime(points: list[dict[str, Any]], errors: dict[str, float]) -> dict[str, dict[str, float]]:
    """Median and largest |error| of the points of each engine."""
    groups: dict[str, list[float]] = {}
    for p in points:
        groups.setdefault(p["setup"].runtime, []).append(abs(errors[p["id"]]))
    return {k: {"rows": len(v), "median": statistics.median(v), "max": max(v)} for k, v in groups.items()}


def fit(csv_paths: tuple[Path, ...] = ALL_CSVS, *, leave_one_out: bool = True) -> dict[str, Any]:
    """The fitted constants, the rows each rests on, leave-one-out ranges, trust, and fit/test errors under
    the constants as committed after `--write` (trusted fits written, the others kept)."""
    points = decode_points("fit", csv_paths)
    prior = serve_efficiency()
    if not points:
        return {"fitted": [], "rows": {}, "why": "no fit-set decode rows"}
    best = _best_fit(points, prior)
    moved = constants_moved(points)
    result: dict[str, Any] = {
        "fitted": list(moved),
        "rows": {name: [p["id"] for p in rows] for name, rows in moved.items()},
        "values": {name: _value(best, name) for name in moved},
        "leave_one_out": {},
        "trusted": {},
    }
    if leave_one_out:
        for p in points:
            rest = [q for q in points if q is not p]
            loo = _descend(rest, best)
            result["leave_one_out"][p["id"]] = {
                n: _value(loo, n) for n in constants_moved(rest) if n in moved
            }
    for name in moved:
        value = result["values"][name]
        loo_values = [v[name] for v in result["leave_one_out"].values() if name in v]
        edge = value in (_grid(name)[0], _grid(name)[-1])
        one_row = len(moved[name]) == 1
        wide = bool(loo_values) and max(loo_values) - min(loo_values) > value
        result["trusted"][name] = not (edge or one_row or wide)
    committed = prior
    for name in moved:
        if result["trusted"][name]:
            committed = _with(committed, name, result["values"][name])
    test = decode_points("test", csv_paths)
    for label, eff in (("errors_before", prior), ("errors_after", committed)):
        fit_errors, test_errors = _errors(points, eff), _errors(test, eff)
        result[label] = {
            "fit_median_abs_error": _median_abs(fit_errors),
            "fit_max_abs_error": max(map(abs, fit_errors.values())),
            "test_median_abs_error": _median_abs(test_errors),
            "test_max_abs_error": max(map(abs, test_errors.values()), default=None),
            "fit_by_runtime": by_runtime(points, fit_errors),
            "test_by_runtime": by_runtime(test, test_errors),
        }
    result["fit_errors"] = _errors(points, committed)
    result["test_errors"] = _errors(test, committed)
    return result


def write(result: dict[str, Any], path: Path = CALIBRATION) -> None:
    """Put the trusted fitted values, with their source, into calibration.json's serving_efficiency section;
    an untrusted fit is recorded in the constant's source and its value kept."""
    data = json.loads(path.read_text(encoding="utf-8"))
    section = data["serving_efficiency"]
    today = date.today().isoformat()
    for name in result["fitted"]:
        value = result["values"][name]
        rows = ", ".join(result["rows"][name])
        trust = leave_one_out_text(v[name] for v in result["leave_one_out"].values() if name in v)
        if not result["trusted"][name]:
            note_untrusted(section[name], value=value, rows=rows, trust=trust, today=today)
            continue
        section[name] = {
            "value": value,
            "status": "fitted",
            "source": f"fitted {today} by benchmarks/fit_serving_speed.py on {len(result['rows'][name])} decode "
            f"rows of benchmarks/data/published_decode.csv fit set ({rows}) (coordinate descent on grids, least "
            f"absolute log error){trust}",
        }
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--write", action="store_true", help="update swiftplan/profiles/calibration.json")
    args = parser.parse_args(argv)
    result = fit()
    shown = {k: v for k, v in result.items() if k not in ("leave_one_out", "fit_errors", "test_errors")}
    shown["leave_one_out_range"] = {
        n: [min(v[n] for v in result["leave_one_out"].values() if n in v),
            max(v[n] for v in result["leave_one_out"].values() if n in v)]
        for n in result["fitted"]
        if any(n in v for v in result["leave_one_out"].values())
    }  # fmt: skip
    print(json.dumps(shown, indent=1))
    if args.write:
        write(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
