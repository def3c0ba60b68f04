"""`swiftplan train PLAN --data FILE`: carry out a training plan and compare the prediction with the run."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from swiftplan.cli._output import console, print_json

EPILOG = """
Examples:

  swiftplan train plan.yaml --data train.jsonl                      (one GPU: trains in this process)

  swiftplan train plan.yaml --data chat.jsonl --max-steps 200 --save-steps 50 --output-dir runs/qwen-lora

  swiftplan train plan.yaml --output-dir runs/qwen-lora --resume --max-steps 400

  swiftplan train plan.yaml --data d.parquet --nnodes 2 --node-rank 0 --master-addr 10.0.0.1 --dry-run

  swiftplan train plan.yaml --data d.jsonl --random-init --tokenizer DIR --device cpu --max-steps 5

Data: JSONL, CSV or Parquet with alpaca (instruction/input/output), chat (messages), ShareGPT
(conversations) or text records; loss only on answers for alpaca/chat/ShareGPT. Needs the [train] extra.
"""


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
               TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("train", total=None, info="")

        def update(step: int, total: int, loss: float, tokens_per_s: float, memory: dict[str, int]) -> None:
            mem = memory.get("allocated", 0) / 2**30
            info = f"loss {loss:.4f}  {tokens_per_s:,.0f} tok/s  {mem:.2f} GiB"
            progress.update(task, completed=step, total=total, info=info)

        yield update


def _gib(value: Any) -> str:
    return "—" if value is None else f"{value / 2**30:.3f} GiB"


def _tokens(value: Any) -> str:
    return "—" if value is None else f"{value:,.0f}"


def _seconds(value: Any) -> str:
    return "—" if value is None else f"{value:.4g}"


def _render_report(report: dict[str, Any]) -> None:
    steps = report["steps"]
    loss = report["loss"]
    first = "—" if loss["first"] is None else f"{loss['first']:.4f}"
    last = "—" if loss["last"] is None else f"{loss['last']:.4f}"
    console.print(f"steps {steps['start']} → {steps['end']} of {steps['total']}; loss {first} → {last}")
    table = Table(title=f"predicted ({report['predicted']['cluster']}) vs measured ({report['device']['name'] or report['device']['torch_device']}, "
                        f"{report['world_size']} process(es))", title_justify="left")  # fmt: skip
    for column in ("", "predicted", "measured", "measured / predicted"):
        table.add_column(column, justify="left" if not column else "right")
    for row in report["comparison"]:
        fmt = _gib if "bytes" in row["what"] else _tokens if "tokens" in row["what"] else _seconds
        ratio = "—" if row["ratio"] is None else f"{row['ratio']:.2f}"
        table.add_row(row["what"].replace(" (bytes)", ""), fmt(row["predicted"]), fmt(row["measured"]), ratio)
    console.print(table)
    console.print(f"[dim]memory: {report['measured']['method']}[/]")
    for note in report["notes"]:
        console.print(f"[yellow]note:[/] {note}")


def _print_dry_run(result: Any, *, as_json: bool) -> None:
    """The plan's launch, node by node, as text to copy or as JSON."""
    from swiftplan.executors.train.launch import format_launch

    plan = result.plan
    if as_json:
        print_json({"run_dir": str(result.run_dir), "nodes": plan.nodes, "gpus_per_node": plan.gpus_per_node,
                    "hardware": plan.hardware.describe(), "mode": result.launches[0].mode,
                    "launches": [{"node_rank": i, "argv": list(x.argv), "env": x.env} for i, x in enumerate(result.launches)],
                    "files": result.launches[0].files, "notes": list(result.notes)})  # fmt: skip
        return
    sys.stdout.write(f"# plan: {plan.model} on {plan.hardware.describe()} ({plan.nodes} node(s) × {plan.gpus_per_node} "
                     f"process(es); tp {plan.layout.tp}, pp {plan.layout.pp}, dp {plan.layout.dp})\n")  # fmt: skip
    sys.stdout.write(f"# run directory: {result.run_dir} (not created: --dry-run)\n")
    for node, launch in enumerate(result.launches):
        if len(result.launches) > 1:
            sys.stdout.write(f"\n# node {node} of {len(result.launches)} (run on that machine)\n")
        text = format_launch(launch)
        sys.stdout.write(text if node == len(result.launches) - 1 else text.split("\n\n# --- ")[0].rstrip("\n") + "\n")
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")


