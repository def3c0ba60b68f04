"""Counts that must be whole and within the model: a fractional token count and a checkpointing stride past the
model's blocks are refused by name, where they used to be truncated or silently checkpoint nothing."""

from __future__ import annotations

import pytest
from bad_input_support import assert_refused, run_cli

from swiftplan.units import parse_token_count


@pytest.mark.parametrize("text, tokens", [("1.1B", 1_100_000_000), ("0.29B", 290_000_000), ("50M", 50_000_000),
                                          ("1e3", 1000), ("123_456", 123_456)])  # fmt: skip
def test_token_counts_read_exactly_despite_floating_point(text, tokens):
    assert parse_token_count(text) == tokens


@pytest.mark.parametrize("text, why", [("2.5", "not a whole number"), ("1.0000005k", "not a whole number"),
                                       ("abc", "not a number"), ("0.5", "less than one token")])  # fmt: skip
def test_a_token_count_that_is_not_whole_is_refused(text, why):
    with pytest.raises(ValueError, match=why):
        parse_token_count(text)


def test_fit_names_why_its_dataset_token_count_is_bad():
    result = run_cli("fit", "Qwen/Qwen2.5-0.5B", "--gpus", "h100", "--dataset-tokens", "2.5")
    assert_refused(result, "--dataset-tokens '2.5'", "not a whole number of tokens", "50M")


@pytest.mark.parametrize(
    "command",
    [("estimate", "Qwen/Qwen2.5-0.5B"), ("fit", "Qwen/Qwen2.5-0.5B", "--gpus", "h100", "--engine", "trl")],
)
def test_checkpointing_every_kth_block_past_the_model_is_refused(command):
    result = run_cli(*command, "--ckpt-every", "99")
    assert_refused(result, "--ckpt-every 99", "24 blocks", "between 1 and 24")


def test_a_dataset_smaller_than_one_global_batch_is_planned_as_one_partial_step_and_said_so():
    result = run_cli("fit", "Qwen/Qwen2.5-0.5B", "--gpus", "h100", "--dataset-tokens", "1000")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "1,000 tokens fill 1 sequence(s) of 2,048, fewer than one global batch of 16" in text
    assert "--global-batch 1 would plan the step as it runs" in text
    plenty = run_cli("fit", "Qwen/Qwen2.5-0.5B", "--gpus", "h100", "--dataset-tokens", "10M")
    assert "fewer than one global batch" not in " ".join(plenty.output.split())


def test_a_rollout_engine_that_cannot_start_is_named_in_the_verdict_not_only_the_free_memory():
    result = run_cli("estimate", "Qwen/Qwen2.5-7B", "--gpus", "rtx4090", "--method", "qlora", "--task", "grpo",
                     "--rollout-memory", "0.05")  # fmt: skip
    text = " ".join(result.output.split())
    assert "does not fit: the step fits, but the rollout engine cannot start in its share" in text
    assert "The rollout engine cannot start: 0.05 of 24 GiB" in text


def test_a_rollout_engine_that_cannot_start_names_the_sequences_it_profiles():
    result = run_cli("estimate", "Qwen/Qwen2.5-0.5B", "--gpus", "h100", "--task", "grpo",
                     "--num-generations", "99999999999999999999")  # fmt: skip
    text = " ".join(result.output.split())
    assert "the profiling workspace of the 99,999,999,999,999,999,999 sequences it runs at once" in text
    assert "lower --num-generations or --global-batch" in text
