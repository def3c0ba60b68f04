"""`swiftplan size MODEL`: which hardware to rent or buy for a job, and what it costs."""

from __future__ import annotations

import re
import time
from enum import Enum
from typing import Any

import typer

from swiftplan.errors import SwiftplanError

EPILOG = """
Examples:

  swiftplan size Qwen/Qwen2.5-72B --task sft --method qlora --dataset-tokens 50M --deadline 48h

  swiftplan size Qwen/Qwen2.5-7B --task serve --concurrency 200 --context 8192

  swiftplan size Qwen/Qwen2.5-7B --dataset-tokens 1.5B --buy --budget 20000 --vendor nvidia

  swiftplan size meta-llama/Llama-3.1-70B --method lora --objective time --max-gpus 16 --plot cost_time.png

  swiftplan size Qwen/Qwen2.5-7B --task serve --request-rate 20 --prompt-tokens 1024 --output-tokens 256 --ttft 2

  swiftplan size Qwen/Qwen2.5-14B --prices my_prices.yaml --csv options.csv

Objectives: cost (rental cost of the job; serving: per hour), time (wall clock; serving: per-token
latency), purchase (list price of the GPUs), cost-per-token (rental $ per million tokens).
A price file maps accelerator ids to {usd_per_gpu_hour, purchase_usd, source, as_of}; catalog
prices are dated snapshots and go stale. Exit status: 0 with a recommendation, 1 when no hardware
qualifies, 2 for bad input.
"""

DEFAULT_DATASET_TOKENS = 100_000_000
"""Tokens assumed when --dataset-tokens is not given (only scales time and cost)."""
DEFAULT_HOST_RAM_GIB = 64.0
"""Host RAM per node assumed for offload."""


class Task(str, Enum):
    sft = "sft"
    train = "train"
    serve = "serve"


class Objective(str, Enum):
    cost = "cost"
    time = "time"
    purchase = "purchase"
    cost_per_token = "cost-per-token"


_DURATION = re.compile(
    r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(m|min|mins|minutes?|h|hr|hrs|hours?|d|days?)?\s*$", re.I
)


def parse_duration(text: str) -> float:
    """'48h', '2d', '90m', '1.5 days', '36' (hours) → seconds."""
    match = _DURATION.match(text)
    if not match or float(match.group(1)) <= 0:
        raise SwiftplanError(f"Bad --deadline {text!r}.", hint="Examples: 48h, 2d, 90m, 36 (hours).")
    unit = (match.group(2) or "h").lower()
    scale = 60 if unit.startswith("m") else 86400 if unit.startswith("d") else 3600
    return float(match.group(1)) * scale


def parse_usd(text: str) -> float:
    """'5000', '$5,000', '5k', '1.2M' → dollars."""
    raw = text.strip().lstrip("$").replace(",", "").replace("_", "").lower()
    scale = {"k": 1e3, "m": 1e6}.get(raw[-1:], 1.0)
    try:
        value = float(raw[:-1] if scale != 1.0 else raw) * scale
    except ValueError:
        value = -1.0
    if not value > 0:
        raise SwiftplanError(f"Bad --budget {text!r}: give US dollars.", hint="Examples: 5000, $12,000, 20k.")
    return value


