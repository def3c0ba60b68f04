"""Turning command-line strings into planner types, shared by estimate, verify and fit."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

from swiftplan.errors import SwiftplanError
from swiftplan.planner.capabilities import check
from swiftplan.planner.hardware import Cluster
from swiftplan.planner.idle_knobs import knob_dict, refuse_idle_knobs
from swiftplan.planner.objective import ObjectiveSetup
from swiftplan.planner.setup import (
    ALL_LINEAR,
    KV_DTYPES,
    METHODS,
    OFFLOADS,
    OPTIMIZERS,
    PRECISIONS,
    QUANTS,
    SERVE_DTYPES,
    SERVE_RUNTIMES,
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
    objective: ObjectiveSetup | None = None,
    variable_lengths: bool = False,
    dora: bool = False,
) -> TrainSetup:
    """A validated `TrainSetup`, refused early when the accelerator cannot run it."""
    from swiftplan.cli import _checks

    _checks.at_least("--rank", rank, 1)
    _checks.at_least("--grad-accum", grad_accum, 1)
    _checks.between("--zero", zero, 0, 3, unit=" (the ZeRO stages)")
    _checks.finite("--lora-dropout", lora_dropout)
    if not 0 <= lora_dropout < 1:
        raise SwiftplanError(f"--lora-dropout must be at least 0 and below 1, got {lora_dropout:g}.")
    if dora and method not in ("lora", "qlora"):
        raise SwiftplanError(f"--dora decomposes LoRA adapters, and --method {method} trains no adapters.",
                             hint="Use --method lora or qlora with --dora, or leave --dora out.")  # fmt: skip
    lora = (
        LoraSetup(rank=rank, targets=parse_targets(targets), dropout=lora_dropout, dora=dora)
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
        variable_lengths=variable_lengths,
        parallel=parallel,
        runtime=runtime or RuntimeKnobs(),
        objective=objective or ObjectiveSetup(),
    )
    _refuse_impossible(
        cluster,
        precision=setup.precision,
        quant=setup.quant,
        optimizer=setup.optimizer,
        zero_stage=zero,
        attention=attention,
    )
    if setup.runtime.float8:  # fp8 matmuls need fp8 tensor cores (capabilities.json)
        _refuse_impossible(cluster, precision="fp8")
    _check_shard_group(setup, cluster)
    return setup


def _check_shard_group(setup: TrainSetup, cluster: Cluster) -> None:
    """FSDP hybrid_shard's group must tile the data-parallel ranks: a group that does not divide them, or
    exceeds them, is no mesh torch can build."""
    knobs, par = setup.runtime, setup.parallel
    group = knobs.fsdp_shard_group
    if knobs.fsdp == "none" or knobs.fsdp_sharding != "hybrid_shard" or not group:
        return
    world = cluster.world_size - setup.objective.server_gpus
    if world <= 0 or world % (par.tp * par.pp):
        return  # the planner refuses the layout itself, naming --tp and --pp
    dp = world // (par.tp * par.pp)
    if dp % group:
        valid = ", ".join(str(d) for d in range(1, dp + 1) if dp % d == 0)
        where = f"the {dp} data-parallel devices of {cluster.describe()}" + (
            f" (tp {par.tp} × pp {par.pp} on {world})" if par.tp * par.pp > 1 else ""
        )
        raise SwiftplanError(
            f"--fsdp-shard-group {group} must divide {where}; valid groups here: {valid} (0 = all of them).",
            hint="A shard group is usually one node's GPUs.",
        )


_DS_RULES: dict[str, tuple[tuple[int, ...], bool, str]] = {
    "ds_buckets": ((1, 2, 3), False, "DeepSpeed's reduce buckets and ZeRO-3 buffers"),
    "reduce_bucket_elements": ((1, 2, 3), True, "DeepSpeed's reduce_bucket_size"),
    "prefetch_bucket_elements": ((3,), True, "ZeRO-3's stage3_prefetch_bucket_size"),
    "max_live_parameters": ((3,), True, "ZeRO-3's stage3_max_live_parameters"),
    "max_reuse_distance": ((3,), True, "ZeRO-3's stage3_max_reuse_distance"),
    "ds_auto_buckets": ((3,), True, 'ZeRO-3\'s "auto" bucket sizes'),
    "ds_overlap_comm": ((1, 2), True, "DeepSpeed's second reduce bucket (overlap_comm, ZeRO-1/2)"),
}
"""DeepSpeed knob flags: (ZeRO stages they act under, whether they need --ds-buckets, what they size)."""


def refuse_idle_setup_knobs(typed: dict[str, Any], setup: TrainSetup, *, traced: bool = False) -> None:
    """Knob flags the user typed (`typed`, from `knob_values`) that the built set-up leaves idle: each refused
    naming the flag, so a flag never silently changes nothing. A runtime profile's own values are not typed
    and so never refused. `traced`: verify's set-up, which runs without DeepSpeed and has no --zero."""
    knobs, par = setup.runtime, setup.parallel

    def refuse(message: str, hint: str) -> None:
        raise SwiftplanError(f"{message}: it would change nothing.", hint=hint)

    for name, (stages, needs_buckets, what) in _DS_RULES.items():
        if name not in typed:
            continue
        flag = typed_flag(name, typed[name])
        bare = flag.split()[0]
        if traced:
            refuse(f"{flag} sets {what}, and verify traces without DeepSpeed",
                   f"Drop {bare}; `swiftplan estimate MODEL --zero 2 {flag}` plans it.")  # fmt: skip
        if knobs.fsdp != "none":
            refuse(f"{flag} sets {what}, and this job shards with FSDP ({knobs.fsdp}), not DeepSpeed",
                   f"Drop {bare}, or use --zero instead of --fsdp.")  # fmt: skip
        if par.zero not in stages:
            valid = {(1, 2, 3): "ZeRO stages 1-3 have", (1, 2): "ZeRO stages 1 and 2 have"}.get(
                stages, "ZeRO-3 has"
            )
            refuse(f"{flag} sets {what}, which {valid} and --zero {par.zero} does not",
                   f"Use --zero {3 if stages == (3,) else 2}, or drop {bare}.")  # fmt: skip
        if needs_buckets and not knobs.ds_buckets:
            refuse(f"{flag} sets {what}, and --no-ds-buckets leaves the buckets out of the plan",
                   f"Drop --no-ds-buckets or {bare}.")  # fmt: skip
        if name == "prefetch_bucket_elements" and knobs.ds_auto_buckets:
            refuse(f"{flag} sets {what}, and ZeRO-3's buckets here are \"auto\" (hidden², as the HF Trainer fills them)",
                   f"Add --no-ds-auto-buckets to plan {bare}, or drop it.")  # fmt: skip
        if name == "reduce_bucket_elements" and par.zero == 3 and knobs.ds_auto_buckets:
            refuse(f"{flag} sets {what}, and ZeRO-3's buckets here are \"auto\" (hidden², as the HF Trainer fills them)",
                   f"Add --no-ds-auto-buckets to plan {bare}, or drop it.")  # fmt: skip
    if "ckpt_position" in typed and not setup.grad_ckpt:
        refuse(f"--ckpt-position {typed['ckpt_position']} picks which blocks activation checkpointing wraps, "
               "and --no-grad-ckpt turns it off", "Drop --ckpt-position, or checkpoint with --grad-ckpt.")  # fmt: skip
    if "adapter_dtype" in typed and not setup.trains_adapters:
        refuse(f"--adapter-dtype {typed['adapter_dtype']} sets the LoRA adapters' dtype, and --method "
               f"{setup.method} trains no adapters", "Drop --adapter-dtype, or use --method lora or qlora.")  # fmt: skip
    if "optimizer_impl" in typed and setup.optimizer != "adamw":
        refuse(f"--optimizer-impl {typed['optimizer_impl']} picks torch AdamW's kernel, and --optimizer "
               f"{setup.optimizer} is not torch's AdamW", "Drop --optimizer-impl, or use --optimizer adamw.")  # fmt: skip
    if "loss_chunks" in typed and knobs.loss == "chunked" and knobs.loss_chunks > setup.seq_len:
        raise SwiftplanError(
            f"--loss-chunks {knobs.loss_chunks} splits each row's logits along its {setup.seq_len} tokens "
            f"(--seq), so at most {setup.seq_len} chunks (one token each) are possible; valid values are "
            f"1-{setup.seq_len}.",
            hint="torchtune uses 8.",
        )


