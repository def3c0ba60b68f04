"""Turning command-line strings into planner types, shared by estimate, verify and fit."""

from __future__ import annotations

from typing import Any, cast

from swiftplan.errors import SwiftplanError
from swiftplan.planner.capabilities import check
from swiftplan.planner.hardware import Cluster
from swiftplan.planner.setup import (
    ALL_LINEAR,
    KV_DTYPES,
    METHODS,
    OFFLOADS,
    OPTIMIZERS,
    PRECISIONS,
    QUANTS,
    SERVE_DTYPES,
    AttentionImpl,
    LoraSetup,
    Parallelism,
    ServeSetup,
    TrainSetup,
    parse_choice,
    zero_stage,
)


def parse_targets(targets: str) -> tuple[str, ...]:
    """'q_proj,v_proj' → ('q_proj', 'v_proj'); 'all-linear' stays one entry."""
    names = tuple(t.strip() for t in targets.split(",") if t.strip())
    if ALL_LINEAR in names or "all_linear" in names:
        return (ALL_LINEAR,)
    return names


def _attention(value: str) -> str:
    """--attention as one of the planner's implementations (check() below only asks whether flash runs)."""
    from swiftplan.cli._checks import ATTENTIONS, one_of

    one_of("--attention", value, ATTENTIONS)
    return value


def _refuse_impossible(cluster: Cluster, **options: Any) -> None:
    reasons = check(cluster.accelerator, **options)
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
    from swiftplan.cli import _checks

    _checks.at_least("--rank", rank, 1)
    _checks.at_least("--grad-accum", grad_accum, 1)
    _checks.between("--zero", zero, 0, 3, unit=" (the ZeRO stages)")
    _checks.finite("--lora-dropout", lora_dropout)
    if not 0 <= lora_dropout < 1:
        raise SwiftplanError(f"--lora-dropout must be at least 0 and below 1, got {lora_dropout:g}.")
    lora = (
        LoraSetup(rank=rank, targets=parse_targets(targets), dropout=lora_dropout)
        if method in ("lora", "qlora")
        else None
    )
    parallel = Parallelism(
        tp=tp, pp=pp, zero=zero_stage(zero), offload=parse_choice("--offload", offload, OFFLOADS)
    )
    setup = TrainSetup(
        method=parse_choice("--method", method, METHODS),
        precision=parse_choice("--precision", precision, PRECISIONS),
        quant=parse_choice("--quant", quant, QUANTS),
        lora=lora,
        optimizer=parse_choice("--optimizer", optimizer, OPTIMIZERS),
        micro_batch=batch,
        seq_len=seq,
        grad_accum=grad_accum,
        grad_ckpt=grad_ckpt,
        attention=cast(AttentionImpl, _attention(attention)),
        kbit_upcast=kbit_upcast,
        parallel=parallel,
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
    if dtype not in SERVE_DTYPES:
        raise SwiftplanError(
            f"Unknown --precision {precision!r} for serving; valid values are: bf16, fp16, fp32."
        )
    setup = ServeSetup(
        dtype=dtype,
        quant=parse_choice("--quant", quant, QUANTS),
        context=context,
        concurrency=concurrency,
        kv_dtype=parse_choice("--kv-dtype", kv_dtype, KV_DTYPES),
        gpu_memory_utilization=gpu_memory_utilization,
        tp=tp,
    )
    _refuse_impossible(cluster, precision=dtype, quant=quant, optimizer="adamw", zero_stage=0)
    return setup
