"""`swiftplan train PLAN --data FILE`: carry out a training plan and compare the prediction with the run."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from swiftplan.cli._output import console, print_json
from swiftplan.errors import SwiftplanError

if TYPE_CHECKING:
    from swiftplan.executors.train.prepare import RunRequest

EPILOG = """
Examples:

  swiftplan train plan.yaml --data train.jsonl                      (one GPU: trains in this process)

  swiftplan train plan.yaml --data chat.jsonl --max-steps 200 --save-steps 50 --output-dir runs/qwen-lora

  swiftplan train plan.yaml --output-dir runs/qwen-lora --resume --max-steps 400

  swiftplan train plan.yaml --data d.parquet --nnodes 2 --node-rank 0 --master-addr 10.0.0.1 --dry-run

  swiftplan train plan.yaml --data d.jsonl --random-init --tokenizer DIR --device cpu --max-steps 5

  swiftplan train plan.yaml --engine ms-swift --data d.jsonl --dry-run   (print swift sft and its files)

  swiftplan train plan.yaml --engine llamafactory --data d.jsonl --write-config cfg/

  swiftplan train dpo.yaml --engine trl --data pairs.jsonl   (a DPO plan: trl dpo; records prompt/chosen/rejected)

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
    device = (
        f"{report['device']['name'] or report['device']['torch_device']}, {report['world_size']} process(es)"
    )
    # On the CPU the plan's hardware was not what ran: its predictions are not comparable, so only
    # the measurements are shown (both stay in run_report.json).
    comparable = report["device"]["torch_device"] != "cpu"
    title = (
        f"predicted ({report['predicted']['cluster']}) vs measured ({device})"
        if comparable
        else f"measured ({device})"
    )
    table = Table(title=title, title_justify="left")
    columns = ("", "predicted", "measured", "measured / predicted") if comparable else ("", "measured")
    for column in columns:
        table.add_column(column, justify="left" if not column else "right")
    for row in report["comparison"]:
        fmt = _gib if "bytes" in row["what"] else _tokens if "tokens" in row["what"] else _seconds
        ratio = "—" if row["ratio"] is None else f"{row['ratio']:.2f}"
        cells = (
            (fmt(row["predicted"]), fmt(row["measured"]), ratio) if comparable else (fmt(row["measured"]),)
        )
        table.add_row(row["what"].replace(" (bytes)", ""), *cells)
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
                    "launch": {"device": result.device, "nnodes": result.nnodes, "nproc_per_node": result.nproc_per_node},
                    "launches": [{"node_rank": i, "argv": list(x.argv), "env": x.env} for i, x in enumerate(result.launches)],
                    "files": result.launches[0].files, "notes": list(result.notes)})  # fmt: skip
        return
    sys.stdout.write(f"# plan: {plan.model} on {plan.hardware.describe()} ({plan.nodes} node(s) × {plan.gpus_per_node} "
                     f"process(es); tp {plan.layout.tp}, pp {plan.layout.pp}, dp {plan.layout.dp})\n")  # fmt: skip
    sys.stdout.write(
        f"# launch: {result.device}, {result.nnodes} node(s) × {result.nproc_per_node} process(es)\n"
    )
    sys.stdout.write(f"# run directory: {result.run_dir} (not created: --dry-run)\n")
    for node, launch in enumerate(result.launches):
        if len(result.launches) > 1:
            sys.stdout.write(f"\n# node {node} of {len(result.launches)} (run on that machine)\n")
        text = format_launch(launch)
        sys.stdout.write(
            text if node == len(result.launches) - 1 else text.split("\n\n# --- ")[0].rstrip("\n") + "\n"
        )
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")


def _opt(*names: str, help: str) -> Any:
    return typer.Option(*names, help=help)


