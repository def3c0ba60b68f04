"""Measure a run (peak memory, tokens/s), compare with the plan's prediction, and record it on consent.

Memory per device family: CUDA/ROCm `max_memory_allocated`/`max_memory_reserved` (the quantities the
planner's `peak_allocated` and `device_total` predict), Ascend the same through `torch.npu`, Apple MPS
the largest `current_allocated_memory`/`driver_allocated_memory` seen after a step, CPU the process's
peak RSS (not comparable with a GPU prediction: it includes Python and every library).

The calibration store is one JSON object per line in `$SWIFTPLAN_HOME/measurements.jsonl` (default
`~/.cache/swiftplan`), schema `swiftplan.measurement/1`: the plan's model, cluster and train set-up,
the device that ran, what was predicted and what was measured, so the planner can fit against it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import resource
import sys
from pathlib import Path
from typing import Any

RECORD_SCHEMA = "swiftplan.measurement/1"


def _npu() -> Any:
    """`torch.npu`, which torch_npu registers (torch's own type stubs do not have it)."""
    import torch

    return getattr(torch, "npu")  # noqa: B009


def reset_peak(device_type: str) -> None:
    """Start peak-memory tracking now (CUDA/NPU); MPS and CPU need nothing."""
    import torch

    if device_type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    elif device_type == "npu":
        _npu().reset_peak_memory_stats()


def rss_peak_bytes() -> int:
    """Peak resident set size of this process (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def memory_now(device_type: str) -> dict[str, int]:
    """Allocated and reserved (or driver) bytes right now; RSS peak on CPU."""
    import torch

    if device_type == "cuda":
        return {"allocated": torch.cuda.memory_allocated(), "reserved": torch.cuda.memory_reserved()}
    if device_type == "npu":
        return {"allocated": _npu().memory_allocated(), "reserved": _npu().memory_reserved()}
    if device_type == "mps":
        return {
            "allocated": torch.mps.current_allocated_memory(),
            "reserved": torch.mps.driver_allocated_memory(),
        }
    return {"allocated": rss_peak_bytes(), "reserved": rss_peak_bytes()}


def peak_memory(device_type: str, sampled: dict[str, int]) -> dict[str, Any]:
    """Peak allocated/reserved bytes of this process and how they were measured."""
    import torch

    if device_type == "cuda":
        return {"peak_allocated_bytes": torch.cuda.max_memory_allocated(),
                "peak_reserved_bytes": torch.cuda.max_memory_reserved(),
                "method": "torch.cuda.max_memory_allocated / max_memory_reserved"}  # fmt: skip
    if device_type == "npu":
        return {"peak_allocated_bytes": _npu().max_memory_allocated(),
                "peak_reserved_bytes": _npu().max_memory_reserved(),
                "method": "torch.npu.max_memory_allocated / max_memory_reserved"}  # fmt: skip
    if device_type == "mps":
        return {"peak_allocated_bytes": sampled.get("allocated", 0), "peak_reserved_bytes": sampled.get("reserved", 0),
                "method": "largest torch.mps.current_allocated_memory / driver_allocated_memory after a step"}  # fmt: skip
    rss = rss_peak_bytes()
    return {"peak_allocated_bytes": rss, "peak_reserved_bytes": rss,
            "method": "process peak RSS (CPU: includes Python and libraries; not comparable with a GPU prediction)"}  # fmt: skip


def comparison(predicted: dict[str, Any], measured: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of predicted vs measured with the ratio measured/predicted (None where either is missing)."""
    pairs = [
        ("peak allocated per device (bytes)", predicted.get("peak_allocated_bytes"), measured.get("peak_allocated_bytes")),
        ("reserved (device total) per device (bytes)", predicted.get("device_total_bytes"), measured.get("peak_reserved_bytes")),
        ("tokens/s (all devices)", predicted.get("tokens_per_s"), measured.get("tokens_per_s")),
        ("step time (s)", predicted.get("step_time_s"), measured.get("step_time_s")),
    ]  # fmt: skip
    return [
        {"what": what, "predicted": p, "measured": m, "ratio": (m / p) if p and m is not None else None}
        for what, p, m in pairs
    ]


def predicted_from_plan(plan: Any) -> dict[str, Any]:
    """The numbers a plan file predicted, in the report's units."""
    predicted = plan.prediction
    return {
        "peak_allocated_bytes": predicted.per_device_bytes.get("peak_allocated"),
        "device_total_bytes": predicted.per_device_bytes.get("device_total"),
        "tokens_per_s": predicted.tokens_per_s,
        "step_time_s": predicted.step_time_s,
        "cluster": plan.hardware.describe(),
    }


def swiftplan_home() -> Path:
    """$SWIFTPLAN_HOME, else ~/.cache/swiftplan."""
    return Path(os.environ.get("SWIFTPLAN_HOME") or Path.home() / ".cache" / "swiftplan")


def measurement_record(report: dict[str, Any], plan: Any) -> dict[str, Any]:
    """One calibration-store line (schema swiftplan.measurement/1) from a run report."""
    return {
        "schema": RECORD_SCHEMA,
        "recorded": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "swiftplan_version": report["swiftplan_version"],
        "model": plan.model,
        "model_source": plan.model_source,
        "plan_cluster": plan.hardware.describe(),
        "train": _plan_section(plan, "train"),
        "device": report["device"],
        "world_size": report["world_size"],
        "steps_measured": report["steps"]["measured"],
        "predicted": report["predicted"],
        "measured": report["measured"],
        "versions": report["versions"],
    }


def _plan_section(plan: Any, name: str) -> Any:
    from swiftplan.plan_file import plan_dict

    return plan_dict(plan)[name]


def record_measurement(report: dict[str, Any], plan: Any, home: Path | None = None) -> Path:
    """Append the run's measurement to the local calibration store; returns the file."""
    path = (home or swiftplan_home()) / "measurements.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(measurement_record(report, plan)) + "\n")
    return path


def read_measurements(home: Path | None = None) -> list[dict[str, Any]]:
    """Every record in the calibration store (what a planner fit would read)."""
    path = (home or swiftplan_home()) / "measurements.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row for row in rows if row.get("schema") == RECORD_SCHEMA]
