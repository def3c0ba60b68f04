"""`swiftplan verify`: the analytic estimate next to a fake-tensor trace of the real model code."""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from swiftplan.cli._output import console, print_json
from swiftplan.cli.estimate import UpcastOpt
from swiftplan.cli.objective_options import (
    CompletionLenOpt,
    KlOpt,
    NumGenerationsOpt,
    PromptLenOpt,
    ReferenceOpt,
)
from swiftplan.cli.options import (
    ActivationOffloadOpt,
    AdapterDtypeOpt,
    CkptEveryOpt,
    CkptPositionOpt,
    DsAutoBucketsOpt,
    DsBucketsOpt,
    DsOverlapCommOpt,
    ExpandableOpt,
    Float8Opt,
    FsdpCpuOffloadOpt,
    FsdpOpt,
    FsdpShardGroupOpt,
    FsdpShardingOpt,
    KeepOutputOpt,
    LossChunksOpt,
    LossChunkTokensOpt,
    LossOpt,
    MaxLiveOpt,
    MaxReuseOpt,
    ModulesToSaveOpt,
    OptimizerImplOpt,
    OptimizerInBackwardOpt,
    PaddingOpt,
    PrefetchBucketOpt,
    ReduceBucketOpt,
    RuntimeOpt,
)

EPILOG = """
Examples:

  swiftplan verify Qwen/Qwen2.5-7B --method lora --rank 64 --batch 2 --seq 2048

  swiftplan verify meta-llama/Llama-3.1-8B --method full --precision amp-bf16 --seq 1024 --json

  swiftplan verify Qwen/Qwen2.5-7B --task serve --context 4096 --concurrency 4

  swiftplan verify Qwen/Qwen2.5-0.5B --method full --runtime torch      (foreach AdamW's step temporary)

  swiftplan verify Qwen/Qwen2.5-7B --runtime torchtune --seq 4096       (chunked cross-entropy, 8 pieces)

  swiftplan verify Qwen/Qwen2.5-7B --method full --fsdp fsdp2 --gpus 8xH100 --fsdp-cpu-offload

  swiftplan verify meta-llama/Llama-2-13b-hf --method qlora --quant nf4 --precision fp16 --kbit-upcast --grad-ckpt

  swiftplan verify meta-llama/Llama-2-7b-hf --method lora --quant int8 --grad-ckpt --seq 1024   (inputs kept on ctx)

--runtime runs the framework's loss and AdamW implementation in the trace; what the tracer cannot run
(--loss fused_linear, --fsdp fsdp1, --modules-to-save, --optimizer-in-backward) is refused naming the flag.
--fsdp fsdp2 runs torch's fully_shard as rank 0 of the --gpus devices on a fake process group (full_shard,
shard_grad_op, hybrid_shard, --fsdp-cpu-offload; bf16/fp16/fp32 models, SFT).
SFT traces also compare peak_reserved: every allocation and free of the traced steps replayed through the
CUDA caching allocator's rules (best fit, splitting, 2/20 MiB segments) against the planner's allocator model.

Needs the [trace] extra (torch, transformers, peft); no GPU and no weights are used.
"""


