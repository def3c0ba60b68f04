"""What the user and the hardware allow: pins, parallel layouts, and options the device cannot run. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from swiftplan.errors import SwiftplanError
from swiftplan.planner.architecture import layer_linears
from swiftplan.planner.capabilities import check
from swiftplan.planner.engines import Engine
from swiftplan.planner.hardware import Cluster
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.search.candidate import Layout


@dataclass(frozen=True, kw_only=True, slots=True)
class Pins:
    """What the user fixed or forbade. None searches the default set; a tuple lists the allowed values."""

    methods: tuple[str, ...] | None = None
    """full / lora / qlora."""
    quants: tuple[str, ...] | None = None
    """Training: none / int8 / nf4 / nf4-dq ('nf4' allows both NF4 variants). Serving: none / fp8 / int8 / nf4."""
    precisions: tuple[str, ...] | None = None
    """bf16 / amp-bf16 / fp16 / amp-fp16 / fp32."""
    optimizers: tuple[str, ...] | None = None
    """Optimizer names."""
    grad_ckpt: tuple[bool, ...] | None = None
    """Gradient checkpointing on/off."""
    zero: tuple[int, ...] | None = None
    """ZeRO stages."""
    max_offload: str | None = None
    """Most that may be offloaded: none / optimizer / optimizer+params."""
    tp: tuple[int, ...] | None = None
    """Tensor-parallel degrees."""
    pp: tuple[int, ...] | None = None
    """Pipeline-parallel degrees."""
    dp: tuple[int, ...] | None = None
    """Data-parallel degrees."""
    micro_batch: tuple[int, ...] | None = None
    """Micro-batch sizes (None: the largest that fits, or searched in Pareto mode)."""
    ranks: tuple[int, ...] | None = None
    """LoRA ranks (None: 16; --rank auto: 4..256)."""
    targets: tuple[str, ...] | None = None
    """Target keys: 'all-linear', 'attention', or one comma-separated module list (None: all-linear, or
    both presets with --rank auto)."""
    kv_dtypes: tuple[str, ...] | None = None
    """Serving KV-cache dtypes: auto / fp8."""


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def attention_targets(spec: ModelSpec) -> tuple[str, ...]:
    """Leaf names of this architecture's attention projections (q/k/v/o, or the fused ones)."""
    names = [
        lin.name.rsplit(".", 1)[-1]
        for lin in layer_linears(spec, 0)
        if lin.kind == "linear" and lin.block == "attention"
    ]
    return tuple(dict.fromkeys(names))


def _gpu_counts(cluster: Cluster) -> list[int]:
    """Sub-clusters a plan may use: a divisor of one node, or whole nodes."""
    per_node = cluster.gpus_per_node
    return [
        g for g in _divisors(cluster.world_size) if (g <= per_node and per_node % g == 0) or g % per_node == 0
    ]


def _engine_bound(engine: Engine | None, option: str, cluster: Cluster) -> int:
    bound = None if engine is None else engine.bound(option, cluster.accelerator.backend)
    return cluster.world_size if bound is None else bound


def layouts_for(
    spec: ModelSpec, cluster: Cluster, pins: Pins, engine: Engine | None = None
) -> tuple[Layout, ...]:
    """(GPUs used, tp, pp) triples: tp within a node dividing the heads, pp no more than the layers,
    and no more GPUs, tp or pp than the engine runs."""
    max_gpus, max_tp, max_pp = (_engine_bound(engine, o, cluster) for o in ("gpus_max", "tp_max", "pp_max"))
    out: list[Layout] = []
    for gpus in _gpu_counts(cluster):
        if gpus > max_gpus:
            continue
        for tp in _divisors(gpus):
            if (
                tp > max_tp
                or tp > cluster.gpus_per_node
                or spec.num_heads % tp
                or (spec.num_kv_heads % tp and tp % spec.num_kv_heads)
            ):
                continue
            for pp in _divisors(gpus // tp):
                layout = Layout(gpus=gpus, tp=tp, pp=pp)
                if pp > spec.num_layers or pp > max_pp:
                    continue
                if any(
                    pin is not None and value not in pin
                    for pin, value in ((pins.tp, tp), (pins.pp, pp), (pins.dp, layout.dp))
                ):
                    continue
                out.append(layout)
    if not out:
        runs = "" if engine is None else f" that {engine.name} runs (tp ≤ {max_tp}, pp ≤ {max_pp})"
        raise SwiftplanError(
            f"No parallel layout of {cluster.describe()}{runs} matches the pinned --tp/--pp/--dp for {spec.name} "
            f"({spec.num_heads} heads, {spec.num_layers} layers).",
            hint="Tensor-parallel degrees must divide the heads and stay within a node; tp × pp × dp must divide the GPUs.",
        )
    return tuple(out)


def allowed_values(kind: str, defaults: tuple, pinned: tuple | None, impossible: dict) -> tuple:
    """Defaults (or the pins) minus what the device cannot run; a pin that leaves nothing is an error."""
    values = tuple(pinned) if pinned is not None else defaults
    kept = tuple(v for v in values if v not in impossible)
    if not kept:
        reasons = " ".join(dict.fromkeys(impossible[v] for v in values if v in impossible))
        raise SwiftplanError(
            f"No allowed {kind} is left to search. {reasons}".strip(),
            hint="`swiftplan gpus` lists what each accelerator supports.",
        )
    return kept


_ENGINE_OPTION = {"quant": "quant", "optimizer": "optimizer", "zero_stage": "zero", "method": "method"}


def impossible_values(
    cluster: Cluster,
    option: str,
    values: tuple,
    engine: Engine | None = None,
    *,
    serve_runtime: str | None = None,
) -> dict:
    """Value → reason for each value the device (capabilities.json) or the engine (engines.json) cannot run;
    `serve_runtime`: the serving runtime that loads quantized weights (`capabilities.check`)."""
    out = {}
    backend = cluster.accelerator.backend
    allowed = None if engine is None else engine.allowed(_ENGINE_OPTION.get(option, option), backend)
    for value in values:
        key = "nf4" if value == "nf4-dq" else value
        if engine is not None and allowed is not None and key not in allowed:
            out[value] = (
                f"{engine.name} does not run {option.replace('_', ' ')} {key} on {backend} ({engine.why(_ENGINE_OPTION.get(option, option), backend)})."
            )
            continue
        if option == "method":
            continue
        asked: dict[str, Any] = {option: key}
        reasons = check(cluster.accelerator, **asked, serve_runtime=serve_runtime)
        if reasons:
            out[value] = reasons[0]
    return out
