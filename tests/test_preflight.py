"""`train --preflight`: find the longest batch the data can produce and run it (forward, backward, optimizer
step) first; on CPU with the tiny test model it really runs."""

from __future__ import annotations

import math
import re

import pytest
from train_support import FIXTURES, TOKENIZER, cli, train_args, write_plan

from swiftplan.executors.train.preflight import longest_batch, run_preflight
from swiftplan.executors.train.tokens import TokenBlocks


def _blocks(masks: list[list[int]]) -> TokenBlocks:
    ids = [[1] * len(m) for m in masks]
    return TokenBlocks(input_ids=ids, labels=ids, attention_mask=masks, real_tokens=sum(map(sum, masks)),
                       trained_tokens=0, truncated=0, dropped=0)  # fmt: skip


def test_longest_batch_takes_the_blocks_with_most_real_tokens():
    blocks = _blocks([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0]])
    batch = longest_batch(blocks, micro_batch=2)
    assert batch.block_indices == (1, 3) and batch.shape == (2, 4)
    assert batch.real_tokens == 7 and batch.longest_sample_tokens == 4


def _prepared(tmp_path, **setup):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from swiftplan.executors.train.prepare import RunRequest, prepare_run

    plan = write_plan(tmp_path / "plan.yaml", **setup)
    request = RunRequest(plan_path=plan, data=FIXTURES / "chat.jsonl", output_dir=tmp_path / "run",
                         tokenizer=str(TOKENIZER), random_init=True, device="cpu")  # fmt: skip
    return prepare_run(request)


def test_preflight_runs_the_longest_batch_on_cpu_with_the_tiny_model(tmp_path):
    prepared = _prepared(tmp_path)
    dry = run_preflight(prepared, run=False)
    real = [sum(mask) for mask in prepared.blocks.attention_mask]
    assert not dry.ran and dry.batch.shape == (2, max(real))  # cut to its longest row, as the run cuts it
    assert dry.batch.longest_sample_tokens == max(real)
    result = run_preflight(prepared)
    assert result.ran and result.device == "cpu" and result.batch == dry.batch
    assert result.loss is not None and math.isfinite(result.loss) and result.loss > 0
    assert result.measured_peak_bytes and result.planned_peak_bytes > 0


def test_preflight_under_zero_reports_the_shape_and_leaves_the_step_to_the_launch(tmp_path):
    prepared = _prepared(tmp_path)
    from dataclasses import replace

    from swiftplan.planner.setup import Parallelism

    sharded = replace(prepared, setup=replace(prepared.setup, parallel=Parallelism(zero=2)))
    result = run_preflight(sharded)
    assert not result.ran and "ZeRO" in result.note and result.batch.shape[0] == 2


def test_cli_train_preflight_dry_run_prints_the_shape(tmp_path):
    pytest.importorskip("transformers")
    plan = write_plan(tmp_path / "plan.yaml")
    result = cli(*train_args(plan, FIXTURES / "chat.jsonl", tmp_path / "run", "--preflight", "--dry-run"))
    assert result.exit_code == 0, (result.output, result.exception)
    # cut to its longest sample, as the run cuts each micro-batch
    assert re.search(r"longest batch 2 × (\d+) tokens \(\d+ real, longest sample \1\)", result.output), (
        result.output
    )


def test_cli_train_preflight_runs_it_on_cpu_before_the_run(tmp_path):
    pytest.importorskip("torch")
    plan = write_plan(tmp_path / "plan.yaml")
    result = cli(
        *train_args(plan, FIXTURES / "chat.jsonl", tmp_path / "run", "--preflight", "--max-steps", "1")
    )
    assert result.exit_code == 0, (result.output, result.exception)
    assert (
        "longest batch" in result.output and "ran forward, backward and the optimizer step" in result.output
    )


def test_a_plan_for_full_rows_run_on_shorter_samples_says_its_padding_is_not_counted(tmp_path):
    """Micro-batches of two samples of different lengths give SDPA a padding mask the full-row plan does not count;
    a plan made for samples of many lengths (fit --data) says nothing."""
    pytest.importorskip("torch")
    notes = " ".join(_prepared(tmp_path, attention="sdpa").notes)
    assert "padding mask in every block" in notes and "swiftplan fit" in notes
    varied = tmp_path / "varied"
    varied.mkdir()
    again = _prepared(varied, attention="sdpa", variable_lengths=True)
    assert not any("padding mask" in note for note in again.notes)
