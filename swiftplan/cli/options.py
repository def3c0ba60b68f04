"""Turning command-line strings into planner types, shared by estimate, verify and fit."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

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
    RuntimeKnobs,
    ServeSetup,
    TrainSetup,
    parse_choice,
    zero_stage,
)

if TYPE_CHECKING:
    from swiftplan.planner.runtime import RuntimeChoice


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
    runtime: RuntimeKnobs | None = None,
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
        runtime=runtime or RuntimeKnobs(),
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
    prefill_chunk: int | None = None,
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
        **({} if prefill_chunk is None else {"prefill_chunk": prefill_chunk}),
    )
    _refuse_impossible(cluster, precision=dtype, quant=quant, optimizer="adamw", zero_stage=0)
    return setup


# --- runtime profile and its knobs (profiles/runtimes/*.yaml; RuntimeKnobs) ---------------------------

RuntimeOpt = Annotated[
    str | None,
    typer.Option(
        "--runtime",
        help="Framework that runs the job, whose defaults are planned for: hf, swiftplan, ms-swift, llamafactory, "
        "axolotl, unsloth, torchtune, torch (training; default swiftplan); vllm, sglang, lmdeploy (serving).",
    ),
]
LossOpt = Annotated[
    str | None, typer.Option("--loss", help="full | chunked | fused_linear (runtime default).")
]
LossChunksOpt = Annotated[
    int | None, typer.Option("--loss-chunks", help="chunked loss: token chunks (torchtune 8).")
]
LossChunkTokensOpt = Annotated[
    int | None,
    typer.Option("--loss-chunk-tokens", help="fused_linear loss: tokens per chunk; 0 = Liger's rule."),
]
OptimizerImplOpt = Annotated[
    str | None,
    typer.Option("--optimizer-impl", help="AdamW kernel: fused | foreach | for_loop (runtime default)."),
]
ModulesToSaveOpt = Annotated[
    str | None,
    typer.Option("--modules-to-save", help="Trained in full next to LoRA: embed_tokens,lm_head (or none)."),
]
OptimizerInBackwardOpt = Annotated[
    bool | None,
    typer.Option(
        "--optimizer-in-backward/--no-optimizer-in-backward", help="Optimizer step fused into backward."
    ),
]
FsdpOpt = Annotated[str | None, typer.Option("--fsdp", help="none | fsdp1 | fsdp2 (instead of ZeRO).")]
FsdpShardingOpt = Annotated[
    str | None, typer.Option("--fsdp-sharding", help="full_shard | shard_grad_op | hybrid_shard")
]
FsdpShardGroupOpt = Annotated[
    int | None, typer.Option("--fsdp-shard-group", help="hybrid_shard: devices per shard group (0 = all).")
]
DsBucketsOpt = Annotated[
    bool | None,
    typer.Option(
        "--ds-buckets/--no-ds-buckets", help="Count DeepSpeed's reduce bucket and ZeRO-3 live parameters."
    ),
]

RUNTIME_TRAIN_FLAGS = ("grad_ckpt", "attention", "kbit_upcast", "precision", "optimizer")
"""Set-up options a training runtime profile may set: they come from it unless the user typed them."""


def given_options(ctx: typer.Context, names: tuple[str, ...] | None = None) -> list[str]:
    """The options (of `names`, or all) the user set rather than left at their defaults. Typer may bring
    its own copy of click, so the parameter source is compared by name."""
    sources = {n: ctx.get_parameter_source(n) for n in (ctx.params if names is None else names)}
    return [
        n
        for n, source in sources.items()
        if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")
    ]


def knob_values(
    *,
    loss: str | None = None,
    loss_chunks: int | None = None,
    loss_chunk_tokens: int | None = None,
    optimizer_impl: str | None = None,
    modules_to_save: str | None = None,
    optimizer_in_backward: bool | None = None,
    fsdp: str | None = None,
    fsdp_sharding: str | None = None,
    fsdp_shard_group: int | None = None,
    ds_buckets: bool | None = None,
) -> dict[str, Any]:
    """The knob flags the user typed (None = not typed), parsed: each bad value refused naming its flag."""
    from swiftplan.cli import _checks
    from swiftplan.planner.setup import FSDP_SHARDINGS, FSDPS, LOSS_IMPLS, OPTIMIZER_IMPLS, SAVED_MODULES

    typed: dict[str, Any] = {}
    if loss is not None:
        typed["loss"] = parse_choice("--loss", loss, LOSS_IMPLS)
    if loss_chunks is not None:
        _checks.at_least("--loss-chunks", loss_chunks, 1)
        typed["loss_chunks"] = loss_chunks
    if loss_chunk_tokens is not None:
        _checks.at_least("--loss-chunk-tokens", loss_chunk_tokens, 0)
        typed["loss_chunk_tokens"] = loss_chunk_tokens
    if optimizer_impl is not None:
        typed["optimizer_impl"] = parse_choice("--optimizer-impl", optimizer_impl, OPTIMIZER_IMPLS)
    if modules_to_save is not None:
        names = tuple(m.strip() for m in modules_to_save.split(",") if m.strip() and m.strip() != "none")
        typed["modules_to_save"] = tuple(parse_choice("--modules-to-save", m, SAVED_MODULES) for m in names)
        if len(set(names)) != len(names):
            raise SwiftplanError(f"--modules-to-save names a module twice: {modules_to_save}.")
    if optimizer_in_backward is not None:
        typed["optimizer_in_backward"] = optimizer_in_backward
    if fsdp is not None:
        typed["fsdp"] = parse_choice("--fsdp", fsdp, FSDPS)
    if fsdp_sharding is not None:
        typed["fsdp_sharding"] = parse_choice("--fsdp-sharding", fsdp_sharding, FSDP_SHARDINGS)
    if fsdp_shard_group is not None:
        _checks.at_least("--fsdp-shard-group", fsdp_shard_group, 0)
        typed["fsdp_shard_group"] = fsdp_shard_group
    if ds_buckets is not None:
        typed["ds_buckets"] = ds_buckets
    return typed


def train_runtime(
    name: str | None, knobs: dict[str, Any], setup_given: dict[str, Any] | None = None
) -> RuntimeChoice:
    """The training runtime to plan for (default swiftplan): the typed knobs and set-up options over its defaults."""
    from swiftplan.planner.runtime import DEFAULT_TRAIN_RUNTIME, choose_runtime

    return choose_runtime(
        _runtime_name(name or DEFAULT_TRAIN_RUNTIME, "train"), "train", knobs | (setup_given or {})
    )


def serve_runtime(name: str | None, setup_given: dict[str, Any]) -> RuntimeChoice | None:
    """The serving runtime named by --runtime (None: none, today's defaults) with the typed options over it."""
    from swiftplan.planner.runtime import choose_runtime

    return None if name is None else choose_runtime(_runtime_name(name, "serve"), "serve", setup_given)


def _runtime_name(name: str, task: str) -> str:
    """--runtime as a profile name for `task`, or one error naming the flag and the valid runtimes."""
    from swiftplan.planner.runtime import runtime_profiles

    profiles = runtime_profiles()
    if name not in profiles or profiles[name].task != task:
        valid = ", ".join(n for n, p in profiles.items() if p.task == task)
        what = "training" if task == "train" else "serving"
        raise SwiftplanError(f"Unknown --runtime {name!r} for {what}; valid values are: {valid}.")
    return name


def refuse_knobs_for_serving(knobs: dict[str, Any]) -> None:
    """Training runtime flags given with --task serve: refused instead of ignored."""
    from swiftplan.planner.runtime import KNOB_FLAGS

    if knobs:
        flags = ", ".join(KNOB_FLAGS[k] for k in knobs)
        raise SwiftplanError(
            f"{flags} describe how a training framework runs; they do not apply to --task serve."
        )
