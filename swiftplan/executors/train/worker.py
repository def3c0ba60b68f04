"""One training process: `python -m swiftplan.executors.train.worker RUN_DIR` (torchrun starts one per device).

It reads what the parent prepared in RUN_DIR (plan, TrainArgs, token blocks), joins the process group
when there are several processes (gloo on CPU, NCCL on CUDA/ROCm, HCCL on Ascend), loads the model,
resumes from the newest complete checkpoint if there is one, trains, saves, and rank 0 writes
run_report.json.

SIGINT and SIGTERM ask for a stop: the ranks agree at the next step boundary, save a checkpoint there
and exit with one line saying how to resume (a second signal stops at once, without saving).
A file-system failure (full disk, read-only or unwritable directory, a file where a directory should
be) is one line naming the path and the errno, on every launch path.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from swiftplan import __version__
from swiftplan.errors import SwiftplanError
from swiftplan.executors.train import run_dir as rd
from swiftplan.planner.setup import TrainSetup


def _device(kind: str, local_rank: int) -> Any:
    import torch

    if kind == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    if kind == "npu":
        import torch_npu  # noqa: F401  (registers the npu device)

        torch.npu.set_device(local_rank)  # type: ignore[attr-defined]
        return torch.device("npu", local_rank)
    return torch.device(kind)


def _peaks_over_ranks(peak: dict[str, Any], world: int, device: Any) -> dict[str, Any]:
    if world == 1:
        return peak
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([peak["peak_allocated_bytes"], peak["peak_reserved_bytes"]], dtype=torch.float64,
                          device=device if device.type != "cpu" else "cpu")  # fmt: skip
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return {**peak, "peak_allocated_bytes": int(tensor[0]), "peak_reserved_bytes": int(tensor[1])}


def _versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "python": sys.version.split()[0]}  # fmt: skip


def train(run_dir: str | Path, *, progress: Any = None) -> dict[str, Any] | None:
    """Run (or resume) the training in `run_dir`; returns the report on rank 0, None on other ranks."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers 5 renames, called from inside peft
        return _train(Path(run_dir), progress)


def _train(run_dir: Path, progress: Any) -> dict[str, Any] | None:
    import torch
    import torch.distributed as dist

    from swiftplan.executors.train.loop import run_loop, steps_per_epoch
    from swiftplan.executors.train.model import load_model
    from swiftplan.executors.train.report import reset_peak
    from swiftplan.plan_file import load_plan

    args = rd.read_args(run_dir)
    plan = load_plan(run_dir / "plan.yaml")
    setup = plan.setup
    if not isinstance(setup, TrainSetup):
        raise SwiftplanError(f"{run_dir / 'plan.yaml'} is a serving plan; train runs training plans.")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = _device(args.device, int(os.environ.get("LOCAL_RANK", "0")))
    owns_group = (world > 1 or bool(setup.parallel.zero)) and not dist.is_initialized()
    if owns_group:
        dist.init_process_group(backend={"cuda": "nccl", "npu": "hccl"}.get(device.type, "gloo"))
    reset_peak(device.type)
    data = torch.load(run_dir / "dataset.pt", weights_only=True)
    n_blocks = int(data["input_ids"].shape[0])
    vocab_size = int(data.pop("vocab_size").item())
    per_epoch = steps_per_epoch(n_blocks, setup=setup, world=world)
    if per_epoch == 0:
        raise SwiftplanError(f"{n_blocks} blocks give no full optimizer step on {world} process(es).")
    total = args.max_steps or args.epochs * per_epoch
    model = load_model(args.model, setup, device=device, random_init=args.random_init, seed=args.seed,
                       vocab_size=vocab_size)  # fmt: skip
    engine = _engine(run_dir, model, setup, args, device=device, world=world, total_steps=total)
    start = _resume(run_dir, engine, rank=rank, world=world)
    if start == 0:
        torch.manual_seed(args.seed + 1000 * rank)  # dropout differs across ranks, reproducibly
    with _stop_on_signals(announce=rank == 0) as stop:
        result = run_loop(engine, data, setup=setup, args=args, run_dir=run_dir, rank=rank, world=world,
                          start_step=start, total_steps=total, device=device,
                          progress=progress if rank == 0 else None, stop=stop)  # fmt: skip
    if result.stopped_by:
        _finish(dist, owns_group)
        raise _interrupted(run_dir, args, result, world=world, total=total)
    if result.end_step > result.start_step:
        with rd.writing("the trained weights", run_dir / "final"):
            engine.save_final(run_dir / "final", rank=rank)
    report = _report(run_dir, plan, args, result, device=device, world=world, total_steps=total, rank=rank)
    _finish(dist, owns_group)
    return report


