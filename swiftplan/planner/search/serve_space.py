"""The serving search space: weight quantization, KV-cache dtype and tensor parallelism. Pure."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import product

from swiftplan.planner.capabilities import check
from swiftplan.planner.engines import Engine
from swiftplan.planner.hardware import Cluster
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.search.candidate import ServeCandidate
from swiftplan.planner.search.pins import Pins, allowed_values, impossible_values, layouts_for
from swiftplan.planner.setup import SERVE_RUNTIMES, KvDtype, Quant, ServeDtype, ServeRuntime

SERVE_QUANTS: tuple[Quant, ...] = ("none", "fp8", "int8", "nf4")
"""Weight quantizations the serving search can try (ones vLLM can apply to a bf16 checkpoint at load)."""
DEFAULT_SERVE_QUANTS: tuple[Quant, ...] = ("none", "fp8")
"""Tried unless --quant says otherwise, by `fit` and `size` alike: 16-bit and fp8 weights. int8 and NF4
(bitsandbytes) lose accuracy and run slower in vLLM than the roofline suggests (its bitsandbytes path
dequantizes on the fly), so no plan or purchase rests on them unless asked for."""

DEFAULT_SERVE_RUNTIME: ServeRuntime = "vllm"
"""The serving runtime a plan's speed is computed for when its engine has none of its own."""


def engine_runtime(engine: Engine | None) -> ServeRuntime:
    """The serving runtime whose per-step decode cost (speed.decode_step_overhead_s) times `engine`'s plans:
    its own (engines.json `runtime`: vllm, sglang, lmdeploy), else vLLM's (the built-in server has no
    calibrated step cost yet; None = any engine)."""
    own = None if engine is None else engine.runtime
    return next((r for r in SERVE_RUNTIMES if r == own), DEFAULT_SERVE_RUNTIME)


@dataclass(frozen=True, kw_only=True, slots=True)
class ServeSpace:
    """Every structural choice for serving: weight quantization, KV dtype, tensor parallelism."""

    quants: tuple[Quant, ...]
    """Weight quantizations."""
    kv_dtypes: tuple[KvDtype, ...]
    """KV-cache dtypes."""
    tps: tuple[int, ...]
    """Tensor-parallel degrees (replicas = GPUs / tp)."""
    dtype: ServeDtype
    """Compute dtype: bf16, or fp16 where bf16 is unsupported."""
    engine: Engine | None = None
    """The serving engine the plans are for (its limits are already applied); None = any engine."""

    def structures(self) -> Iterator[ServeCandidate]:
        """Every serving candidate (concurrency 0 = to be chosen)."""
        for quant, kv, tp in product(self.quants, self.kv_dtypes, self.tps):
            yield ServeCandidate(quant=quant, kv_dtype=kv, tp=tp, dtype=self.dtype)

    def size(self) -> int:
        """Number of candidates."""
        return len(self.quants) * len(self.kv_dtypes) * len(self.tps)


def build_serve_space(
    spec: ModelSpec, cluster: Cluster, pins: Pins, engine: Engine | None = None
) -> ServeSpace:
    """The serving search space for `spec` on `cluster` under `pins`, limited to what the device and
    `engine` can run (None: any engine)."""
    bad = impossible_values(cluster, "quant", SERVE_QUANTS, engine, serve_runtime=engine_runtime(engine))
    quants = allowed_values("weight quantization", DEFAULT_SERVE_QUANTS, pins.quants, bad)
    kv_bad = {"fp8": r[0]} if (r := check(cluster.accelerator, precision="fp8")) else {}
    engine_kv = None if engine is None else engine.allowed("kv_dtype", cluster.accelerator.backend)
    if engine is not None and engine_kv is not None and "fp8" not in engine_kv:
        kv_bad["fp8"] = (
            f"{engine.name} keeps the KV cache in the compute dtype ({engine.why('kv_dtype', cluster.accelerator.backend)})."
        )
    kv = allowed_values("KV-cache dtype", ("auto", "fp8"), pins.kv_dtypes, kv_bad)
    tps = tuple(sorted({layout.tp for layout in layouts_for(spec, cluster, Pins(tp=pins.tp), engine)}))
    return ServeSpace(
        quants=quants,
        kv_dtypes=kv,
        tps=tps,
        dtype="fp16" if check(cluster.accelerator, precision="bf16") else "bf16",
        engine=engine,
    )
