"""The caching-allocator replay against PyTorch's rules (c10/cuda/CUDACachingAllocator.cpp @ 001074d2:
best fit within a pool, split when the rest is > 1 MiB (large) or >= 512 B (small), merge on free, new
segments sized by get_allocation_size), and the tracer's event log it replays."""

from __future__ import annotations

import pytest

from swiftplan.planner.caching_allocator import CachingAllocator, DeviceFull, least_capacity, replay

MiB = 2**20
GIB = 2**30


def test_a_freed_block_serves_the_next_request_of_its_size():
    alloc = CachingAllocator()
    a = alloc.malloc(100 * MiB)
    alloc.free(a)
    alloc.malloc(100 * MiB)
    assert alloc.reserved_bytes == 100 * MiB
    assert alloc.allocated_bytes == 100 * MiB


def test_a_larger_cached_block_is_split_and_merges_back():
    alloc = CachingAllocator()
    alloc.free(alloc.malloc(100 * MiB))
    small = alloc.malloc(30 * MiB)  # splits the cached 100 MiB block: no new segment
    other = alloc.malloc(60 * MiB)  # the 70 MiB remainder fits it
    assert alloc.reserved_bytes == 100 * MiB
    alloc.free(small)
    alloc.free(other)
    alloc.malloc(100 * MiB)  # the pieces merged into one free 100 MiB block again
    assert alloc.reserved_bytes == 100 * MiB


def test_fragmentation_a_request_larger_than_any_free_block_grows_the_reserve():
    alloc = CachingAllocator()
    a = alloc.malloc(100 * MiB)
    alloc.malloc(100 * MiB)
    alloc.free(a)  # 100 MiB free, but in its own segment
    alloc.malloc(150 * MiB)
    assert alloc.reserved_bytes == 350 * MiB
    assert alloc.cached_free_bytes == 100 * MiB


def test_small_and_mid_requests_share_their_pools_segments():
    alloc = CachingAllocator()
    for _ in range(5):
        alloc.malloc(512 * 1024)  # five 512 KiB blocks: four fill one 2 MiB small segment
    assert alloc.reserved_bytes == 4 * MiB
    for _ in range(3):
        alloc.malloc(6 * MiB)  # 1-10 MiB: split from 20 MiB segments (3 x 6 = 18 fit one)
    assert alloc.reserved_bytes == 4 * MiB + 20 * MiB


def test_small_blocks_never_serve_large_requests():
    alloc = CachingAllocator()
    alloc.free(alloc.malloc(1 * MiB))
    alloc.malloc(1 * MiB + 512)  # large pool: a 20 MiB segment, the small one stays cached
    assert alloc.reserved_bytes == 2 * MiB + 20 * MiB


def test_replay_counts_peaks_from_the_measured_point():
    events = [(0, 100 * MiB), (1, 200 * MiB), (1, -1), (2, 50 * MiB), (0, -1)]
    whole = replay(events)
    assert (whole.peak_reserved, whole.peak_allocated) == (300 * MiB, 300 * MiB)
    late = replay(events, measure_from=3)  # after the 200 MiB block was freed (kept reserved)
    assert late.reserved_from == 300 * MiB
    assert late.peak_allocated == 150 * MiB
    assert late.peak_reserved == 300 * MiB  # the peak cannot fall below what is still reserved


def test_a_full_device_releases_wholly_free_segments_before_failing():
    events = [(0, 100 * MiB), (1, 100 * MiB), (0, -1), (2, 150 * MiB)]
    assert replay(events).peak_reserved == 350 * MiB  # the free 100 MiB segment stays cached
    tight = replay(events, capacity_bytes=260 * MiB)  # 100 live + 150 new: the free segment is released
    assert tight.peak_reserved == 250 * MiB
    with pytest.raises(DeviceFull):
        replay(events, capacity_bytes=240 * MiB)
    assert least_capacity(events) == 250 * MiB


