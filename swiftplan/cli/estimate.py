"""`swiftplan estimate MODEL`: memory breakdown and speed of one configuration."""

from __future__ import annotations

from enum import Enum

import typer
from rich.table import Table

from swiftplan.cli._output import console, print_json
from swiftplan.cli.options import build_serve_setup, build_train_setup, resolve_cluster
from swiftplan.planner.estimate import Estimate
from swiftplan.units import format_gib

EPILOG = """
Examples:

  swiftplan estimate Qwen/Qwen2.5-7B --method lora --rank 64 --batch 2 --seq 2048 --gpus rtx4090

  swiftplan estimate Qwen/Qwen2.5-72B --method qlora --gpus rtx4090 --json

  swiftplan estimate meta-llama/Llama-3.1-70B --method full --zero 3 --offload optimizer --gpus 8xA100-80G

  swiftplan estimate Qwen/Qwen2.5-7B --task serve --context 8192 --concurrency 32 --gpus L40S

  swiftplan estimate ./my-model/config.json --method lora --gpus 2xrtx3090

  swiftplan estimate plan.yaml          (a plan file written by `swiftplan fit -o`)
"""


class Task(str, Enum):
    train = "train"
    serve = "serve"


def render_estimate(estimate: Estimate) -> None:
    """Print the breakdown table, the verdict and the speed."""
    mem = estimate.memory
    table = Table(
        title=f"{estimate.model.name} on {estimate.cluster.describe()} — per device", title_justify="left"
    )
    table.add_column("term")
    table.add_column("GiB", justify="right")
    table.add_column("how")
    for term in mem.terms:
        if term.value_bytes or term.name in ("weights", "activations"):
            table.add_row(term.name, f"{term.value_bytes / 2**30:.2f}", term.formula)
    table.add_section()
    table.add_row(
        "[bold]peak allocated[/]",
        f"[bold]{mem.peak_allocated / 2**30:.2f}[/]",
        f"at {mem.peak_phase} (torch.cuda.max_memory_allocated)",
    )
    table.add_row(
        "[bold]device total[/]", f"[bold]{mem.device_total / 2**30:.2f}[/]", "what nvidia-smi would show"
    )
    table.add_row("device memory", f"{estimate.device_memory_bytes / 2**30:.2f}", "")
    console.print(table)
    verdict = "[green]fits[/]" if estimate.fits else "[red]does not fit[/]"
    console.print(
        f"{verdict}: {format_gib(mem.device_total)} of {format_gib(estimate.device_memory_bytes)} "
        f"({format_gib(abs(estimate.headroom_bytes))} {'free' if estimate.headroom_bytes >= 0 else 'over'}); "
        f"largest term: {mem.dominant()}."
    )
    if estimate.host_bytes:
        console.print(f"host RAM for offloaded state: {format_gib(estimate.host_bytes)}")
    console.print(f"params {estimate.params:,}  trainable {estimate.trainable_params:,}")
    speed = estimate.to_json()["speed"]
    for note in estimate.notes:
        console.print(f"[yellow]note:[/] {note}")
    if estimate.speed is None:
        return
    if estimate.task == "train":
        console.print(
            f"speed: {speed['tokens_per_s']:,.0f} tokens/s, {speed['step_time_s']:.2f} s/step, bound by {speed['bound']} "
            f"({speed['flops_per_token'] / 1e9:.1f} GFLOP/token at {speed['mfu_prior']:.0%} MFU prior)"
        )
    else:
        console.print(
            f"serving: max {estimate.max_concurrency} sequences of {estimate.setup.context} tokens; "  # type: ignore[union-attr]
            f"max context {estimate.max_context} at concurrency {estimate.setup.concurrency}; "  # type: ignore[union-attr]
            f"prefill {speed['prefill_tokens_per_s']:,.0f} tok/s, TTFT {speed['ttft_s']:.2f} s, "
            f"decode {speed['tokens_per_s']:,.0f} tok/s total ({speed['per_user_decode_tokens_per_s']:.1f}/user), {speed['bound']}-bound"
        )