def train_command(
    plan: Path = typer.Argument(..., help="Plan file written by `swiftplan fit -o plan.yaml`."),
    data: Path | None = typer.Option(None, "--data", help="Training data: .jsonl, .csv or .parquet."),
    output_dir: Path | None = typer.Option(
        None, "--output-dir", help="Run directory (default runs/<model>-<time>)."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --output-dir from its newest checkpoint."
    ),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Stop after this many optimizer steps."),
    epochs: int | None = typer.Option(
        None, "--epochs", help="Passes over the data (default 1; --max-steps wins)."
    ),
    save_steps: int | None = typer.Option(
        None, "--save-steps", help="Checkpoint every N steps (and always at the end)."
    ),
    lr: float | None = typer.Option(
        None, "--lr", help="Peak learning rate (default 2e-4 for LoRA, 2e-5 full)."
    ),
    lr_scheduler: str | None = typer.Option(None, "--lr-scheduler", help="cosine | linear | constant"),
    warmup_steps: int | None = typer.Option(None, "--warmup-steps", help="Linear warm-up steps."),
    weight_decay: float | None = typer.Option(None, "--weight-decay", help="Weight decay (default 0)."),
    max_grad_norm: float | None = typer.Option(
        None, "--max-grad-norm", help="Gradient clipping (default 1.0, 0 = off)."
    ),
    seed: int | None = typer.Option(
        None, "--seed", help="Seed for init, data order and dropout (default 42)."
    ),
    packing: bool = typer.Option(False, "--packing", help="Pack examples into full seq_len blocks."),
    random_init: bool = typer.Option(
        False, "--random-init", help="Random weights from the model's config (tests, dry runs)."
    ),
    tokenizer: str | None = typer.Option(
        None, "--tokenizer", help="Tokenizer directory or hub id (default: the model's)."
    ),
    device: str = typer.Option("auto", "--device", help="auto | cuda | npu | mps | cpu"),
    nproc_per_node: int | None = typer.Option(
        None, "--nproc-per-node", help="Processes per node (default: the plan's GPUs)."
    ),
    nnodes: int | None = typer.Option(None, "--nnodes", help="Nodes (default: the plan's)."),
    node_rank: int = typer.Option(0, "--node-rank", help="This node's rank."),
    master_addr: str = typer.Option("127.0.0.1", "--master-addr", help="Address of node 0."),
    master_port: int | None = typer.Option(
        None, "--master-port", help="Rendezvous port (default: free port / 29500)."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Check everything, print the command and files, run nothing."
    ),
    record: bool = typer.Option(
        False, "--record", help="Append the measurement to $SWIFTPLAN_HOME/measurements.jsonl."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print the run report (or, with --dry-run, the launch) as JSON."
    ),
) -> None:
    """Train as the plan says; report predicted vs measured memory and speed."""
    from swiftplan.errors import SwiftplanError

    try:
        from swiftplan.executors.train.prepare import RunRequest, execute, prepare_run, write_run
        from swiftplan.executors.train.prepare import dry_run as dry
    except ImportError as error:
        raise SwiftplanError(f"`swiftplan train` needs torch, transformers and peft ({error.name} is missing).",
                             hint="pip install 'swiftplan[train]'.") from error  # fmt: skip
    given = dict(max_steps=max_steps, epochs=epochs, save_steps=save_steps, lr=lr, lr_scheduler=lr_scheduler,
                 warmup_steps=warmup_steps, weight_decay=weight_decay, max_grad_norm=max_grad_norm, seed=seed,
                 packing=packing or None)  # fmt: skip
    request = RunRequest(plan_path=plan, data=data, output_dir=output_dir, resume=resume, tokenizer=tokenizer,
                         random_init=random_init, device=device, nproc_per_node=nproc_per_node, nnodes=nnodes,
                         node_rank=node_rank, master_addr=master_addr, master_port=master_port,
                         overrides={k: v for k, v in given.items() if v is not None})  # fmt: skip
    if dry_run:
        _print_dry_run(dry(request), as_json=as_json)
        return
    prepared = prepare_run(request)
    notes_to = Console(stderr=True) if as_json else console  # --json keeps stdout one JSON object
    for note in prepared.notes:
        notes_to.print(f"[yellow]note:[/] {note}")
    write_run(prepared, plan)
    with _progress(not as_json and prepared.launch.mode == "single") as progress:
        report = execute(prepared, progress=progress)
    if report is None:  # a node other than 0: rank 0 writes the report on its node
        console.print(f"node {node_rank} finished; the run report is written on node 0.")
        return
    if record:
        from swiftplan.executors.train.report import record_measurement

        report["recorded_to"] = str(record_measurement(report, prepared.plan))
    if as_json:
        print_json(report)
        return
    _render_report(report)
    console.print(f"run directory: {prepared.run_dir}  (report: run_report.json, adapter/model: final/)")
    if record:
        console.print(f"measurement appended to {report['recorded_to']}")


def register(app: typer.Typer) -> None:
    app.command("train", epilog=EPILOG, no_args_is_help=True)(train_command)
