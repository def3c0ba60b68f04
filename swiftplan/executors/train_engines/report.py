"""What an external engine's run measured, next to what the plan predicted: read from the engine's own
log files after it exits and written as run_report.json (today: ms-swift's logging.jsonl, whose lines
carry loss, train_speed(s/it) and, on CUDA, memory(GiB) — swift/trainers/mixin.py logs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from swiftplan.planner.plan import Plan
from swiftplan.planner.setup import TrainSetup

GIB = 2**30


def _latest_run(output_dir: Path) -> Path | None:
    """ms-swift writes into OUTPUT_DIR/vN-YYYYMMDD-HHMMSS/; the newest one holding logging.jsonl."""
    runs = sorted(output_dir.glob("v*-*/logging.jsonl"), key=lambda p: p.stat().st_mtime)
    return runs[-1].parent if runs else None


def _adapter_check(run: Path, setup: TrainSetup) -> dict[str, Any] | None:
    """The saved adapter's shape against the plan's (rank, alpha, dropout, targets)."""
    configs = sorted(run.glob("checkpoint-*/adapter_config.json"))
    if not configs or setup.lora is None:
        return None
    saved = json.loads(configs[-1].read_text())
    alpha = setup.lora.alpha if setup.lora.alpha is not None else 2 * setup.lora.rank
    planned_targets = None if setup.lora.all_linear else sorted(setup.lora.targets)
    return {
        "rank": [setup.lora.rank, saved.get("r")],
        "alpha": [alpha, saved.get("lora_alpha")],
        "dropout": [setup.lora.dropout, saved.get("lora_dropout")],
        "targets": [planned_targets or "all-linear", sorted(saved.get("target_modules") or [])],
        "matches": saved.get("r") == setup.lora.rank
        and float(saved.get("lora_alpha", -1)) == float(alpha)
        and float(saved.get("lora_dropout", -1)) == float(setup.lora.dropout)
        and (planned_targets is None or sorted(saved.get("target_modules") or []) == planned_targets),
    }


def ms_swift_report(plan: Plan, output_dir: Path, *, exit_code: int) -> dict[str, Any]:
    """run_report.json for an ms-swift run of `plan` in `output_dir`."""
    setup = plan.setup
    assert isinstance(setup, TrainSetup)
    run = _latest_run(output_dir)
    lines: list[dict[str, Any]] = []
    if run is not None:
        for text in (run / "logging.jsonl").read_text().splitlines():
            try:
                lines.append(json.loads(text))
            except json.JSONDecodeError:
                continue
    steps = [line for line in lines if "loss" in line]
    progress = [str(line["global_step/max_steps"]) for line in lines if "global_step/max_steps" in line]
    speeds = [float(line["train_speed(s/it)"]) for line in lines if "train_speed(s/it)" in line]
    memory = [float(line["memory(GiB)"]) * GIB for line in lines if "memory(GiB)" in line]
    predicted = plan.prediction
    return {
        "engine": "ms-swift",
        "exit_code": exit_code,
        "run_dir": str(run) if run else None,
        "steps": int(progress[-1].split("/")[0]) if progress else 0,
        "loss": {
            "first": steps[0]["loss"] if steps else None,
            "last": steps[-1]["loss"] if steps else None,
            "logged_steps": len(steps),
        },
        "predicted": {
            "cluster": plan.hardware.describe(),
            "peak_allocated_bytes": predicted.peak_allocated_bytes,
            "step_time_s": predicted.step_time_s,
        },  # fmt: skip
        "measured": {
            "peak_memory_bytes": max(memory) if memory else None,
            "step_time_s": speeds[-1] if speeds else None,
            "method": "ms-swift logging.jsonl (memory(GiB) is logged on CUDA only)",
        },  # fmt: skip
        "adapter": None if run is None else _adapter_check(run, setup),
    }
