"""PyTorch's CUDA caching allocator, as arithmetic: what `torch.cuda.max_memory_reserved()` adds to
`max_memory_allocated()`, and what the device shows on top (CUDA context).

Two parts, kept apart because one is exact and the other is fitted:

- **Block rounding** (exact, from the allocator's rules). Every request is rounded up to a multiple of
  512 B; requests of at most 1 MiB are served from 2 MiB segments (the small pool); requests between
  1 and 10 MiB split a 20 MiB segment (kLargeBuffer); larger requests get a segment of their size rounded
  up to 2 MiB. Source: pytorch/pytorch `c10/cuda/CUDACachingAllocator.cpp` (constants kMinBlockSize,
  kSmallSize, kSmallBuffer, kLargeBuffer, kMinLargeAlloc, kRoundLarge and the allocator's header comment,
  read at commit 001074d25084fdb87a799823e395a50f5ec044d3; `round_size` and `get_allocation_size` in the
  same file). Applied to the long-lived tensors (weights, adapters, gradients, optimizer states, fp32
  masters), which are allocated once and each keep their own rounded block.
- **Fragmentation** (fitted). Short-lived tensors (activations, logits, step temporaries) are freed and
  re-requested every step; cached blocks that are too small for the next request stay reserved. The
  slack is a fraction of those dynamic bytes that grows with the number of distinct sequence lengths
  a run sees (each length is a new set of tensor sizes), and that `expandable_segments:True`
  (PYTORCH_CUDA_ALLOC_CONF) cuts, because it grows one segment per stream instead of leaving slivers
  at the end of per-request segments (Note [Expandable Segments] in the same file). The fraction's
  parameters live in profiles/calibration.json (`allocator`), fitted by benchmarks/calibrate.py.

Pure: no torch, no I/O beyond the packaged calibration constants.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

from swiftplan.planner.architecture import (
    embedding_params,
    linear_modules,
    lm_head_params,
    total_params,
)
from swiftplan.planner.breakdown import MemoryBreakdown, Term
from swiftplan.planner.calibration import constant, constant_source
from swiftplan.planner.model_spec import ModelSpec

MiB = 2**20
GiB = 2**30

MIN_BLOCK_BYTES = 512
"""kMinBlockSize: every request is rounded up to a multiple of 512 bytes."""
SMALL_SIZE_BYTES = 1 * MiB
"""kSmallSize: largest request served from the small pool."""
SMALL_BUFFER_BYTES = 2 * MiB
"""kSmallBuffer: segment size of the small pool."""
LARGE_BUFFER_BYTES = 20 * MiB
"""kLargeBuffer: segment cudaMalloc'ed for a 1-10 MiB request, then split."""
MIN_LARGE_ALLOC_BYTES = 10 * MiB
"""kMinLargeAlloc: requests from here up get a segment of their own size."""
ROUND_LARGE_BYTES = 2 * MiB
"""kRoundLarge: large segments are rounded up to 2 MiB."""

LENGTH_BUCKET_TOKENS = 64
"""Variable-length runs: sequence lengths within 64 tokens are counted as one tensor-size class."""


