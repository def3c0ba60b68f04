"""Real values for the small tensors of a fake-tensor trace: token ids, masks, labels and what is
computed from them.

Fake tensors carry shapes, not data, so code that branches on data or whose output shape depends on it
(`mask.any()`, `x[bool_mask]`, `torch.nonzero`, `.item()`) cannot run on them. A training step's data
tensors are tiny next to its activations, so `KnownValues` keeps a real copy of each one the caller
marks (`known`) and recomputes every op whose tensor inputs are all known on those copies; a
data-dependent op then takes its shape or value from the real copy while the fake op still allocates
what the real one would. A scalar read from a tensor with no known value (a metric computed from the
model's outputs) reads 1 (or True): no tensor's size depends on such a value in the traced code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_flatten, tree_map

_KEY = "_swiftplan_known"
_aten = torch.ops.aten
_SCALAR = _aten._local_scalar_dense.default
_NONZERO = _aten.nonzero.default
_INDEX_OPS = frozenset({_aten.index.Tensor, _aten.index_put.default, _aten.index_put_.default})
_UNINITIALISED = frozenset(
    {
        _aten.empty.memory_format,
        _aten.empty_strided.default,
        _aten.empty_like.default,
        _aten.new_empty.default,
    }
)
"""Their values are whatever a kernel later writes (TRL's Triton kernels write nothing in the trace)."""


def known(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mark `fake` as holding `real`'s values (same shape and dtype); returns `fake`."""
    if fake.shape != real.shape or fake.dtype != real.dtype:
        raise ValueError(
            f"known value {tuple(real.shape)} {real.dtype} does not match {tuple(fake.shape)} {fake.dtype}"
        )
    setattr(fake, _KEY, real)
    return fake


def value_of(t: Any) -> torch.Tensor | None:
    """The real value of a known tensor (a real tensor is its own), else None."""
    if not isinstance(t, torch.Tensor):
        return None
    return getattr(t, _KEY, None) if isinstance(t, FakeTensor) else t


def _is_bool_index(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8)


class KnownValues(TorchDispatchMode):
    """Propagate known values op by op and answer data-dependent ops from them (module docstring).

    Push it above the `FakeTensorMode` and the `MemoryTracker`, so the fake ops it issues are tracked.
    `max_elements` bounds the real work: ops over more known elements than that are not recomputed.
    """

    def __init__(self, *, max_elements: int = 1 << 24, max_created: int = 1 << 16) -> None:
        super().__init__()
        self.max_elements = max_elements
        self.max_created = max_created
        """Ops without tensor inputs (arange, full, scalar constants) are recomputed up to this size."""
        self.unknown_reads = 0
        """Scalars read from tensors with no known value (answered 1)."""

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is _SCALAR:
            return self._scalar(args[0])
        if func is _NONZERO:
            return self._nonzero(args[0])
        if func in _INDEX_OPS and any(_is_bool_index(i) for i in args[1] if i is not None):
            indices = [self._as_long_indices(i) if _is_bool_index(i) else [i] for i in args[1]]
            args = (args[0], [j for group in indices for j in group], *args[2:])
        out = func(*args, **kwargs)
        self._propagate(func, args, kwargs, out)
        return out

    # -- data-dependent ops ------------------------------------------------------------------------

    def _scalar(self, t: torch.Tensor) -> Any:
        real = value_of(t)
        if real is not None:
            with _disable_current_modes():
                return real.item()
        self.unknown_reads += 1
        if t.dtype == torch.bool:
            return True
        return 1.0 if t.dtype.is_floating_point or t.dtype.is_complex else 1

    def _real_nonzero(self, mask: torch.Tensor) -> torch.Tensor:
        """Indices of the true entries of `mask`: from its known value, else every entry (all true)."""
        real = value_of(mask)
        if real is None:
            self.unknown_reads += 1
            real = torch.ones(mask.shape, dtype=torch.bool)
        with _disable_current_modes():
            return torch.nonzero(real)

    def _nonzero(self, mask: torch.Tensor) -> torch.Tensor:
        idx = self._real_nonzero(mask)
        return known(torch.empty(tuple(idx.shape), dtype=torch.long, device=mask.device), idx)

    def _as_long_indices(self, mask: torch.Tensor) -> list[torch.Tensor]:
        """A boolean index as the long index tensors of its true entries (what aten's index does)."""
        idx = self._real_nonzero(mask)
        with _disable_current_modes():
            columns = [idx[:, d].clone() for d in range(idx.shape[1])]
        return [known(torch.empty(c.shape, dtype=torch.long, device=mask.device), c) for c in columns]

    # -- propagation -------------------------------------------------------------------------------

    def _propagate(self, func: Any, args: Any, kwargs: Any, out: Any) -> None:
        """Recompute `func` on the known values when every tensor input has one; forget the known value
        of an input the op wrote to otherwise."""
        if func in _UNINITIALISED:
            return
        flat, _ = tree_flatten((args, kwargs))
        tensors = [t for t in flat if isinstance(t, torch.Tensor)]
        if not tensors:
            outs = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
            if not outs or sum(o.numel() for o in outs) > self.max_created:
                return
        reals = [r for r in (value_of(t) for t in tensors) if r is not None]
        if len(reals) < len(tensors) or sum(r.numel() for r in reals) > self.max_elements:
            self._forget_written(func, args)
            return

        def real(x: Any) -> Any:
            return value_of(x) if isinstance(x, torch.Tensor) else x

        try:
            with _disable_current_modes():
                real_out = func(*tree_map(real, args), **tree_map(real, kwargs))
        except Exception:  # an op the real CPU kernel refuses: its outputs stay unknown
            self._forget_written(func, args)
            return
        fakes, _ = tree_flatten(out)
        reals_out, _ = tree_flatten(real_out)
        for f, r in zip(fakes, reals_out, strict=False):
            if isinstance(f, torch.Tensor) and isinstance(r, torch.Tensor) and f.shape == r.shape:
                setattr(f, _KEY, r)

    @staticmethod
    def _forget_written(func: Any, args: Any) -> None:
        """An op wrote unknown data into a known tensor: it, and the tensor it is a view of, are unknown."""
        for arg, schema in zip(args, func._schema.arguments, strict=False):
            alias = schema.alias_info
            if alias is not None and alias.is_write and isinstance(arg, FakeTensor):
                for t in (arg, arg._base):
                    if t is not None and hasattr(t, _KEY):
                        delattr(t, _KEY)


@contextlib.contextmanager
def readable_masks() -> Iterator[None]:
    """Let transformers' mask code read an attention mask with known values, as it reads a real one.

    `masking_utils` treats every fake tensor as traced (`is_tracing`) and then always builds a
    B x 1 x S x S mask (and SDPA repeats the KV heads for it); on a real batch without padding it skips the
    mask and runs SDPA with `is_causal=True`, as it does here for a known all-ones mask."""
    from transformers import masking_utils

    original = masking_utils.is_tracing

    def is_tracing(tensor: Any = None) -> bool:
        return bool(original(tensor)) and value_of(tensor) is None

    masking_utils.is_tracing = is_tracing
    try:
        yield
    finally:
        masking_utils.is_tracing = original
