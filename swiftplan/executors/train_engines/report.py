"""What an external engine's run measured, next to what the plan predicted: read from the engine's own
log files after it exits and written as run_report.json.

- ms-swift and Megatron-SWIFT write OUTPUT_DIR/vN-YYYYMMDD-HHMMSS/logging.jsonl, whose lines carry loss,
  global_step/max_steps, train_speed(s/it) and, on CUDA, memory(GiB) (swift/trainers/mixin.py logs);
- the HF-Trainer engines (TRL, LLaMA-Factory, axolotl) write log_history into each checkpoint's
  trainer_state.json (transformers TrainerState.save_to_json); the final train_runtime is only printed,
  so it is read from the engine.log swiftplan keeps of the run.
Preference runs also log rewards/accuracies and rewards/margins (TRL DPOTrainer/KTOTrainer, ms-swift): the
report carries their first and last values, and every logged loss.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

from swiftplan.planner.plan import Plan
from swiftplan.planner.setup import TrainSetup

GIB = 2**30
SWIFT_ENGINES = ("ms-swift", "megatron-swift")
"""Engines whose runs log to ms-swift's logging.jsonl."""
PREFERENCE_METRICS = ("rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected")


def _latest_run(output_dir: Path) -> Path | None:
    """ms-swift writes into OUTPUT_DIR/vN-YYYYMMDD-HHMMSS/; the newest one holding logging.jsonl."""
    runs = sorted(output_dir.glob("v*-*/logging.jsonl"), key=lambda p: p.stat().st_mtime)
    return runs[-1].parent if runs else None


def _jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a .jsonl file (a line being written is skipped)."""
    lines = []
    for text in path.read_text().splitlines():
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:
            continue
    return lines


def _trainer_state(output_dir: Path) -> tuple[Path | None, list[dict[str, Any]]]:
    """The newest trainer_state.json under `output_dir` (its checkpoints, or the directory itself) and its
    log_history."""
    states = sorted(output_dir.glob("**/trainer_state.json"), key=lambda p: p.stat().st_mtime)
    if not states:
        return None, []
    history: list[dict[str, Any]] = json.loads(states[-1].read_text()).get("log_history", [])
    return states[-1].parent, history


def _train_runtime_s(log: Path) -> float | None:
    """train_runtime from the HF Trainer's last printed metrics dict in the engine's log."""
    if not log.is_file():
        return None
    for line in reversed(log.read_text(errors="replace").splitlines()):
        start = line.rfind("{'train_runtime'")
        if start >= 0:
            try:
                return float(ast.literal_eval(line[start : line.index("}", start) + 1])["train_runtime"])
            except (ValueError, SyntaxError, KeyError):
                return None
    return None


def _adapter_check(run: Path, setup: TrainSetup) -> dict[str, Any] | None:
    """The saved adapter's shape against the plan's (rank, alpha, dropout, targets)."""
    configs = sorted(run.glob("**/adapter_config.json"))
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


def _metrics(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """First and last logged value of each preference metric the run logged."""
    out = {}
    for name in PREFERENCE_METRICS:
        values = [float(s[name]) for s in steps if name in s]
        if values:
            out[name] = {"first": values[0], "last": values[-1]}
    return out


def engine_report(engine: str, plan: Plan, output_dir: Path, *, exit_code: int) -> dict[str, Any]:
    """run_report.json for a run of `plan` through `engine` in `output_dir`."""
    setup = plan.setup
    assert isinstance(setup, TrainSetup)
    if engine in SWIFT_ENGINES:
        run = _latest_run(output_dir)
        lines = [] if run is None else _jsonl(run / "logging.jsonl")
        progress = [str(line["global_step/max_steps"]) for line in lines if "global_step/max_steps" in line]
        done = int(progress[-1].split("/")[0]) if progress else 0
        speeds = [float(line["train_speed(s/it)"]) for line in lines if "train_speed(s/it)" in line]
        step_time = speeds[-1] if speeds else None
        memory = [float(line["memory(GiB)"]) * GIB for line in lines if "memory(GiB)" in line]
        method = "ms-swift logging.jsonl (memory(GiB) is logged on CUDA only)"
    else:
        run, lines = _trainer_state(output_dir)
        done = max((int(line.get("step", 0)) for line in lines), default=0)
        runtime = _train_runtime_s(output_dir / "engine.log")
        step_time = runtime / done if runtime and done else None
        memory = []
        method = "the HF Trainer's trainer_state.json log_history; step time = train_runtime / steps from engine.log"
    steps = [line for line in lines if "loss" in line]
    losses = [float(line["loss"]) for line in steps]
    return {
        "engine": engine,
        "objective": setup.objective.kind,
        "exit_code": exit_code,
        "run_dir": str(run) if run else None,
        "steps": done,
        "loss": {
            "first": losses[0] if losses else None,
            "last": losses[-1] if losses else None,
            "logged_steps": len(losses),
            "values": losses,
        },  # fmt: skip
        "metrics": _metrics(steps),
        "predicted": {
            "cluster": plan.hardware.describe(),
            "peak_allocated_bytes": plan.prediction.peak_allocated_bytes,
            "step_time_s": plan.prediction.step_time_s,
        },
        "measured": {
            "peak_memory_bytes": max(memory) if memory else None,
            "step_time_s": step_time,
            "method": method,
        },
        "adapter": None if run is None else _adapter_check(run, setup),
    }
