"""`swiftplan train --resume`: which run to continue, on which device, and what it keeps.

A resumed run keeps the settings it started with (its plan, data, `train_args.json`): only the step counts
(--max-steps, --epochs, --save-steps, --save-total-limit) may change; a typed --tokenizer, --random-init or
--device that differs from the run's is refused with the rest, naming the run's value and the one given, and
--device auto continues on the run's own device.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from swiftplan.errors import SwiftplanError
from swiftplan.executors.train import run_dir as rd
from swiftplan.executors.train.device import DeviceInfo, detect_device
from swiftplan.planner.plan import Plan

if TYPE_CHECKING:
    from swiftplan.executors.train.prepare import RunRequest


def resume_dir(request: RunRequest, plan: Plan) -> tuple[Path, rd.TrainArgs]:
    """The run to continue and its settings (with the step counts --resume may change), after checking that it
    has a complete checkpoint, the same plan and data, and that nothing typed changes what it started with."""
    from swiftplan.plan_file import load_plan

    if request.output_dir is None:
        raise SwiftplanError("--resume needs --output-dir RUN, the run to continue.")
    run_dir = request.output_dir
    rd.require_directory(run_dir)
    found = rd.find_resumable(run_dir)
    if found.checkpoint is None:
        skipped = f" ({'; '.join(found.skipped)})" if found.skipped else ""
        raise SwiftplanError(f"{run_dir} has no complete checkpoint to resume from{skipped}.",
                             hint="Start it again without --resume (a run saves at --save-steps and at the end).")  # fmt: skip
    saved_plan = load_plan(run_dir / "plan.yaml")
    if saved_plan.setup != plan.setup or saved_plan.model != plan.model:
        raise SwiftplanError(f"{request.plan_path} differs from the plan {run_dir} was started with.",
                             hint=f"Resume with {run_dir / 'plan.yaml'}, or start a new run.")  # fmt: skip
    args = rd.read_args(run_dir)
    if request.data is not None and request.data.resolve() != Path(args.data):
        raise SwiftplanError(
            f"{run_dir} trained on {args.data}, not {request.data}.", hint="Resume without --data."
        )
    if rd.file_sha256(args.data) != args.data_sha256:
        raise SwiftplanError(f"{args.data} changed since {run_dir} started; resuming would mix two datasets.")
    allowed = {"max_steps", "epochs", "save_steps", "save_total_limit"}
    changed = [f"--{k.replace('_', '-')} (the run's: {getattr(args, k)}; given: {v})"
               for k, v in sorted(request.overrides.items()) if k not in allowed and getattr(args, k) != v]  # fmt: skip
    changed += _changed_launch_settings(request, args)
    if changed:
        raise SwiftplanError(f"A resumed run keeps its settings; cannot change {', '.join(changed)}.",
                             hint="Resume without them (the run keeps its own); only --max-steps, --epochs, --save-steps "
                             "and --save-total-limit may change on --resume. Or start a new run in another --output-dir.")  # fmt: skip
    return run_dir, replace(args, **{k: v for k, v in request.overrides.items() if k in allowed})


def _changed_launch_settings(request: RunRequest, args: rd.TrainArgs) -> list[str]:
    """A typed --tokenizer, --random-init or --device that differs from what the run started with (the run's
    TrainArgs), each named with the run's value; typing the run's own value is fine."""
    changed = []
    if request.tokenizer is not None and not _same_source(request.tokenizer, args.tokenizer or args.model):
        saved = args.tokenizer or f"the model's own, {args.model}"
        changed.append(f"--tokenizer (the run's: {saved}; given: {request.tokenizer})")
    if request.random_init and not args.random_init:
        changed.append("--random-init (the run's: the model's own weights; given: random ones)")
    if request.device != "auto" and request.device != args.device:  # the choices name torch devices
        changed.append(f"--device (the run's: {args.device}; given: {request.device})")
    return changed


def _same_source(given: str, saved: str) -> bool:
    """The same tokenizer source: the same text, or two spellings of the same local directory."""
    if given == saved:
        return True
    a, b = Path(given).expanduser(), Path(saved).expanduser()
    return a.exists() and b.exists() and a.resolve() == b.resolve()


def resumed_device(run_dir: Path, args: rd.TrainArgs) -> DeviceInfo:
    """The device a resumed run continues on: the one it started on (--device auto included)."""
    try:
        return detect_device(args.device)
    except SwiftplanError as error:
        raise SwiftplanError(f"{run_dir} trained on {args.device} ({args.device_name or args.device}), and torch sees "
                             f"no {args.device} device on this machine: a resumed run keeps its device.",
                             hint=f"Resume where a {args.device} device is, or start a new run in another --output-dir.") from error  # fmt: skip


def resume_notes(run_dir: Path) -> list[str]:
    """Which checkpoint a resumed run continues from, and each newer one skipped (and why)."""
    found = rd.find_resumable(run_dir)
    if not found.skipped or found.checkpoint is None:
        return []
    return [f"{line}." for line in found.skipped] + [f"resuming from {found.checkpoint.name}."]