def block_bytes(request_bytes: int) -> int:
    """Size of the block a request occupies (round_size: a multiple of 512 B, at least 512 B)."""
    if request_bytes < 0:
        raise ValueError("a request cannot be negative")
    if request_bytes <= MIN_BLOCK_BYTES:
        return MIN_BLOCK_BYTES
    return -(-request_bytes // MIN_BLOCK_BYTES) * MIN_BLOCK_BYTES


def segment_bytes(request_bytes: int) -> int:
    """Bytes cudaMalloc'ed when no cached block fits the request (get_allocation_size of its block)."""
    size = block_bytes(request_bytes)
    if size <= SMALL_SIZE_BYTES:
        return SMALL_BUFFER_BYTES
    if size < MIN_LARGE_ALLOC_BYTES:
        return LARGE_BUFFER_BYTES
    return -(-size // ROUND_LARGE_BYTES) * ROUND_LARGE_BYTES


def reserved_for(requests: list[int], *, expandable: bool = False) -> int:
    """Reserved bytes when `requests` are all live at once in a fresh allocator, in order.

    Small requests (≤ 1 MiB) share 2 MiB segments and 1-10 MiB requests share 20 MiB segments (each
    request splits the remainder of the last segment of its pool while it fits, as the allocator's best
    fit over one growing free block does); larger requests each get a rounded segment of their own.
    With `expandable` (expandable_segments:True) the blocks tile one segment per pool, mapped in 2 MiB
    (small) and 20 MiB (large) pages (planner/caching_allocator.py).
    """
    if expandable:
        sizes = [block_bytes(r) for r in requests]
        small = sum(n for n in sizes if n <= SMALL_SIZE_BYTES)
        large = sum(n for n in sizes if n > SMALL_SIZE_BYTES)
        return (
            -(-small // SMALL_BUFFER_BYTES) * SMALL_BUFFER_BYTES
            + -(-large // LARGE_BUFFER_BYTES) * LARGE_BUFFER_BYTES
        )
    reserved = 0
    free_small = free_mid = 0
    for request in requests:
        size = block_bytes(request)
        if size <= SMALL_SIZE_BYTES:
            if size > free_small:
                reserved += SMALL_BUFFER_BYTES
                free_small = SMALL_BUFFER_BYTES
            free_small -= size
        elif size < MIN_LARGE_ALLOC_BYTES:
            if size > free_mid:
                reserved += LARGE_BUFFER_BYTES
                free_mid = LARGE_BUFFER_BYTES
            free_mid -= size
        else:
            reserved += segment_bytes(size)
    return reserved


@dataclass(frozen=True, kw_only=True, slots=True)
class AllocatorSettings:
    """How the run drives the caching allocator."""

    expandable_segments: bool = False
    """PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (one growing segment per stream)."""
    variable_lengths: bool = False
    """Batches come in many sequence lengths (dynamic padding of unpacked data) rather than one shape."""


@dataclass(frozen=True, kw_only=True, slots=True)
class AllocatorParams:
    """The fitted constants of the fragmentation model (profiles/calibration.json `allocator`)."""

    dynamic_slack: float
    """Reserved-but-free bytes per dynamic byte when every step has the same shapes, at 1 GiB of them."""
    length_slack: float
    """Extra slack per doubling of the number of distinct sequence lengths."""
    expandable_factor: float
    """Multiplier on the fixed-shape slack under expandable segments."""
    slack_per_doubling: float = 0.0
    """How much the fixed-shape slack fraction falls per doubling of the per-step bytes: a step's slack is a
    few of its largest blocks that later requests cannot reuse, which grows more slowly than its bytes."""
    slack_range_bytes: tuple[int, int] = (0, 0)
    """Per-step bytes the size dependence was derived over; outside it the fraction is held at its ends."""
    expandable_length_factor: float = 1.0
    """Multiplier on the slack that changing sequence lengths add, under expandable segments (the slivers the
    Note [Expandable Segments] is about)."""

    @classmethod
    def from_calibration(cls) -> AllocatorParams:
        """The values in profiles/calibration.json."""
        return cls(
            dynamic_slack=constant("allocator", "dynamic_slack"),
            length_slack=constant("allocator", "length_slack"),
            expandable_factor=constant("allocator", "expandable_factor"),
            expandable_length_factor=constant("allocator", "expandable_length_factor"),
            slack_per_doubling=constant("allocator", "dynamic_slack_per_doubling"),
            slack_range_bytes=(
                int(constant("allocator", "dynamic_slack_min_bytes")),
                int(constant("allocator", "dynamic_slack_max_bytes")),
            ),  # fmt: skip
        )

    def fixed_slack(self, dynamic_bytes: int) -> float:
        """Slack per dynamic byte with one shape per step: dynamic_slack − slack_per_doubling ×
        log2(per-step GiB), the bytes held inside `slack_range_bytes`."""
        low, high = self.slack_range_bytes
        if not self.slack_per_doubling or dynamic_bytes <= 0 or high <= 0:
            return self.dynamic_slack
        held = min(max(dynamic_bytes, low), high)
        return max(0.0, self.dynamic_slack - self.slack_per_doubling * math.log2(held / GiB))


def distinct_lengths(seq_len: int, settings: AllocatorSettings) -> int:
    """Tensor-size classes a run's sequence lengths fall into (1 for fixed shapes)."""
    return max(1, seq_len // LENGTH_BUCKET_TOKENS) if settings.variable_lengths else 1


def slack_fraction(
    seq_len: int, settings: AllocatorSettings, params: AllocatorParams, dynamic_bytes: int = 0
) -> float:
    """Fragmentation slack as a fraction of the dynamic (per-step) bytes (`dynamic_bytes` of them; 0: the
    fraction at 1 GiB)."""
    fixed = params.fixed_slack(dynamic_bytes)
    lengths = params.length_slack * math.log2(distinct_lengths(seq_len, settings))
    if settings.expandable_segments:
        return fixed * params.expandable_factor + lengths * params.expandable_length_factor
    return fixed + lengths


def persistent_requests(spec: ModelSpec, memory: MemoryBreakdown) -> list[int]:
    """The long-lived tensors of the breakdown as allocation requests: every weight matrix (and the
    embedding / LM head) once per state that holds a copy of it, sized by this device's bytes per
    parameter of each state (so sharding and quantization carry over)."""
    params = total_params(spec)
    matrices = [lin.in_features * lin.out_features * lin.count for _, lin in linear_modules(spec)]
    matrices += [n for n in (embedding_params(spec), lm_head_params(spec)) if n]
    requests: list[int] = []
    for state in (memory.weights, memory.gradients, memory.optimizer, memory.master_weights):
        if state <= 0 or params <= 0:
            continue
        per_param = state / params
        requests += [int(n * per_param) for n in matrices]
    return requests


def rounding_bytes(spec: ModelSpec, memory: MemoryBreakdown, *, expandable: bool = False) -> int:
    """Bytes the block rounding adds to the long-lived tensors (exact rules, model's matrix shapes; under
    expandable segments, 512 B blocks tiled into pages)."""
    return _rounding(
        spec, memory.weights, memory.gradients, memory.optimizer, memory.master_weights, expandable
    )


@lru_cache(maxsize=4096)
def _rounding(
    spec: ModelSpec, weights: int, gradients: int, optimizer: int, master_weights: int, expandable: bool
) -> int:
    """`rounding_bytes` by the states it reads (a search asks for the same states at every micro-batch)."""
    states = MemoryBreakdown(
        weights=weights, gradients=gradients, optimizer=optimizer, master_weights=master_weights
    )
    requests = [r for r in persistent_requests(spec, states) if r > 0]
    return max(0, reserved_for(requests, expandable=expandable) - sum(requests))


@dataclass(frozen=True, kw_only=True, slots=True)
class SetupCache:
    """Blocks a run's set-up freed but the allocator kept before the first step (FSDP1's wrap,
    planner/fsdp1_wrap.py): the step's per-step tensors of the same stream reuse them first."""

    cached_bytes: int
    """Reserved but free when the first step starts."""
    apart_bytes: int = 0
    """Per-step bytes at the peak served from another stream's pool (FSDP1's gathered units), which
    cannot reuse the cache."""
    what: str = "set-up"
    """Who left the cache, for the explanation."""
    source: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class Reserve:
    """What the caching allocator holds beyond the live tensors at the peak."""

    rounding_bytes: int
    """Block rounding of the long-lived tensors."""
    fragmentation_bytes: int
    """Cached-but-unusable blocks left by the per-step tensors."""
    fraction: float
    """Fragmentation slack per dynamic byte."""
    dynamic_bytes: int
    """Per-step bytes at the peak (activations, logits, temporaries)."""
    unused_cache_bytes: int = 0
    """Of a set-up's cache (`SetupCache`), what the step's tensors do not reuse."""
    moment: str = ""
    """The moment whose reserved figure is the step's largest, when it is not the allocated peak (e.g. the
    loss, whose logits leave more cached than the optimizer step that peaks in allocated bytes)."""
    below_peak_bytes: int = 0
    """peak_allocated minus what is allocated at that moment."""

    @property
    def slack_bytes(self) -> int:
        """peak_reserved - peak_allocated (reserved never shrinks, so it is the largest moment's)."""
        return (
            self.rounding_bytes + self.fragmentation_bytes + self.unused_cache_bytes - self.below_peak_bytes
        )


def reserve(
    spec: ModelSpec,
    memory: MemoryBreakdown,
    *,
    seq_len: int,
    settings: AllocatorSettings,
    params: AllocatorParams | None = None,
    setup_cache: SetupCache | None = None,
    moments: tuple[tuple[str, int, int], ...] = (),
) -> Reserve:
    """The allocator's slack for a breakdown whose `peak_allocated` is set. Each of the step's `moments`
    (name, allocated bytes, per-step bytes) holds its per-step tensors and their fragmentation; reserved memory never shrinks
    within a run, so max_memory_reserved is the largest moment's, which need not be the allocated peak. A
    set-up's cache is reused by the per-step tensors of its stream and their slack first: the stream's
    reserved region is the larger of the two (max_memory_reserved never falls below what the set-up
    reserved)."""
    params = params or AllocatorParams.from_calibration()
    persistent = (
        memory.weights + memory.adapters + memory.gradients + memory.optimizer + memory.master_weights
    )
    rounding = rounding_bytes(spec, memory, expandable=settings.expandable_segments)
    best: Reserve | None = None
    peak = ("", memory.peak_allocated, max(0, memory.peak_allocated - persistent - memory.kv_cache))
    for name, allocated, dynamic in (peak, *moments):
        fraction = slack_fraction(seq_len, settings, params, dynamic)
        fragmentation = int(dynamic * fraction)
        unused = 0
        if setup_cache is not None:
            reusing = max(0, dynamic - setup_cache.apart_bytes) + fragmentation
            unused = max(0, setup_cache.cached_bytes - reusing)
        below = max(0, memory.peak_allocated - allocated)
        candidate = Reserve(rounding_bytes=rounding, fragmentation_bytes=fragmentation, fraction=fraction,
                            dynamic_bytes=dynamic, unused_cache_bytes=unused, moment=name if below else "",
                            below_peak_bytes=below)  # fmt: skip
        if best is None or candidate.slack_bytes > best.slack_bytes:
            best = candidate
    assert best is not None
    return best


def context_bytes(backend: str | None = None) -> int:
    """CUDA/ROCm context and kernel images outside the allocator, for an accelerator backend."""
    name = f"context_bytes_{backend}" if backend else ""
    try:
        return int(constant("allocator", name))
    except KeyError:
        return int(constant("runtime_overhead", "cuda_context_bytes"))


def _context_source(backend: str | None) -> str:
    try:
        return constant_source("allocator", f"context_bytes_{backend}")
    except KeyError:
        return constant_source("runtime_overhead", "cuda_context_bytes")


def _cache_formula(res: Reserve, cache: SetupCache | None) -> str:
    if cache is None or not cache.cached_bytes:
        return ""
    return (
        f" + {res.unused_cache_bytes / MiB:,.0f} MiB of the {cache.cached_bytes / MiB:,.0f} MiB {cache.what} left "
        f"cached that the step does not reuse (its per-step tensors and their slack"
        + (f", less {cache.apart_bytes / MiB:,.0f} MiB in another stream's pool" if cache.apart_bytes else "")
        + ", reuse the rest)"
    )


def with_reserved(
    spec: ModelSpec,
    memory: MemoryBreakdown,
    *,
    seq_len: int,
    settings: AllocatorSettings | None = None,
    backend: str | None = None,
    extras: tuple[Term, ...] = (),
    pooled: tuple[Term, ...] = (),
    setup_cache: SetupCache | None = None,
    moments: tuple[tuple[str, int, int], ...] = (),
) -> MemoryBreakdown:
    """`memory` with `peak_reserved`, `runtime_overhead` and `device_total` from the allocator model.

    peak_reserved = peak_allocated + rounding + fragmentation; device_total = peak_reserved + context
    + extras (memory a runtime holds outside torch's allocator, e.g. NCCL buffers), each a named term;
    `pooled` terms are held through torch's allocator beside the step (a colocated vLLM engine without
    sleep mode) and count in peak_reserved too; `setup_cache` is what the run's set-up left cached (FSDP1's
    wrap), counted where the step does not reuse it; `moments` are the step's other candidate peaks (name,
    allocated bytes, per-step bytes), any of which may leave the most reserved.
    """
    settings = settings or AllocatorSettings()
    res = reserve(spec, memory, seq_len=seq_len, settings=settings, setup_cache=setup_cache, moments=moments)
    context = context_bytes(backend)
    extra = sum(t.value_bytes for t in extras)
    reserved = memory.peak_allocated + res.slack_bytes + sum(t.value_bytes for t in pooled)
    lengths = distinct_lengths(seq_len, settings)
    alloc_term = Term(
        name="allocator_slack",
        value_bytes=res.slack_bytes,
        formula=(
            f"block rounding {res.rounding_bytes / MiB:,.0f} MiB + {res.fraction:.1%} of "
            f"{res.dynamic_bytes / MiB:,.0f} MiB per-step tensors"
            + (
                f" at the {res.moment} ({res.below_peak_bytes / MiB:,.0f} MiB below the allocated peak, more "
                "left reserved)"
                if res.moment
                else ""
            )
            + (f" ({lengths} sequence-length classes)" if lengths > 1 else " (one shape per step)")
            + (", expandable segments" if settings.expandable_segments else "")
            + _cache_formula(res, setup_cache)
        ),
        source="rounding: pytorch/pytorch c10/cuda/CUDACachingAllocator.cpp @ 001074d2; slack: "
        + constant_source("allocator", "dynamic_slack")
        + (
            f"; {setup_cache.what}: {setup_cache.source}"
            if setup_cache is not None and setup_cache.source
            else ""
        ),
    )
    context_term = Term(
        name="runtime_overhead",
        value_bytes=res.slack_bytes + context + extra,
        formula=f"CUDA context {context / MiB:,.0f} MiB + the allocator_slack row ({res.slack_bytes / MiB:,.0f} MiB)"
        + "".join(f" + {t.name} {t.value_bytes / MiB:,.0f} MiB" for t in extras),
        source=_context_source(backend),
    )
    replaced = {"runtime_overhead", "allocator_slack", *(t.name for t in extras), *(t.name for t in pooled)}
    terms = tuple(t for t in memory.terms if t.name not in replaced)
    return replace(
        memory,
        peak_reserved=reserved,
        runtime_overhead=res.slack_bytes + context + extra,
        device_total=reserved + context + extra,
        terms=(*terms, alloc_term, *pooled, *extras, context_term),
    )
