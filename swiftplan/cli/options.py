"""Turning command-line strings into planner types, shared by estimate, verify and fit."""

from __future__ import annotations

from swiftplan.errors import SwiftplanError
from swiftplan.planner.capabilities import check
from swiftplan.planner.hardware import Cluster
from swiftplan.planner.setup import ALL_LINEAR, LoraSetup, Parallelism, ServeSetup, TrainSetup


def parse_targets(targets: str) -> tuple[str, ...]:
    """'q_proj,v_proj' → ('q_proj', 'v_proj'); 'all-linear' stays one entry."""
    names = tuple(t.strip() for t in targets.split(",") if t.strip())
    if ALL_LINEAR in names or "all_linear" in names:
        return (ALL_LINEAR,)
    return names


def _refuse_impossible(cluster: Cluster, **options: object) -> None:
    reasons = check(cluster.accelerator, **options)  # type: ignore[arg-type]
    if reasons:
        raise SwiftplanError(" ".join(reasons), hint="`swiftplan gpus` lists what each accelerator supports.")


def build_train_setup(
    *,
    method: str,
    precision: str,
    quant: str,
    rank: int,
    targets: str,
    lora_dropout: float,
    optimizer: str,
    batch: int,
    seq: int,
    grad_accum: int,
    grad_ckpt: bool,
    attention: str,
    zero: int,
    offload: str,
    tp: int,
    pp: int,
    cluster: Cluster,
    kbit_upcast: bool = False,
) -> TrainSetup:
    """A validated `TrainSetup`, refused early when the accelerator cannot run it."""
    lora = (
        LoraSetup(rank=rank, targets=parse_targets(targets), dropout=lora_dropout)
        if method in ("lora", "qlora")
        else None
    )
    setup = TrainSetup(
        method=method,  # type: ignore[arg-type]
        precision=precision,  # type: ignore[arg-type]
        quant=quant,  # type: ignore[arg-type]
        lora=lora,
        optimizer=optimizer,  # type: ignore[arg-type]
        micro_batch=batch,
        seq_len=seq,
        grad_accum=grad_accum,
        grad_ckpt=grad_ckpt,
        attention=attention,  # type: ignore[arg-type]
        kbit_upcast=kbit_upcast,
        parallel=Parallelism(tp=tp, pp=pp, zero=zero, offload=offload),  # type: ignore[arg-type]
    )
    _refuse_impossible(
        cluster,
        precision=setup.precision,
        quant=setup.quant,
        optimizer=setup.optimizer,
        zero_stage=zero,
        attention=attention,
    )
    return setup


def build_serve_setup(
    *,
    precision: str,
    quant: str,
    context: int,
    concurrency: int,
    kv_dtype: str,
    gpu_memory_utilization: float,
    tp: int,
    cluster: Cluster,
) -> ServeSetup:
    """A validated `ServeSetup` (serving uses the pure dtype of --precision)."""
    dtype = {"amp-bf16": "bf16", "amp-fp16": "fp16"}.get(precision, precision)
    if dtype not in ("bf16", "fp16", "fp32"):
        raise SwiftplanError(f"Unknown precision {precision!r}; valid values are: bf16, fp16, fp32.")
    setup = ServeSetup(
        dtype=dtype,  # type: ignore[arg-type]
        quant=quant,  # type: ignore[arg-type]
        context=context,
        concurrency=concurrency,
        kv_dtype=kv_dtype,  # type: ignore[arg-type]
        gpu_memory_utilization=gpu_memory_utilization,
        tp=tp,
    )
    _refuse_impossible(cluster, precision=dtype, quant=quant, optimizer="adamw", zero_stage=0)
    return setup
