"""The caching-allocator model's rounding rules against PyTorch's (c10/cuda/CUDACachingAllocator.cpp @
001074d2: kMinBlockSize 512, kSmallSize 1 MiB, kSmallBuffer 2 MiB, kLargeBuffer 20 MiB, kMinLargeAlloc 10 MiB,
kRoundLarge 2 MiB; round_size / get_allocation_size), and the calibration split's rule."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

from swiftplan.planner import allocator as al

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import calibration_split  # noqa: E402
import published_accuracy  # noqa: E402

MiB = 2**20
GiB = 2**30


@pytest.mark.parametrize(
    ("request_bytes", "block", "segment"),
    [
        (1, 512, 2 * MiB),  # below kMinBlockSize: one 512 B block in a 2 MiB small segment
        (512, 512, 2 * MiB),
        (513, 1024, 2 * MiB),  # rounded up to the next multiple of 512
        (1 * MiB, 1 * MiB, 2 * MiB),  # kSmallSize itself is still small
        (1 * MiB + 1, 1 * MiB + 512, 20 * MiB),  # 1-10 MiB: a 20 MiB kLargeBuffer segment
        (10 * MiB - 512, 10 * MiB - 512, 20 * MiB),
        (10 * MiB, 10 * MiB, 10 * MiB),  # from kMinLargeAlloc: its own size, rounded to 2 MiB
        (10 * MiB + 1, 10 * MiB + 512, 12 * MiB),
        (129 * MiB + 512 * 1024, 129 * MiB + 512 * 1024, 130 * MiB),  # Qwen2.5-7B gate_proj in bf16
    ],
)
def test_block_and_segment_sizes_follow_pytorch(request_bytes, block, segment):
    assert al.block_bytes(request_bytes) == block
    assert al.segment_bytes(request_bytes) == segment


def test_small_and_medium_requests_share_segments():
    # four 512 KiB requests fill one 2 MiB small segment, a fifth opens a second; three 6 MiB requests
    # split one 20 MiB segment (18 MiB), a fourth does not fit the 2 MiB left and opens another.
    assert al.reserved_for([512 * 1024] * 4) == 2 * MiB
    assert al.reserved_for([512 * 1024] * 5) == 4 * MiB
    assert al.reserved_for([6 * MiB] * 3) == 20 * MiB
    assert al.reserved_for([6 * MiB] * 4) == 40 * MiB
    assert al.reserved_for([30 * MiB + 1]) == 32 * MiB


def test_fixed_shape_slack_falls_with_the_step_bytes_inside_the_replayed_range():
    """A step's slack is a few of its largest blocks: per byte it falls as the step grows (derived from the
    replays, benchmarks/results/allocator_replay.md), and it is not extrapolated beyond their range."""
    params = al.AllocatorParams(dynamic_slack=0.5, length_slack=0.0, expandable_factor=0.3,
                                slack_per_doubling=0.07, slack_range_bytes=(GiB // 2, 16 * GiB))  # fmt: skip
    assert params.fixed_slack(GiB) == pytest.approx(0.5)
    assert params.fixed_slack(4 * GiB) == pytest.approx(0.5 - 2 * 0.07)
    assert params.fixed_slack(64 * GiB) == params.fixed_slack(16 * GiB) == pytest.approx(0.5 - 4 * 0.07)
    assert params.fixed_slack(MiB) == params.fixed_slack(GiB // 2) == pytest.approx(0.57)
    calibrated = al.AllocatorParams.from_calibration()
    assert calibrated.fixed_slack(GiB) > calibrated.fixed_slack(8 * GiB) > 0


def test_fragmentation_grows_with_lengths_and_expandable_segments_cut_it():
    params = al.AllocatorParams(dynamic_slack=0.1, length_slack=0.02, expandable_factor=0.9,
                                expandable_length_factor=0.3)  # fmt: skip
    fixed = al.slack_fraction(2048, al.AllocatorSettings(), params)
    variable = al.slack_fraction(2048, al.AllocatorSettings(variable_lengths=True), params)
    expandable = al.slack_fraction(
        2048, al.AllocatorSettings(variable_lengths=True, expandable_segments=True), params
    )
    assert fixed == pytest.approx(0.1)
    assert variable == pytest.approx(0.1 + 0.02 * 5)  # 2048 / 64 = 32 length classes, log2 = 5
    assert expandable == pytest.approx(0.1 * 0.9 + 0.02 * 5 * 0.3)  # each part by its own factor


def test_reserved_is_allocated_plus_slack_and_device_total_adds_the_context():
    from swiftplan.planner.estimate import estimate_training
    from swiftplan.planner.hardware import parse_cluster
    from swiftplan.planner.model_catalog import catalog_spec
    from swiftplan.planner.setup import LoraSetup, TrainSetup

    spec = catalog_spec("Qwen/Qwen2.5-7B-Instruct")
    setup = TrainSetup(method="lora", lora=LoraSetup(rank=8, targets=("all-linear",)))
    cluster = parse_cluster("1xa100-80gb-sxm")
    plain = estimate_training(spec, setup, cluster).memory
    loose = estimate_training(
        spec, setup, cluster, allocator=al.AllocatorSettings(variable_lengths=True)
    ).memory
    tight = estimate_training(
        spec, setup, cluster, allocator=al.AllocatorSettings(expandable_segments=True)
    ).memory
    assert plain.peak_allocated == loose.peak_allocated == tight.peak_allocated
    assert tight.peak_reserved < plain.peak_reserved < loose.peak_reserved
    assert plain.peak_reserved > plain.peak_allocated
    assert plain.device_total - plain.peak_reserved == al.context_bytes("cuda")


def _rows() -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for path in published_accuracy.ALL_CSVS:
        with path.open(newline="", encoding="utf-8") as f:
            rows += list(csv.DictReader(f))
    return rows


def test_split_is_deterministic_and_never_shares_a_source():
    rows = _rows()
    splits = [calibration_split.split_of(r["source"]) for r in rows]
    assert splits == [calibration_split.split_of(r["source"]) for r in rows]
    by_source: dict[str, set[str]] = {}
    for r, s in zip(rows, splits, strict=True):
        by_source.setdefault(calibration_split.source_key(r["source"]), set()).add(s)
    assert all(len(sides) == 1 for sides in by_source.values())
    assert {"fit", "test"} == set(splits)
    # the rule: first byte of sha256(source key) even -> fit
    assert calibration_split.split_of("pytorch/torchtune README.md Llama2 resource table (commit x)") == "fit"
    assert calibration_split.source_key("a b (commit 1)") == calibration_split.source_key("A B (2024)")


def test_the_moment_that_leaves_the_most_reserved_sets_it_not_the_allocated_peak():
    """foreach AdamW makes the optimizer step the allocated peak of a small full fine-tune, but the loss's
    logits leave more in the cache (reserved never shrinks within a run): peak_reserved is the loss's."""
    from swiftplan.planner.model_catalog import catalog_spec
    from swiftplan.planner.setup import RuntimeKnobs, TrainSetup
    from swiftplan.planner.train_memory import train_memory

    spec = catalog_spec("Qwen/Qwen2.5-0.5B")
    setup = TrainSetup(method="full", micro_batch=1, seq_len=1024, grad_ckpt=True,
                       runtime=RuntimeKnobs(optimizer_impl="foreach"))  # fmt: skip
    memory = train_memory(spec, setup)
    assert memory.device.peak_phase == "optimizer step"
    name, allocated, dynamic = next(m for m in memory.moments if m[0] == "loss and backward start")
    fraction = al.AllocatorParams.from_calibration().fixed_slack(dynamic)
    assert memory.device.peak_reserved >= allocated + int(dynamic * fraction)
    slack = next(t for t in memory.device.terms if t.name == "allocator_slack")
    assert "at the loss and backward start" in slack.formula
    at_peak_only = al.reserve(spec, memory.device, seq_len=1024, settings=al.AllocatorSettings())
    assert memory.device.peak_reserved > memory.device.peak_allocated + at_peak_only.slack_bytes


def test_expandable_segments_tile_long_lived_tensors_into_pages():
    """Under expandable_segments:True the persistent tensors share one paged segment per pool: 30 MiB + 1 B
    is one 20 MiB page more, not its own rounded segment."""
    assert al.reserved_for([30 * MiB + 1], expandable=True) == 40 * MiB
    assert al.reserved_for([6 * MiB] * 4, expandable=True) == 40 * MiB
    assert al.reserved_for([512 * 1024] * 5, expandable=True) == 4 * MiB
