"""estimate and fit plan preference and RL jobs from the command line: the issue's own commands."""

from __future__ import annotations

import json

import pytest
from bad_input_support import run_cli


def _json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.output[result.output.index("{") :])


def test_estimate_dpo_shows_the_reference_and_the_paired_sequences() -> None:
    args = ("estimate", "Qwen/Qwen2.5-7B", "--task", "dpo", "--method", "lora", "--gpus", "a100-80g")
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "reference forward" in text  # the peak phase and the step-time part
    assert "engines that could: ms-swift" in text
    payload = _json(run_cli(*args, "--json"))
    terms = {t["name"]: t for t in payload["terms"]}
    assert "adapters disabled" in terms["reference"]["formula"] and terms["reference"]["bytes"] == 0
    assert "chosen + rejected concatenated" in terms["activations"]["formula"]
    assert payload["objective"] == {"task": "dpo", "reference": "adapters-off", "sequences_per_example": 2}
    assert payload["peak_phase"] == "reference forward"
    assert payload["speed"]["breakdown_s"]["reference"] > 0


def test_fit_grpo_returns_a_plan_with_its_rollout_placement_and_step_time() -> None:
    payload = _json(run_cli("fit", "Qwen/Qwen2.5-7B", "--task", "grpo", "--num-generations", "8",
                            "--completion-len", "1024", "--gpus", "8xH100", "--json"))  # fmt: skip
    objective = payload["workload"]["objective"]
    assert objective["kind"] == "grpo" and objective["rollout"]["completion_len"] == 1024
    assert objective["rollout"]["placement"] in ("colocate", "server")
    best = payload["best"]
    assert best["time_s"] > 0 and best["tokens_per_s"] > 0
    lines = [v["line"] for v in payload["objective_variants"]]
    assert sum(line.endswith("the winner.") for line in lines) == 1
    assert any("server on" in line for line in lines) and any("sleep mode" in line for line in lines)
    assert payload["engine"] == "ms-swift"  # swiftplan's own loop trains SFT only


def test_fit_grpo_server_pinned_takes_its_gpus_from_training() -> None:
    payload = _json(run_cli("fit", "Qwen/Qwen2.5-7B", "--task", "grpo", "--rollout", "server", "--rollout-gpus",
                            "2", "--gpus", "8xH100", "--json"))  # fmt: skip
    rollout = payload["workload"]["objective"]["rollout"]
    assert rollout == {**rollout, "placement": "server", "gpus": 2}
    assert payload["best"]["candidate"]["layout"]["gpus"] <= 6
    assert payload["objective_variants"] == []  # nothing left to search


def test_fit_dpo_searches_the_reference() -> None:
    payload = _json(run_cli("fit", "Qwen/Qwen2.5-0.5B", "--task", "dpo", "--gpus", "rtx4090", "--json"))
    searched = {v["objective"]["reference"] for v in payload["objective_variants"]}
    assert searched == {"auto", "precomputed"}
    pinned = _json(run_cli("fit", "Qwen/Qwen2.5-0.5B", "--task", "dpo", "--reference", "model", "--method", "full",
                           "--gpus", "rtx4090", "--json"))  # fmt: skip
    assert pinned["objective_variants"] == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--task", "grpo", "--global-batch", "12"), "not a whole number of prompts"),
        (("--task", "serve", "--num-generations", "4"), "does not apply to --task serve"),
        (("--task", "dpo", "--completion-len", "64"), "apply to --task grpo and ppo"),
        (("--task", "sft", "--reference", "model"), "--task sft has none"),
        (("--task", "grpo", "--rollout", "server", "--rollout-gpus", "8"), "leaves none"),
        (("--task", "orpo", "--reference", "model"), "has no reference"),
    ],
)
def test_fit_refuses_objective_options_that_do_not_apply(args: tuple[str, ...], message: str) -> None:
    result = run_cli("fit", "Qwen/Qwen2.5-0.5B", "--gpus", "8xH100", *args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_size_plans_an_objective_and_hands_it_to_fit() -> None:
    payload = _json(run_cli("size", "Qwen/Qwen2.5-7B", "--task", "dpo", "--dataset-tokens", "50M", "--json"))
    assert payload["runtime"]["name"] == "ms-swift"  # swiftplan's loop trains SFT only
    assert "--task dpo" in payload["next"]
    grpo = _json(run_cli("size", "Qwen/Qwen2.5-7B", "--task", "grpo", "--completion-len", "256",
                         "--dataset-tokens", "50M", "--json"))  # fmt: skip
    assert "--task grpo" in grpo["next"] and "--completion-len 256" in grpo["next"]


def test_verify_traces_a_dpo_step_against_the_estimate() -> None:
    """verify --task dpo runs TRL 1.16's DPO loss on fake tensors beside train_memory (the [trace] extra)."""
    pytest.importorskip("trl")
    payload = _json(run_cli("verify", "Qwen/Qwen2.5-0.5B", "--task", "dpo", "--runtime", "hf", "--grad-ckpt",
                            "--seq", "128", "--prompt-len", "32", "--json"))  # fmt: skip
    rows = {r["name"]: r for r in payload["terms"]}
    assert rows["reference forward"]["traced"] > 0
    assert abs(rows["peak_allocated"]["error"]) < 0.05
    refused = run_cli("verify", "Qwen/Qwen2.5-0.5B", "--task", "ppo")
    assert refused.exit_code == 2 and "--task" in refused.output
