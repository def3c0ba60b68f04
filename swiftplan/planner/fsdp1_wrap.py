"""What FSDP1's constructor leaves cached in the allocator before the first step (pure: no torch).

`FullyShardedDataParallel(module, device_id=..., sync_module_states=True)` builds one FlatParameter per
unit, children first and the root (embedding, final norm, LM head) last, each on the GPU:

1. the unit's parameters are moved to the device (`_move_module_to_device`; a meta module is
   materialized there by `param_init_fn` instead) — one block per tensor;
2. rank 0's values are broadcast (`_sync_module_params_and_buffers`): tensors grouped in order into
   buckets of up to 250 MiB (PARAM_BROADCAST_BUCKET_SIZE), each bucket of more than one tensor copied
   into one flat buffer, at most 2 buckets in flight;
3. the parameters are concatenated into the unit's FlatParameter (`flatten_tensors`, `torch.cat`) and
   this rank's shard cloned out of it (`shard`, `_get_shard`: `chunk.clone()`), the flat tensor's storage
   freed; with CPU offload the shard then moves to the host (`flat_param_to(cpu)`);
4. the original parameters are freed when the function returns (`managed_params` holds them until then).

Nothing calls `empty_cache()` after wrapping in the runs planned (Answer.AI's train.py resets only the
peak counters; HF Trainer / accelerate neither), so the blocks these steps freed stay reserved: the step's
own per-step tensors reuse them first, and `max_memory_reserved()` cannot fall below what wrapping
reserved. FSDP1 all-gathers each unit into a buffer allocated on its unshard stream (`FlatParamHandle.
unshard` under `_unshard`'s stream context), a pool of its own, so the gathered units cannot use this
cache. LoRA adapters (wrapped as units of their own by Answer.AI's and peft's FSDP policies) are small-pool
blocks and left out.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from itertools import count

from swiftplan.planner.allocator import SetupCache, segment_bytes
from swiftplan.planner.architecture import (
    embedding_params,
    final_norm_params,
    layer_linears,
    layer_vector_params,
    lm_head_params,
)
from swiftplan.planner.breakdown import Term
from swiftplan.planner.caching_allocator import replay
from swiftplan.planner.fsdp_memory import fsdp_unit_bytes
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.setup import TrainSetup
from swiftplan.planner.weights import is_quantized, outer_weight_bytes, quantized_linear_bytes

MiB = 2**20

BROADCAST_BUCKET_BYTES = 250 * MiB
"""torch/distributed/fsdp/_init_utils.py PARAM_BROADCAST_BUCKET_SIZE."""
BROADCASTS_IN_FLIGHT = 2
"""torch/csrc/distributed/c10d/comm.cpp broadcast_coalesced: `constexpr auto max_in_flight = 2`."""

FSDP1_WRAP_SOURCE = (
    "torch 2.13 torch/distributed/fsdp/_init_utils.py (_init_param_handle_from_module: _move_module_to_device, "
    "managed_params kept to the end, _sync_module_params_and_buffers with PARAM_BROADCAST_BUCKET_SIZE = 250 MiB, "
    "handle.shard(), flat_param_to(cpu) under CPU offload), _flat_param.py (flatten_tensors: torch.cat; shard: "
    "_get_shard chunk.clone(), the flat storage resized to 0), torch/csrc/distributed/c10d/comm.cpp "
    "(broadcast_coalesced: buckets by size, max_in_flight = 2; a one-tensor bucket is a view, tensor_flatten.h); "
    "replayed through the caching allocator (planner/caching_allocator.py); the structure dates from torch 2.1"
)


def _block_tensors(spec: ModelSpec, setup: TrainSetup, layer: int, weight_bytes: int) -> list[int]:
    """Bytes of each parameter tensor of a decoder block as FSDP1 moves it: matrices in module order
    (a bitsandbytes 4-bit weight packed, its quant state with it), then the norms."""
    tp = setup.parallel.tp
    tensors: list[int] = []
    for lin in layer_linears(spec, layer):
        if is_quantized(lin, setup.quant):
            per_copy = quantized_linear_bytes(lin, setup.quant, double_quant=setup.double_quant) // lin.count
        else:
            per_copy = lin.in_features * lin.out_features * weight_bytes
        tensors += [per_copy // tp] * lin.count
    return [*tensors, layer_vector_params(spec, layer) * weight_bytes]


def _root_tensors(spec: ModelSpec, setup: TrainSetup, weight_bytes: int) -> list[int]:
    """The root unit: embedding, final norm, LM head (untied), in module order."""
    tp = setup.parallel.tp
    head = lm_head_params(spec) * weight_bytes // tp
    return [
        embedding_params(spec) * weight_bytes // tp,
        final_norm_params(spec) * weight_bytes,
        *([head] if head else []),
    ]


def _broadcast_buckets(tensors: list[int]) -> list[int]:
    """Flat buffers `broadcast_coalesced` allocates: consecutive tensors grouped until a bucket reaches
    250 MiB; a bucket of one tensor broadcasts the tensor itself (no buffer, 0)."""
    buckets: list[list[int]] = [[]]
    for size in tensors:
        buckets[-1].append(size)
        if sum(buckets[-1]) >= BROADCAST_BUCKET_BYTES:
            buckets.append([])
    return [sum(b) if len(b) > 1 else 0 for b in buckets if b]


def _unit_events(
    tensors: list[int], keys: Iterator[int], *, shards: int, offload: bool
) -> list[tuple[int, int]]:
    """One unit's construction (module docstring, steps 1-4) as allocator events: (key, bytes) allocates,
    (key, -1) frees; each allocation takes the next of `keys`."""
    params = [(next(keys), t) for t in tensors]
    events: list[tuple[int, int]] = list(params)
    in_flight: list[int] = []
    for bucket in _broadcast_buckets(tensors):
        if len(in_flight) == BROADCASTS_IN_FLIGHT:
            events.append((in_flight.pop(0), -1))
        if bucket:
            key = next(keys)
            in_flight.append(key)
            events.append((key, bucket))
    events += [(key, -1) for key in in_flight]
    total = sum(tensors)
    flat, shard = next(keys), next(keys)
    events += [(flat, total + (-total) % shards), (shard, -(-total // shards)), (flat, -1)]
    if offload:
        events.append((shard, -1))
    return events + [(key, -1) for key, _ in params]


def fsdp1_wrap_events(spec: ModelSpec, setup: TrainSetup, *, shards: int, weight_bytes: int, layers: range) -> list[tuple[int, int]]:  # fmt: skip
    """FSDP1's construction of the blocks in `layers` and then the root, as the allocator sees it (children
    first: the auto-wrap policy wraps each block before the root). Source: `FSDP1_WRAP_SOURCE`."""
    units = [_block_tensors(spec, setup, layer, weight_bytes) for layer in layers]
    units.append(_root_tensors(spec, setup, weight_bytes))
    keys = count()
    events: list[tuple[int, int]] = []
    for tensors in units:
        events += _unit_events(tensors, keys, shards=shards, offload=setup.runtime.fsdp_cpu_offload)
    return events


@dataclass(frozen=True, kw_only=True, slots=True)
class WrapCache:
    """The allocator after FSDP1 wrapped the model, bytes."""

    reserved: int
    """Reserved after wrapping (its peak: segments are kept)."""
    shards: int
    """Allocated: the shards kept on the device (0 under CPU offload)."""

    @property
    def cached(self) -> int:
        """Reserved but free: blocks the step's per-step tensors can reuse."""
        return self.reserved - self.shards


