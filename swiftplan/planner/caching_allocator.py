"""PyTorch's CUDA caching allocator replayed over a sequence of mallocs and frees on one stream (pure).

`planner/allocator.py` prices a step's tensors that are alive at once; this replays what happens before
the step, where the order of requests decides what stays reserved (e.g. FSDP1's constructor,
`planner/fsdp1_wrap.py`). The rules, from pytorch/pytorch `c10/cuda/CUDACachingAllocator.cpp` (read at
commit 001074d25084fdb87a799823e395a50f5ec044d3; unchanged in torch 2.1-2.13 for these rules):

- a request is rounded up to a multiple of 512 B (`round_size`); ≤ 1 MiB is served from the small pool,
  larger from the large pool (`get_pool`);
- the smallest cached free block of the pool that fits is used (`get_free_block`: a set ordered by
  size, then address); none fits → a new segment of `get_allocation_size` bytes (2 MiB small; 20 MiB
  for < 10 MiB; else the request rounded up to 2 MiB);
- the block is split when the rest is at least 512 B (small pool) or more than 1 MiB (large pool)
  (`should_split`); a freed block merges with free neighbours in its segment (`free_block`,
  `try_merge_blocks`); segments are never returned without `empty_cache()` (not modelled: the runs
  planned do not call it between set-up and the step).

With `expandable=True`, `PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True` (Note [Expandable Segments] in
the same file): each pool is one segment that grows at its end by pages (2 MiB for the small pool, 20 MiB for
the large one), a free block at the end is extended rather than a new segment made, and any block splits when
at least 512 B would remain (`should_split`). Pages are never unmapped here: that happens only on
`empty_cache()` or a failing allocation, so `capacity_bytes` is not supported with it.

Otherwise defaults only: no `max_split_size_mb`, one stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from swiftplan.planner.allocator import (
    LARGE_BUFFER_BYTES,
    MIN_BLOCK_BYTES,
    SMALL_BUFFER_BYTES,
    SMALL_SIZE_BYTES,
    block_bytes,
    segment_bytes,
)


@dataclass(slots=True)
class _Block:
    segment: int
    offset: int
    size: int
    free: bool = True


class DeviceFull(Exception):
    """A request that does not fit the capacity even after the free segments were released (an OOM)."""


@dataclass(slots=True)
class CachingAllocator:
    """One stream's small and large pools. `malloc` returns a handle for `free`. With `capacity_bytes`, a
    segment that would exceed it first makes the allocator release every wholly free cached segment and retry,
    as `cudaMalloc` failing does (`release_cached_blocks` in `alloc_block`'s retry path); then `DeviceFull`."""

    _segments: list[list[_Block]] = field(default_factory=list)
    _small: list[bool] = field(default_factory=list)
    _live: dict[int, _Block] = field(default_factory=dict)
    _next_handle: int = 0
    reserved_bytes: int = 0
    """Bytes of all segments (torch.cuda.memory_reserved)."""
    allocated_bytes: int = 0
    """Bytes of the live blocks (torch.cuda.memory_allocated)."""
    peak_reserved_bytes: int = 0
    peak_allocated_bytes: int = 0
    capacity_bytes: int | None = None
    """Device memory the allocator may reserve (None: unlimited)."""
    released_bytes: int = 0
    """Bytes of free segments released to make room so far."""
    expandable: bool = False
    """expandable_segments:True: one segment per pool, grown by pages at its end (module docstring)."""
    _pool_segment: dict[bool, int] = field(default_factory=dict)
    """Expandable: the segment of each pool (small: True)."""

    def __post_init__(self) -> None:
        if self.expandable and self.capacity_bytes is not None:
            raise ValueError(
                "a capacity is not modelled with expandable segments (their pages are not unmapped)"
            )

    def malloc(self, request_bytes: int) -> int:
        """Serve a request as the allocator does; returns a handle."""
        size = block_bytes(request_bytes)
        small = size <= SMALL_SIZE_BYTES
        grow = self._grow if self.expandable else self._new_segment
        block = self._best_fit(size, small) or grow(size, small)
        rest = block.size - size
        if rest >= MIN_BLOCK_BYTES if small or self.expandable else rest > SMALL_SIZE_BYTES:
            blocks = self._segments[block.segment]
            tail = _Block(block.segment, block.offset + size, rest)
            blocks.insert(blocks.index(block) + 1, tail)
            block.size = size
        block.free = False
        self.allocated_bytes += block.size
        self.peak_allocated_bytes = max(self.peak_allocated_bytes, self.allocated_bytes)
        handle = self._next_handle
        self._next_handle += 1
        self._live[handle] = block
        return handle

    def free(self, handle: int) -> None:
        """Return a block to its pool, merged with free neighbours in its segment."""
        block = self._live.pop(handle)
        block.free = True
        self.allocated_bytes -= block.size
        blocks = self._segments[block.segment]
        i = blocks.index(block)
        if i + 1 < len(blocks) and blocks[i + 1].free:
            block.size += blocks.pop(i + 1).size
        if i > 0 and blocks[i - 1].free:
            blocks[i - 1].size += blocks.pop(i).size

    @property
    def cached_free_bytes(self) -> int:
        """Reserved but not allocated: what later requests of this stream can reuse."""
        return self.reserved_bytes - self.allocated_bytes

    def _best_fit(self, size: int, small: bool) -> _Block | None:
        fits = (
            b
            for seg, blocks in enumerate(self._segments)
            if self._small[seg] == small
            for b in blocks
            if b.free and b.size >= size
        )
        return min(fits, key=lambda b: (b.size, b.segment, b.offset), default=None)

    def _release_free_segments(self) -> None:
        for blocks in self._segments:
            if len(blocks) == 1 and blocks[0].free and blocks[0].size:
                self.reserved_bytes -= blocks[0].size
                self.released_bytes += blocks[0].size
                blocks[0].size = 0  # the segment is gone; its index stays so handles keep theirs

    def _grow(self, size: int, small: bool) -> _Block:
        """Map pages at the end of the pool's segment: the free block there grows, or a new one follows the last."""
        if small not in self._pool_segment:
            self._pool_segment[small] = len(self._segments)
            self._segments.append([])
            self._small.append(small)
        segment = self._pool_segment[small]
        blocks = self._segments[segment]
        last = blocks[-1] if blocks else None
        missing = size - last.size if last is not None and last.free else size
        page = SMALL_BUFFER_BYTES if small else LARGE_BUFFER_BYTES
        mapped = -(-missing // page) * page
        if last is not None and last.free:
            last.size += mapped
            block = last
        else:
            block = _Block(segment, last.offset + last.size if last is not None else 0, mapped)
            blocks.append(block)
        self.reserved_bytes += mapped
        self.peak_reserved_bytes = max(self.peak_reserved_bytes, self.reserved_bytes)
        return block

    def _new_segment(self, size: int, small: bool) -> _Block:
        nbytes = segment_bytes(size)
        if self.capacity_bytes is not None and self.reserved_bytes + nbytes > self.capacity_bytes:
            self._release_free_segments()
            if self.reserved_bytes + nbytes > self.capacity_bytes:
                raise DeviceFull(f"{nbytes} B more than the {self.capacity_bytes} B capacity allows")
        block = _Block(len(self._segments), 0, nbytes)
        self._segments.append([block])
        self._small.append(small)
        self.reserved_bytes += nbytes
        self.peak_reserved_bytes = max(self.peak_reserved_bytes, self.reserved_bytes)
        return block


@dataclass(frozen=True, kw_only=True, slots=True)
class Replay:
    """The caching allocator's counters after a replayed sequence, bytes."""

    peak_reserved: int
    """torch.cuda.max_memory_reserved()."""
    peak_allocated: int
    """torch.cuda.max_memory_allocated() (blocks rounded to 512 B)."""
    reserved_from: int
    """torch.cuda.memory_reserved() when measuring started (the peaks are counted from there)."""
    allocated_at_end: int = 0
    """torch.cuda.memory_allocated() after the last event."""


def replay(
    events: list[tuple[int, int]],
    *,
    measure_from: int = 0,
    capacity_bytes: int | None = None,
    expandable: bool = False,
) -> Replay:
    """Replay `events` — (key, bytes) allocates, (key, -1) frees; keys are the caller's — on one stream.
    The peaks count from event index `measure_from` on, as after `torch.cuda.reset_peak_memory_stats()`;
    with `capacity_bytes`, free segments are released when it would be exceeded (`DeviceFull` if that is not
    enough); `expandable` replays under expandable_segments:True."""
    alloc = CachingAllocator(capacity_bytes=capacity_bytes, expandable=expandable)
    handles: dict[int, int] = {}
    for i, (key, nbytes) in enumerate(events):
        if i == measure_from:
            alloc.peak_reserved_bytes, alloc.peak_allocated_bytes = (
                alloc.reserved_bytes,
                alloc.allocated_bytes,
            )
            start = alloc.reserved_bytes
        if nbytes < 0:
            handle = handles.pop(key, None)
            if handle is not None:
                alloc.free(handle)
        else:
            handles[key] = alloc.malloc(nbytes)
    if measure_from >= len(events):
        alloc.peak_reserved_bytes, alloc.peak_allocated_bytes = alloc.reserved_bytes, alloc.allocated_bytes
        start = alloc.reserved_bytes
    return Replay(peak_reserved=alloc.peak_reserved_bytes, peak_allocated=alloc.peak_allocated_bytes,
                  reserved_from=start, allocated_at_end=alloc.allocated_bytes)  # fmt: skip


def least_capacity(events: list[tuple[int, int]], *, step_bytes: int = 2 * 2**20) -> int:
    """The smallest capacity (to `step_bytes`) the replay of `events` runs in without `DeviceFull`: what the
    run needs of the device once the allocator releases free segments under pressure."""
    free_run = replay(events)
    lo, hi = free_run.peak_allocated // step_bytes, -(-free_run.peak_reserved // step_bytes)
    while lo < hi:
        mid = (lo + hi) // 2
        try:
            replay(events, capacity_bytes=mid * step_bytes)
        except DeviceFull:
            lo = mid + 1
        else:
            hi = mid
    return hi * step_bytes
