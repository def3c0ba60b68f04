"""fp8 weights on a device without FP8 math: vLLM serves them weight-only (W8A16) through its FP8 Marlin kernel
on compute capability 7.5 and newer (capabilities.json fp8_weight_only), so `fit --task serve`, `estimate` and
`serve` plan and launch fp8 weights on an A100, an A10G or a T4; SGLang and LMDeploy, and training, keep
needing FP8 math."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bad_input_support import assert_refused, run_cli

from swiftplan.planner.capabilities import capabilities_for, check
from swiftplan.planner.engines import get_engine
from swiftplan.planner.hardware import get_accelerator
from swiftplan.planner.search.pins import Pins
from swiftplan.planner.search.serve_space import build_serve_space
from swiftplan.usecases import inputs

M = "Qwen/Qwen2.5-7B"


@pytest.mark.parametrize(
    ("gpu", "vllm_serves", "fp8_math"),
    [("t4", True, False), ("a100", True, False), ("a10g", True, False), ("rtx3090", True, False),
     ("v100", False, False), ("l40s", True, True), ("h100", True, True)],
)  # fmt: skip
def test_vllm_serves_fp8_weights_from_turing_on_and_fp8_math_needs_ada(
    gpu: str, vllm_serves: bool, fp8_math: bool
) -> None:
    acc = get_accelerator(gpu)
    assert capabilities_for(acc).fp8_weight_only is vllm_serves
    assert (check(acc, quant="fp8", serve_runtime="vllm") == []) is vllm_serves
    for runtime in (None, "sglang", "lmdeploy"):  # training, and the other serving engines, need FP8 math
        assert (check(acc, quant="fp8", serve_runtime=runtime) == []) is fp8_math


def test_the_serving_space_offers_fp8_weights_on_an_a100_to_vllm_only() -> None:
    cluster = inputs.resolve_cluster("a100")
    spec = inputs.resolve_model(M)
    assert "fp8" in build_serve_space(spec, cluster, Pins(), get_engine("vllm", "serve")).quants
    assert "fp8" in build_serve_space(spec, cluster, Pins(), None).quants  # any engine: vLLM's
    for engine in ("sglang", "lmdeploy"):
        assert "fp8" not in build_serve_space(spec, cluster, Pins(), get_engine(engine, "serve")).quants
    with pytest.raises(Exception, match="FP8 tensor cores need compute capability 8.9"):
        build_serve_space(spec, cluster, Pins(quants=("fp8",)), get_engine("sglang", "serve"))


def test_fit_serves_a_72b_on_two_a100s_with_fp8_weights_and_says_how() -> None:
    """bf16 weights leave two sequences of 4k tokens on 2 × 80 GB; fp8 weights free ~70 GB of KV cache."""
    result = run_cli("fit", "Qwen/Qwen2.5-72B", "--gpus", "2xa100-80gb", "--task", "serve", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    best = data["plan"]["serve"]
    assert best["quant"] == "fp8" and best["tp"] == 2, best
    assert best["concurrency"] > 10 * 2, best
    estimate = run_cli("estimate", "Qwen/Qwen2.5-72B", "--task", "serve", "--quant", "fp8", "--tp", "2",
                       "--gpus", "2xa100-80gb")  # fmt: skip
    assert estimate.exit_code == 0, estimate.output
    said = " ".join(estimate.output.split())
    assert "FP8 Marlin kernel (W8A16)" in said and "prefill runs at the 16-bit rate" in said, said


def test_serve_launches_an_a100_fp8_plan_on_vllm_and_refuses_the_engines_that_cannot(tmp_path: Path) -> None:
    plan = tmp_path / "a100.yaml"
    made = run_cli("fit", M, "--gpus", "a100", "--task", "serve", "--quant", "fp8", "-o", str(plan))
    assert made.exit_code == 0, made.output
    launched = run_cli("serve", str(plan), "--engine", "vllm", "--dry-run")
    assert launched.exit_code == 0 and "--quantization fp8" in launched.output, launched.output
    for engine in ("sglang", "lmdeploy"):
        assert_refused(run_cli("serve", str(plan), "--engine", engine, "--dry-run"),
                       f"The {engine} engine cannot run this plan", "quantization fp8 is not possible on NVIDIA A100",
                       "vLLM can: swiftplan serve")  # fmt: skip


def test_training_in_fp8_still_needs_fp8_math() -> None:
    assert_refused(run_cli("estimate", M, "--method", "lora", "--quant", "fp8", "--gpus", "a100"),
                   "quantization fp8 is not possible on NVIDIA A100", "compute capability 8.9")  # fmt: skip
