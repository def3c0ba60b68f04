"""fit knows which options were typed: a typed --gpu-memory-utilization beats the runtime profile's."""

from __future__ import annotations

import json

import pytest
from bad_input_support import run_cli


@pytest.mark.parametrize("typed, expected", [((), 0.92), (("--gpu-memory-utilization", "0.5"), 0.5)])
def test_a_typed_memory_fraction_wins_over_the_vllm_profile(typed, expected):
    result = run_cli("fit", "Qwen/Qwen2.5-0.5B", "--gpus", "h100", "--task", "serve", "--runtime", "vllm", *typed,
                     "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output[result.output.index("{") :])["plan"]
    assert plan["serve"]["gpu_memory_utilization"] == expected