def _finish(dist: Any, owns_group: bool) -> None:
    """Tear down the process group this run created (one a caller set up stays theirs)."""
    if owns_group and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        _forget_deepspeed_world_group()


def _forget_deepspeed_world_group() -> None:
    """DeepSpeed keeps a clone of the world group it made (deepspeed/utils/groups.py `_clone_world_group`,
    0.19.8); once the process group is destroyed that clone is stale, and the next DeepSpeed engine in the
    same process (a second in-process run) fails with "Group ... is not registered"."""
    groups = sys.modules.get("deepspeed.utils.groups")
    if groups is not None and hasattr(groups, "_WORLD_GROUP"):
        setattr(groups, "_WORLD_GROUP", None)  # noqa: B010  (a private global of another package)


class TrainingInterrupted(SwiftplanError):
    """SIGINT/SIGTERM stopped the run (after saving when a step was done since the last checkpoint)."""

    def __init__(self, message: str, hint: str, signum: int) -> None:
        super().__init__(message, hint=hint)
        self.signum = signum


def resume_command(run_dir: Path, args: Any, *, world: int) -> str:
    """The command line that continues this run."""
    import shlex

    nodes = int(os.environ.get("GROUP_WORLD_SIZE", "1") or 1)
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)) or world)
    parts = ["swiftplan", "train", str(run_dir / "plan.yaml"), "--output-dir", str(run_dir), "--resume"]
    if args.device == "cpu":
        parts += ["--device", "cpu"]
    if args.random_init:
        parts += ["--random-init"]
    if world > 1:
        parts += ["--nproc-per-node", str(per_node)] + (["--nnodes", str(nodes)] if nodes > 1 else [])
    return shlex.join(parts)


def _interrupted(run_dir: Path, args: Any, result: Any, *, world: int, total: int) -> TrainingInterrupted:
    name = signal.Signals(result.stopped_by).name if result.stopped_by > 0 else "a signal to another process"
    checkpoint = rd.latest_checkpoint(run_dir)
    if checkpoint is None:
        return TrainingInterrupted(f"Stopped by {name} at step {result.end_step} of {total}, before any checkpoint.",
                                   hint="Nothing to resume from: start the run again.", signum=max(result.stopped_by, 0))  # fmt: skip
    how = "saved" if result.saved_on_stop else "the newest checkpoint is"
    return TrainingInterrupted(
        f"Stopped by {name} at step {result.end_step} of {total}; {how} {checkpoint}.",
        hint=f"Resume with: {resume_command(run_dir, args, world=world)}",
        signum=max(result.stopped_by, 0),
    )


