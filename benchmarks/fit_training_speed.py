"""Fit the training-MFU curve (swiftplan/planner/train_efficiency.py) on the FIT set of published training
throughput rows, and write it to swiftplan/profiles/calibration.json ("training_efficiency") with its source.

    mfu(t, N) = mfu_max(family) × t / (t + tokens_half) × N / (N + params_half)

Procedure (fixed before any test-set error was looked at):
1. Rows: every measured `tokens_per_s_per_gpu` row of the published CSVs (published_accuracy.ALL_CSVS) whose
   source `calibration_split.split_of` puts in the fit set and that `published_rows.express` can ask. Left
   out, each with its reason (printed, and in the result):
   - rows whose tokens per micro-batch are not known: unpacked data padded to the longest sample of each
     batch, the stated length only a cap (`UNKNOWN_TOKENS`, by source);
   - rows the curve cannot explain whatever its constants: the published step is shorter than the speed
     model's non-matmul time alone (offload, dequantisation, and the communication no compute hides: each
     phase's first gather or last reduce, planner/comm_speed.py), or it would need more than the dense peak
     (MFU > 1 under the planner's FLOP count, with the communication the matmuls at peak leave exposed),
     which says the figure is not per GPU as labelled or our communication is longer than the run's.
2. Per row the planner's estimate gives the matmul time at MFU 1, the step's collectives and the rest of the
   step; the predicted tokens/s per GPU at MFU m is tokens per rank per step × data-parallel ranks / GPUs /
   (matmul time / m + the rest + the communication exposed behind matmul time / m, `comm_speed.exposed_comm_s`).
   No per-row term.
3. Constants: one ceiling per accelerator family (grid 0.050..0.950, step 0.005) and two half-points shared
   by the families. `tokens_half` is fitted (grid below) only when one family's fit rows span at least two
   micro-batch sizes; `params_half` only when one family's fit rows span at least two model sizes. Otherwise
   the half-point keeps its documented prior, and a family without fit rows keeps its prior ceiling; the
   source text says why.
4. Loss: sum over rows of |log(predicted / published)|; ties go to the smaller value.
5. Trust check: the fit is repeated leaving each row out; a value on its grid's edge, or whose leave-one-out
   range is wider than the value itself, or that rests on one row (its leave-one-out fits never move it), is
   reported as not trusted and not written: the constant keeps its value, and its source records the fit.
   When a half-point is not trusted, the ceilings are fitted (and checked) again with it at its kept value, so
   that what is written fits together.

    python benchmarks/fit_training_speed.py            # prints the fit; --write updates calibration.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from datetime import date
from pathlib import Path
from typing import Any

from calibration_split import source_key, split_of
from fit_rules import leave_one_out_text, note_kept, note_untrusted
from published_accuracy import ALL_CSVS, _estimate, read_rows
from published_rows import Skip, express

from swiftplan.errors import SwiftplanError
from swiftplan.planner.architecture import matmul_params_per_token
from swiftplan.planner.comm_speed import TrainComm, exposed_comm_s, pipelined_exposed_s
from swiftplan.planner.setup import TrainSetup
from swiftplan.planner.speed import TrainSpeed, train_comm_of
from swiftplan.planner.train_efficiency import SECTION, MfuCurve, family

CALIBRATION = Path(__file__).resolve().parent.parent / "swiftplan" / "profiles" / "calibration.json"
METRIC = "tokens_per_s_per_gpu"
FAMILIES = ("datacenter", "consumer", "apple", "npu")
MFU_GRID = [round(0.05 + i * 0.005, 3) for i in range(181)]
TOKENS_HALF_GRID = [0.0] + [float(2**k) for k in range(4, 15)]  # 16 .. 16384 tokens
PARAMS_HALF_GRID = [i * 0.25e9 for i in range(0, 81)]  # 0 .. 20e9 parameters
UNKNOWN_TOKENS: dict[str, str] = {
    "pytorch/torchtune readme.md llama2 resource table": (
        "alpaca unpacked, padded to the longest sample of each batch: 'Seq Length' is a cap, the tokens per "
        "micro-batch are not stated"
    ),
}
"""Sources (calibration_split.source_key) whose micro-batch token count is not known, with the reason."""


def fit_points(csv_paths: tuple[Path, ...] = ALL_CSVS) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """(usable fit-set rows with the parts of our estimate the constants act on, {left-out id: reason})."""
    points: list[dict[str, Any]] = []
    left_out: dict[str, str] = {}
    for row in read_rows(csv_paths):
        if row["metric"] != METRIC or row["source_kind"] != "measured" or split_of(row["source"]) != "fit":
            continue
        if source_key(row["source"]) in UNKNOWN_TOKENS:
            left_out[row["id"]] = UNKNOWN_TOKENS[source_key(row["source"])]
            continue
        try:
            expressed = express(row)
            spec = expressed.spec
            estimate = _estimate(spec, expressed)
            speed = estimate.speed
        except (Skip, SwiftplanError) as why:
            left_out[row["id"]] = f"not expressed: {why}"
            continue
        setup = expressed.setup
        if not isinstance(speed, TrainSpeed) or not isinstance(setup, TrainSetup):
            left_out[row["id"]] = "no training speed estimate"
            continue
        published = float(row["value"])
        gpus = expressed.cluster.world_size
        tokens_per_gpu_step = speed.tokens_per_s * speed.step_time_s / gpus
        matmul_s_at_peak = speed.breakdown_s["compute"] * speed.mfu_prior
        comm = train_comm_of(spec, setup, expressed.cluster, trainable_params=estimate.trainable_params)
        rest_s = speed.step_time_s - speed.breakdown_s["compute"] - speed.breakdown_s["comm"]
        unhidden_s = rest_s + _unhideable_s(comm)
        published_step_s = tokens_per_gpu_step / published
        if published_step_s <= unhidden_s:
            left_out[row["id"]] = (
                f"published step {published_step_s:.3g} s is shorter than our non-matmul time {unhidden_s:.3g} s"
            )
            continue
        at_peak_s = matmul_s_at_peak + rest_s + exposed_comm_s(comm, matmul_s_at_peak / setup.grad_accum)
        if at_peak_s > published_step_s:
            left_out[row["id"]] = (
                f"needs MFU > 1 under the planner's FLOP count: the step at peak with its exposed communication "
                f"is {at_peak_s:.3g} s, published {published_step_s:.3g} s (not a per-GPU figure, or our "
                "communication is longer than the run's)"
            )
            continue
        points.append(
            {
                "id": row["id"],
                "family": family(expressed.cluster.accelerator),
                "tokens": setup.micro_batch * setup.seq_len,
                "params": matmul_params_per_token(spec),
                "published": published,
                "tokens_per_gpu_step": tokens_per_gpu_step,
                "matmul_s_at_peak": matmul_s_at_peak,
                "rest_s": rest_s,
                "comm": comm,
                "grad_accum": setup.grad_accum,
            }
        )
    return points, left_out


def _unhideable_s(comm: TrainComm) -> float:
    """Communication seconds per step no compute hides: tensor-parallel all-reduces, each data-parallel
    phase's first gather or last reduce, and what runs after the step."""
    return exposed_comm_s(comm, 0.0) - sum(
        p.per_step * (pipelined_exposed_s(p.comm_s, 0.0, p.units) - p.comm_s / p.units)
        for p in comm.phases
        if p.compute_share > 0
    )


