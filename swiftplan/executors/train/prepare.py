"""The parent side of `swiftplan train`: check everything, prepare the run directory, launch, collect.

`render_plan` renders the launch for the plan's own hardware (nodes × GPUs per node, the DeepSpeed
JSON), or on a typed --device as a real run launches it there (`_processes`), whatever this machine has:
that is what `--dry-run` prints, and it probes no device and needs no tokenizer or network. `prepare_run` is the real run: the plan, this device's capabilities, the data file (every
record) and the tokenizer are checked first, so a bad plan or a bad row stops the run before any model
is loaded.
"""

from __future__ import annotations

import shutil
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swiftplan.errors import SwiftplanError
from swiftplan.executors.train import resume
from swiftplan.executors.train import run_dir as rd
from swiftplan.executors.train.device import DeviceInfo, detect_device, require_runnable
from swiftplan.executors.train.launch import Launch, LaunchOptions, render
from swiftplan.planner.engines import get_engine
from swiftplan.planner.plan import Plan
from swiftplan.planner.setup import TrainSetup

DEFAULT_MASTER_PORT = 29500
"""torchrun's default rendezvous port, used across nodes and in rendered (dry-run) launches."""
_TORCH_DEVICE = {"cuda": "cuda", "rocm": "cuda", "npu": "npu", "mps": "mps", "cpu": "cpu"}
"""torch device type for each backend (ROCm is 'cuda' in torch)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RunRequest:
    """What the user asked for on the command line."""

    plan_path: Path
    """The plan file."""
    data: Path | None
    """Data file (None with --resume: the run's own)."""
    output_dir: Path | None = None
    """Run directory; None = runs/<model>-<timestamp>."""
    resume: bool = False
    """Continue the run in output_dir from its newest checkpoint."""
    tokenizer: str | None = None
    """Tokenizer directory or hub id (default: the model's)."""
    random_init: bool = False
    """Build the model from its config with random weights."""
    device: str = "auto"
    """auto, cuda, npu, mps or cpu."""
    nproc_per_node: int | None = None
    """Processes per node (default: the plan's GPUs per node on GPUs, 1 on CPU/MPS)."""
    nnodes: int | None = None
    """Nodes (default: the plan's)."""
    node_rank: int = 0
    """This node's rank."""
    master_addr: str = "127.0.0.1"
    """Node 0's address."""
    master_port: int | None = None
    """Rendezvous port (default: a free one on a single node, 29500 across nodes)."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """TrainArgs fields given on the command line (max_steps, epochs, lr, ...)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PreparedRun:
    """Everything checked and rendered; nothing loaded."""

    plan: Plan
    """The plan."""
    setup: TrainSetup
    """Its train set-up."""
    device: DeviceInfo
    """Where it runs."""
    args: rd.TrainArgs
    """Worker options."""
    launch: Launch
    """Rendered command and files."""
    run_dir: Path
    """Output directory."""
    blocks: Any
    """TokenBlocks (None when resuming: the run already has them)."""
    tokenizer: Any
    """The tokenizer (None when resuming)."""
    notes: tuple[str, ...]
    """Things the user should know (world size differs from the plan, truncation, ...)."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _processes(request: RunRequest, plan: Plan, torch_device: str) -> tuple[int, int]:
    """(nodes, processes per node) of a launch on `torch_device`: the plan's, one process on CPU/MPS, or as
    overridden (--nnodes, --nproc-per-node). A real run and a dry run both launch this."""
    nodes, per_node = plan.nodes, plan.gpus_per_node
    if torch_device in ("cpu", "mps"):
        nodes, per_node = 1, 1
    return request.nnodes or nodes, request.nproc_per_node or per_node


def load_train_plan(path: Path) -> Plan:
    """A training plan for this executor; one clear error for a serving plan or another engine's plan."""
    from swiftplan.plan_file import load_plan

    plan = load_plan(path)
    if not isinstance(plan.setup, TrainSetup):
        raise SwiftplanError(f"Plan file {path} is a serving plan (task: serve); `swiftplan train` needs a training plan.",
                             hint="Make one with `swiftplan fit MODEL --task train ... -o plan.yaml`.")  # fmt: skip
    engine = get_engine(plan.engine, "train")
    if engine.name != "swiftplan":
        raise SwiftplanError(f"Plan file {path} is planned for {engine.label}, which `swiftplan train` does not launch yet.",
                             hint="Re-plan for swiftplan's loop: swiftplan fit ... --engine swiftplan -o plan.yaml.")  # fmt: skip
    from swiftplan.executors.engines import require_runnable

    try:
        require_runnable(engine.name, plan)
    except SwiftplanError as error:
        raise SwiftplanError(f"Plan file {path}: {error.message}", hint=error.hint) from error
    from swiftplan.executors.model_source import check_plan_model

    check_plan_model(plan, path)  # after require_runnable: a tp the loop cannot run at all is said first
    return plan


def _layout(plan: Plan) -> str:
    """The plan's launch shape in words, e.g. '1 node × 2 NVIDIA GeForce RTX 4090'."""
    nodes = "1 node" if plan.nodes == 1 else f"{plan.nodes} nodes"
    return f"{nodes} × {plan.gpus_per_node} {plan.hardware.accelerator.display_name}"


def check_request(plan: Plan, request: RunRequest) -> None:
    """A typed --device, --nproc-per-node or --nnodes that contradicts the plan is refused, naming the plan's:
    the launch is the plan's layout on the plan's kind of device (the CPU, for a debugging run, aside)."""
    backend = plan.hardware.accelerator.backend
    planned = _TORCH_DEVICE[backend]
    layout = _layout(plan)
    if request.device not in ("auto", "cpu", planned):
        raise SwiftplanError(f"--device {request.device} does not match the plan, made for {layout}, a {backend} device "
                             f"(torch '{planned}'): its memory and speed were worked out for that device.",
                             hint=f"Use --device {planned} (or auto) where the plan's hardware is, --device cpu for a "
                             f"debugging run, or re-plan for this device: swiftplan fit {plan.model} --gpus auto -o plan.yaml.")  # fmt: skip
    nodes, per_node = request.nnodes or plan.nodes, request.nproc_per_node or plan.gpus_per_node
    shape = f"{nodes}x{per_node}x" if nodes > 1 else f"{per_node}x" if per_node > 1 else ""
    cluster = shape + plan.hardware.accelerator.id
    for flag, given, want in (("--nproc-per-node", request.nproc_per_node, plan.gpus_per_node),
                              ("--nnodes", request.nnodes, plan.nodes)):  # fmt: skip
        if given is not None and given != want:
            raise SwiftplanError(f"{flag} {given} does not match the plan, made for {layout}: swiftplan train "
                                 f"launches the plan's layout ({flag} {want}), since its batch split and memory "
                                 "were worked out for it.",
                                 hint=f"Leave {flag} out (or give {want}), or re-plan for that shape: "
                                 f"swiftplan fit {plan.model} --gpus {cluster} -o plan.yaml.")  # fmt: skip


def _defaults(setup: TrainSetup, request: RunRequest) -> dict[str, Any]:
    """TrainArgs fields from the command line, over the method's default learning rate."""
    return ({"lr": 2e-5} if setup.method == "full" else {}) | request.overrides


def launch_device(plan: Plan, request: RunRequest) -> str:
    """The torch device a launch uses, without probing: a typed --device, else the plan's backend's."""
    return _TORCH_DEVICE[plan.hardware.accelerator.backend] if request.device == "auto" else request.device


def render_plan(plan: Plan, request: RunRequest, *, run_dir: Path) -> list[Launch]:
    """The launch of every node, as a real run would launch it: on the typed --device (the plan's own with
    auto), with the processes `_processes` gives there (overridden by --nnodes/--nproc-per-node)."""
    assert isinstance(plan.setup, TrainSetup)
    device = launch_device(plan, request)
    nnodes, per_node = _processes(request, plan, device)
    args = rd.TrainArgs(data="", data_sha256="", model=plan.model, **_defaults(plan.setup, request))
    launches = []
    for node in range(nnodes):
        options = LaunchOptions(device=device, nproc_per_node=per_node, nnodes=nnodes, node_rank=node,
                                master_addr=request.master_addr, master_port=request.master_port or DEFAULT_MASTER_PORT)  # fmt: skip
        launches.append(render(plan.setup, options, run_dir=str(run_dir), python="python", lr=args.lr,
                               weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm))  # fmt: skip
    return launches


def _world_note(plan: Plan, processes: int) -> list[str]:
    """A launch with another number of processes than the plan's GPUs: the prediction assumed the plan's."""
    gpus = plan.layout.gpus
    if processes == gpus:
        return []
    return [f"{processes} process(es) instead of the plan's {gpus} GPU(s): the prediction assumed {gpus}."]


def _device_notes(plan: Plan, request: RunRequest) -> list[str]:
    """What a dry run on a typed --device says: the processes it launches, when they are not the plan's GPUs,
    and, on another device than the plan's, that the plan's prediction assumed the plan's hardware."""
    device, planned = launch_device(plan, request), _TORCH_DEVICE[plan.hardware.accelerator.backend]
    nnodes, per_node = _processes(request, plan, device)
    notes = _world_note(plan, nnodes * per_node)
    if device != planned:
        notes.append(f"--device {device}: the launch runs on {device}, but the plan's prediction (memory, speed) "
                     f"assumed its own hardware, {_layout(plan)} ({planned}): what the run measures "
                     "is not comparable with it.")  # fmt: skip
    return notes


def _check_debug_device(plan: Plan, request: RunRequest) -> None:
    """A dry run on the CPU instead of the plan's device refuses what the real run would refuse there (check_request
    lets no other device than the plan's or the CPU through); the host CPU is read, not probed."""
    if launch_device(plan, request) != "cpu" or _TORCH_DEVICE[plan.hardware.accelerator.backend] == "cpu":
        return
    from swiftplan.executors.train.device import cpu_accelerator

    assert isinstance(plan.setup, TrainSetup)
    _nodes, per_node = _processes(request, plan, "cpu")
    device = DeviceInfo(torch_device="cpu", accelerator=cpu_accelerator(), count=1)
    require_runnable(plan.setup, device, processes_per_node=per_node, random_init=request.random_init)


@dataclass(frozen=True, kw_only=True, slots=True)
class DryRun:
    """What `--dry-run` shows: the plan's launch (on its own hardware, or the typed --device), nothing loaded or
    created."""

    plan: Plan
    """The plan."""
    run_dir: Path
    """Where the run would write."""
    launches: tuple[Launch, ...]
    """One launch per node."""
    device: str
    """torch device the launch runs on (the plan's, or the typed --device)."""
    nnodes: int
    """Nodes launched."""
    nproc_per_node: int
    """Processes per node launched."""
    notes: tuple[str, ...]
    """What the user should know."""


def dry_run(request: RunRequest) -> DryRun:
    """Check the plan (and the data file, when given) and render the launch for the plan's hardware."""
    plan = load_train_plan(request.plan_path)
    check_request(plan, request)
    notes = []
    if request.data is not None:
        from swiftplan.executors.train.data import read_dataset

        read_dataset(request.data)
    elif not request.resume:
        notes.append("no --data given: the real run needs --data FILE (JSONL, CSV or Parquet).")
    run_dir = request.output_dir or rd.default_run_dir(plan.model)
    _check_debug_device(plan, request)
    launches = render_plan(plan, request, run_dir=run_dir)
    notes += _device_notes(plan, request)
    if len(launches) > 1 and request.master_addr == "127.0.0.1":
        notes.append(f"{len(launches)} nodes: pass --master-addr with node 0's address (127.0.0.1 reaches only this machine).")  # fmt: skip
    device = launch_device(plan, request)
    nnodes, per_node = _processes(request, plan, device)
    return DryRun(plan=plan, run_dir=run_dir, launches=tuple(launches), device=device, nnodes=nnodes,
                  nproc_per_node=per_node, notes=tuple(notes))  # fmt: skip


def prepare_run(request: RunRequest) -> PreparedRun:
    """Check the plan, the device, the data and the tokenizer; render the launch. Loads no model."""
    plan = load_train_plan(request.plan_path)
    check_request(plan, request)
    setup = plan.setup
    assert isinstance(setup, TrainSetup)
    resumed = resume.resume_dir(request, plan) if request.resume else None
    device = resume.resumed_device(*resumed) if resumed is not None else detect_device(request.device)
    nnodes, per_node = _processes(request, plan, device.torch_device)
    random_init = resumed[1].random_init if resumed is not None else request.random_init
    require_runnable(setup, device, processes_per_node=per_node, random_init=random_init)
    notes = _world_note(plan, nnodes * per_node)
    blocks = tokenizer = None
    if resumed is not None:
        run_dir, args = resumed
        notes += resume.resume_notes(run_dir)
    else:
        from swiftplan.executors.train.data import read_dataset
        from swiftplan.executors.train.loop import steps_per_epoch
        from swiftplan.executors.train.model import load_tokenizer, tokenizer_source
        from swiftplan.executors.train.tokens import build_blocks

        if request.data is None:
            raise SwiftplanError("Pass --data FILE (JSONL, CSV or Parquet).")
        dataset = read_dataset(request.data)
        tokenizer = load_tokenizer(tokenizer_source(plan.model, request.tokenizer))
        blocks = build_blocks(
            dataset, tokenizer, seq_len=setup.seq_len, packing=bool(request.overrides.get("packing"))
        )
        world = nnodes * per_node
        per_epoch = steps_per_epoch(len(blocks.input_ids), setup=setup, world=world)
        _check_warmup(request, per_epoch, data=dataset.path.name)
        if per_epoch == 0:
            need = setup.micro_batch * setup.grad_accum * world
            raise SwiftplanError(f"{dataset.path.name} gives {len(blocks.input_ids)} training blocks; one optimizer step needs "
                                 f"{need} (micro-batch {setup.micro_batch} × grad-accum {setup.grad_accum} × {world} process(es)).",
                                 hint="Add data, or use --packing only when examples are long.")  # fmt: skip
        if blocks.truncated:
            notes.append(f"{blocks.truncated} example(s) were cut at seq_len {setup.seq_len}.")
        if blocks.dropped:
            notes.append(
                f"{blocks.dropped} example(s) had no answer token left within seq_len and were skipped."
            )
        notes += _padding_notes(
            plan, blocks, packing=bool(request.overrides.get("packing")), data=request.data
        )
        run_dir = request.output_dir or rd.default_run_dir(plan.model)
        rd.require_directory(run_dir)
        if rd.latest_checkpoint(run_dir) is not None:
            raise SwiftplanError(f"{run_dir} already holds a run with checkpoints.",
                                 hint="Add --resume to continue it, or choose another --output-dir.")  # fmt: skip
        args = rd.TrainArgs(data=str(dataset.path.resolve()), data_sha256=rd.file_sha256(dataset.path), model=plan.model,
                            tokenizer=request.tokenizer, random_init=request.random_init, device=device.torch_device,
                            device_name=device.accelerator.display_name, **_defaults(setup, request))  # fmt: skip
    port = request.master_port or (_free_port() if nnodes == 1 else DEFAULT_MASTER_PORT)
    options = LaunchOptions(device=device.torch_device, nproc_per_node=per_node, nnodes=nnodes,
                            node_rank=request.node_rank, master_addr=request.master_addr, master_port=port)  # fmt: skip
    launch = render(setup, options, run_dir=str(run_dir), python=sys.executable,
                    lr=args.lr, weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm)  # fmt: skip
    return PreparedRun(plan=plan, setup=setup, device=device, args=args, launch=launch, run_dir=run_dir,
                       blocks=blocks, tokenizer=tokenizer, notes=tuple(notes))  # fmt: skip


def _check_warmup(request: RunRequest, per_epoch: int, *, data: str) -> None:
    """A typed --warmup-steps must leave steps after it: the run's steps are --max-steps, or the epochs over
    the data (the CLI refuses --warmup-steps beside a smaller --max-steps before this)."""
    warmup, given = request.overrides.get("warmup_steps"), request.overrides.get("max_steps")
    epochs = request.overrides.get("epochs", 1)
    if warmup is None or given is not None or per_epoch == 0 or warmup < per_epoch * epochs:
        return
    raise SwiftplanError(f"--warmup-steps {warmup} is not fewer than the run's {per_epoch * epochs} optimizer steps "
                         f"({epochs} epoch(s) of {per_epoch} over {data}): the learning rate would still be warming "
                         "up when the run stops, never reaching --lr or its schedule.",
                         hint=f"Give --warmup-steps below {per_epoch * epochs}, or more --epochs or --max-steps.")  # fmt: skip


def _padding_notes(plan: Plan, blocks: Any, *, packing: bool, data: Any) -> list[str]:
    """A plan made for full rows, run on samples of many lengths: its padded micro-batches give SDPA a mask per
    block (planner/padding.py) the plan does not count."""
    from dataclasses import replace

    from swiftplan.planner.padding import has_padding

    setup = plan.setup
    assert isinstance(setup, TrainSetup)
    short = sum(sum(mask) < setup.seq_len for mask in blocks.attention_mask)
    counted = setup.variable_lengths or packing or setup.attention != "sdpa"
    if not short or counted or not has_padding(replace(setup, variable_lengths=True)):
        return []
    return [
        f"{short} of {len(blocks.attention_mask)} samples are shorter than seq_len {setup.seq_len}: micro-batches of "
        f"{setup.micro_batch} are padded to their longest, so SDPA gets a padding mask in every block (k and v "
        f"repeated, a B × 1 × S × S mask), which this plan, made for full rows, does not count; "
        f"`swiftplan fit {plan.model} --data {data}` plans for it."
    ]


def write_run(prepared: PreparedRun, plan_path: Path) -> None:
    """Create the run directory: plan, TrainArgs, launch files, token blocks and tokenizer (a file-system
    failure is one SwiftplanError naming the path and the errno)."""
    run_dir = prepared.run_dir
    with rd.writing("the run directory", run_dir):
        _write_run(prepared, plan_path)


def _write_run(prepared: PreparedRun, plan_path: Path) -> None:
    import torch

    from swiftplan.executors.train.engine import torch_save
    from swiftplan.executors.train.launch import write_files

    run_dir = prepared.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if prepared.blocks is not None:
        shutil.copyfile(plan_path, run_dir / "plan.yaml")
        blocks = prepared.blocks
        torch_save({"input_ids": torch.tensor(blocks.input_ids, dtype=torch.long),
                    "labels": torch.tensor(blocks.labels, dtype=torch.long),
                    "attention_mask": torch.tensor(blocks.attention_mask, dtype=torch.long),
                    "vocab_size": torch.tensor(len(prepared.tokenizer))}, run_dir / "dataset.pt")  # fmt: skip
        prepared.tokenizer.save_pretrained(run_dir / "tokenizer")
    rd.write_args(run_dir, prepared.args)
    write_files(prepared.launch, run_dir)


def execute(prepared: PreparedRun, *, progress: Any = None) -> dict[str, Any] | None:
    """Run the rendered launch (in this process, or torchrun) and return run_report.json (None off node 0)."""
    import json

    from swiftplan.executors.train.launch import run_subprocess

    if prepared.launch.mode == "single":
        from swiftplan.executors.train.worker import train

        return train(prepared.run_dir, progress=progress)
    run_subprocess(prepared.launch, log=prepared.run_dir / "train.log")
    report = prepared.run_dir / "run_report.json"
    return json.loads(report.read_text()) if report.is_file() else None