def typed_flag(name: str, value: Any) -> str:
    """A typed knob as the user wrote it: '--ds-overlap-comm', '--no-ds-buckets', '--max-live-parameters 1000'."""
    from swiftplan.planner.runtime import KNOB_FLAGS

    flag = KNOB_FLAGS[name]
    if isinstance(value, bool):
        return flag if value else flag.replace("--", "--no-", 1)
    return f"{flag} {value}"


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
    runtime: str | None = None,
    eager: bool = False,
) -> ServeSetup:
    """A validated `ServeSetup` (serving uses the pure dtype of --precision); `runtime`: the serving engine
    (--runtime, default vllm); `eager`: --enforce-eager."""
    dtype = {"amp-bf16": "bf16", "amp-fp16": "fp16"}.get(precision, precision)
    if dtype not in SERVE_DTYPES:
        raise SwiftplanError(
            f"Unknown --precision {precision!r} for serving; valid values are: bf16, fp16, fp32."
        )
    chunk: dict[str, Any] = {} if prefill_chunk is None else {"prefill_chunk": prefill_chunk}
    setup = ServeSetup(
        dtype=dtype,
        quant=parse_choice("--quant", quant, QUANTS),
        context=context,
        concurrency=concurrency,
        kv_dtype=parse_choice("--kv-dtype", kv_dtype, KV_DTYPES),
        gpu_memory_utilization=gpu_memory_utilization,
        tp=tp,
        runtime=parse_choice("--runtime", runtime or "vllm", SERVE_RUNTIMES),
        eager=eager,
        **chunk,
    )
    _refuse_impossible(cluster, precision=dtype, quant=quant, serve_runtime=setup.runtime)
    world = cluster.world_size
    if world % setup.tp:
        divisors = ", ".join(str(d) for d in range(1, world + 1) if world % d == 0)
        raise SwiftplanError(
            f"--tp {setup.tp} does not divide the {world} serving device(s) of {cluster.describe()}; "
            f"valid tensor-parallel degrees here: {divisors}.",
            hint="Lower --tp, or give --gpus as many devices as the tensor-parallel degree (e.g. 2xa100 for --tp 2).",
        )
    return setup