def predicted(point: dict[str, Any], curve: MfuCurve) -> float:
    """Tokens/s per GPU of a fit point under `curve`."""
    mfu = curve.at(tokens_per_micro_batch=point["tokens"], params=point["params"])
    matmul_s = point["matmul_s_at_peak"] / mfu
    comm_s = exposed_comm_s(point["comm"], matmul_s / point["grad_accum"])
    return float(point["tokens_per_gpu_step"] / (matmul_s + point["rest_s"] + comm_s))


def loss(points: list[dict[str, Any]], curve: MfuCurve) -> float:
    """Sum of |log(predicted / published)|."""
    return sum(abs(math.log(predicted(p, curve) / p["published"])) for p in points)


def _priors(path: Path = CALIBRATION) -> dict[str, float]:
    section = json.loads(path.read_text(encoding="utf-8"))[SECTION]
    return {name: float(entry["value"]) for name, entry in section.items() if not name.startswith("_")}


def _spans(points: list[dict[str, Any]], key: str) -> bool:
    """Whether one family's points take at least two values of `key`."""
    values: dict[str, set[float]] = {}
    for p in points:
        values.setdefault(p["family"], set()).add(p[key])
    return any(len(v) > 1 for v in values.values())


def _solve(
    points: list[dict[str, Any]], priors: dict[str, float], pinned: frozenset[str] = frozenset()
) -> dict[str, float]:
    """Least-loss constants on the grids; half-points the points cannot inform, or `pinned`, stay at their priors."""
    tokens_grid = TOKENS_HALF_GRID if _spans(points, "tokens") else [priors["tokens_half"]]
    params_grid = PARAMS_HALF_GRID if _spans(points, "params") else [priors["params_half"]]
    tokens_grid = [priors["tokens_half"]] if "tokens_half" in pinned else tokens_grid
    params_grid = [priors["params_half"]] if "params_half" in pinned else params_grid
    families = sorted({p["family"] for p in points})
    best: tuple[float, dict[str, float]] | None = None
    for tokens_half in tokens_grid:
        for params_half in params_grid:
            values = {"tokens_half": tokens_half, "params_half": params_half}
            total = 0.0
            for fam in families:
                members = [p for p in points if p["family"] == fam]
                scored = [
                    (loss(members, MfuCurve(mfu_max=m, tokens_half=tokens_half, params_half=params_half)), m)
                    for m in MFU_GRID
                ]
                fam_loss, values[fam] = min(scored)
                total += fam_loss
            if best is None or total < best[0] - 1e-12:
                best = (total, values)
    assert best is not None
    return best[1]


