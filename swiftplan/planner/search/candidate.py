"""One point of the search space, and the `TrainSetup` / `ServeSetup` it stands for. Pure."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

from swiftplan.planner.layout import Layout, cluster_text
from swiftplan.planner.setup import (
    ALL_LINEAR,
    KvDtype,
    LoraSetup,
    Method,
    Offload,
    Optimizer,
    Parallelism,
    Precision,
    Quant,
    ServeDtype,
    ServeSetup,
    TrainSetup,
    ZeroStage,
)
from swiftplan.planner.workload import ServeWorkload, TrainWorkload

__all__ = [
    "Candidate",
    "Layout",
    "ServeCandidate",
    "ServeWorkload",
    "TrainQuant",
    "TrainWorkload",
    "cluster_text",
]

TrainQuant = Literal["none", "int8", "nf4", "nf4-dq"]
"""Base quantizations the training search tells apart: NF4 with double quantization is its own value
("nf4-dq"), which `Candidate.setup` turns into quant nf4 with double_quant on."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Candidate:
    """One training plan: the structural choices and the micro-batch (0 until chosen)."""

    method: Method
    """full / lora / qlora."""
    quant: TrainQuant = "none"
    """none / int8 / nf4 / nf4-dq (NF4 with double quantization)."""
    precision: Precision = "bf16"
    """Precision mode."""
    optimizer: Optimizer = "adamw"
    """Optimizer."""
    grad_ckpt: bool = True
    """Gradient checkpointing."""
    zero: ZeroStage = 0
    """ZeRO stage."""
    offload: Offload = "none"
    """ZeRO-Offload target."""
    layout: Layout = Layout(gpus=1)
    """GPUs, tp, pp."""
    rank: int = 0
    """LoRA rank (0 for full fine-tuning)."""
    targets: tuple[str, ...] = ()
    """LoRA target module names (empty for full fine-tuning)."""
    micro_batch: int = 0
    """Sequences per device per forward pass; 0 = not chosen yet."""

    def replace(self, **changes: Any) -> Candidate:
        """A copy with some fields changed."""
        return replace(self, **changes)

    @property
    def family(self) -> str:
        """'full', 'LoRA' or 'QLoRA'."""
        return {"full": "full", "lora": "LoRA", "qlora": "QLoRA"}[self.method]

    def grad_accum(self, workload: TrainWorkload) -> int:
        """Micro-batches per step so that micro_batch × dp × accum reaches the global batch."""
        return max(1, math.ceil(workload.global_batch / (max(1, self.micro_batch) * self.layout.dp)))

    def setup(self, workload: TrainWorkload) -> TrainSetup:
        """The `TrainSetup` this candidate stands for (raises SwiftplanError when invalid)."""
        lora = None
        if self.method != "full":
            lora = LoraSetup(
                rank=self.rank,
                targets=self.targets or (ALL_LINEAR,),
                dropout=workload.lora_dropout,
                dora=workload.dora,
            )
        return TrainSetup(
            method=self.method,
            precision=self.precision,
            quant="nf4" if self.quant == "nf4-dq" else self.quant,
            double_quant=self.quant == "nf4-dq",
            lora=lora,
            optimizer=self.optimizer,
            micro_batch=max(1, self.micro_batch),
            seq_len=workload.seq_len,
            grad_accum=self.grad_accum(workload),
            grad_ckpt=self.grad_ckpt,
            attention=workload.attention,
            variable_lengths=workload.variable_lengths,
            parallel=Parallelism(tp=self.layout.tp, pp=self.layout.pp, zero=self.zero, offload=self.offload),
            runtime=workload.runtime,
            objective=workload.objective,
            vision=workload.vision,
        )

    def targets_label(self, attention: tuple[str, ...] = ()) -> str:
        """'all-linear', 'attention' or the module list."""
        if not self.targets:
            return "-"
        if self.targets == (ALL_LINEAR,):
            return ALL_LINEAR
        return "attention" if attention and self.targets == attention else ",".join(self.targets)

    def simplicity(self) -> tuple:
        """Tie-break among equally good plans: fewer GPUs, less parallelism, standard numerics first."""
        return (
            self.layout.gpus,
            self.layout.tp,
            self.layout.pp,
            self.zero,
            self.offload != "none",
            self.quant != "none",
            self.quant == "nf4",
            self.optimizer != "adamw",
            self.optimizer.startswith("paged"),
            self.precision.startswith("amp"),
            not self.grad_ckpt,
            -self.rank,
            self.micro_batch,
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class ServeCandidate:
    """One serving plan: numerics, tensor parallelism and sequences per replica (0 until chosen)."""

    quant: Quant = "none"
    """Weight quantization."""
    kv_dtype: KvDtype = "auto"
    """KV-cache dtype."""
    tp: int = 1
    """Tensor-parallel degree of one replica."""
    dtype: ServeDtype = "bf16"
    """Compute dtype."""
    concurrency: int = 0
    """Sequences per replica; 0 = not chosen yet."""

    def replace(self, **changes: Any) -> ServeCandidate:
        """A copy with some fields changed."""
        return replace(self, **changes)

    @property
    def family(self) -> str:
        """Quantization family for the "why not" lines."""
        return "unquantized" if self.quant == "none" else self.quant

    def setup(self, workload: ServeWorkload) -> ServeSetup:
        """The `ServeSetup` for one replica."""
        return ServeSetup(
            dtype=self.dtype,
            quant=self.quant,
            kv_dtype=self.kv_dtype,
            context=workload.context,
            concurrency=max(1, self.concurrency),
            tp=self.tp,
            gpu_memory_utilization=workload.gpu_memory_utilization,
            runtime=workload.runtime,
            eager=workload.eager,
            vision=workload.vision,
        )

    def simplicity(self) -> tuple:
        """Tie-break: no quantization, auto KV, less tensor parallelism first."""
        return (self.quant != "none", self.kv_dtype != "auto", self.tp, -self.concurrency)
