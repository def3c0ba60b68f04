"""The ZeRO-3 parameters gathered at once are printed with their count, where the step reaches it, what holds them
and the replay's source: the transient term's formula says how the bytes were counted."""

from __future__ import annotations

import json

from bad_input_support import run_cli

from swiftplan.planner.setup import LoraSetup, Parallelism, TrainSetup
from swiftplan.planner.zero3_trace import zero3_gathered
from swiftplan.usecases import inputs

MODEL = "Qwen/Qwen2.5-7B"


def _transient(*flags: str) -> dict:
    result = run_cli(
        "estimate", MODEL, "--gpus", "2xa100-80gb", "--method", "lora", "--zero", "3", "--json", *flags
    )
    assert result.exit_code == 0, result.output
    return next(t for t in json.loads(result.output)["terms"] if t["name"] == "transient")


def test_the_transient_term_names_the_zero3_window_it_counts() -> None:
    term = _transient()
    setup = TrainSetup(method="lora", micro_batch=1, lora=LoraSetup(targets=("q_proj", "v_proj")),
                       parallel=Parallelism(zero=3))  # fmt: skip
    held = zero3_gathered(inputs.resolve_model(MODEL), setup)
    assert f"{held.base:,} elements" in term["formula"] and f"reached at {held.moment}" in term["formula"]
    assert "1,000,000,000 live parameters" in term["formula"] and "reuse window" in term["formula"]
    assert "partitioned_param_coordinator.py" in term["source"]


def test_no_prefetching_is_said_when_max_live_is_zero() -> None:
    term = _transient("--max-live-parameters", "0")
    assert "no prefetching" in term["formula"]
    assert term["bytes"] < _transient()["bytes"]
