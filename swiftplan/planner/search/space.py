"""The search space of `swiftplan fit`: every choice, the values it may take, and how pins narrow it.

A dimension keeps only the values the accelerator can run (`capabilities.check`), the model allows
(tensor-parallel degrees that divide the heads, pipeline stages no more than the layers) and the
user allowed (a pin is a tuple of allowed values: one value pins, several forbid the rest). Pure.

The space itself (the values, the sharding classes, the memory order and `TrainSpace`) lives in
space_choices and the global-batch rounding in space_batch; this module narrows each choice and builds the
space (`build_train_space`), and re-exports their public names.
"""

from __future__ import annotations

from swiftplan.errors import SwiftplanError
from swiftplan.planner.capabilities import check
from swiftplan.planner.engines import Engine
from swiftplan.planner.hardware import Cluster
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.search.candidate import TrainQuant
from swiftplan.planner.search.pins import (
    Pins,
    allowed_values,
    attention_targets,
    impossible_values,
    layouts_for,
)
from swiftplan.planner.search.space_batch import batch_layouts, split_global_batch
from swiftplan.planner.search.space_choices import (
    ATTENTION,
    DEFAULT_OPTIMIZERS,
    DEFAULT_RANK,
    MAX_MICRO_BATCH,
    RANKS,
    SHARDING_CLASSES,
    SHARDINGS,
    TRAIN_QUANTS,
    Sharding,
    TrainSpace,
    memory_weight,
    needs_at_least,
    sharding_class,
)
from swiftplan.planner.setup import (
    ALL_LINEAR,
    METHODS,
    OFFLOADS,
    PRECISIONS,
    ZERO3_QUANTS,
    Method,
    Offload,
    Precision,
    parse_choice,
)

__all__ = [
    "ATTENTION",
    "DEFAULT_OPTIMIZERS",
    "DEFAULT_RANK",
    "MAX_MICRO_BATCH",
    "RANKS",
    "SHARDINGS",
    "SHARDING_CLASSES",
    "TRAIN_QUANTS",
    "Sharding",
    "TrainSpace",
    "batch_layouts",
    "build_train_space",
    "memory_weight",
    "needs_at_least",
    "sharding_class",
    "split_global_batch",
]


def _train_precisions(method: Method, bf16: bool, pinned: tuple[str, ...] | None) -> tuple[Precision, ...]:
    """Precision modes for a method, preferred first: the pins the method and device allow, or the defaults."""
    valid: tuple[Precision, ...]
    default: tuple[Precision, ...]
    if method == "qlora":
        valid = ("bf16", "fp16")
        default = ("bf16",) if bf16 else ("fp16",)
    else:
        valid = PRECISIONS
        default = (
            ("bf16", "amp-bf16") if bf16 else (("amp-fp16",) if method == "full" else ("fp16", "amp-fp16"))
        )
    if pinned is None:
        return default
    return tuple(
        parse_choice("precision", p, valid) for p in pinned if p in valid and (bf16 or "bf16" not in p)
    )


def _train_quants(cluster: Cluster, pins: Pins, engine: Engine | None) -> tuple[TrainQuant, ...]:
    """Base quantizations allowed: the pins ('nf4' allows both NF4 variants) minus what cannot run."""
    bad_quant = impossible_values(cluster, "quant", ("int8", "nf4"), engine)
    bad_quant["nf4-dq"] = bad_quant.get("nf4", None)
    bad_quant = {k: v for k, v in bad_quant.items() if v}
    quant_pins = pins.quants
    if quant_pins is not None and "nf4" in quant_pins:
        quant_pins = tuple(
            dict.fromkeys(q for p in quant_pins for q in (("nf4", "nf4-dq") if p == "nf4" else (p,)))
        )
    return allowed_values("base quantization", TRAIN_QUANTS, quant_pins, bad_quant)


def _shardings(cluster: Cluster, pins: Pins, engine: Engine | None) -> tuple[tuple[Sharding, ...], Offload]:
    """((ZeRO stage, offload) pairs allowed, the most that may be offloaded)."""
    zero_stages = allowed_values(
        "ZeRO stage", (0, 1, 2, 3), pins.zero, impossible_values(cluster, "zero_stage", (0, 1, 2, 3), engine)
    )
    max_offload = parse_choice("--max-offload", pins.max_offload or "optimizer+params", OFFLOADS)
    engine_offloads = None if engine is None else engine.allowed("offload", cluster.accelerator.backend)
    offloads = tuple(
        o
        for o in OFFLOADS[: OFFLOADS.index(max_offload) + 1]
        if engine_offloads is None or o in engine_offloads
    )
    shardings = tuple(s for s in SHARDINGS if s[0] in zero_stages and s[1] in offloads)
    if not shardings:
        raise SwiftplanError(
            f"--zero {'/'.join(map(str, zero_stages))} with --max-offload {max_offload} leaves no valid sharding.",
            hint="Offloading parameters needs ZeRO-3; offloading the optimizer needs ZeRO 1-3.",
        )
    return shardings, max_offload


