"""Each serving engine's memory knob, computed from the plan's breakdown so every engine gets the same
KV-cache budget the plan sized (pure).

The plan's fraction is vLLM's `gpu_memory_utilization` u: the whole engine (weights, KV cache,
activations, runtime) stays within u × device memory, and the KV cache is what is left,
u·M − weights − working. The other engines mean something else by their fraction:

- SGLang's `mem_fraction_static` is "the fraction of the memory used for static allocation (model
  weights and KV cache memory pool)" (sgl-project/sglang@469c63e54e7d94591617ef9590c6aa26d54dc1bb
  python/sglang/srt/server_args.py, --mem-fraction-static help); activations and CUDA graphs live in
  the rest. The same KV pool is u − working / M.
- LMDeploy's `cache_max_entry_count` is the share of the memory still free after the weights are
  loaded and the runtime reserve is taken that becomes KV cache
  (InternLM/lmdeploy@1263d5cd889b7ad500e85b8eb20401327a4516ab lmdeploy/pytorch/engine/executor/base.py,
  update_configs → _reserve_runtime_mem → _update_num_gpu_blocks: free × cache_max_entry_count;
  lmdeploy/cli/utils.py: "the percentage of free gpu memory occupied by the k/v cache, excluding
  weights"). The same KV pool is kv / (M − weights − working).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from swiftplan.errors import SwiftplanError

_STATIC_TERMS = ("weights", "adapters")
"""Breakdown terms loaded once and kept: the weights and the resident LoRA slots."""
_WORKING_TERMS = ("activations", "logits", "transient", "runtime_overhead")
"""Breakdown terms outside the weights and the KV pool: forward-pass buffers and the runtime."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ServeMemory:
    """One device's memory as the plan sized it."""

    device_memory_bytes: int
    """Memory the device offers."""
    static_bytes: int
    """Weights and resident adapters."""
    working_bytes: int
    """Activations, logits, transient buffers and runtime overhead at the planned load."""

    @classmethod
    def from_breakdown(cls, per_device_bytes: Mapping[str, int], device_memory_bytes: int) -> ServeMemory:
        """From a plan's `prediction.per_device_bytes` and `prediction.device_memory_bytes`."""
        return cls(
            device_memory_bytes=device_memory_bytes,
            static_bytes=sum(int(per_device_bytes.get(term, 0)) for term in _STATIC_TERMS),
            working_bytes=sum(int(per_device_bytes.get(term, 0)) for term in _WORKING_TERMS),
        )

    def kv_budget_bytes(self, gpu_memory_utilization: float) -> int:
        """KV-cache bytes vLLM would allocate at `gpu_memory_utilization` (what the plan sized)."""
        budget = (
            int(gpu_memory_utilization * self.device_memory_bytes) - self.static_bytes - self.working_bytes
        )
        if budget <= 0:
            raise SwiftplanError(
                f"At gpu_memory_utilization {gpu_memory_utilization:g} the weights and working memory "
                "leave no room for a KV cache on this device.",
                hint="Re-plan with more GPUs, a larger --tp or quantized weights.",
            )
        return budget


def _rounded(fraction: float) -> float:
    """Down to 3 decimals: never more memory than the plan allows."""
    return int(fraction * 1000) / 1000


def sglang_mem_fraction_static(memory: ServeMemory, gpu_memory_utilization: float) -> float:
    """SGLang's --mem-fraction-static giving the KV pool the plan sized."""
    memory.kv_budget_bytes(gpu_memory_utilization)  # refuses a plan with no room for a KV cache
    return _rounded(gpu_memory_utilization - memory.working_bytes / memory.device_memory_bytes)


def lmdeploy_cache_max_entry_count(memory: ServeMemory, gpu_memory_utilization: float) -> float:
    """LMDeploy's --cache-max-entry-count giving the KV pool the plan sized."""
    free = memory.device_memory_bytes - memory.static_bytes - memory.working_bytes
    return _rounded(memory.kv_budget_bytes(gpu_memory_utilization) / free)
