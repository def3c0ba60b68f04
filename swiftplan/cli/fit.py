"""`swiftplan fit MODEL --gpus CLUSTER`: search for the best plan that fits, and write it as a plan file."""

from __future__ import annotations

import hashlib
import time
from enum import Enum
from typing import Any

import typer

from swiftplan.errors import SwiftplanError

EPILOG = """
Examples:

  swiftplan fit Qwen/Qwen2.5-7B --gpus rtx3060

  swiftplan fit Qwen/Qwen2.5-72B --gpus 8xA100-80G --dataset-tokens 1.5B --objective cost -o plan.yaml

  swiftplan fit meta-llama/Llama-3.1-8B --gpus 2xrtx4090 --method lora --rank 64 --no-quant --zero 3

  swiftplan fit Qwen/Qwen2.5-7B --gpus a100 --rank auto --pareto

  swiftplan fit Qwen/Qwen2.5-7B --task serve --context 8192 --decode-tps 20 --gpus L40S

  swiftplan fit Qwen/Qwen2.5-14B --gpus a100-80g --storage sqlite:///study.db   (run again to resume)

Pins take one value; a comma-separated list allows only those values (--method lora,qlora).
Exit status: 0 with a plan, 1 when nothing fits (the diagnosis says what would), 2 for bad input.
"""

DEFAULT_HOST_RAM_GIB = 64.0
"""Host RAM per node assumed for offload when the cluster comes from the catalog."""
DEFAULT_DATASET_TOKENS = 100_000_000
"""Tokens assumed when neither --dataset-tokens nor --data is given (only scales time and cost)."""


class Task(str, Enum):
    sft = "sft"
    train = "train"
    serve = "serve"


class Objective(str, Enum):
    time = "time"
    cost = "cost"
    throughput = "throughput"


