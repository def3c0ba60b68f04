"""Dataset-aware planning: per-sample lengths (--data or --lengths), their percentiles and truncation, the
worst padded batch, and `fit` sizing memory on that batch instead of on --seq or on the average."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from swiftplan.errors import SwiftplanError
from swiftplan.executors.dataset_tokens import read_lengths, sample_lengths
from swiftplan.planner.lengths import (
    length_stats,
    memory_seq_len,
    real_tokens_per_step,
    worst_batch_tokens,
)
from swiftplan.planner.plan import reestimate
from swiftplan.usecases.fit import FitRequest, plan_fit, prepare_fit
from swiftplan.usecases.inputs import resolve_model

EXAMPLES = Path(__file__).parent.parent / "examples" / "train"


def test_percentiles_truncation_and_kept_mean():
    stats = length_stats([10, 20, 30, 40, 5000], seq_len=1000, method="test")
    assert (stats.p50, stats.p95, stats.max_len, stats.total_tokens) == (30, 5000, 5000, 5100)
    assert stats.truncated_fraction == pytest.approx(0.2)
    assert stats.mean_kept == pytest.approx((10 + 20 + 30 + 40 + 1000) / 5)


def test_padding_sizes_on_the_longest_sample_and_packing_on_full_sequences():
    stats = length_stats([100, 300, 1500], seq_len=4096, method="test")
    assert memory_seq_len(stats, packing=False) == 1536  # 1500 rounded up to a multiple of 64
    assert memory_seq_len(stats, packing=True) == 4096
    assert worst_batch_tokens(stats, micro_batch=4, packing=False) == 4 * 1500
    assert worst_batch_tokens(stats, micro_batch=4, packing=True) == 4 * 4096
    assert real_tokens_per_step(stats, global_batch=16, packing=False) == pytest.approx(16 * 1900 / 3)
    longer = length_stats([100, 9000], seq_len=4096, method="test")
    assert memory_seq_len(longer, packing=False) == 4096  # truncated at --seq: never more than --seq


def test_approximate_lengths_size_memory_with_a_margin():
    exact = length_stats([1000], seq_len=8192, method="tokenizer", exact=True)
    approx = length_stats([1000], seq_len=8192, method="approximation", exact=False)
    assert memory_seq_len(exact, packing=False) == 1024
    assert memory_seq_len(approx, packing=False) == 1280  # 1000 × 1.25


def test_lengths_file_and_data_file(tmp_path):
    path = tmp_path / "lengths.txt"
    path.write_text("12\n\n700\n3\n")
    assert read_lengths(path).lengths == (12, 700, 3)
    path.write_text("12\nabc\n")
    with pytest.raises(SwiftplanError, match="line 2"):
        read_lengths(path)
    counted = sample_lengths(EXAMPLES / "chat.jsonl", "Qwen/Qwen2.5-7B", use_tokenizer=False)
    assert counted.method.startswith("approximation") and len(counted.lengths) >= 10
    assert all(n >= 1 for n in counted.lengths)


def test_a_skewed_data_set_the_average_plan_would_oom_on_and_the_dataset_aware_plan_fits(tmp_path):
    """990 short samples and 10 long ones: planned at the average length, fit picks a big micro-batch that the
    estimator says does not fit once a batch holds a long sample; planned on the data, it fits that batch."""
    lengths = [200] * 990 + [6000] * 10
    path = tmp_path / "lengths.txt"
    path.write_text("\n".join(map(str, lengths)))
    mean = sum(lengths) // len(lengths)
    spec = resolve_model("Qwen/Qwen2.5-7B")
    common = dict(model="Qwen/Qwen2.5-7B", gpus="rtx5090", global_batch=32, compare_engines=False, trials=40)
    average = plan_fit(FitRequest(**common, seq_len=mean, dataset_tokens=sum(lengths)))  # type: ignore[arg-type]
    assert average.plan is not None
    worst = memory_seq_len(length_stats(lengths, 8192, "test"), packing=False)
    assert worst == 6016
    at_worst = reestimate(replace(average.plan, setup=replace(average.plan.setup, seq_len=worst)), spec)
    assert not at_worst.fits, "the average-length plan should not survive its longest batch"
    aware = plan_fit(FitRequest(**common, seq_len=8192, lengths=str(path)))  # type: ignore[arg-type]
    assert aware.plan is not None and aware.plan.setup.seq_len == worst  # type: ignore[union-attr]
    assert reestimate(aware.plan, spec).fits
    assert aware.problem.lengths is not None and aware.problem.lengths.max_len == 6000
    assert any("sized on the worst batch" in note for note in aware.problem.notes)


def test_packing_keeps_the_full_sequence(tmp_path):
    path = tmp_path / "lengths.txt"
    path.write_text("100\n200\n")
    problem = prepare_fit(FitRequest(model="Qwen/Qwen2.5-7B", gpus="rtx4090", seq_len=2048, lengths=str(path),
                                     packing=True))  # fmt: skip
    assert problem.workload.seq_len == 2048
    problem = prepare_fit(
        FitRequest(model="Qwen/Qwen2.5-7B", gpus="rtx4090", seq_len=2048, lengths=str(path))
    )
    assert problem.workload.seq_len == 256


def test_data_and_lengths_are_exclusive(tmp_path):
    path = tmp_path / "lengths.txt"
    path.write_text("100\n")
    with pytest.raises(SwiftplanError, match="either --data or --lengths"):
        prepare_fit(FitRequest(model="Qwen/Qwen2.5-7B", gpus="rtx4090", data=str(EXAMPLES / "chat.jsonl"),
                               lengths=str(path)))  # fmt: skip


def test_fit_cli_shows_the_length_distribution():
    result = subprocess.run(
        [sys.executable, "-c", "from swiftplan.cli import main; main()", "fit", "Qwen/Qwen2.5-7B", "--gpus", "rtx4090",
         "--data", str(EXAMPLES / "chat.jsonl")],
        capture_output=True, text=True, timeout=120,
        env={"SWIFTPLAN_OFFLINE": "1", "PATH": "/usr/bin:/bin", "COLUMNS": "200", "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "p50" in result.stdout and "p95" in result.stdout and "truncated at --seq 2,048" in result.stdout
    assert "sized on the worst batch" in result.stdout
