"""Live-storage accounting for the tracing verifier: a dispatch mode that sees every allocation and free.

The tracer runs the real model code over fake tensors (no data, no real memory). Each op's outputs are
inspected here; a storage seen for the first time is an allocation, and a weakref callback on its
`UntypedStorage` object is the free (PyTorch keeps one Python object per live storage, so the callback
fires exactly when the C++ storage dies). This is the technique of `torch/distributed/_tools/mem_tracker.py`,
reduced to what the verifier needs: a live total, its peak, and the category of every storage alive at
the peak.

Each storage is counted once (views share it) at `untyped_storage().nbytes()` rounded up to the CUDA
caching allocator's 512-byte block, so the peak is what `torch.cuda.max_memory_allocated()` would report
for the same tensors (the CUDA context, cuBLAS workspaces and allocator fragmentation are not tensors and
are not counted).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from swiftplan.planner.breakdown import TENSOR_TERMS

CATEGORIES = TENSOR_TERMS
"""Every category a storage can be in; `TraceResult.at_peak` has exactly these keys."""

CUDA_BLOCK_BYTES = 512
"""The CUDA caching allocator rounds every allocation up to a multiple of 512 bytes (kMinBlockSize)."""

_SKIP_OPS = frozenset({torch.ops.prim.device.default})
_TO_COPY = torch.ops.aten._to_copy.default


class _Storage:
    """One live storage: its (rounded) size, its current category and what created it."""

    __slots__ = ("category", "ignored", "nbytes", "origin", "ref", "serial")

    def __init__(self, nbytes: int, category: str, origin: str, serial: int) -> None:
        self.nbytes = nbytes
        self.category = category
        self.origin = origin
        self.serial = serial
        self.ignored = False
        self.ref: weakref.ref[torch.UntypedStorage] | None = None


class MemoryTracker(TorchDispatchMode):
    """Counts live tensor-storage bytes at every op and remembers the peak and what was alive at it.

    Push it *above* a `FakeTensorMode` (enter the fake mode first) so that it sees the fake outputs.
    New storages take `context_category`; `classify` moves a storage to another category later (a
    gradient is only known to be one once autograd has accumulated it).
    """

    def __init__(self, *, round_bytes: int = CUDA_BLOCK_BYTES, phase_snapshots: bool = False) -> None:
        super().__init__()
        if round_bytes < 1:
            raise ValueError(f"round_bytes must be >= 1, got {round_bytes}")
        self.round_bytes = round_bytes
        self.context_category = "activations"
        self.live_bytes = 0
        self.peak_bytes = 0
        self.phase: str | None = None
        self.phase_peaks: dict[str, int] = {}
        self._live: dict[int, _Storage] = {}
        self._peak_live: dict[int, _Storage] = {}
        self._phase_snapshots = phase_snapshots
        self._phase_peak_live: dict[str, dict[int, _Storage]] = {}
        """With `phase_snapshots`: what was alive at each phase's peak (`at_phase_peak`)."""
        self._measuring = False
        self.ops_seen: set[Any] = set()
        """Every aten op dispatched (to report which attention kernel ran)."""
        self._op = "untracked"
        self.allocations = 0
        """Storages seen so far; each storage's `serial` is its position in that sequence."""
        self.events_from = 0
        """Index in `events` where measuring started."""
        self.events: list[tuple[int, int]] = []
        """Every allocation (serial, bytes) and free (serial, -1) in order, for replaying the caching
        allocator over the run (`planner.caching_allocator.replay`); `forget`-ten storages are left out."""

    # -- accounting --------------------------------------------------------------------------------

    def _rounded(self, nbytes: int) -> int:
        r = self.round_bytes
        return -(-nbytes // r) * r

    def _free(self, key: int, _ref: object) -> None:
        info = self._live.pop(key, None)
        if info is not None:
            self.live_bytes -= info.nbytes
            if not info.ignored:
                self.events.append((info.serial, -1))

    def _grow(self, delta: int) -> None:
        self.live_bytes += delta
        if not self._measuring or delta <= 0:
            return
        live = self.live_bytes
        phase = self.phase
        if phase is not None and live > self.phase_peaks.get(phase, 0):
            self.phase_peaks[phase] = live
            if self._phase_snapshots:
                self._phase_peak_live[phase] = dict(self._live)
        if live > self.peak_bytes:
            self.peak_bytes = live
            # Copying ~1e3 references per new peak is cheap next to the op that caused it. The _Storage
            # objects are shared, so a later `classify` (a buffer that turns out to be a gradient)
            # is seen by the snapshot too.
            self._peak_live = dict(self._live)

    def track(self, t: torch.Tensor, category: str | None = None) -> None:
        """Account for `t`'s storage if it is new; with `category`, also (re)classify it."""
        if not isinstance(t, torch.Tensor) or t.layout is not torch.strided:
            return
        st = t.untyped_storage()
        key = id(st)
        info = self._live.get(key)
        nbytes = self._rounded(st.nbytes())
        if info is None:
            if nbytes == 0:
                return
            origin = f"{self._op} {tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}"
            info = _Storage(nbytes, category or self.context_category, origin, self.allocations)
            self.allocations += 1
            info.ref = weakref.ref(st, partial(self._free, key))
            self._live[key] = info
            self.events.append((info.serial, nbytes))
            self._grow(nbytes)
            return
        if info.ignored:
            return
        if category is not None:
            info.category = category
        if nbytes != info.nbytes:  # resized in place (out= variants, resize_)
            delta = nbytes - info.nbytes
            self.events += [(info.serial, -1)] * (info.nbytes > 0) + [(info.serial, nbytes)] * (nbytes > 0)
            info.nbytes = nbytes
            self._grow(delta)

    def forget(self, tensors: Iterable[torch.Tensor | None]) -> None:
        """Stop counting these storages: they would not be in device memory on a real run (e.g. the
        CPU step counters of non-capturable Adam)."""
        for t in tensors:
            if not isinstance(t, torch.Tensor):
                continue
            st = t.untyped_storage()
            key = id(st)
            info = self._live.get(key)
            if info is None:
                info = _Storage(0, "activations", "forgotten", self.allocations)
                self.allocations += 1
                info.ref = weakref.ref(st, partial(self._free, key))
                self._live[key] = info
            self.live_bytes -= info.nbytes
            if info.nbytes:
                self.events.append((info.serial, -1))
            info.nbytes = 0
            info.ignored = True  # stays known, so in-place updates do not count it again

    def classify(self, tensors: Iterable[torch.Tensor | None], category: str) -> None:
        """Put the storages of `tensors` in `category` (tracking them if they are new)."""
        if category not in CATEGORIES:
            raise ValueError(f"unknown category {category!r}")
        for t in tensors:
            if t is not None:
                self.track(t, category)

    # -- phases and measurement --------------------------------------------------------------------

    def start_measuring(self) -> None:
        """Forget earlier peaks: from now on the peak and the phase peaks are recorded."""
        self._measuring = True
        self.events_from = len(self.events)
        self.peak_bytes = self.live_bytes
        self._peak_live = dict(self._live)
        self.phase_peaks = {}
        self._phase_peak_live = {}

    def stop_measuring(self) -> None:
        self._measuring = False

    def set_phase(self, phase: str | None) -> str | None:
        """Attribute allocations to `phase` from now on (its peak starts at what is already alive);
        return the phase it replaces (for hooks that switch phase and back)."""
        previous = self.phase
        self.phase = phase
        if phase is not None and self._measuring and self.live_bytes >= self.phase_peaks.get(phase, 0):
            self.phase_peaks[phase] = self.live_bytes
            if self._phase_snapshots:
                self._phase_peak_live[phase] = dict(self._live)
        return previous

    @contextmanager
    def in_phase(self, phase: str) -> Iterator[None]:
        """Attribute allocations to `phase`; its peak starts at what is already alive."""
        self.set_phase(phase)
        try:
            yield
        finally:
            self.phase = None

    @contextmanager
    def category(self, category: str) -> Iterator[None]:
        """New storages created inside the block get `category`."""
        previous = self.context_category
        self.context_category = category
        try:
            yield
        finally:
            self.context_category = previous

    def at_peak(self) -> dict[str, int]:
        """Category -> bytes alive at the peak, by each storage's latest category."""
        out = dict.fromkeys(CATEGORIES, 0)
        for info in self._peak_live.values():
            out[info.category] = out.get(info.category, 0) + info.nbytes
        return out

    def at_phase_peak(self, phase: str) -> dict[str, int]:
        """Category -> bytes alive at `phase`'s peak (needs `phase_snapshots=True`)."""
        out = dict.fromkeys(CATEGORIES, 0)
        for info in self._phase_peak_live.get(phase, {}).values():
            out[info.category] = out.get(info.category, 0) + info.nbytes
        return out

    def peak_storages(self) -> list[tuple[str, int, str]]:
        """(category, bytes, origin) of every storage alive at the peak, largest first (for debugging)."""
        rows = [(i.category, i.nbytes, i.origin) for i in self._peak_live.values()]
        return sorted(rows, key=lambda r: -r[1])

    def live_storages(self, since: int = 0, until: int | None = None) -> list[tuple[str, int, str]]:
        """(category, bytes, origin) of live storages allocated with serial in [since, until)."""
        end = self.allocations if until is None else until
        rows = [(i.category, i.nbytes, i.origin) for i in self._live.values() if since <= i.serial < end]
        return sorted(rows, key=lambda r: -r[1])

    def live_by_category(self) -> dict[str, int]:
        """Category -> bytes alive now."""
        out = dict.fromkeys(CATEGORIES, 0)
        for info in self._live.values():
            out[info.category] = out.get(info.category, 0) + info.nbytes
        return out

    # -- the dispatch hook -------------------------------------------------------------------------

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if func in _SKIP_OPS:
            return out
        self.ops_seen.add(func)
        self._op = func.__name__
        if isinstance(out, torch.Tensor):
            if func is _TO_COPY and args and getattr(args[0], "_is_param", False):
                # A cast of a parameter (autocast's bf16 weight copy, Adafactor's fp32 copy) is held
                # for backward or used as a temporary: "activations", even inside the loss region.
                self.track(out, "activations")
            else:
                self.track(out)
        elif isinstance(out, (tuple, list)):
            for o in out:
                if isinstance(o, torch.Tensor):
                    self.track(o)
                elif isinstance(o, (tuple, list)):  # foreach ops return lists
                    for p in o:
                        if isinstance(p, torch.Tensor):
                            self.track(p)
        return out
