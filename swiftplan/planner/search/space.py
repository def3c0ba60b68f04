"""The search space of `swiftplan fit`: every choice, the values it may take, and how pins narrow it.

A dimension keeps only the values the accelerator can run (`capabilities.check`), the model allows
(tensor-parallel degrees that divide the heads, pipeline stages no more than the layers) and the
user allowed (a pin is a tuple of allowed values: one value pins, several forbid the rest). Pure.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import product

from swiftplan.errors import SwiftplanError
from swiftplan.planner.capabilities import check
from swiftplan.planner.engines import Engine
from swiftplan.planner.hardware import Cluster
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.objective import ObjectiveSetup, step_generations
from swiftplan.planner.search.candidate import Candidate, Layout, TrainQuant
from swiftplan.planner.search.pins import (
    Pins,
    allowed_values,
    attention_targets,
    impossible_values,
    layouts_for,
)
from swiftplan.planner.setup import (
    ALL_LINEAR,
    METHODS,
    OFFLOADS,
    PRECISIONS,
    Method,
    Offload,
    Optimizer,
    Precision,
    ZeroStage,
    parse_choice,
)

TRAIN_QUANTS: tuple[TrainQuant, ...] = ("none", "int8", "nf4", "nf4-dq")
"""Base quantizations searched for training: none, LLM.int8 (LoRA), NF4 without / with double quant (QLoRA)."""
DEFAULT_OPTIMIZERS: tuple[Optimizer, ...] = ("adamw", "adamw-8bit", "paged-adamw-8bit")
"""Optimizers searched unless pinned (sgd/adafactor only when asked for)."""
RANKS = (4, 8, 16, 32, 64, 128, 256)
"""LoRA ranks searched with --rank auto."""
DEFAULT_RANK = 16
"""Rank used unless searched or pinned: a model-quality choice, not a memory one."""
ATTENTION = "attention"
"""Target key for attention-only adapters (the attention projections of this architecture)."""
Sharding = tuple[ZeroStage, Offload]
"""A ZeRO stage with what it offloads."""
SHARDINGS: tuple[Sharding, ...] = (
    (0, "none"),
    (1, "none"),
    (2, "none"),
    (3, "none"),
    (1, "optimizer"),
    (2, "optimizer"),
    (3, "optimizer"),
    (3, "optimizer+params"),
)
"""(ZeRO stage, offload) pairs; offload needs ZeRO (params offload needs stage 3)."""
MAX_MICRO_BATCH = 256
"""Largest micro-batch considered."""


SHARDING_CLASSES: dict[str, tuple[Sharding, ...]] = {
    "none": ((0, "none"), (1, "none"), (2, "none")),
    "zero3": ((3, "none"),),
    "offload-optimizer": ((1, "optimizer"), (2, "optimizer")),
    "zero3-offload-optimizer": ((3, "optimizer"),),
    "zero3-offload-all": ((3, "optimizer+params"),),
}
"""Shardings grouped by what the speed model sees: within a class only memory differs (ZeRO-1/2 shard
optimizer state and gradients without extra traffic), so the study picks the class and the evaluator
the stage."""
_REPAIR_CLASS = {
    "zero3": "none",
    "zero3-offload-optimizer": "offload-optimizer",
    "zero3-offload-all": "offload-optimizer",
}
_OPTIMIZER_BYTES = {"sgd": 0, "adafactor": 1, "adamw-8bit": 2, "paged-adamw-8bit": 2, "adamw": 3}
_PRECISION_BYTES = {"bf16": 0, "fp16": 0, "amp-bf16": 1, "amp-fp16": 1, "fp32": 2}
_QUANT_BYTES = {"nf4-dq": 0, "nf4": 1, "int8": 0, "none": 0}


def sharding_class(zero: int, offload: str) -> str:
    """The class a (ZeRO stage, offload) pair belongs to."""
    return next(name for name, members in SHARDING_CLASSES.items() if (zero, offload) in members)


def memory_weight(candidate: Candidate) -> tuple[int, int, int, int]:
    """Per memory-only choice, a number that never decreases with the bytes it costs (for dominance checks,
    `needs_at_least`)."""
    return (
        -candidate.zero,
        _OPTIMIZER_BYTES.get(candidate.optimizer, 3),
        _PRECISION_BYTES[candidate.precision],
        _QUANT_BYTES[candidate.quant],
    )


def needs_at_least(candidate: Candidate, other: Candidate) -> bool:
    """Whether `candidate` needs at least `other`'s memory at the same micro-batch: every memory-only choice
    costs at least as much. Precision orders full fine-tuning only: with adapters, pure half precision saves
    the base's bytes but peft's fp32 adapters cast each wrapped layer's input to fp32, so two precisions
    are not comparable. Nor are plain torch (ZeRO 0) and DeepSpeed: its fp32 master copy and reduce buckets
    can outweigh what sharding saves (small models, few ranks, adapters)."""
    if candidate.method != "full" and candidate.precision != other.precision:
        return False
    if (candidate.zero == 0) != (other.zero == 0):
        return False
    return all(a >= b for a, b in zip(memory_weight(candidate), memory_weight(other), strict=True))


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainSpace:
    """Every choice for training, already narrowed by capabilities, the model and pins.

    Two levels: the study searches the *structure* (method, quantization kind, checkpointing, sharding
    class, layout, adapter shape), which sets the speed; for each structure the evaluator picks among
    the *variants* (optimizer, precision, NF4 double quantization, ZeRO stage within the class), which
    only change memory in the model. `candidates()` enumerates both levels, for brute force.
    """

    methods: tuple[Method, ...]
    """Fine-tuning methods."""
    quants: dict[str, tuple[TrainQuant, ...]]
    """Per method: base quantizations (TRAIN_QUANTS keys), preferred first."""
    precisions: dict[str, tuple[Precision, ...]]
    """Per method: precision modes, preferred first."""
    optimizers: tuple[Optimizer, ...]
    """Optimizers, preferred first."""
    grad_ckpt: tuple[bool, ...]
    """Checkpointing on/off."""
    shardings: tuple[Sharding, ...]
    """(ZeRO stage, offload) pairs allowed."""
    layouts: tuple[Layout, ...]
    """(GPUs, tp, pp) triples."""
    ranks: tuple[int, ...]
    """LoRA ranks."""
    targets: dict[str, tuple[str, ...]]
    """Target key → module names peft matches."""
    micro_batches: tuple[int, ...] | None
    """Pinned micro-batches; None lets the evaluator choose."""
    max_offload: Offload
    """Most that may be offloaded."""
    engine: Engine | None = None
    """The engine the plans are for (its limits are already applied); None = any engine."""

    def quant_kinds(self, method: str) -> tuple[TrainQuant, ...]:
        """Quantizations the study tells apart (both NF4 variants are one kind, represented by the first)."""
        kinds: list[TrainQuant] = []
        for quant in self.quants[method]:
            kind = self.quants[method][0] if quant.startswith("nf4") else quant
            if kind not in kinds:
                kinds.append(kind)
        return tuple(kinds)

    def valid_shardings(self, quant: str, dp: int) -> tuple[Sharding, ...]:
        """ZeRO-3 cannot shard a quantized base; on one data-parallel rank ZeRO only matters with offload."""
        valid = [s for s in self.shardings if not (s[0] == 3 and quant != "none")]
        lean = [s for s in valid if not (dp == 1 and s[0] > 0 and s[1] == "none")]
        return tuple(lean or valid)

    def sharding_classes(self) -> tuple[str, ...]:
        """Classes with at least one allowed member."""
        return tuple(
            name for name, members in SHARDING_CLASSES.items() if any(m in self.shardings for m in members)
        )

    def canonical(self, candidate: Candidate) -> Candidate:
        """The structure a candidate belongs to: valid sharding class, preferred variant, micro-batch kept."""
        valid = self.valid_shardings(candidate.quant, candidate.layout.dp)
        wanted = sharding_class(candidate.zero, candidate.offload)
        classes = [c for c in SHARDING_CLASSES if any(m in valid for m in SHARDING_CLASSES[c])]
        if wanted not in classes:
            wanted = _REPAIR_CLASS.get(wanted, "none")
            wanted = wanted if wanted in classes else classes[0]
        zero, offload = next(m for m in SHARDING_CLASSES[wanted] if m in valid)
        quant = self.quants[candidate.method][0] if candidate.quant.startswith("nf4") else candidate.quant
        return candidate.replace(
            zero=zero,
            offload=offload,
            quant=quant,
            optimizer=self.optimizers[0],
            precision=self.precisions[candidate.method][0],
        )

    def variants(self, structure: Candidate) -> list[Candidate]:
        """The memory-only variants of a structure, preferred first (lower ZeRO, the first optimizer,
        precision and quantization listed)."""
        valid = self.valid_shardings(structure.quant, structure.layout.dp)
        members = [
            m for m in SHARDING_CLASSES[sharding_class(structure.zero, structure.offload)] if m in valid
        ]
        quants = (
            [q for q in self.quants[structure.method] if q.startswith("nf4")]
            if structure.quant.startswith("nf4")
            else [structure.quant]
        )
        return [
            structure.replace(
                zero=zero, offload=offload, optimizer=optimizer, precision=precision, quant=quant
            )
            for (zero, offload), optimizer, precision, quant in product(
                members, self.optimizers, self.precisions[structure.method], quants
            )
        ]

    def lean(self, structure: Candidate) -> Candidate:
        """The variant of a structure that needs the least memory by `memory_weight`'s order (the preferred one
        among equals; precision: the fewest weight bytes), without listing them. The order is a heuristic
        where choices trade weights for activations; `TrainEvaluator.resolve` checks the larger sizes."""
        valid = self.valid_shardings(structure.quant, structure.layout.dp)
        members = [
            m for m in SHARDING_CLASSES[sharding_class(structure.zero, structure.offload)] if m in valid
        ]
        zero, offload = max(members, key=lambda m: m[0])
        quants = (
            [q for q in self.quants[structure.method] if q.startswith("nf4")]
            if structure.quant.startswith("nf4")
            else [structure.quant]
        )
        return structure.replace(
            zero=zero,
            offload=offload,
            optimizer=min(self.optimizers, key=lambda o: _OPTIMIZER_BYTES.get(o, 3)),
            precision=min(self.precisions[structure.method], key=_PRECISION_BYTES.__getitem__),
            quant=min(quants, key=_QUANT_BYTES.__getitem__),
        )

    def structures(self) -> Iterator[Candidate]:
        """Every structure the study can propose (canonical candidates, micro-batch 0)."""
        for method in self.methods:
            adapters = [(0, ())] if method == "full" else list(product(self.ranks, self.targets.values()))
            for quant, ckpt, layout, (rank, targets) in product(
                self.quant_kinds(method), self.grad_ckpt, self.layouts, adapters
            ):
                seen = set()
                for zero, offload in self.valid_shardings(quant, layout.dp):
                    cls = sharding_class(zero, offload)
                    if cls not in seen:
                        seen.add(cls)
                        yield Candidate(
                            method=method,
                            quant=quant,
                            precision=self.precisions[method][0],
                            optimizer=self.optimizers[0],
                            grad_ckpt=ckpt,
                            zero=zero,
                            offload=offload,
                            layout=layout,
                            rank=rank,
                            targets=targets,
                        )

    def candidates(self) -> Iterator[Candidate]:
        """Every candidate of every structure (micro-batch 0), for brute-force enumeration."""
        for structure in self.structures():
            yield from self.variants(structure)

    def size(self) -> int:
        """Number of structures."""
        return sum(1 for _ in self.structures())


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


def split_global_batch(batch: int, ranks: int, *, pins: Pins, objective: ObjectiveSetup) -> int:
    """The smallest global batch ≥ `batch` that every data-parallel degree of `ranks` training GPUs splits: a
    multiple of ranks × the smallest pinned micro-batch (each rank's share divides into micro-batches), and of a
    GRPO step's generations per prompt (whole prompts). A step trains micro-batch × accumulation × dp sequences, and
    every dp a layout of `ranks` GPUs can have divides `ranks`."""
    micro = min(pins.micro_batch) if pins.micro_batch else 1
    step = math.lcm(ranks * micro, step_generations(objective))
    return -(-batch // step) * step


def batch_layouts(
    layouts: tuple[Layout, ...], global_batch: int, micro_batches: tuple[int, ...] | None
) -> tuple[Layout, ...]:
    """The layouts that train exactly `global_batch` sequences a step: micro-batch × accumulation × data-parallel
    ranks = global batch, so the ranks divide it (and a pinned micro-batch divides each rank's share); a rank
    more than the batch has sequences would train on sequences the step does not have."""
    sizes = micro_batches or (1,)
    kept = tuple(
        layout
        for layout in layouts
        if global_batch % layout.dp == 0 and any((global_batch // layout.dp) % b == 0 for b in sizes)
    )
    if kept:
        return kept
    smallest = min(-(-global_batch // (layout.dp * b)) * layout.dp * b for layout in layouts for b in sizes)
    degrees = "/".join(str(d) for d in sorted({layout.dp for layout in layouts}))
    batch = f" with --batch {'/'.join(map(str, sizes))}" if micro_batches else ""
    raise SwiftplanError(
        f"--global-batch {global_batch} does not split evenly over the data-parallel degrees left (dp {degrees}){batch}: "
        f"a step trains micro-batch × accumulation × dp = global batch sequences.",
        hint=f"Use --global-batch {smallest} (the smallest that splits), or pin "
        + (
            f"a --dp and a --batch that divide {global_batch}."
            if micro_batches
            else f"a --dp that divides {global_batch}."
        ),
    )


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
    )