def verify_command(
    ctx: typer.Context,
    model: str = typer.Argument(..., help="Catalog name/alias, hub id, or path to a config.json."),
    task: str = typer.Option(
        "train", "--task", help="train (sft) | dpo | kto | orpo | simpo | cpo | rm | grpo | serve"
    ),
    method: str = typer.Option("lora", "--method", help="full | lora | qlora"),
    precision: str = typer.Option("bf16", "--precision", help="bf16 | fp16 | fp32 | amp-bf16 | amp-fp16"),
    quant: str = typer.Option(
        "none",
        "--quant",
        help="none | nf4 | fp4 | int8 (bitsandbytes: its own layers traced)",
    ),
    rank: int = typer.Option(16, "--rank", help="LoRA rank."),
    targets: str = typer.Option(
        "q_proj,v_proj", "--targets", help="Comma-separated module names, or all-linear."
    ),
    lora_dropout: float = typer.Option(0.05, "--lora-dropout", help="LoRA dropout."),
    dora: bool = typer.Option(
        False, "--dora", help="DoRA (peft use_dora), traced with peft's own DoRA layers."
    ),
    optimizer: str = typer.Option(
        "adamw", "--optimizer", help="adamw | adamw-8bit | paged-adamw-8bit | sgd | adafactor"
    ),
    batch: int = typer.Option(1, "--batch", help="Micro-batch (sequences)."),
    seq: int = typer.Option(2048, "--seq", help="Sequence length (tokens)."),
    grad_ckpt: bool = typer.Option(False, "--grad-ckpt/--no-grad-ckpt", help="Gradient checkpointing."),
    attention: str = typer.Option("sdpa", "--attention", help="sdpa | flash (traced as sdpa) | eager"),
    kbit_upcast: UpcastOpt = False,
    variable_lengths: bool = typer.Option(
        False,
        "--variable-lengths",
        help="SFT: samples of many lengths, not packed: padded batches (--padding) trace SDPA's padding mask.",
    ),
    context: int = typer.Option(4096, "--context", help="Serving: tokens per sequence."),
    concurrency: int = typer.Option(1, "--concurrency", help="Serving: sequences."),
    gpus: str = typer.Option(
        "h100",
        "--gpus",
        help="Devices, e.g. 4xH100, or auto (this machine's): FSDP is traced as rank 0 of that many (--fsdp fsdp2).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    runtime: RuntimeOpt = None,
    loss: LossOpt = None,
    loss_chunks: LossChunksOpt = None,
    loss_chunk_tokens: LossChunkTokensOpt = None,
    optimizer_impl: OptimizerImplOpt = None,
    modules_to_save: ModulesToSaveOpt = None,
    optimizer_in_backward: OptimizerInBackwardOpt = None,
    fsdp: FsdpOpt = None,
    fsdp_sharding: FsdpShardingOpt = None,
    fsdp_shard_group: FsdpShardGroupOpt = None,
    ds_buckets: DsBucketsOpt = None,
    reduce_bucket_elements: ReduceBucketOpt = None,
    prefetch_bucket_elements: PrefetchBucketOpt = None,
    max_live_parameters: MaxLiveOpt = None,
    max_reuse_distance: MaxReuseOpt = None,
    ds_auto_buckets: DsAutoBucketsOpt = None,
    ds_overlap_comm: DsOverlapCommOpt = None,
    expandable_segments: ExpandableOpt = None,
    ckpt_every: CkptEveryOpt = None,
    ckpt_position: CkptPositionOpt = None,
    padding: PaddingOpt = None,
    activation_offload: ActivationOffloadOpt = None,
    fsdp_cpu_offload: FsdpCpuOffloadOpt = None,
    float8: Float8Opt = None,
    adapter_dtype: AdapterDtypeOpt = None,
    keep_output: KeepOutputOpt = None,
    reference: ReferenceOpt = "auto",
    prompt_len: PromptLenOpt = None,
    num_generations: NumGenerationsOpt = 8,
    completion_len: CompletionLenOpt = 512,
    kl: KlOpt = None,
) -> None:
    """Estimate vs trace, term by term, with the relative error."""
    from swiftplan.executors.model_source import resolve_model

    _check_options(task=task, quant=quant, method=method, variable_lengths=variable_lengths)
    _refuse_idle_options(ctx, task=task, method=method, quant=quant)
    choice = _runtime(ctx, dict(locals()))
    from swiftplan.extras import require

    require("verify")
    spec = resolve_model(model)
    from swiftplan.cli.options import given_options

    # with --json, what the traced libraries print (DeepSpeed's logger writes to stdout) goes to stderr
    quiet = contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()
    with quiet:
        result, warnings = _verify(spec, dict(locals()) | {"typed": set(given_options(ctx))}, choice)
    if as_json:
        runtime = None if choice is None else choice.to_json()
        print_json(_result_json(spec, result) | {"runtime": runtime, "warnings": list(warnings)})
        return
    _render(spec, result)
    for warning in warnings:
        console.print(f"[yellow]warning: {escape(warning)}[/]", highlight=False)
    if choice is not None:
        console.print(choice.describe(), highlight=False)


VERIFY_TASKS = ("train", "sft", "dpo", "kto", "orpo", "simpo", "cpo", "rm", "grpo", "serve")
"""Tasks the tracer runs: SFT, TRL 1.16's preference, reward and GRPO loss paths (not PPO), serving."""
VERIFY_QUANTS = ("none", "nf4", "fp4", "int8")
"""Bases verify traces: unquantized, and bitsandbytes' own 4-bit and int8 layers (executors/trace_quant.py)."""


def _runtime(ctx: typer.Context, o: dict[str, Any]) -> Any:
    """The runtime profile (--runtime) with the typed knob flags and set-up options over it (training), or
    None for serving; each bad value refused naming its flag, and what the tracer cannot run refused."""
    from swiftplan.cli.options import (
        RUNTIME_TRAIN_FLAGS,
        given_options,
        knob_values,
        refuse_knobs_for_serving,
        serve_runtime,
        train_runtime,
    )
    from swiftplan.errors import SwiftplanError
    from swiftplan.planner.runtime import KNOB_FLAGS

    knobs = knob_values(**{n: o[n] for n in KNOB_FLAGS if n in o})
    if o["task"] == "serve":
        refuse_knobs_for_serving(knobs)
        serve_runtime(o["runtime"], {})  # --runtime checked, naming the flag
        if o["runtime"] is not None:
            raise SwiftplanError(
                f"verify --task serve traces transformers' generate, not {o['runtime']}: --runtime does not apply.",
                hint=f"`swiftplan estimate MODEL --task serve --runtime {o['runtime']}` gives its estimate.",
            )
        return None

    given = {n: o[n] for n in given_options(ctx, tuple(n for n in RUNTIME_TRAIN_FLAGS if n in o))}
    choice = train_runtime(o["runtime"], knobs, given)
    from dataclasses import replace

    from swiftplan.executors.verify_knobs import refuse_untraceable
    from swiftplan.usecases.inputs import resolve_cluster

    traced = choice.knobs()
    if o["task"] not in ("train", "sft"):  # the objective's log-prob path is TRL's own code, traced as is
        traced = replace(traced, loss="full")
    if o["method"] == "full":  # no adapters: their dtype asks nothing of the trace
        traced = replace(traced, adapter_dtype="fp32")
    refuse_untraceable(traced, world_size=resolve_cluster(o["gpus"]).world_size, task=o["task"])
    return choice


_TRAIN_ONLY = ("method", "quant", "rank", "targets", "lora_dropout", "dora", "optimizer", "batch", "seq",
               "grad_ckpt", "kbit_upcast", "variable_lengths")  # fmt: skip
"""verify options the serving trace (an unquantized model's prefill and decode) does not read."""
_SERVE_ONLY = ("context", "concurrency")
"""verify options the training traces do not read."""


def _refuse_idle_options(ctx: typer.Context, *, task: str, method: str, quant: str) -> None:
    """Options typed for the other task, LoRA options with --method full, and --quant none with --method qlora
    (traced as nf4): refused naming them, as estimate refuses them, instead of a trace that ignores them."""
    from swiftplan.cli.objective_options import refuse_objective_for_serving
    from swiftplan.cli.options import given_options
    from swiftplan.errors import SwiftplanError
    from swiftplan.planner.idle_knobs import refuse_idle_lora_options

    typed = given_options(ctx)
    serving = task == "serve"
    if serving:
        refuse_objective_for_serving(typed)
    if idle := [n for n in (_TRAIN_ONLY if serving else _SERVE_ONLY) if n in typed]:
        flags = ", ".join("--" + n.replace("_", "-") for n in idle)
        one = len(idle) == 1
        other = "training" if serving else "serving (--task serve)"
        raise SwiftplanError(
            f"{flags} {'describes' if one else 'describe'} {other}; verify --task {task} would ignore "
            f"{'it' if one else 'them'}.",
            hint="Drop those options, or verify the task they describe.",
        )
    if serving:
        return
    refuse_idle_lora_options(method, typed)
    if method == "qlora" and quant == "none" and "quant" in typed:
        raise SwiftplanError(
            "--method qlora trains LoRA on a 4-bit base, so it contradicts --quant none.",
            hint="Leave --quant out (QLoRA defaults to nf4) or give nf4 or fp4; for LoRA on an unquantized base "
            "use --method lora.",
        )


def _check_options(*, task: str, quant: str, method: str, variable_lengths: bool = False) -> None:
    """What verify can trace, refused before the model is resolved."""
    from swiftplan.cli._checks import one_of
    from swiftplan.errors import SwiftplanError
    from swiftplan.planner.setup import METHODS, QUANTS

    one_of("--task", task, VERIFY_TASKS)
    one_of("--method", method, METHODS)
    one_of("--quant", quant, QUANTS)
    if variable_lengths and task not in ("train", "sft"):
        raise SwiftplanError(
            f"verify traces padded batches (--variable-lengths) for SFT only, not --task {task}: TRL's "
            "preference, reward and GRPO paths are traced with full rows.",
            hint="Drop --variable-lengths, or use --task sft.",
        )
    if quant not in VERIFY_QUANTS:
        raise SwiftplanError(
            f"verify cannot trace --quant {quant}: it supports {', '.join(VERIFY_QUANTS)} (unquantized and "
            "bitsandbytes bases, whose own layers run on fake tensors).",
            hint=f"`swiftplan estimate --quant {quant}` gives the analytic estimate.",
        )


def _verify(spec: Any, o: dict[str, Any], choice: Any = None) -> tuple[Any, tuple[str, ...]]:
    """Trace the set-up the options describe, under the runtime `choice` (training), and compare it with
    the estimate, term by term; with the warnings about the set-up (a sequence past the model's positions,
    traced all the same, as estimate plans it)."""
    from swiftplan.cli.options import build_serve_setup, build_train_setup
    from swiftplan.extras import needs
    from swiftplan.usecases.inputs import resolve_cluster

    # capabilities and FSDP's world size (auto: this machine's); the trace is device-independent
    cluster = resolve_cluster(o["gpus"])
    with needs("verify"):
        from swiftplan.executors import verify
    if o["task"] == "serve":
        serve = build_serve_setup(
            precision=o["precision"], quant="none", context=o["context"], concurrency=o["concurrency"],
            kv_dtype="auto", gpu_memory_utilization=0.9, tp=1, cluster=cluster,
        )  # fmt: skip
        _check_tensor_size(spec, serve.concurrency, serve.context, "--concurrency")
        return verify.verify_serving(spec, serve), _positions(spec, serve.context, "--context")
    names = ("method", "precision", "quant", "rank", "targets", "lora_dropout", "optimizer", "batch", "seq",
             "grad_ckpt", "attention", "dora")  # fmt: skip
    if choice is not None:
        o = o | choice.setup_options()
    objective = _objective(o, choice)
    if objective.rollout is not None:
        o = o | {"seq": objective.rollout.seq_len}
    setup = build_train_setup(
        **{n: o[n] for n in names}, grad_accum=1, zero=0, offload="none", tp=1, pp=1, cluster=cluster,
        kbit_upcast=o.get("kbit_upcast", False), runtime=None if choice is None else choice.knobs(),
        objective=objective, variable_lengths=o.get("variable_lengths", False),
    )  # fmt: skip
    if choice is not None:
        from swiftplan.cli.options import knob_values, refuse_idle_setup_knobs
        from swiftplan.planner.runtime import KNOB_FLAGS

        refuse_idle_setup_knobs(knob_values(**{n: o[n] for n in KNOB_FLAGS if n in o}), setup, traced=True)
    # targets and rank checked as estimate checks them (peft's own traceback otherwise)
    if setup.lora is not None and setup.trains_adapters:
        from swiftplan.planner.adapters import validate_targets
        from swiftplan.planner.model_limits import check_setup

        validate_targets(spec, setup.lora)
        check_setup(spec, setup)  # a rank past every matrix it adapts
    pairs = objective.sequences_per_example
    what = f" × {pairs} (chosen and rejected)" if pairs > 1 else ""
    _check_tensor_size(spec, setup.micro_batch, setup.seq_len, "--batch", per=pairs, what=what)
    warnings = _positions(spec, setup.seq_len, "--seq")
    if objective.kind == "sft":
        return verify.verify_training(spec, setup, world_size=cluster.world_size), warnings
    with needs("verify"):
        from swiftplan.executors.verify_objective import verify_objective
    return verify_objective(spec, setup), warnings


TRACE_ELEMENTS_LIMIT = 2**61
"""Most elements one traced tensor may have: torch sizes a tensor's storage in bytes as a signed 64-bit
integer, so 2^63 bytes of 4-byte (fp32 logits) elements; past it even a fake tensor fails to build."""


def _check_tensor_size(
    spec: Any, count: int, tokens: int, flag: str, *, per: int = 1, what: str = ""
) -> None:
    """Refuse `flag` `count` (× `per` sequences each, `what` says why) whose logits — sequences × tokens ×
    vocabulary, the widest activation — no tensor can hold, naming the largest value that traces."""
    from swiftplan.errors import SwiftplanError

    width = max(spec.vocab_size, spec.intermediate_size, spec.hidden_size)
    elements = count * per * tokens * width
    if elements <= TRACE_ELEMENTS_LIMIT:
        return
    most = TRACE_ELEMENTS_LIMIT // (per * tokens * width)
    raise SwiftplanError(
        f"{flag} {count:,}{what} sequences of {tokens:,} tokens × {spec.name}'s {width:,}-wide logits is "
        f"{elements:.3g} elements, more than one tensor can hold (2^61 four-byte elements), so the trace "
        "cannot build it.",
        hint=f"Use {flag} {most:,} or less." if most else "Shorten the sequence.",
    )


def _positions(spec: Any, tokens: int, what: str) -> tuple[str, ...]:
    """The warning estimate gives for a sequence longer than the model's positions (none when it is not)."""
    from swiftplan.planner.model_limits import length_problem

    problem = length_problem(spec, tokens, what)
    return () if problem is None else (problem,)


def _objective(o: dict[str, Any], choice: Any) -> Any:
    """The objective --task and its options describe (GRPO is traced from given completions)."""
    from swiftplan.cli.objective_options import build_objective

    o = o | {"rollout": "colocate", "rollout_engine": None, "rollout_gpus": 0, "rollout_memory": None,
             "rollout_sleep": False, "rollout_tp": 1}  # fmt: skip
    runtime = "swiftplan" if choice is None else choice.knobs().name
    return build_objective(o["task"], o, runtime=runtime, given=o.get("typed", set()))


def _result_json(spec: Any, result: Any) -> dict[str, Any]:
    """The comparison as one JSON object."""
    return {
        "model": spec.name,
        "terms": [
            {"name": r.name, "estimate": r.estimate, "traced": r.traced, "error": r.error}
            for r in result.rows
        ],
        "estimate_peak_phase": _peak_phase(result),
        "trace_seconds": result.trace.seconds,
        "params": result.trace.params,
        "trainable_params": result.trace.trainable_params,
        "notes": list(getattr(result, "notes", ())),
    }


def _render(spec: Any, result: Any) -> None:
    """The comparison as a table, then where each side peaks and the notes."""
    table = Table(
        title=f"{spec.name}: estimate vs fake-tensor trace (bytes alive at the peak)", title_justify="left"
    )
    for column in ("term", "estimate GiB", "traced GiB", "error"):
        table.add_column(column, justify="left" if column == "term" else "right")
    for row in result.rows:
        relative = "—" if row.error is None else f"{row.error:+.2%}"
        style = "bold" if row.name in ("peak_allocated", "peak_reserved") else ""
        table.add_row(
            row.name, f"{row.estimate / 2**30:.3f}", f"{row.traced / 2**30:.3f}", relative, style=style
        )
    console.print(table)
    console.print(f"estimate peak at {_peak_phase(result)}; trace took {result.trace.seconds:.1f} s")
    for note in getattr(result, "notes", ()):
        console.print(f"[dim]note: {note}[/]")


def _peak_phase(result: Any) -> str:
    """Where the estimate peaks (an SFT comparison names it; an objective's carries the estimate)."""
    memory = getattr(result, "memory", None)
    return memory.device.peak_phase if memory is not None else result.estimate_phase


def register(app: typer.Typer) -> None:
    """Add `verify` to the CLI."""
    app.command("verify", epilog=EPILOG)(verify_command)
