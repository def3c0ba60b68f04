"""expandable_segments:True as a runtime knob: `fit`, `size` and `estimate` plan the caching allocator with it
(`--expandable-segments`), the plan file keeps it, `estimate plan.yaml` reproduces the prediction, and every
launch of the plan (swiftplan's loop and the external engines) sets the allocator variables it was planned with."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from bad_input_support import assert_refused, run_cli

MODEL, GPUS = "Qwen/Qwen2.5-0.5B", "rtx4090"
ENV = ("PYTORCH_ALLOC_CONF=expandable_segments:True", "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True")


def _plan(tmp_path: Path, *flags: str) -> tuple[Path, dict]:
    path = tmp_path / f"plan{len(flags)}.yaml"
    made = run_cli("fit", MODEL, "--gpus", GPUS, "--batch", "4", "-o", str(path), *flags)
    assert made.exit_code == 0, made.output
    return path, yaml.safe_load(path.read_text())


def test_fit_plans_with_the_allocator_it_launches(tmp_path: Path) -> None:
    planned, data = _plan(tmp_path, "--expandable-segments")
    default, plain = _plan(tmp_path)
    assert data["train"]["runtime"]["expandable_segments"] is True
    assert plain["train"]["runtime"]["expandable_segments"] is False
    # the same set-up (--batch pins the micro-batch), less fragmentation in peak reserved: less slack
    ours, theirs = data["prediction"]["per_device_bytes"], plain["prediction"]["per_device_bytes"]
    assert data["train"]["micro_batch"] == plain["train"]["micro_batch"] == 4
    assert ours["peak_allocated"] == theirs["peak_allocated"]
    assert ours["peak_reserved"] < theirs["peak_reserved"]
    again = run_cli("estimate", str(planned))
    assert again.exit_code == 0 and "matches the plan file's prediction" in again.output, again.output
    for command in (
        ("train", str(planned), "--dry-run"),
        ("train", str(planned), "--engine", "trl", "--dry-run"),
    ):
        launched = run_cli(*command)
        assert launched.exit_code == 0, launched.output
        assert all(variable in launched.output for variable in ENV), launched.output
    plain_launch = run_cli("train", str(default), "--dry-run")
    assert plain_launch.exit_code == 0 and "expandable_segments" not in plain_launch.output


def test_estimate_takes_the_knob_for_training_and_the_allocator_for_serving() -> None:
    def reserved(*flags: str) -> int:
        result = run_cli("estimate", MODEL, "--gpus", GPUS, "--json", *flags)
        assert result.exit_code == 0, result.output
        return int(json.loads(result.output)["per_device"]["peak_reserved"])

    assert reserved("--expandable-segments") < reserved()
    assert reserved("--task", "serve", "--expandable-segments") < reserved("--task", "serve")


def test_fit_refuses_it_for_serving() -> None:
    assert_refused(run_cli("fit", MODEL, "--gpus", GPUS, "--task", "serve", "--expandable-segments"),
                   "--expandable-segments only applies to training")  # fmt: skip


def test_plan_files_written_before_the_knob_load_with_the_default_allocator(tmp_path: Path) -> None:
    path, data = _plan(tmp_path)
    del data["train"]["runtime"]["expandable_segments"]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    again = run_cli("estimate", str(path))
    assert again.exit_code == 0 and "matches the plan file's prediction" in again.output, again.output