def test_a_partly_used_segment_cannot_be_released():
    # 30 MiB stays live inside the first 100 MiB segment: its 70 MiB of free space is stuck there
    events = [(0, 100 * MiB), (0, -1), (1, 30 * MiB), (2, 80 * MiB)]
    assert least_capacity(events) == 180 * MiB


torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from swiftplan.executors.trace import trace_training  # noqa: E402

TINY = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 128, "intermediate_size": 128}  # fmt: skip


def test_a_trace_replays_to_a_reserved_peak_at_least_its_allocated_peak():
    result = trace_training(
        TINY, method="full", precision="bf16", optimizer="adamw", batch=2, seq=16, steps=2
    )
    assert result.peak_reserved >= result.peak_bytes
    # tiny tensors all come from 2 MiB small segments and 20 MiB mid ones: reserved is whole segments
    assert result.peak_reserved % (2 * MiB) == 0


def test_verify_compares_the_reserved_model_with_the_replay():
    from swiftplan.executors.verify import verify_training
    from swiftplan.planner.model_catalog import spec_from_hf_config
    from swiftplan.planner.setup import TrainSetup

    spec = spec_from_hf_config(TINY, name="tiny")
    comparison = verify_training(spec, TrainSetup(method="full", micro_batch=2, seq_len=16))
    assert comparison.peak.name == "peak_allocated"
    row = comparison.reserved
    assert row is not None and row.traced == comparison.trace.peak_reserved
    assert row.estimate >= comparison.peak.estimate


# --- expandable_segments:True (Note [Expandable Segments]) -----------------------------------------


def test_expandable_segment_grows_by_20_mib_pages_and_keeps_their_rest():
    alloc = CachingAllocator(expandable=True)
    alloc.malloc(30 * MiB)  # two pages mapped
    assert alloc.reserved_bytes == 40 * MiB
    alloc.malloc(10 * MiB)  # the 10 MiB left of the last page serves it
    assert alloc.reserved_bytes == 40 * MiB


def test_expandable_segment_extends_its_free_end_instead_of_leaving_a_sliver():
    """The Note's case: a larger request after a smaller one reused a cached block. Default segments leave
    the 40 MiB remainder as a sliver and map a new 60 MiB segment; an expandable segment maps one more
    page after that free remainder and serves the request across both."""
    for expandable, reserved in ((False, 160 * MiB), (True, 120 * MiB)):
        alloc = CachingAllocator(expandable=expandable)
        alloc.free(alloc.malloc(100 * MiB))
        alloc.malloc(60 * MiB)
        alloc.malloc(60 * MiB)
        assert alloc.reserved_bytes == reserved, expandable


def test_expandable_segments_split_large_blocks_down_to_512_bytes():
    """should_split: with expandable segments any block splits when at least 512 B would remain."""
    alloc = CachingAllocator(expandable=True)
    alloc.free(alloc.malloc(20 * MiB))
    alloc.malloc(20 * MiB - 512 * 1024)  # leaves 512 KiB: split off (default segments keep it whole)
    alloc.malloc(2 * MiB)  # a large request needs more pages, extending the segment
    assert alloc.allocated_bytes == 22 * MiB - 512 * 1024
    assert alloc.reserved_bytes == 40 * MiB


def test_small_requests_grow_their_own_2_mib_paged_segment():
    alloc = CachingAllocator(expandable=True)
    for _ in range(5):
        alloc.malloc(512 * 1024)
    assert alloc.reserved_bytes == 4 * MiB


def test_expandable_replay_is_refused_a_capacity():
    with pytest.raises(ValueError, match="expandable"):
        CachingAllocator(expandable=True, capacity_bytes=GIB)


def test_replay_under_expandable_segments_reserves_no_more_than_by_default():
    events = [(0, 100 * MiB), (0, -1), (1, 60 * MiB), (2, 60 * MiB), (3, 5 * MiB), (1, -1), (4, 90 * MiB)]
    assert replay(events, expandable=True).peak_reserved < replay(events).peak_reserved