DoraOpt = Annotated[
    bool,
    typer.Option(
        "--dora",
        help="DoRA (peft use_dora): a magnitude per target and the adapted weight rebuilt each forward.",
    ),
]

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
    str | None,
    typer.Option(
        "--loss",
        help="full | chunked | fused_linear | fused_head | full_legacy (runtime default); fused_head = TRL "
        "1.16's fused LM head (its trainers' default); full_legacy = transformers 4.31-4.45, whose forward "
        "kept fp32 logits and a shifted copy.",
    ),
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
ReduceBucketOpt = Annotated[
    int | None,
    typer.Option("--reduce-bucket-elements", help="DeepSpeed reduce_bucket_size in elements (default 5e8)."),
]
PrefetchBucketOpt = Annotated[
    int | None,
    typer.Option(
        "--prefetch-bucket-elements", help="DeepSpeed stage3_prefetch_bucket_size in elements (default 5e7)."
    ),
]
MaxLiveOpt = Annotated[
    int | None,
    typer.Option(
        "--max-live-parameters", help="DeepSpeed stage3_max_live_parameters (default 1e9; 0 = no prefetch)."
    ),
]
MaxReuseOpt = Annotated[
    int | None,
    typer.Option(
        "--max-reuse-distance",
        help="DeepSpeed stage3_max_reuse_distance in elements (default 1e9; 0 = release after each use).",
    ),
]
DsAutoBucketsOpt = Annotated[
    bool | None,
    typer.Option(
        "--ds-auto-buckets/--no-ds-auto-buckets",
        help='ZeRO-3 reduce/prefetch buckets "auto" (HF Trainer: hidden², 0.9·hidden²).',
    ),
]
ExpandableOpt = Annotated[
    bool | None,
    typer.Option(
        "--expandable-segments/--no-expandable-segments",
        help="The allocator runs with expandable_segments:True (PYTORCH_ALLOC_CONF): less fragmentation in peak "
        "reserved; a training plan's launch sets it.",
    ),
]
DsOverlapCommOpt = Annotated[
    bool | None,
    typer.Option(
        "--ds-overlap-comm/--no-ds-overlap-comm", help="DeepSpeed overlap_comm (ZeRO-1/2: a second bucket)."
    ),
]