def estimate_command(
    model: str = typer.Argument(
        ..., help="Catalog name/alias, hub id, or path to a config.json (or its directory)."
    ),
    task: Task = typer.Option(Task.train, "--task", help="train or serve."),
    method: str = typer.Option("lora", "--method", help="full | lora | qlora"),
    precision: str = typer.Option("bf16", "--precision", help="bf16 | fp16 | fp32 | amp-bf16 | amp-fp16"),
    quant: str = typer.Option(
        "none", "--quant", help="none | nf4 | int8 | gptq | awq | fp8 (qlora defaults to nf4)"
    ),
    rank: int = typer.Option(16, "--rank", help="LoRA rank."),
    targets: str = typer.Option(
        "q_proj,v_proj", "--targets", help="Comma-separated module names, or all-linear."
    ),
    lora_dropout: float = typer.Option(
        0.05, "--lora-dropout", help="LoRA dropout (adds a mask and a copy per target)."
    ),
    optimizer: str = typer.Option(
        "adamw", "--optimizer", help="adamw | adamw-8bit | paged-adamw-8bit | sgd | adafactor"
    ),
    batch: int = typer.Option(1, "--batch", help="Micro-batch per device (sequences)."),
    seq: int = typer.Option(2048, "--seq", help="Sequence length (tokens)."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Gradient accumulation steps."),
    grad_ckpt: bool = typer.Option(True, "--grad-ckpt/--no-grad-ckpt", help="Gradient checkpointing."),
    attention: str = typer.Option("sdpa", "--attention", help="sdpa | flash | eager"),
    kbit_upcast: bool = typer.Option(
        False,
        "--kbit-upcast",
        help="QLoRA/int8 base prepared with peft's prepare_model_for_kbit_training (TRL-style): "
        "non-quantized parameters and activations in fp32.",
    ),
    zero: int = typer.Option(0, "--zero", help="ZeRO stage 0-3."),
    offload: str = typer.Option("none", "--offload", help="none | optimizer | optimizer+params"),
    gpus: str = typer.Option(
        "rtx4090", "--gpus", help="Cluster: rtx4090, 4xA100-80G, 2x8xH100, or auto (probe)."
    ),
    tp: int = typer.Option(1, "--tp", help="Tensor-parallel degree."),
    pp: int = typer.Option(1, "--pp", help="Pipeline-parallel degree."),
    context: int = typer.Option(4096, "--context", help="Serving: tokens per sequence."),
    concurrency: int = typer.Option(1, "--concurrency", help="Serving: concurrent sequences."),
    kv_dtype: str = typer.Option("auto", "--kv-dtype", help="Serving: auto | fp8"),
    gpu_memory_utilization: float = typer.Option(
        0.9, "--gpu-memory-utilization", help="Serving: vLLM memory fraction."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Memory breakdown (per device) and predicted speed of one configuration."""
    from swiftplan.executors.model_source import resolve_model
    from swiftplan.planner.estimate import estimate_serving, estimate_training

    if model.lower().endswith(
        (".yaml", ".yml")
    ):  # a plan file from `swiftplan fit -o`: its own model, GPUs and set-up
        from swiftplan.plan_file import estimate_plan

        result = estimate_plan(model)
        print_json(result.to_json()) if as_json else render_estimate(result)
        return
    spec = resolve_model(model)
    cluster = resolve_cluster(gpus)
    if task == Task.train:
        setup = build_train_setup(
            method=method,
            precision=precision,
            quant=quant,
            rank=rank,
            targets=targets,
            lora_dropout=lora_dropout,
            optimizer=optimizer,
            batch=batch,
            seq=seq,
            grad_accum=grad_accum,
            grad_ckpt=grad_ckpt,
            attention=attention,
            zero=zero,
            offload=offload,
            tp=tp,
            pp=pp,
            cluster=cluster,
            kbit_upcast=kbit_upcast,
        )
        result = estimate_training(spec, setup, cluster)
    else:
        serve = build_serve_setup(
            precision=precision,
            quant=quant,
            context=context,
            concurrency=concurrency,
            kv_dtype=kv_dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            tp=tp,
            cluster=cluster,
        )
        result = estimate_serving(spec, serve, cluster)
    if as_json:
        print_json(result.to_json())
    else:
        render_estimate(result)


def register(app: typer.Typer) -> None:
    """Add `estimate` to the CLI."""
    app.command("estimate", epilog=EPILOG)(estimate_command)