@contextlib.contextmanager
def _stop_on_signals(*, announce: bool) -> Iterator[Any]:
    """A `stop()` callable for the loop: the first SIGINT/SIGTERM is remembered (saved at the next step
    boundary); a second one gets the default behaviour. No-op outside the main thread."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: 0
        return

    def handler(signum: int, frame: Any) -> None:
        if received:  # the second signal: stop now, without saving
            signal.signal(signum, signal.SIG_DFL)
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)
            return
        received.append(signum)
        if announce:
            sys.stderr.write(f"{signal.Signals(signum).name}: saving a checkpoint after this step (send it again to stop at once).\n")  # fmt: skip
            sys.stderr.flush()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: received[0] if received else 0
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _engine(run_dir: Path, model: Any, setup: TrainSetup, args: Any, *, device: Any, world: int,
            total_steps: int) -> Any:  # fmt: skip
    """The optimizer step as the plan says: DeepSpeed with the rendered ds_config.json under ZeRO (its
    own optimizer when the config names one), plain torch (DDP across processes) otherwise."""
    import torch

    from swiftplan.executors.train.engine import DeepSpeedEngine, TorchEngine
    from swiftplan.executors.train.launch import fill_auto_sizes
    from swiftplan.executors.train.model import build_optimizer, lr_lambda, trainable_parameters

    params = trainable_parameters(model)
    factor = lr_lambda(args.lr_scheduler, warmup_steps=args.warmup_steps, total_steps=total_steps)
    if setup.parallel.zero:
        config = fill_auto_sizes(json.loads((run_dir / "ds_config.json").read_text()),
                                 model.config.get_text_config().hidden_size)  # fmt: skip
        optimizer = None if "optimizer" in config else build_optimizer(
            setup, params, lr=args.lr, weight_decay=args.weight_decay, device_type=device.type)  # fmt: skip
        return DeepSpeedEngine(model, optimizer, lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, factor),
                               config=config, device=device, world=world)  # fmt: skip
    optimizer = build_optimizer(
        setup, params, lr=args.lr, weight_decay=args.weight_decay, device_type=device.type
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return TorchEngine(model, optimizer, scheduler, setup=setup, device=device, world=world,
                       max_grad_norm=args.max_grad_norm)  # fmt: skip


def _resume(run_dir: Path, engine: Any, *, rank: int, world: int) -> int:
    """The step to start from: 0, or the newest complete checkpoint's step after loading it into `engine`.
    Rank 0 cuts metrics.jsonl back to that step, so no step is logged twice."""
    found = rd.find_resumable(run_dir)
    start = 0
    if found.checkpoint is not None:
        state = rd.read_state(found.checkpoint)
        if state["world_size"] != world:
            raise SwiftplanError(f"{found.checkpoint} was written by {state['world_size']} process(es); this run has {world}.",
                                 hint="Resume with the same number of processes.")  # fmt: skip
        try:
            engine.load(found.checkpoint, rank=rank)
        except Exception as error:  # the sizes matched, the contents did not
            raise SwiftplanError(f"Cannot load {found.checkpoint} ({type(error).__name__}: {str(error).splitlines()[0][:200]}).",
                                 hint=f"Delete {found.checkpoint} to resume from the one before it.") from error  # fmt: skip
        start = int(state["step"])
    if rank == 0:  # the parent already named the checkpoints skipped (prepare._resume_dir)
        metrics = run_dir / "metrics.jsonl"
        with rd.writing("the metrics log", metrics):
            rd.truncate_metrics(metrics, step=start)
    return start


def _report(run_dir: Path, plan: Any, args: Any, result: Any, *, device: Any, world: int, total_steps: int,
            rank: int) -> dict[str, Any] | None:  # fmt: skip
    """Measured against predicted, written to run_report.json by rank 0 (peaks are the max over ranks)."""
    from swiftplan.executors.train.report import comparison, peak_memory, predicted_from_plan

    peak = _peaks_over_ranks(peak_memory(device.type, result.memory_peak), world, device)
    if rank != 0:
        return None
    setup = plan.setup
    timed = result.step_times_s[1:] or result.step_times_s
    tokens_per_step = setup.micro_batch * setup.seq_len * setup.grad_accum * world
    step_time = sum(timed) / len(timed) if timed else None
    measured = {**peak, "tokens_per_s": tokens_per_step / step_time if step_time else None,
                "step_time_s": step_time}  # fmt: skip
    predicted = predicted_from_plan(plan)
    notes = []
    if device.type == "cpu":
        notes.append(
            f"ran on CPU; the plan predicts {plan.hardware.describe()}, so the ratios are not a check of the planner."
        )
    if len(result.step_times_s) > 1:
        notes.append("tokens/s excludes the first step of this process (warm-up).")
    report = {
        "swiftplan_version": __version__,
        "run_dir": str(run_dir),
        "plan": {"model": plan.model, "cluster": plan.hardware.describe(), "gpus_used": plan.layout.gpus,
                 "nodes": plan.nodes, "engine": plan.engine},
        "device": {"torch_device": device.type, "name": args.device_name, "processes": world},
        "world_size": world,
        "steps": {"start": result.start_step, "end": result.end_step, "total": total_steps, "measured": len(timed)},
        "loss": {"first": result.losses[0] if result.losses else None,
                 "last": result.losses[-1] if result.losses else None, "by_step": result.losses},
        "measured": measured,
        "predicted": predicted,
        "comparison": comparison(predicted, measured),
        "notes": notes,
        "versions": _versions(),
    }  # fmt: skip
    with rd.writing("the run report", run_dir / "run_report.json"):
        rd.write_text_atomic(run_dir / "run_report.json", json.dumps(report, indent=2) + "\n")
    return report


def _print_progress(step: int, total: int, loss: float, tokens_per_s: float, memory: dict[str, int]) -> None:
    print(f"step {step}/{total}  loss {loss:.4f}  {tokens_per_s:,.0f} tok/s  {memory.get('allocated', 0) / 2**30:.2f} GiB",
          flush=True)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """Entry point for launchers: one argument, the run directory."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.exit("usage: python -m swiftplan.executors.train.worker RUN_DIR")
    try:
        train(argv[0], progress=_print_progress)
    except TrainingInterrupted as error:
        sys.stderr.write(f"error: {error}\n")
        sys.exit(128 + error.signum if error.signum else 2)
    except SwiftplanError as error:
        sys.stderr.write(f"error: {error}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
