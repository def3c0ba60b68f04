"""The tracer's memory accounting under FSDP2 (`trace_fsdp`): DTensors counted by their local shard, FSDP's
in-place storage resizes reported, host memory left out, and FSDP's gathered parameters a category of their
own ("gathered", reported beside `at_peak`, whose keys stay the planner's tensor terms)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from swiftplan.executors.trace_memory import CUDA_BLOCK_BYTES, MemoryTracker

GATHERED = "gathered"
"""The tracker's category for FSDP's gathered (unsharded) parameters and all-gather buffers."""


def _local(t: Any) -> Any:
    """The local shard of a DTensor (the tensor that has storage), or `t` itself."""
    from torch.distributed.tensor import DTensor

    return t._local_tensor if isinstance(t, DTensor) else t


class FsdpTracker(MemoryTracker):
    """`MemoryTracker` that counts DTensors by their local shard, sees FSDP's storage resizes, and can
    leave host memory out (`on_host`)."""

    def __init__(self, *, round_bytes: int = CUDA_BLOCK_BYTES) -> None:
        super().__init__(round_bytes=round_bytes, phase_snapshots=True)
        self._host = False

    def track(self, t: torch.Tensor, category: str | None = None) -> None:
        t = _local(t)
        if self._host and isinstance(t, torch.Tensor) and id(t.untyped_storage()) not in self._live:
            self.forget([t])
            return
        super().track(t, category)

    def forget(self, tensors: Iterable[torch.Tensor | None]) -> None:
        super().forget(_local(t) for t in tensors)

    @contextlib.contextmanager
    def on_host(self) -> Iterator[None]:
        """Storages created inside the block are host memory: not counted."""
        self._host = True
        try:
            yield
        finally:
            self._host = False

    def resized(self, t: torch.Tensor, *, gathered: bool) -> None:
        """Account for a storage FSDP resized in place; with `gathered`, count it as a gathered parameter.
        The storage's record is replaced, not changed, so snapshots taken at earlier peaks keep their sizes."""
        key = id(t.untyped_storage())
        info = self._live.get(key)
        if info is None:
            with self.category(GATHERED if gathered else self.context_category):
                self.track(t)
            return
        if info.ignored:
            return
        nbytes = self._rounded(t.untyped_storage().nbytes())
        fresh = type(info)(nbytes, GATHERED if gathered else info.category, info.origin, info.serial)
        fresh.ref = info.ref
        self._live[key] = fresh
        self._grow(nbytes - info.nbytes)

    def at_peak(self) -> dict[str, int]:
        """Category -> bytes alive at the peak, gathered parameters left out (`gathered_at_peak`)."""
        out = super().at_peak()
        out.pop(GATHERED, None)
        return out

    def gathered_at_peak(self) -> int:
        return sum(info.nbytes for info in self._peak_live.values() if info.category == GATHERED)

    def phase_gathered(self) -> dict[str, int]:
        """Phase -> gathered bytes alive at that phase's peak."""
        return {
            phase: sum(info.nbytes for info in live.values() if info.category == GATHERED)
            for phase, live in self._phase_peak_live.items()
        }