_METHOD_QUANTS: dict[Method, tuple[TrainQuant, ...]] = {
    "full": ("none",),
    "lora": ("none", "int8"),
    "qlora": ("nf4-dq", "nf4"),
}
"""Base quantizations each method can train on, preferred first."""


def _methods(
    cluster: Cluster, pins: Pins, engine: Engine | None, quants: tuple[TrainQuant, ...], shardings: tuple[Sharding, ...]
) -> tuple[tuple[Method, ...], dict[str, tuple[TrainQuant, ...]], dict[str, tuple[Precision, ...]]]:  # fmt: skip
    """(methods left, their quantizations, their precisions): a method stays when it keeps one of each."""
    bf16 = not check(cluster.accelerator, precision="bf16")
    methods: list[Method] = []
    method_quants: dict[str, tuple[TrainQuant, ...]] = {}
    precisions: dict[str, tuple[Precision, ...]] = {}
    bad_methods = impossible_values(cluster, "method", METHODS, engine)
    for name in pins.methods or METHODS:
        method = parse_choice("method", name, METHODS)
        if method in bad_methods:
            continue
        q = tuple(
            x
            for x in _METHOD_QUANTS[method]
            if x in quants and (x == "none" or any(z < 3 for z, _ in shardings))
        )
        p = _train_precisions(method, bf16, pins.precisions)
        if q and p:
            methods.append(method)
            method_quants[method], precisions[method] = q, p
    if not methods:
        raise SwiftplanError(
            "The pinned method, quantization and precision leave nothing to search "
            f"(method {'/'.join(pins.methods or METHODS)}, quant {'/'.join(quants)}, "
            f"precision {'/'.join(pins.precisions or ('default',))}).",
            hint="QLoRA needs an nf4 base and bf16/fp16; full fine-tuning needs --quant none.",
        )
    return tuple(methods), method_quants, precisions


def _targets(spec: ModelSpec, pins: Pins) -> dict[str, tuple[str, ...]]:
    """Target key → module names: all-linear (and attention-only when ranks are searched), or the pins."""
    keys: tuple[str, ...]
    if pins.targets is None:
        keys = (ALL_LINEAR, ATTENTION) if pins.ranks is not None and len(pins.ranks) > 1 else (ALL_LINEAR,)
    else:
        keys = pins.targets
    attention = attention_targets(spec)
    return {
        k: (ALL_LINEAR,) if k == ALL_LINEAR else attention if k == ATTENTION else tuple(k.split(","))
        for k in keys
    }


def _micro_batches(pins: Pins) -> tuple[int, ...] | None:
    """The pinned micro-batches, smallest first (None: the evaluator chooses)."""
    if pins.micro_batch is None:
        return None
    if any(b < 1 for b in pins.micro_batch):
        raise SwiftplanError(f"Micro-batch sizes must be positive, got {pins.micro_batch}.")
    return tuple(sorted(pins.micro_batch))


def build_train_space(
    spec: ModelSpec,
    cluster: Cluster,
    pins: Pins,
    engine: Engine | None = None,
    *,
    global_batch: int | None = None,
) -> TrainSpace:
    """The training search space for `spec` on `cluster` under `pins`, limited to what the device and
    `engine` can run (None: any engine) and, given the `global_batch`, to the layouts that split it evenly
    (`batch_layouts`); raises when a pin leaves nothing."""
    quants = _train_quants(cluster, pins, engine)
    optimizers = allowed_values(
        "optimizer",
        DEFAULT_OPTIMIZERS,
        pins.optimizers,
        impossible_values(cluster, "optimizer", pins.optimizers or DEFAULT_OPTIMIZERS, engine),
    )
    shardings, max_offload = _shardings(cluster, pins, engine)
    methods, method_quants, precisions = _methods(cluster, pins, engine, quants, shardings)
    targets, micro_batches = _targets(spec, pins), _micro_batches(pins)
    layouts = layouts_for(spec, cluster, pins, engine)
    return TrainSpace(
        methods=methods,
        quants=method_quants,
        precisions=precisions,
        optimizers=optimizers,
        grad_ckpt=pins.grad_ckpt or (True, False),
        shardings=shardings,
        layouts=layouts if global_batch is None else batch_layouts(layouts, global_batch, micro_batches),
        ranks=pins.ranks or (DEFAULT_RANK,),
        targets=targets,
        micro_batches=micro_batches,
        max_offload=max_offload,
        engine=engine,
        zero3_quants=_zero3_quants(cluster, engine),
    )


def _zero3_quants(cluster: Cluster, engine: Engine | None) -> tuple[str, ...]:
    """Bases ZeRO-3 may partition on this engine (setup.ZERO3_QUANTS, narrowed by its `zero3_quant`)."""
    allowed = None if engine is None else engine.allowed("zero3_quant", cluster.accelerator.backend)
    return ZERO3_QUANTS if allowed is None else tuple(q for q in ZERO3_QUANTS if q in allowed)