def fit(csv_paths: tuple[Path, ...] = ALL_CSVS, calibration: Path = CALIBRATION) -> dict[str, Any]:
    """The fitted constants, which were fitted and which kept their prior (and why), rows used and left out."""
    points, left_out = fit_points(csv_paths)
    priors = _priors(calibration)
    values = _solve(points, priors) if points else {}
    fitted = [name for name in values if name in FAMILIES]
    fitted += [n for n, key in (("tokens_half", "tokens"), ("params_half", "params")) if _spans(points, key)]
    kept = {name: _why_prior(name, points) for name in (*FAMILIES, "tokens_half", "params_half")}
    kept = {name: why for name, why in kept.items() if name not in fitted}
    leave_one_out, trusted = _check(points, priors, values, fitted)
    # A ceiling is written with the half-points it was fitted under: a half-point whose fit is not trusted
    # keeps its prior, so the ceilings are fitted again with it pinned there (its own fit is still reported).
    pinned = frozenset(n for n in ("tokens_half", "params_half") if n in fitted and not trusted[n])
    if pinned:
        joint, joint_loo = values, leave_one_out
        values = _solve(points, priors, pinned) | {n: joint[n] for n in pinned}
        leave_one_out, trusted = _check(points, priors, values, fitted, pinned)
        leave_one_out = {
            row: loo | {n: joint_loo[row][n] for n in pinned} for row, loo in leave_one_out.items()
        }
        trusted |= dict.fromkeys(pinned, False)
    result: dict[str, Any] = {name: values[name] for name in fitted}
    result |= {
        "fitted": fitted,
        "kept": kept,
        "pinned": sorted(pinned),
        "rows": {name: _rows_for(name, points) for name in fitted},
        "left_out": left_out,
        "leave_one_out": leave_one_out,
        "trusted": trusted,
        "loss": loss(points, _curve(values, priors, points[0]["family"])) if points else None,
    }
    return result


def _check(
    points: list[dict[str, Any]],
    priors: dict[str, float],
    values: dict[str, float],
    fitted: list[str],
    pinned: frozenset[str] = frozenset(),
) -> tuple[dict[str, dict[str, float]], dict[str, bool]]:
    """({left-out row: the fit without it}, {constant: trusted}) for the fit `values` (the trust rule above)."""
    leave_one_out = {
        p["id"]: _solve([q for q in points if q is not p], priors, pinned) for p in points if len(points) > 1
    }
    trusted = {
        name: _trusted(name, values[name], leave_one_out) and len(_rows_for(name, points)) > 1
        for name in fitted
        if name not in pinned
    }
    return leave_one_out, trusted


def _curve(values: dict[str, float], priors: dict[str, float], fam: str) -> MfuCurve:
    merged = priors | values
    return MfuCurve(mfu_max=merged[fam], tokens_half=merged["tokens_half"], params_half=merged["params_half"])


def _rows_for(name: str, points: list[dict[str, Any]]) -> list[str]:
    return [p["id"] for p in points if name not in FAMILIES or p["family"] == name]


def _why_prior(name: str, points: list[dict[str, Any]]) -> str:
    if name in FAMILIES:
        return f"no usable fit-set row on an accelerator of the {name} family"
    what = "micro-batch sizes" if name == "tokens_half" else "model sizes"
    return f"no family's usable fit-set rows span two {what}"


def _trusted(name: str, value: float, leave_one_out: dict[str, dict[str, float]]) -> bool:
    grid = MFU_GRID if name in FAMILIES else TOKENS_HALF_GRID if name == "tokens_half" else PARAMS_HALF_GRID
    loo = [v[name] for v in leave_one_out.values() if name in v]
    on_edge = value in (grid[0], grid[-1]) and name in FAMILIES
    return not on_edge and bool(loo) and max(loo) - min(loo) <= value


def write(result: dict[str, Any], path: Path = CALIBRATION) -> None:
    """Put the fitted values, with their source, into calibration.json; say why the others kept their prior."""
    data = json.loads(path.read_text(encoding="utf-8"))
    section = data[SECTION]
    today = date.today().isoformat()
    for name in result["fitted"]:
        trust = leave_one_out_text(v[name] for v in result["leave_one_out"].values() if name in v)
        rows = ", ".join(result["rows"][name])
        if not result["trusted"][name]:
            note_untrusted(section[name], value=result[name], rows=rows, trust=trust, today=today)
            continue
        section[name] = {
            "value": result[name],
            "status": "fitted",
            "source": f"fitted {today} by benchmarks/fit_training_speed.py on {len(result['rows'][name])} fit-set "
            f"tokens_per_s_per_gpu rows of benchmarks/data/published*.csv ({rows}) (grid, least absolute log "
            f"error){trust}"
            + (f"; with {', '.join(result['pinned'])} at their kept values" if result.get("pinned") else ""),
        }
    for name, why in result["kept"].items():
        note_kept(section[name], why=why, today=today)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--write", action="store_true", help="update swiftplan/profiles/calibration.json")
    args = parser.parse_args(argv)
    result = fit()
    print(json.dumps({k: v for k, v in result.items() if k != "leave_one_out"}, indent=2))
    if args.write:
        write(result)
        print(f"wrote {CALIBRATION}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