def fsdp1_wrap_cache(spec: ModelSpec, setup: TrainSetup, *, shards: int, weight_bytes: int, layers: range) -> WrapCache:  # fmt: skip
    """Replay FSDP1's construction of the blocks in `layers` and the root over `shards` ranks (the shard
    group) on one fresh allocator. Source: `FSDP1_WRAP_SOURCE`."""
    return _replayed(
        tuple(fsdp1_wrap_events(spec, setup, shards=shards, weight_bytes=weight_bytes, layers=layers))
    )


@cache
def _replayed(events: tuple[tuple[int, int], ...]) -> WrapCache:
    result = replay(list(events))
    return WrapCache(reserved=result.peak_reserved, shards=result.allocated_at_end)


def fsdp1_setup_cache(spec: ModelSpec, setup: TrainSetup, *, shards: int, weight_bytes: int, layers: range,
                      gathered_bytes: int) -> SetupCache | None:  # fmt: skip
    """FSDP1's wrap cache for the reserved model (`allocator.with_reserved`), with the gathered units of
    the step (their own stream's pool) kept apart; None without FSDP1 or without sharding."""
    if setup.runtime.fsdp != "fsdp1" or shards <= 1:
        return None
    wrap = fsdp1_wrap_cache(spec, setup, shards=shards, weight_bytes=weight_bytes, layers=layers)
    return SetupCache(cached_bytes=wrap.cached, apart_bytes=gathered_bytes, what="FSDP1's wrap",
                      source=FSDP1_WRAP_SOURCE)  # fmt: skip


FSDP1_OFFLOAD_COPY_SOURCE = (
    "torch 2.13 torch/distributed/fsdp/_runtime_utils.py (_unshard: handle.pre_unshard() under the "
    "pre-unshard stream, then all-gather under the unshard stream), _flat_param.py (pre_unshard: with "
    "offload_params, flat_param_to(device, non_blocking=True) 'creates a new tensor distinct from any "
    "attributes'; unshard then points the FlatParameter at the gathered buffer, freeing the copy)"
)


def fsdp1_offload_copy_term(spec: ModelSpec, setup: TrainSetup, *, shards: int, weight_bytes: int, layers: range) -> Term | None:  # fmt: skip
    """FSDP1 with CPU offload copies each unit's shard to the device before gathering it, on the pre-unshard
    stream: that stream's pool keeps a block the size of the largest unit's shard (the root's, as a rule;
    later copies split it), reserved beside the step and never reused by it. None otherwise."""
    if setup.runtime.fsdp != "fsdp1" or not setup.runtime.fsdp_cpu_offload or shards <= 1:
        return None
    tp = setup.parallel.tp
    block = max(fsdp_unit_bytes(spec, setup, i, weight_bytes) for i in layers) // tp
    root = outer_weight_bytes(spec, dtype_bytes=weight_bytes, tp=tp)
    largest = max(block, root)
    copy = segment_bytes(-(-largest // shards))
    return Term(
        name="fsdp1_offload_copies",
        value_bytes=copy,
        formula=f"the largest unit's shard copied to the device ({'root' if root >= block else 'block'} "
        f"{largest / MiB:,.0f} MiB / {shards} ranks, a {copy / MiB:,.0f} MiB segment of the pre-unshard stream)",
        source=FSDP1_OFFLOAD_COPY_SOURCE,
    )