PlanArg = Annotated[Path, typer.Argument(help="Plan file written by `swiftplan fit -o plan.yaml`.")]
DataOpt = Annotated[Path | None, _opt("--data", help="Training data: .jsonl, .csv or .parquet.")]
OutputDirOpt = Annotated[
    Path | None, _opt("--output-dir", help="Run directory (default runs/<model>-<time>).")
]
ResumeOpt = Annotated[
    bool, _opt("--resume", help="Continue the run in --output-dir from its newest checkpoint.")
]
MaxStepsOpt = Annotated[int | None, _opt("--max-steps", help="Stop after this many optimizer steps.")]
EpochsOpt = Annotated[
    int | None, _opt("--epochs", help="Passes over the data (default 1; --max-steps wins).")
]
SaveStepsOpt = Annotated[
    int | None, _opt("--save-steps", help="Checkpoint every N steps (and always at the end).")
]
SaveLimitOpt = Annotated[
    int | None,
    _opt(
        "--save-total-limit",
        help="Keep only the newest N complete checkpoints (default: keep all, as the HF Trainer's save_total_limit=None).",
    ),
]
LrOpt = Annotated[float | None, _opt("--lr", help="Peak learning rate (default 2e-4 for LoRA, 2e-5 full).")]
SchedulerOpt = Annotated[str | None, _opt("--lr-scheduler", help="cosine | linear | constant")]
WarmupOpt = Annotated[int | None, _opt("--warmup-steps", help="Linear warm-up steps.")]
DecayOpt = Annotated[float | None, _opt("--weight-decay", help="Weight decay (default 0).")]
ClipOpt = Annotated[float | None, _opt("--max-grad-norm", help="Gradient clipping (default 1.0, 0 = off).")]
SeedOpt = Annotated[int | None, _opt("--seed", help="Seed for init, data order and dropout (default 42).")]
PackingOpt = Annotated[bool, _opt("--packing", help="Pack examples into full seq_len blocks.")]
RandomInitOpt = Annotated[
    bool, _opt("--random-init", help="Random weights from the model's config (tests, dry runs).")
]
TokenizerOpt = Annotated[
    str | None, _opt("--tokenizer", help="Tokenizer directory or hub id (default: the model's).")
]
DeviceOpt = Annotated[str, _opt("--device", help="auto | cuda | npu | mps | cpu")]
DEVICES = ("auto", "cuda", "npu", "mps", "cpu")
"""--device values."""
NprocOpt = Annotated[
    int | None, _opt("--nproc-per-node", help="Processes per node (default: the plan's GPUs).")
]
NnodesOpt = Annotated[int | None, _opt("--nnodes", help="Nodes (default: the plan's).")]
NodeRankOpt = Annotated[int, _opt("--node-rank", help="This node's rank.")]
MasterAddrOpt = Annotated[str, _opt("--master-addr", help="Address of node 0.")]
MasterPortOpt = Annotated[
    int | None, _opt("--master-port", help="Rendezvous port (default: free port / 29500).")
]
DryRunOpt = Annotated[
    bool, _opt("--dry-run", help="Check everything, print the command and files, run nothing.")
]
PreflightOpt = Annotated[
    bool,
    _opt(
        "--preflight",
        help="Run the longest batch the data makes first (forward, backward, optimizer step) and "
        "report measured vs planned peak; with --dry-run, find it and print its shape.",
    ),
]
EngineOpt = Annotated[
    str | None,
    _opt(
        "--engine",
        help="swiftplan (our loop) | ms-swift | megatron-swift | llamafactory | trl | axolotl (default: the plan's engine).",
    ),
]
LauncherOpt = Annotated[
    str,
    _opt("--launcher", help="local (run here) | slurm (an sbatch script: with --dry-run or --write-config)."),
]
EngineOptionOpt = Annotated[
    list[str] | None,
    _opt(
        "--engine-option",
        help="External engines: KEY=VALUE passed as it is (ms-swift --KEY VALUE, a YAML key); repeatable.",
    ),
]
WriteConfigOpt = Annotated[
    Path | None,
    _opt("--write-config", help="External engines: write the config files and run.sh here, run nothing."),
]
RecordOpt = Annotated[
    bool, _opt("--record", help="Append the measurement to $SWIFTPLAN_HOME/measurements.jsonl.")
]
JsonOpt = Annotated[
    bool, _opt("--json", help="Print the run report (or, with --dry-run, the launch) as JSON.")
]


