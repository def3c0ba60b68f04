"""`swiftplan fit` (the search) on the bad-input sweep's findings (/work/sweep-report.md 2.1, 2.2, 2.7-2.10,
3.6): option clashes are refused with the smallest change, a plan never trains more sequences than
--global-batch, and time and cost count the tokens that really train. Run through the console entry
point (`run_cli`) or the fit use case, as a user would."""

from __future__ import annotations

import json

import pytest
from bad_input_support import assert_refused, run_cli

M = "Qwen/Qwen2.5-0.5B"
FIT = ("fit", M, "--trials", "8")


def _fit_json(*args: str) -> dict:
    result = run_cli(*FIT, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


# 2.8: a training --runtime the chosen --engine does not run


@pytest.mark.parametrize(
    ("engine", "runtime", "own"),
    [("trl", "torchtune", "hf"), ("ms-swift", "unsloth", "ms-swift"), ("swiftplan", "hf", "swiftplan")],
)
def test_fit_refuses_a_runtime_the_engine_does_not_run(engine: str, runtime: str, own: str) -> None:
    assert_refused(
        run_cli(*FIT, "--gpus", "4xh100", "--engine", engine, "--runtime", runtime),
        f"--engine {engine} and --runtime {runtime} disagree",
        f"{engine} runs runtime {own}",
        "drop --runtime",
    )


def test_fit_accepts_the_runtime_the_engine_runs() -> None:
    payload = _fit_json("--gpus", "h100", "--engine", "trl", "--runtime", "hf")
    assert payload["engine"] == "trl" and payload["runtime"]["name"] == "hf"
