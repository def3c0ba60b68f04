"""The serving search space: weight quantization, KV-cache dtype and tensor parallelism. Pure."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import product

from swiftplan.planner.capabilities import check
from swiftplan.planner.hardware import Cluster
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.search.candidate import ServeCandidate
from swiftplan.planner.search.pins import Pins, allowed_values, impossible_values, layouts_for

SERVE_QUANTS = ("none", "fp8", "int8", "nf4")
"""Weight quantizations searched for serving (ones vLLM can apply to a bf16 checkpoint at load)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ServeSpace:
    """Every structural choice for serving: weight quantization, KV dtype, tensor parallelism."""

    quants: tuple[str, ...]
    """Weight quantizations."""
    kv_dtypes: tuple[str, ...]
    """KV-cache dtypes."""
    tps: tuple[int, ...]
    """Tensor-parallel degrees (replicas = GPUs / tp)."""
    dtype: str
    """Compute dtype: bf16, or fp16 where bf16 is unsupported."""

    def structures(self) -> Iterator[ServeCandidate]:
        """Every serving candidate (concurrency 0 = to be chosen)."""
        for quant, kv, tp in product(self.quants, self.kv_dtypes, self.tps):
            yield ServeCandidate(quant=quant, kv_dtype=kv, tp=tp, dtype=self.dtype)

    def size(self) -> int:
        """Number of candidates."""
        return len(self.quants) * len(self.kv_dtypes) * len(self.tps)


def build_serve_space(spec: ModelSpec, cluster: Cluster, pins: Pins) -> ServeSpace:
    """The serving search space for `spec` on `cluster` under `pins`."""
    bad = impossible_values(cluster, "quant", SERVE_QUANTS)
    quants = allowed_values("weight quantization", SERVE_QUANTS, pins.quants, bad)
    kv_bad = {"fp8": r[0]} if (r := check(cluster.accelerator, precision="fp8")) else {}
    kv = allowed_values("KV-cache dtype", ("auto", "fp8"), pins.kv_dtypes, kv_bad)
    tps = tuple(sorted({layout.tp for layout in layouts_for(spec, cluster, Pins(tp=pins.tp))}))
    return ServeSpace(
        quants=quants,
        kv_dtypes=kv,
        tps=tps,
        dtype="fp16" if check(cluster.accelerator, precision="bf16") else "bf16",
    )
