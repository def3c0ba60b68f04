"""fit and size refuse a --dataset-tokens above 1e15 (the largest published pre-training corpora are tens of
trillions of tokens: Qwen3's 36T, arXiv:2505.09388) and --epochs above 10,000, each with one message and a hint;
both commands read --dataset-tokens with the same parser."""

from __future__ import annotations

import json

import pytest
from bad_input_support import assert_refused, run_cli

from swiftplan.cli.fit import MAX_DATASET_TOKENS, MAX_EPOCHS, check_epochs, parse_dataset_tokens
from swiftplan.errors import SwiftplanError

M = "Qwen/Qwen2.5-0.5B"
FIT = ("fit", M, "--gpus", "rtx4090")
SIZE = ("size", M, "--accelerators", "h100-sxm")


@pytest.mark.parametrize("command", [FIT, SIZE], ids=["fit", "size"])
@pytest.mark.parametrize("tokens", ["1001T", "1.5e15", "2000000B", "1000000000000001"])
def test_a_dataset_past_any_corpus_is_refused(command, tokens):
    result = run_cli(*command, "--dataset-tokens", tokens)
    assert_refused(result, f"--dataset-tokens {tokens} is", "more than the 1,000T (1e+15)", "Qwen3's 36T",
                   "far past any fine-tuning set")  # fmt: skip
    assert "hint: Give the tokens one epoch of your data holds" in " ".join(result.output.split())


@pytest.mark.parametrize("command", [FIT, SIZE], ids=["fit", "size"])
@pytest.mark.parametrize("epochs", ["10001", "1e308"])
def test_more_epochs_than_any_run_makes_are_refused(command, epochs):
    result = run_cli(*command, "--epochs", epochs)
    assert_refused(result, f"--epochs {float(epochs):g} is more passes", "at most 10,000")
    assert "hint: Give the passes the run makes" in " ".join(result.output.split())


def test_the_bounds_themselves_are_accepted():
    assert parse_dataset_tokens("1000T") == MAX_DATASET_TOKENS == 10**15
    assert parse_dataset_tokens(str(MAX_DATASET_TOKENS)) == MAX_DATASET_TOKENS
    check_epochs(MAX_EPOCHS)  # no error
    with pytest.raises(SwiftplanError):
        parse_dataset_tokens(str(MAX_DATASET_TOKENS + 1))
    with pytest.raises(SwiftplanError):
        check_epochs(MAX_EPOCHS + 0.5)


def test_fit_plans_at_the_bounds():
    result = run_cli(*FIT, "--dataset-tokens", "1000T", "--epochs", "10000", "--trials", "5", "--json")
    assert result.exit_code == 0, result.output
    best = json.loads(result.output[result.output.index("{") :])["best"]
    assert best["time_s"] > 0 and best["time_s"] != float("inf")


def test_size_sizes_at_the_bounds():
    result = run_cli(*SIZE, "--dataset-tokens", "1000T", "--epochs", "10000", "--json")
    assert result.exit_code in (0, 1), result.output  # 1: no option qualifies; never a refusal
    assert json.loads(result.output[result.output.index("{") :])["workload"]["dataset_tokens"] == 10**15


def test_fit_and_size_read_dataset_tokens_alike():
    for text in ("lots", "0.5", "inf"):
        fit, size = run_cli(*FIT, "--dataset-tokens", text), run_cli(*SIZE, "--dataset-tokens", text)
        assert fit.exit_code == size.exit_code == 2
        assert fit.output == size.output
