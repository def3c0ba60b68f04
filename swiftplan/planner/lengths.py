"""A data set's per-sample token lengths, and what they mean for a plan: percentiles, the share truncated at
the sequence length, the longest batch the plan's batching can build, and the real tokens in a step. Pure.

Batching: without packing, each micro-batch is padded to its longest sample (the Hugging Face collators and
`swiftplan train`; LLaMA-Factory and axolotl round it up to a multiple: `RuntimeKnobs.padding`), so the worst
micro-batch is micro_batch × min(longest sample, seq) tokens (seq when a runtime pads every row to it);
with packing, samples are concatenated and cut at seq, so every micro-batch is full (micro_batch × seq).
Memory is sized on that worst batch, speed on the tokens a step really holds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

MEMORY_SEQ_MULTIPLE = 64
"""The memory-sizing length is rounded up to this (kernels tile by 64; the estimate stays an upper bound)."""
APPROXIMATION_MARGIN = 1.25
"""Lengths approximated from characters (no tokenizer) are stretched by this before they size memory: the
~4 characters/token rule undercounts code, numbers and non-English text, and a plan's sequence length is
also where `swiftplan train` truncates."""


@dataclass(frozen=True, kw_only=True, slots=True)
class LengthStats:
    """Token lengths of a data set's samples against a sequence length."""

    samples: int
    """Samples counted."""
    total_tokens: int
    """Tokens in all samples (before truncation)."""
    p50: int
    """Median sample length, tokens."""
    p95: int
    """95th-percentile sample length, tokens."""
    max_len: int
    """Longest sample, tokens."""
    seq_len: int
    """The sequence length the plan trains at (samples are truncated to it)."""
    truncated_fraction: float
    """Share of samples longer than seq_len."""
    mean_kept: float
    """Mean tokens per sample after truncation to seq_len."""
    method: str
    """How the lengths were obtained (the model's tokenizer, an approximation, or a lengths file)."""
    exact: bool = True
    """False when the lengths are approximated from characters."""

    def __post_init__(self) -> None:
        if self.samples < 1 or self.seq_len < 1:
            raise ValueError("LengthStats needs at least one sample and a positive seq_len.")

    @property
    def kept_tokens(self) -> int:
        """Tokens left in all samples after truncation to seq_len (what trains without packing)."""
        return round(self.mean_kept * self.samples)


def trained_tokens(stats: LengthStats, packing: bool) -> int:
    """Tokens one epoch trains on: every token with packing (samples are concatenated and cut into seq-long
    rows, nothing dropped: executors/train/tokens.py build_blocks), else each sample truncated to seq."""
    return stats.total_tokens if packing else stats.kept_tokens


def rows_per_epoch(stats: LengthStats, packing: bool) -> int:
    """Sequences one epoch holds: the samples, or with packing the seq-long rows their tokens fill."""
    return -(-stats.total_tokens // stats.seq_len) if packing else stats.samples


def _percentile(ordered: Sequence[int], q: float) -> int:
    """Nearest-rank percentile of sorted values."""
    rank = max(1, math.ceil(round(q * len(ordered), 9)))
    return ordered[min(rank, len(ordered)) - 1]


def length_stats(lengths: Sequence[int], seq_len: int, method: str, exact: bool = True) -> LengthStats:
    """Percentiles, truncation and mean kept length of `lengths` at `seq_len`."""
    if not lengths:
        raise ValueError("no sample lengths")
    if any(n < 0 for n in lengths):
        raise ValueError("sample lengths must be zero or more tokens")
    ordered = sorted(lengths)
    kept = sum(min(n, seq_len) for n in ordered)
    return LengthStats(
        samples=len(ordered), total_tokens=sum(ordered), p50=_percentile(ordered, 0.50),
        p95=_percentile(ordered, 0.95), max_len=ordered[-1], seq_len=seq_len,
        truncated_fraction=sum(1 for n in ordered if n > seq_len) / len(ordered),
        mean_kept=kept / len(ordered), method=method, exact=exact,
    )  # fmt: skip


def memory_seq_len(stats: LengthStats, packing: bool) -> int:
    """The sequence length that sizes memory: seq with packing, else the longest sample (stretched by
    APPROXIMATION_MARGIN when approximated, rounded up to MEMORY_SEQ_MULTIPLE), never more than seq."""
    longest = stats.max_len if stats.exact else math.ceil(stats.max_len * APPROXIMATION_MARGIN)
    if packing or longest >= stats.seq_len:
        return stats.seq_len
    rounded = -(-max(longest, 1) // MEMORY_SEQ_MULTIPLE) * MEMORY_SEQ_MULTIPLE
    return min(rounded, stats.seq_len)


def worst_batch_tokens(stats: LengthStats, micro_batch: int, packing: bool) -> int:
    """Tokens (padding included) in the largest micro-batch the data can produce."""
    return micro_batch * (stats.seq_len if packing else min(stats.max_len, stats.seq_len))


def real_tokens_per_step(stats: LengthStats, global_batch: int, packing: bool) -> float:
    """Expected non-padding tokens in one optimizer step (global_batch sequences): full sequences with
    packing (as long as the data holds that many tokens), the mean kept length per sample without."""
    if packing:
        return float(global_batch * stats.seq_len)
    return global_batch * stats.mean_kept


def describe(stats: LengthStats, packing: bool, global_batch: int, *, padded_to_seq: bool = False) -> str:
    """One line for fit's notes (`padded_to_seq`: every row padded to seq, RuntimeKnobs.padding max_length)."""
    batching = (
        "packing (every batch full)"
        if packing
        else "padding every row to --seq"
        if padded_to_seq
        else "padding each batch to its longest sample"
    )
    long = (
        f"{stats.truncated_fraction:.1%} longer than --seq {stats.seq_len:,} (split across packed rows, not cut)"
        if packing
        else f"{stats.truncated_fraction:.1%} truncated at --seq {stats.seq_len:,}"
    )
    return (
        f"data lengths ({stats.method}): {stats.samples:,} samples, p50 {stats.p50:,}, p95 {stats.p95:,}, "
        f"max {stats.max_len:,} tokens; {long}; "
        f"{batching}: memory sized on a {memory_seq_len(stats, packing or padded_to_seq):,}-token sequence, "
        f"~{real_tokens_per_step(stats, global_batch, packing):,.0f} real tokens per step of {global_batch}."
    )
