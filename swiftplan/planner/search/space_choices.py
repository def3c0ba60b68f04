"""The training search space itself: every choice and the values it may take (quantizations, optimizers,
ranks, (ZeRO stage, offload) shardings), the sharding classes the speed model tells apart, the order of the
memory-only choices by the bytes they cost (`memory_weight`, `needs_at_least`), and `TrainSpace`, which
enumerates structures and their variants. space.py builds a `TrainSpace` for a model, cluster and pins. Pure.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import product

from swiftplan.planner.engines import Engine
from swiftplan.planner.search.candidate import Candidate, Layout, TrainQuant
from swiftplan.planner.setup import (
    ZERO3_QUANTS,
    Method,
    Offload,
    Optimizer,
    Precision,
    ZeroStage,
    zero3_shards,
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
    zero3_quants: tuple[str, ...] = ZERO3_QUANTS
    """Bases ZeRO-3 may partition (setup.ZERO3_QUANTS, narrowed by the engine's `zero3_quant`)."""

    def quant_kinds(self, method: str) -> tuple[TrainQuant, ...]:
        """Quantizations the study tells apart (both NF4 variants are one kind, represented by the first)."""
        kinds: list[TrainQuant] = []
        for quant in self.quants[method]:
            kind = self.quants[method][0] if quant.startswith("nf4") else quant
            if kind not in kinds:
                kinds.append(kind)
        return tuple(kinds)

    def valid_shardings(self, quant: str, dp: int) -> tuple[Sharding, ...]:
        """ZeRO-3 partitions only the bases in `zero3_quants`, and offloads only unquantized parameters (setup's
        check); on one data-parallel rank ZeRO only matters with offload."""
        base = "nf4" if quant == "nf4-dq" else quant
        valid = [s for s in self.shardings
                 if s[0] != 3 or (self.zero3_partitions(quant) and zero3_shards(base, s[1]))]  # fmt: skip
        lean = [s for s in valid if not (dp == 1 and s[0] > 0 and s[1] == "none")]
        return tuple(lean or valid)

    def zero3_partitions(self, quant: str) -> bool:
        """Whether ZeRO-3 may partition a base of this quantization kind (NF4 with double quant is NF4)."""
        return ("nf4" if quant == "nf4-dq" else quant) in self.zero3_quants

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