CkptEveryOpt = Annotated[
    int | None,
    typer.Option(
        "--ckpt-every",
        help="Selective checkpointing: every K-th block checkpointed (1 = all; torchtune ac_option).",
    ),
]
CkptPositionOpt = Annotated[
    str | None,
    typer.Option(
        "--ckpt-position",
        help="With --ckpt-every K: first (transformers every_n_layers) or last (torchtune) block of each K.",
    ),
]
ActivationOffloadOpt = Annotated[
    bool | None,
    typer.Option(
        "--activation-offload/--no-activation-offload", help="Saved activations moved to host RAM in forward."
    ),
]
FsdpCpuOffloadOpt = Annotated[
    bool | None,
    typer.Option(
        "--fsdp-cpu-offload/--no-fsdp-cpu-offload",
        help="FSDP keeps parameters, gradients and optimizer state in host RAM.",
    ),
]
Float8Opt = Annotated[
    bool | None,
    typer.Option("--float8/--no-float8", help="torchao float8 training of the Linear layers (full, bf16)."),
]

AdapterDtypeOpt = Annotated[
    str | None,
    typer.Option(
        "--adapter-dtype",
        help="LoRA adapters: fp32 (peft's default upcast) | model (the model dtype, no input cast: torchtune, "
        "peft autocast_adapter_dtype=False) | kbit-bf16 (fp32, but bf16 on a bitsandbytes nf4/fp4/int8 base: "
        "TRL 1.16's trainers cast them).",
    ),
]

KeepOutputOpt = Annotated[
    bool | None,
    typer.Option(
        "--keep-output/--no-keep-output",
        help="The training loop holds the model output (logits) through backward, as a plain torch loop does.",
    ),
]

PaddingOpt = Annotated[
    str | None,
    typer.Option(
        "--padding",
        help="How unpacked samples of different lengths are batched: max_length (to --seq) | multiple (the longest "
        "rounded up: LLaMA-Factory, axolotl) | longest (swiftplan, TRL, ms-swift) | unmasked (no padding mask: "
        "torchtune, Unsloth). With --variable-lengths, padded SDPA batches get a mask per block.",
    ),
]


def refuse_idle_padding(padding: str | None, *, rows: str, hint: str) -> None:
    """--padding typed where every row is a full --seq (`rows` says why): its value checked first, then refused,
    since it would change nothing."""
    if padding is None:
        return
    from swiftplan.planner.setup import PADDINGS, parse_choice

    parse_choice("--padding", padding, PADDINGS)
    raise SwiftplanError(
        f"--padding {padding} says how samples of many lengths are padded, but {rows}: it would change nothing.",
        hint=hint,
    )


RUNTIME_TRAIN_FLAGS = ("grad_ckpt", "attention", "kbit_upcast", "precision", "optimizer")
"""Set-up options a training runtime profile may set: they come from it unless the user typed them."""


def refuse_estimate_only_quant(text: str | None) -> None:
    """--quant nf4-torchao given to fit or size: refused, since no engine in the table loads torchao NF4."""
    if text and "nf4-torchao" in (q.strip() for q in text.split(",")):
        raise SwiftplanError(
            "--quant nf4-torchao (torchao NF4, torchtune's QLoRA base) is estimate-only: no engine swiftplan "
            "plans for loads it, so fit and size do not search it; valid values here are none, int8, nf4, nf4-dq.",
            hint="swiftplan estimate MODEL --method qlora --quant nf4-torchao --runtime torchtune",
        )


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
    reduce_bucket_elements: int | None = None,
    prefetch_bucket_elements: int | None = None,
    max_live_parameters: int | None = None,
    max_reuse_distance: int | None = None,
    ds_auto_buckets: bool | None = None,
    ds_overlap_comm: bool | None = None,
    ckpt_every: int | None = None,
    ckpt_position: str | None = None,
    activation_offload: bool | None = None,
    fsdp_cpu_offload: bool | None = None,
    float8: bool | None = None,
    adapter_dtype: str | None = None,
    keep_output: bool | None = None,
    padding: str | None = None,
    expandable_segments: bool | None = None,
) -> dict[str, Any]:
    """The knob flags the user typed (None = not typed), parsed: each bad value refused naming its flag."""
    from swiftplan.cli import _checks
    from swiftplan.planner.runtime import KNOB_FLAGS
    from swiftplan.planner.setup import (
        ADAPTER_DTYPES,
        FSDP_SHARDINGS,
        FSDPS,
        LOSS_IMPLS,
        OPTIMIZER_IMPLS,
        PADDINGS,
        SAVED_MODULES,
    )

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
        listed = [m.strip() for m in modules_to_save.split(",") if m.strip()]
        if "none" in listed and len(listed) > 1:
            raise SwiftplanError(
                f"--modules-to-save {modules_to_save} names modules and none at once.",
                hint="Give the modules (embed_tokens, lm_head), or none alone for no modules.",
            )
        names = tuple(m for m in listed if m != "none")
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
    for name, flag in (("ds_buckets", ds_buckets), ("ds_auto_buckets", ds_auto_buckets),
                       ("ds_overlap_comm", ds_overlap_comm), ("expandable_segments", expandable_segments)):  # fmt: skip
        if flag is not None:
            typed[name] = flag
    for name, value, least in (("reduce_bucket_elements", reduce_bucket_elements, 1),
                               ("prefetch_bucket_elements", prefetch_bucket_elements, 0),
                               ("max_live_parameters", max_live_parameters, 0),
                               ("max_reuse_distance", max_reuse_distance, 0)):  # fmt: skip
        if value is not None:
            _checks.at_least(KNOB_FLAGS[name], value, least)
            typed[name] = value
    if adapter_dtype is not None:
        typed["adapter_dtype"] = parse_choice("--adapter-dtype", adapter_dtype, ADAPTER_DTYPES)
    if padding is not None:
        typed["padding"] = parse_choice("--padding", padding, PADDINGS)
    typed |= _feature_knobs(
        ckpt_every=ckpt_every, ckpt_position=ckpt_position, activation_offload=activation_offload,
        fsdp_cpu_offload=fsdp_cpu_offload, float8=float8, keep_output=keep_output,
    )  # fmt: skip
    refuse_idle_knobs(typed, _under_every_profile(typed))
    return typed