def _list(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    items = tuple(part.strip() for part in text.split(",") if part.strip())
    return items or None


def _ints(option: str, text: str | None) -> tuple[int, ...] | None:
    items = _list(text)
    if items is None:
        return None
    try:
        return tuple(int(item) for item in items)
    except ValueError as error:
        raise SwiftplanError(f"{option} takes whole numbers separated by commas, got {text!r}.") from error


def _pins(**raw: Any) -> Any:
    from swiftplan.planner.search.pins import Pins
    from swiftplan.planner.search.space import ATTENTION, RANKS
    from swiftplan.planner.setup import ALL_LINEAR

    rank = raw["rank"]
    ranks = RANKS if rank is not None and rank.strip().lower() == "auto" else _ints("--rank", rank)
    targets = _list(raw["targets"])
    if targets is not None:
        presets = (ALL_LINEAR, ATTENTION)
        if targets == ("auto",):
            targets = presets
        elif not all(t in presets for t in targets):
            targets = (",".join(targets),)  # one custom module list
    quants = ("none",) if raw["no_quant"] else _list(raw["quant"])
    return Pins(
        methods=_list(raw["method"]),
        quants=quants,
        precisions=_list(raw["precision"]),
        optimizers=_list(raw["optimizer"]),
        grad_ckpt=None if raw["grad_ckpt"] is None else (raw["grad_ckpt"],),
        zero=_ints("--zero", raw["zero"]),
        max_offload=raw["max_offload"],
        tp=_ints("--tp", raw["tp"]),
        pp=_ints("--pp", raw["pp"]),
        dp=_ints("--dp", raw["dp"]),
        micro_batch=_ints("--batch", raw["batch"]),
        ranks=ranks,
        targets=targets,
        kv_dtypes=_list(raw["kv_dtype"]),
    )


def _dataset_tokens(dataset_tokens: str | None, data: str | None, model: str) -> tuple[int, str]:
    from swiftplan.units import parse_token_count

    if dataset_tokens is not None and data is not None:
        raise SwiftplanError("Pass either --dataset-tokens or --data, not both.")
    if dataset_tokens is not None:
        try:
            tokens = parse_token_count(dataset_tokens)
        except ValueError as error:
            raise SwiftplanError(
                f"Bad --dataset-tokens {dataset_tokens!r}.", hint="Examples: 50M, 1.5B, 200k, 123456."
            ) from error
        if tokens <= 0:
            raise SwiftplanError(f"--dataset-tokens must be positive, got {dataset_tokens!r}.")
        return tokens, "--dataset-tokens"
    if data is not None:
        from swiftplan.executors.dataset_tokens import count_tokens

        counted = count_tokens(data, model)
        return counted.tokens, f"{data}: {counted.records:,} records, {counted.method}"
    return DEFAULT_DATASET_TOKENS, "assumed; pass --dataset-tokens or --data"


def _host_ram(host_ram: float | None, gpus: str) -> tuple[int, str]:
    if host_ram is not None:
        if host_ram < 0:
            raise SwiftplanError(f"--host-ram must be zero or more GiB, got {host_ram}.")
        return int(host_ram * 2**30), "--host-ram"
    if gpus.strip().lower() == "auto":
        from swiftplan.executors.probe.host import probe_host

        available = probe_host(".").ram_available_bytes
        if available is not None:
            return available, "probed available RAM"
    return int(DEFAULT_HOST_RAM_GIB * 2**30), "default for catalog clusters"


def fit_command(
    model: str = typer.Argument(
        ..., help="Catalog name/alias, hub id, or path to a config.json (or its directory)."
    ),
    gpus: str = typer.Option(..., "--gpus", help="Cluster: rtx4090, 4xA100-80G, 2x8xH100, or auto (probe)."),
    task: Task = typer.Option(Task.sft, "--task", help="sft (fine-tune) or serve."),
    objective: Objective = typer.Option(
        None, "--objective", help="time | cost | throughput (default: time for sft, throughput for serve)."
    ),
    pareto: bool = typer.Option(
        False, "--pareto", help="Return the Pareto front: time vs cost vs memory headroom."
    ),
    dataset_tokens: str = typer.Option(None, "--dataset-tokens", help="Tokens in one epoch: 50M, 1.5B, ..."),
    data: str = typer.Option(None, "--data", help="Training data (.jsonl/.json/text) to count tokens from."),
    epochs: float = typer.Option(1.0, "--epochs", help="Passes over the data."),
    global_batch: int = typer.Option(16, "--global-batch", help="Sequences per optimizer step."),
    seq: int = typer.Option(2048, "--seq", help="Tokens per sequence."),
    method: str = typer.Option(None, "--method", help="Pin/allow: full, lora, qlora."),
    rank: str = typer.Option(None, "--rank", help="LoRA rank (default 16), a list, or auto (search 4-256)."),
    targets: str = typer.Option(
        None, "--targets", help="all-linear (default), attention, auto, or module names."
    ),
    quant: str = typer.Option(
        None, "--quant", help="Allow: none, int8, nf4, nf4-dq (serve: none, fp8, int8, nf4)."
    ),
    no_quant: bool = typer.Option(False, "--no-quant", help="Forbid quantized bases/weights."),
    precision: str = typer.Option(None, "--precision", help="Allow: bf16, amp-bf16, fp16, amp-fp16, fp32."),
    optimizer: str = typer.Option(
        None, "--optimizer", help="Allow: adamw, adamw-8bit, paged-adamw-8bit, sgd, adafactor."
    ),
    grad_ckpt: bool = typer.Option(
        None, "--grad-ckpt/--no-grad-ckpt", help="Pin gradient checkpointing (default: searched)."
    ),
    zero: str = typer.Option(None, "--zero", help="Allow ZeRO stages: 0,1,2,3."),
    max_offload: str = typer.Option(
        None, "--max-offload", help="none | optimizer | optimizer+params (default)."
    ),
    tp: str = typer.Option(None, "--tp", help="Allow tensor-parallel degrees."),
    pp: str = typer.Option(None, "--pp", help="Allow pipeline-parallel degrees."),
    dp: str = typer.Option(None, "--dp", help="Allow data-parallel degrees."),
    batch: str = typer.Option(
        None, "--batch", help="Pin micro-batch sizes (default: the largest that fits)."
    ),
    attention: str = typer.Option("sdpa", "--attention", help="sdpa | flash | eager"),
    context: int = typer.Option(4096, "--context", help="Serving: tokens per sequence."),
    concurrency: int = typer.Option(
        None, "--concurrency", help="Serving: sequences at once over all replicas (default: as many as fit)."
    ),
    ttft: float = typer.Option(None, "--ttft", help="Serving: largest acceptable time to first token, s."),
    decode_tps: float = typer.Option(
        None, "--decode-tps", help="Serving: smallest acceptable decode tokens/s per user."
    ),
    kv_dtype: str = typer.Option(None, "--kv-dtype", help="Serving: allow auto, fp8."),
    gpu_memory_utilization: float = typer.Option(
        0.9, "--gpu-memory-utilization", help="Serving: vLLM memory fraction."
    ),
    headroom: float = typer.Option(0.05, "--headroom", help="Fraction of device memory kept free."),
    host_ram: float = typer.Option(
        None, "--host-ram", help="Host RAM per node for offload, GiB (default 64; probed with --gpus auto)."
    ),
    seed: int = typer.Option(0, "--seed", help="Sampler seed."),
    trials: int = typer.Option(
        None,
        "--trials",
        help="Distinct structures to evaluate; fewer than the space uses TPE (default: all, by branch and bound, up to 8,000; else 150).",
    ),
    storage: str = typer.Option(
        None, "--storage", help="Optuna storage URL to persist/resume, e.g. sqlite:///study.db."
    ),
    study_name: str = typer.Option(
        None, "--study-name", help="Study name in --storage (default: derived from the problem)."
    ),
    measure: bool = typer.Option(
        False,
        "--measure",
        help="Run the top candidates for a few real steps on this machine's GPU and rank them by measured tokens/s (needs CUDA).",
    ),
    top_k: int = typer.Option(3, "--measure-top", "--top-k", help="Candidates --measure runs."),
    measure_steps: int = typer.Option(
        3, "--measure-steps", help="Timed optimizer steps per candidate (after 1 warm-up)."
    ),
    measure_layers: int = typer.Option(
        None,
        "--measure-layers",
        help="Build the measured models with this many layers (faster; default: all).",
    ),
    measure_device: str = typer.Option(
        "cuda",
        "--measure-device",
        help="cuda, or cpu for a slow smoke run (CPU timings do not rank GPU plans).",
    ),
    output: str = typer.Option(None, "-o", "--output", help="Write the winning plan as a plan file (YAML)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Search the training (or serving) plans for the best one that fits, with Optuna."""
    started = time.perf_counter()
    from swiftplan.cli.options import resolve_cluster
    from swiftplan.executors.model_source import resolve_model

    if not 0 <= headroom < 0.9:
        raise SwiftplanError(f"--headroom must be in [0, 0.9), got {headroom}.")
    if trials is not None and trials < 1:
        raise SwiftplanError(f"--trials must be at least 1, got {trials}.")
    if measure and task == Task.serve:
        raise SwiftplanError("--measure times training candidates; it does not apply to --task serve.")
    spec = resolve_model(model)
    cluster = resolve_cluster(gpus)
    if measure:
        if measure_device not in ("cuda", "cpu"):
            raise SwiftplanError(f"--measure-device takes cuda or cpu, got {measure_device!r}.")
        if top_k < 1 or measure_steps < 1 or (measure_layers is not None and measure_layers < 1):
            raise SwiftplanError("--measure-top, --measure-steps and --measure-layers must be at least 1.")
        if measure_device == "cuda":
            from swiftplan.executors.measure import require_cuda

            require_cuda()
    goal = objective.value if objective else ("throughput" if task == Task.serve else "time")
    pins = _pins(
        method=method,
        rank=rank,
        targets=targets,
        quant=quant,
        no_quant=no_quant,
        precision=precision,
        optimizer=optimizer,
        grad_ckpt=grad_ckpt,
        zero=zero,
        max_offload=max_offload,
        tp=tp,
        pp=pp,
        dp=dp,
        batch=batch,
        kv_dtype=kv_dtype,
    )
    from swiftplan.cli._fit_run import run_fit

    run_fit(
        spec=spec,
        model=model,
        cluster=cluster,
        gpus=gpus,
        task="serve" if task == Task.serve else "train",
        objective=goal,
        pareto=pareto,
        pins=pins,
        dataset=_dataset_tokens(dataset_tokens, data, model) if task != Task.serve else None,
        epochs=epochs,
        global_batch=global_batch,
        seq=seq,
        attention=attention,
        context=context,
        concurrency=concurrency,
        ttft=ttft,
        decode_tps=decode_tps,
        gpu_memory_utilization=gpu_memory_utilization,
        headroom=headroom,
        host_ram=_host_ram(host_ram, gpus),
        seed=seed,
        trials=trials,
        storage=storage,
        study_name=study_name,
        measure=measure,
        top_k=top_k,
        measure_steps=measure_steps,
        measure_layers=measure_layers,
        measure_device=measure_device,
        output=output,
        as_json=as_json,
        started=started,
    )


def fingerprint(*parts: Any) -> str:
    """Readable-prefix hash identifying a search problem (for resuming stored studies)."""
    text = "|".join(repr(part) for part in parts)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def register(app: typer.Typer) -> None:
    """Add `fit` to the CLI."""
    app.command("fit", epilog=EPILOG)(fit_command)