def train_command(
    plan: PlanArg,
    data: DataOpt = None,
    output_dir: OutputDirOpt = None,
    resume: ResumeOpt = False,
    max_steps: MaxStepsOpt = None,
    epochs: EpochsOpt = None,
    save_steps: SaveStepsOpt = None,
    save_total_limit: SaveLimitOpt = None,
    lr: LrOpt = None,
    lr_scheduler: SchedulerOpt = None,
    warmup_steps: WarmupOpt = None,
    weight_decay: DecayOpt = None,
    max_grad_norm: ClipOpt = None,
    seed: SeedOpt = None,
    packing: PackingOpt = False,
    random_init: RandomInitOpt = False,
    tokenizer: TokenizerOpt = None,
    device: DeviceOpt = "auto",
    nproc_per_node: NprocOpt = None,
    nnodes: NnodesOpt = None,
    node_rank: NodeRankOpt = 0,
    master_addr: MasterAddrOpt = "127.0.0.1",
    master_port: MasterPortOpt = None,
    dry_run: DryRunOpt = False,
    engine: EngineOpt = None,
    write_config: WriteConfigOpt = None,
    engine_option: EngineOptionOpt = None,
    launcher: LauncherOpt = "local",
    preflight: PreflightOpt = False,
    record: RecordOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Train as the plan says; report predicted vs measured memory and speed."""
    _check_options(dict(locals()))
    from swiftplan.cli._train_engine import (
        check_engine_options,
        check_own_loop_objective,
        plan_engine,
        train_external,
    )

    engine = engine or plan_engine(plan)
    check_engine_options(engine, dict(locals()))
    if engine != "swiftplan":
        train_external(engine, plan, dict(locals()))
        return
    check_own_loop_objective(plan)
    if resume and output_dir is None:
        raise SwiftplanError("--resume continues the run in --output-dir, and no --output-dir was given: the run would "
                             "start afresh in a new runs/<model>-<time> directory and resume nothing.",
                             hint="Add --output-dir RUN, the directory of the run to continue (it holds plan.yaml "
                             "and checkpoints/).")  # fmt: skip
    if not dry_run:  # a dry run only renders the launch
        from swiftplan.extras import require

        require("train")
    prepare = _prepare_module()
    given = dict(max_steps=max_steps, epochs=epochs, save_steps=save_steps, save_total_limit=save_total_limit, lr=lr, lr_scheduler=lr_scheduler,
                 warmup_steps=warmup_steps, weight_decay=weight_decay, max_grad_norm=max_grad_norm, seed=seed,
                 packing=packing or None)  # fmt: skip
    request = prepare.RunRequest(plan_path=plan, data=data, output_dir=output_dir, resume=resume, tokenizer=tokenizer,
                                 random_init=random_init, device=device, nproc_per_node=nproc_per_node, nnodes=nnodes,
                                 node_rank=node_rank, master_addr=master_addr, master_port=master_port,
                                 overrides={k: v for k, v in given.items() if v is not None})  # fmt: skip
    if dry_run:
        if preflight:
            _preflight(prepare.prepare_run(request), run=False, as_json=as_json)
        _print_dry_run(prepare.dry_run(request), as_json=as_json)
        return
    _run(request, plan, record=record, as_json=as_json, preflight=preflight)


def _preflight(prepared: Any, *, run: bool, as_json: bool) -> None:
    """The longest batch first: its shape, and measured vs planned peak when it ran."""
    from swiftplan.executors.train.preflight import run_preflight
    from swiftplan.units import format_gib

    result = run_preflight(prepared, run=run)
    out = Console(stderr=True) if as_json else console
    rows, width = result.batch.shape
    out.print(f"preflight: longest batch {rows} × {width} tokens ({result.batch.real_tokens:,} real, longest sample "
              f"{result.batch.longest_sample_tokens:,}), blocks {list(result.batch.block_indices)[:8]}", highlight=False)  # fmt: skip
    if result.ran:
        measured = format_gib(result.measured_peak_bytes or 0)
        out.print(f"  ran forward, backward and the optimizer step on {result.device} in {result.seconds:.2f} s "
                  f"(loss {result.loss:.3f}): peak {measured} measured vs {format_gib(result.planned_peak_bytes)} "
                  f"planned ({result.method})", highlight=False)  # fmt: skip
    if result.note:
        out.print(f"  [dim]{result.note}[/]", highlight=False)


def _check_options(o: dict[str, Any]) -> None:
    """Each option in range, one flag per message, before the plan, the data or torch is loaded."""
    from swiftplan.cli import _checks

    for flag, name in (("--max-steps", "max_steps"), ("--epochs", "epochs"), ("--nproc-per-node", "nproc_per_node"),
                       ("--nnodes", "nnodes"), ("--save-total-limit", "save_total_limit")):  # fmt: skip
        _checks.at_least(flag, o[name], 1)
    for flag, name in (("--save-steps", "save_steps"), ("--warmup-steps", "warmup_steps"),
                       ("--weight-decay", "weight_decay"), ("--max-grad-norm", "max_grad_norm"),
                       ("--node-rank", "node_rank")):  # fmt: skip
        _checks.at_least(flag, o[name], 0)
    _checks.positive("--lr", o["lr"])
    _checks.one_of("--lr-scheduler", o["lr_scheduler"], ("cosine", "linear", "constant"))
    _checks.between("--seed", o["seed"], 0, 2**32 - 1)
    _checks.one_of("--device", o["device"], DEVICES)
    _checks.port("--master-port", o["master_port"])
    if not o["master_addr"].strip():
        raise SwiftplanError(
            "--master-addr is empty.", hint="Give node 0's address, e.g. 10.0.0.1 (127.0.0.1 on one node)."
        )
    if o["nnodes"] is not None and o["node_rank"] >= o["nnodes"]:
        raise SwiftplanError(
            f"--node-rank {o['node_rank']} is outside 0..{o['nnodes'] - 1} (--nnodes {o['nnodes']})."
        )
    _checks.output_dir("--output-dir", o["output_dir"])
    if o["warmup_steps"] is not None and o["max_steps"] is not None and o["warmup_steps"] >= o["max_steps"]:
        raise SwiftplanError(f"--warmup-steps {o['warmup_steps']} is not fewer than --max-steps {o['max_steps']}: the "
                             "learning rate would still be warming up when the run stops, never reaching --lr "
                             "or its schedule.",
                             hint=f"Give --warmup-steps below {o['max_steps']}, or more --max-steps.")  # fmt: skip
    if o["tokenizer"] is not None:
        from swiftplan.executors.model_source import check_local_or_hub

        check_local_or_hub(f"--tokenizer {o['tokenizer']}", o["tokenizer"], files=("tokenizer.json", "tokenizer_config.json"),
                           what="a tokenizer", usage="--tokenizer DIR")  # fmt: skip
    from swiftplan.cli._train_engine import TRAIN_ENGINE_NAMES

    _checks.one_of("--engine", o["engine"], TRAIN_ENGINE_NAMES)
    _checks.one_of("--launcher", o["launcher"], ("local", "slurm"))
    if o["launcher"] == "slurm" and not (o["dry_run"] or o["write_config"]):
        raise SwiftplanError("--launcher slurm writes an sbatch script; swiftplan does not submit it.",
                             hint="Add --dry-run to print it or --write-config DIR, then: sbatch DIR/job.sbatch")  # fmt: skip


def _prepare_module() -> Any:
    """The training executor's preparation module (torch, transformers and peft behind it)."""
    from swiftplan.extras import needs

    with needs("train"):
        from swiftplan.executors.train import prepare
    return prepare


def _run(request: RunRequest, plan: Path, *, record: bool, as_json: bool, preflight: bool = False) -> None:
    """Prepare, write and execute the run, then report it."""
    from swiftplan.executors.train.prepare import execute, prepare_run, write_run

    prepared = prepare_run(request)
    notes_to = Console(stderr=True) if as_json else console  # --json keeps stdout one JSON object
    for note in prepared.notes:
        notes_to.print(f"[yellow]note:[/] {note}")
    if preflight:
        _preflight(prepared, run=True, as_json=as_json)
    write_run(prepared, plan)
    with _progress(not as_json and prepared.launch.mode == "single") as progress:
        report = execute(prepared, progress=progress)
    if report is None:  # a node other than 0: rank 0 writes the report on its node
        console.print(f"node {request.node_rank} finished; the run report is written on node 0.")
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