def _under_every_profile(typed: dict[str, Any]) -> list[dict[str, Any]]:
    """The knobs `typed` gives under each training runtime profile (no profile is known yet: fit without
    --runtime plans with its engine's)."""
    from swiftplan.planner.runtime import apply_defaults, runtime_profiles

    return [
        knob_dict(RuntimeKnobs()) | apply_defaults(p, typed)[0]
        for p in runtime_profiles().values()
        if p.task == "train"
    ]


def _feature_knobs(
    *, ckpt_every: int | None, ckpt_position: str | None, **flags: bool | None
) -> dict[str, Any]:
    """The runtime-feature flags the user typed (planner/runtime_features.py), parsed."""
    from swiftplan.cli import _checks
    from swiftplan.planner.setup import CKPT_POSITIONS

    typed: dict[str, Any] = {name: value for name, value in flags.items() if value is not None}
    if ckpt_every is not None:
        _checks.at_least("--ckpt-every", ckpt_every, 1)
        typed["ckpt_every"] = ckpt_every
    if ckpt_position is not None:
        typed["ckpt_position"] = parse_choice("--ckpt-position", ckpt_position, CKPT_POSITIONS)
    return typed


def train_runtime(
    name: str | None, knobs: dict[str, Any], setup_given: dict[str, Any] | None = None
) -> RuntimeChoice:
    """The training runtime to plan for (default swiftplan): the typed knobs and set-up options over its defaults."""
    from swiftplan.planner.runtime import DEFAULT_TRAIN_RUNTIME, choose_runtime

    choice = choose_runtime(
        _runtime_name(name or DEFAULT_TRAIN_RUNTIME, "train"), "train", knobs | (setup_given or {})
    )
    refuse_idle_knobs(knobs, [knob_dict(choice.knobs())])
    return choice


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
        if name in profiles:  # a known runtime of the other kind
            other, switch = (
                ("a serving", "plan serving with --task serve")
                if task == "train"
                else ("a training", "plan training by leaving out --task serve")
            )
            raise SwiftplanError(
                f"--runtime {name} is {other} runtime, so it cannot run this {what} job; "
                f"{what} runtimes are: {valid}.",
                hint=f"Pick one of those, or {switch}.",
            )
        raise SwiftplanError(f"Unknown --runtime {name!r} for {what}; valid values are: {valid}.")
    return name


def refuse_knobs_for_serving(knobs: dict[str, Any]) -> None:
    """Training runtime flags given with --task serve: refused instead of ignored (the planner's one
    message, which the dashboard shows too)."""
    from swiftplan.planner.runtime import refuse_knobs_for_serving as refuse

    refuse(knobs)


EnforceEagerOpt = Annotated[
    bool,
    typer.Option(
        "--enforce-eager",
        help="Serving: decode without CUDA graphs (vLLM --enforce-eager, SGLang's decode graphs disabled, LMDeploy "
        "--eager-mode): more KV memory (no graph pool), slower steps (host kernel launches).",
    ),
]
