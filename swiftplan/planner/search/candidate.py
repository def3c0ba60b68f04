"""One point of the search space, and the `TrainSetup` / `ServeSetup` it stands for. Pure."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from swiftplan.planner.hardware import Cluster
from swiftplan.planner.setup import ALL_LINEAR, LoraSetup, Parallelism, ServeSetup, TrainSetup


def cluster_text(cluster: Cluster) -> str:
    """The --gpus string for a cluster of catalog GPUs, e.g. 'rtx4090', '4xa100-80gb-sxm', '2x8xh100-sxm'."""
    acc = cluster.accelerator.id
    if cluster.nodes > 1:
        return f"{cluster.nodes}x{cluster.gpus_per_node}x{acc}"
    return acc if cluster.gpus_per_node == 1 else f"{cluster.gpus_per_node}x{acc}"


@dataclass(frozen=True, kw_only=True, slots=True)
class Layout:
    """How many GPUs a plan uses and how it splits them."""

    gpus: int
    """GPUs used (a divisor of one node, or whole nodes)."""
    tp: int = 1
    """Tensor-parallel degree."""
    pp: int = 1
    """Pipeline-parallel degree."""

    @property
    def dp(self) -> int:
        """Data-parallel degree."""
        return self.gpus // (self.tp * self.pp)

    @property
    def key(self) -> str:
        """Stable text form, e.g. '8:tp2:pp1' (the study's categorical value)."""
        return f"{self.gpus}:tp{self.tp}:pp{self.pp}"

    @staticmethod
    def from_key(key: str) -> Layout:
        """Inverse of `key`."""
        gpus, tp, pp = key.split(":")
        return Layout(gpus=int(gpus), tp=int(tp.removeprefix("tp")), pp=int(pp.removeprefix("pp")))

    def sub_cluster(self, cluster: Cluster) -> Cluster:
        """The part of `cluster` this layout runs on."""
        if self.gpus == cluster.world_size:
            return cluster
        if self.gpus <= cluster.gpus_per_node:
            return replace(cluster, gpus_per_node=self.gpus, nodes=1)
        return replace(cluster, nodes=self.gpus // cluster.gpus_per_node)


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainWorkload:
    """What the training job must do."""

    seq_len: int = 2048
    """Tokens per sequence."""
    global_batch: int = 16
    """Sequences per optimizer step, all data-parallel ranks together."""
    dataset_tokens: int = 100_000_000
    """Tokens in one epoch."""
    epochs: float = 1.0
    """Passes over the data."""
    attention: str = "sdpa"
    """Attention kernel."""
    lora_dropout: float = 0.05
    """LoRA dropout (changes activation memory)."""

    @property
    def total_tokens(self) -> float:
        """Tokens processed over the whole run."""
        return self.dataset_tokens * self.epochs


@dataclass(frozen=True, kw_only=True, slots=True)
class Candidate:
    """One training plan: the structural choices and the micro-batch (0 until chosen)."""

    method: str
    """full / lora / qlora."""
    quant: str = "none"
    """none / int8 / nf4 / nf4-dq (NF4 with double quantization)."""
    precision: str = "bf16"
    """Precision mode."""
    optimizer: str = "adamw"
    """Optimizer."""
    grad_ckpt: bool = True
    """Gradient checkpointing."""
    zero: int = 0
    """ZeRO stage."""
    offload: str = "none"
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
                rank=self.rank, targets=self.targets or (ALL_LINEAR,), dropout=workload.lora_dropout
            )
        return TrainSetup(
            method=self.method,  # type: ignore[arg-type]
            precision=self.precision,  # type: ignore[arg-type]
            quant="nf4" if self.quant == "nf4-dq" else self.quant,  # type: ignore[arg-type]
            double_quant=self.quant == "nf4-dq",
            lora=lora,
            optimizer=self.optimizer,  # type: ignore[arg-type]
            micro_batch=max(1, self.micro_batch),
            seq_len=workload.seq_len,
            grad_accum=self.grad_accum(workload),
            grad_ckpt=self.grad_ckpt,
            attention=workload.attention,  # type: ignore[arg-type]
            parallel=Parallelism(tp=self.layout.tp, pp=self.layout.pp, zero=self.zero, offload=self.offload),  # type: ignore[arg-type]
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
class ServeWorkload:
    """What the serving deployment must sustain."""

    context: int = 4096
    """Tokens per sequence (prompt + output)."""
    concurrency: int | None = None
    """Concurrent sequences over all replicas; None = as many as fit and meet the latency targets."""
    ttft_s: float | None = None
    """Largest acceptable time to first token, seconds."""
    decode_tps: float | None = None
    """Smallest acceptable decode speed per user, tokens/s."""
    gpu_memory_utilization: float = 0.9
    """vLLM's memory fraction."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ServeCandidate:
    """One serving plan: numerics, tensor parallelism and sequences per replica (0 until chosen)."""

    quant: str = "none"
    """Weight quantization."""
    kv_dtype: str = "auto"
    """KV-cache dtype."""
    tp: int = 1
    """Tensor-parallel degree of one replica."""
    dtype: str = "bf16"
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
            dtype=self.dtype,  # type: ignore[arg-type]
            quant=self.quant,  # type: ignore[arg-type]
            kv_dtype=self.kv_dtype,  # type: ignore[arg-type]
            context=workload.context,
            concurrency=max(1, self.concurrency),
            tp=self.tp,
            gpu_memory_utilization=workload.gpu_memory_utilization,
        )

    def simplicity(self) -> tuple:
        """Tie-break: no quantization, auto KV, less tensor parallelism first."""
        return (self.quant != "none", self.kv_dtype != "auto", self.tp, -self.concurrency)