def _list(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    items = tuple(part.strip() for part in text.split(",") if part.strip())
    return items or None


def _vendors(text: str | None) -> tuple[str, ...] | None:
    from swiftplan.planner.hardware import list_accelerators

    wanted = _list(text)
    if wanted is None:
        return None
    known = sorted({acc.vendor.lower() for acc in list_accelerators()})
    bad = [v for v in wanted if v.lower() not in known]
    if bad:
        raise SwiftplanError(
            f"Unknown --vendor {', '.join(bad)}.", hint=f"Known vendors: {', '.join(known)}."
        )
    return tuple(v.lower() for v in wanted)


def _accelerators(text: str | None) -> list[Any]:
    from swiftplan.planner.hardware import get_accelerator, list_accelerators

    names = _list(text)
    if names is None:
        return list(list_accelerators())
    return list({acc.id: acc for acc in (get_accelerator(name) for name in names)}.values())


def read_price_file(path: str) -> tuple[Any, ...]:
    """The overrides in a YAML price file (errors name the file; no traceback)."""
    import yaml

    from swiftplan.planner.sizing.prices import parse_price_overrides

    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except OSError as error:
        raise SwiftplanError(f"Cannot read --prices {path}: {error.strerror or error}.") from None
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise SwiftplanError(
            f"--prices {path} is not valid YAML{at}.",
            hint="Example: h100-sxm: {usd_per_gpu_hour: 2.1, purchase_usd: 30000, source: 'quote', as_of: 2026-11-01}",
        ) from None
    return parse_price_overrides(data, path)


def _pins(method: str | None, quant: str | None, no_quant: bool, rank: int | None) -> Any:
    from swiftplan.planner.search.pins import Pins

    if rank is not None and rank < 1:
        raise SwiftplanError(f"--rank must be at least 1, got {rank}.")
    return Pins(
        methods=_list(method),
        quants=("none",) if no_quant else _list(quant),
        ranks=(rank,) if rank is not None else None,
    )


def size_command(
    model: str = typer.Argument(..., help="Catalog name/alias, hub id, or path to a config.json."),
    task: Task = typer.Option(Task.sft, "--task", help="sft (fine-tune) or serve."),
    objective: Objective = typer.Option(
        None, "--objective", help="cost | time | purchase | cost-per-token (default: cost; serve: cost-per-token; --buy: purchase)."
    ),
    buy: bool = typer.Option(
        None, "--buy/--rent", help="Only hardware with a purchase price (--buy) or a rental price (--rent)."
    ),
    budget: str = typer.Option(None, "--budget", help="Most US dollars: rental cost of the job (serving: per hour), or purchase price with --buy."),
    deadline: str = typer.Option(None, "--deadline", help="Training: finish within 48h, 2d, 90m."),
    max_gpus: int = typer.Option(None, "--max-gpus", help="Most GPUs in all."),
    max_nodes: int = typer.Option(4, "--max-nodes", help="Most nodes of 8 GPUs."),
    network_gbps: float = typer.Option(100.0, "--network-gbps", help="Network between nodes, Gb/s per node."),
    vendor: str = typer.Option(None, "--vendor", help="Only these vendors: nvidia, amd, huawei, apple."),
    accelerators: str = typer.Option(None, "--accelerators", help="Only these accelerators: h100-sxm,a100-80gb-sxm."),
    prices: str = typer.Option(None, "--prices", help="YAML price file overriding the catalog prices."),
    method: str = typer.Option(None, "--method", help="Allow: full, lora, qlora (default: all)."),
    quant: str = typer.Option(None, "--quant", help="Allow: none, int8, nf4 (serve: none, fp8, int8, nf4; default none, fp8)."),
    no_quant: bool = typer.Option(False, "--no-quant", help="Forbid quantized bases/weights."),
    rank: int = typer.Option(None, "--rank", help="LoRA rank (default 16)."),
    dataset_tokens: str = typer.Option(None, "--dataset-tokens", help="Tokens in one epoch: 50M, 1.5B (default 100M)."),
    epochs: float = typer.Option(1.0, "--epochs", help="Passes over the data."),
    seq: int = typer.Option(2048, "--seq", help="Tokens per sequence."),
    global_batch: int = typer.Option(16, "--global-batch", help="Sequences per optimizer step."),
    attention: str = typer.Option("sdpa", "--attention", help="sdpa | flash | eager"),
    context: int = typer.Option(4096, "--context", help="Serving: tokens per sequence."),
    concurrency: int = typer.Option(None, "--concurrency", help="Serving: sequences at once over all replicas."),
    request_rate: float = typer.Option(None, "--request-rate", help="Serving: requests per second (with --prompt-tokens, --output-tokens)."),
    prompt_tokens: int = typer.Option(None, "--prompt-tokens", help="Serving: prompt tokens per request."),
    output_tokens: int = typer.Option(None, "--output-tokens", help="Serving: generated tokens per request."),
    ttft: float = typer.Option(None, "--ttft", help="Serving: largest acceptable time to first token, s."),
    decode_tps: float = typer.Option(None, "--decode-tps", help="Serving: smallest acceptable decode tokens/s per user."),
    gpu_memory_utilization: float = typer.Option(0.9, "--gpu-memory-utilization", help="Serving: vLLM memory fraction."),
    headroom: float = typer.Option(0.05, "--headroom", help="Fraction of device memory kept free."),
    host_ram: float = typer.Option(DEFAULT_HOST_RAM_GIB, "--host-ram", help="Host RAM per node for offload, GiB."),
    top: int = typer.Option(15, "--top", help="Options shown in the table."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    csv_path: str = typer.Option(None, "--csv", help="Write every option as CSV to this file ('-': stdout)."),
    plot: str = typer.Option(None, "--plot", help="Draw cost vs time of the feasible options to a PNG (needs matplotlib)."),
) -> None:  # fmt: skip
    """Which hardware to rent or buy for a fine-tuning or serving job, ranked, with what it costs."""
    started = time.perf_counter()
    from swiftplan.cli._size_render import SizeReport, emit
    from swiftplan.executors.model_source import resolve_model
    from swiftplan.planner.sizing.prices import price_table
    from swiftplan.planner.sizing.rank import Constraints
    from swiftplan.planner.sizing.rank import rank as rank_options

    serving = task == Task.serve
    if plot is not None:
        from swiftplan.cli._size_plot import require_matplotlib

        require_matplotlib()
    mode = None if buy is None else ("buy" if buy else "rent")
    goal = (
        objective.value
        if objective
        else ("purchase" if mode == "buy" else "cost-per-token" if serving else "cost")
    )
    if mode == "buy" and goal in ("cost", "cost-per-token"):
        raise SwiftplanError(
            f"--objective {goal} ranks by rental price, which --buy does not use.",
            hint="With --buy use --objective purchase or time.",
        )
    if mode == "rent" and goal == "purchase":
        raise SwiftplanError("--objective purchase ranks by list price, which --rent does not use.")
    if serving and deadline is not None:
        raise SwiftplanError(
            "--deadline applies to training (--task sft); serving has --ttft and --decode-tps."
        )
    if not 0 <= headroom < 0.9:
        raise SwiftplanError(f"--headroom must be in [0, 0.9), got {headroom}.")
    if max_gpus is not None and max_gpus < 1:
        raise SwiftplanError(f"--max-gpus must be at least 1, got {max_gpus}.")
    if max_nodes < 1 or network_gbps <= 0 or host_ram < 0:
        raise SwiftplanError("--max-nodes and --network-gbps must be positive and --host-ram zero or more.")
    if as_json and csv_path == "-":
        raise SwiftplanError("--json and --csv - both write to stdout; give --csv a file name.")
    if top < 1:
        raise SwiftplanError(f"--top must be at least 1, got {top}.")
    constraints = Constraints(
        budget_usd=parse_usd(budget) if budget is not None else None,
        deadline_s=parse_duration(deadline) if deadline is not None else None,
        max_gpus=max_gpus,
        vendors=_vendors(vendor),
        mode=mode,  # type: ignore[arg-type]
    )
    catalog = _accelerators(accelerators)
    overrides = read_price_file(prices) if prices else ()
    table = price_table(catalog, overrides)
    spec = resolve_model(model)
    pins = _pins(method, quant, no_quant, rank)
    notes: list[str] = []
    if serving:
        from swiftplan.planner.sizing.serve_sizing import ServeLoad, size_serving

        if request_rate is None and concurrency is None:
            raise SwiftplanError(
                "Serving sizing needs a load: --concurrency N, or --request-rate R --prompt-tokens P --output-tokens O."
            )
        if request_rate is not None and concurrency is not None:
            raise SwiftplanError("Give either --concurrency or --request-rate, not both.")
        if request_rate is not None and (prompt_tokens is None or output_tokens is None):
            raise SwiftplanError("--request-rate needs --prompt-tokens and --output-tokens.")
        load = ServeLoad(
            context=prompt_tokens + output_tokens if request_rate is not None else context,  # type: ignore[operator]
            concurrency=concurrency,
            request_rate=request_rate,
            prompt_tokens=prompt_tokens,
            output_tokens=output_tokens,
            ttft_s=ttft,
            decode_tps=decode_tps,
            gpu_memory_utilization=gpu_memory_utilization,
            max_nodes=max_nodes,
        )
        result = size_serving(
            spec,
            catalog,
            load,
            objective=goal,
            constraints=constraints,
            pins=pins,
            headroom=headroom,
            prices=table,  # type: ignore[arg-type]
        )
        workload: dict[str, Any] = {
            "context": load.context,
            "concurrency": load.concurrency,
            "request_rate": load.request_rate,
            "prompt_tokens": load.prompt_tokens,
            "output_tokens": load.output_tokens,
            "ttft_s": load.ttft_s,
            "decode_tps": load.decode_tps,
            "gpu_memory_utilization": load.gpu_memory_utilization,
        }
        if pins.quants is None:
            notes.append(
                "weights sized in 16-bit or fp8; pass --quant none,fp8,int8,nf4 to allow bitsandbytes formats."
            )
    else:
        from swiftplan.planner.search.candidate import TrainWorkload
        from swiftplan.planner.sizing.train_sizing import TrainJob, size_training
        from swiftplan.units import parse_token_count

        tokens, tokens_source = DEFAULT_DATASET_TOKENS, "assumed (pass --dataset-tokens)"
        if dataset_tokens is not None:
            try:
                tokens, tokens_source = parse_token_count(dataset_tokens), "--dataset-tokens"
            except ValueError:
                raise SwiftplanError(
                    f"Bad --dataset-tokens {dataset_tokens!r}.", hint="Examples: 50M, 1.5B, 200k."
                ) from None
        if tokens <= 0 or epochs <= 0 or seq < 1 or global_batch < 1:
            raise SwiftplanError("--dataset-tokens, --epochs, --seq and --global-batch must be positive.")
        train_workload = TrainWorkload(
            seq_len=seq, global_batch=global_batch, dataset_tokens=tokens, epochs=epochs, attention=attention
        )
        job = TrainJob(
            workload=train_workload,
            pins=pins,
            headroom=headroom,
            host_ram_bytes=int(host_ram * 2**30),
            max_nodes=max_nodes,
            network_gbps=network_gbps,
        )
        result = size_training(spec, catalog, job, objective=goal, constraints=constraints, prices=table)  # type: ignore[arg-type]
        workload = {
            "dataset_tokens": tokens,
            "dataset_tokens_source": tokens_source,
            "epochs": epochs,
            "seq_len": seq,
            "global_batch": global_batch,
            "attention": attention,
            "host_ram_gib_per_node": host_ram,
        }
        notes.append(
            f"clusters: 1, 2, 4, 8 GPUs in one node or 2-{max_nodes} nodes of 8 over {network_gbps:g} Gb/s; "
            "GPUs without NVLink on every board (GeForce, RTX A6000, PCIe parts) talk over PCIe."
        )
    ranking = rank_options(result.options, goal, constraints)  # type: ignore[arg-type]
    passed = {
        "--method": method,
        "--quant": quant,
        "--rank": rank,
        "--headroom": headroom if headroom != 0.05 else None,
    }
    if serving:
        best = ranking.recommended
        passed |= {"--context": load.context, "--ttft": ttft, "--decode-tps": decode_tps}
        if best is not None:
            fields = best.plan_fields
            total = concurrency or fields["replicas"] * fields["sequences_per_replica"]
            passed |= {"--concurrency": total, "--quant": fields["quant"]}
        if ttft is None:
            notes.append(
                "TTFT assumes every sequence of a replica prefills at once (the worst case); pass --ttft to bound it."
            )
    else:
        passed |= {
            "--dataset-tokens": dataset_tokens,
            "--epochs": epochs if epochs != 1.0 else None,
            "--seq": seq if seq != 2048 else None,
            "--global-batch": global_batch if global_batch != 16 else None,
            "--host-ram": host_ram if host_ram != DEFAULT_HOST_RAM_GIB else None,
        }
    fit_args = (
        *(["--task", "serve"] if serving else []),
        *(["--no-quant"] if no_quant and not serving else []),
    )
    fit_args += tuple(
        part
        for flag, value in passed.items()
        if value is not None
        for part in (flag, f"{value:g}" if isinstance(value, float) else str(value))
    )
    report = SizeReport(
        model=spec.name,
        task="serve" if serving else "train",
        objective=goal,
        workload=workload,
        constraints=constraints,
        ranking=ranking,
        result=result,
        prices=table,
        notes=tuple(notes),
        elapsed_s=time.perf_counter() - started,
        top=top,
        fit_args=fit_args,
    )
    emit(report, as_json=as_json, csv_path=csv_path)
    if plot is not None:
        from swiftplan.cli._size_plot import draw

        draw(report, plot)
        if not as_json and csv_path != "-":
            from swiftplan.cli._output import console

            console.print(f"wrote {plot}", highlight=False)
    if ranking.recommended is None:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add `size` to the CLI."""
    app.command("size", epilog=EPILOG)(size_command)
