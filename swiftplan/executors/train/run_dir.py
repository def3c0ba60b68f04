"""A run's output directory: what the parent writes for the workers, and checkpoints to resume from.

Layout::

    RUN/plan.yaml          the plan, copied
    RUN/train_args.json    everything else the workers need (TrainArgs)
    RUN/launch.json        the rendered command and environment; ds_config.json when ZeRO is used
    RUN/dataset.pt         token blocks (input_ids, labels, attention_mask), made once by the parent
    RUN/tokenizer/         the tokenizer, saved for export
    RUN/metrics.jsonl      one line per optimizer step (loss, lr, tokens, seconds, sample indices)
    RUN/train.log          worker log
    RUN/checkpoints/step-000010/   model or adapter, optimizer, scheduler, RNG per rank, state.json
    RUN/checkpoints/latest         name of the newest complete checkpoint
    RUN/final/             the trained adapter (peft format) or model (safetensors)
    RUN/run_report.json    predicted vs measured
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swiftplan.errors import SwiftplanError

SCHEDULERS = ("cosine", "linear", "constant")


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainArgs:
    """Run options that are not in the plan (the plan's set-up is never re-decided here)."""

    data: str
    """Absolute path of the data file."""
    data_sha256: str
    """Checksum of the data file; resume refuses a changed file."""
    model: str
    """Model to load: the plan's model (hub id, local directory, or config.json with random_init)."""
    tokenizer: str | None = None
    """Tokenizer directory or hub id; None = the model's."""
    random_init: bool = False
    """Build the model from its config with random weights (tests, dry runs)."""
    device: str = "cpu"
    """torch device type: cuda (also ROCm), npu, mps or cpu (resolved by the parent)."""
    device_name: str = ""
    """The device's name, for the report."""
    max_steps: int | None = None
    """Optimizer steps to stop after; None = `epochs` passes over the data."""
    epochs: int = 1
    """Passes over the data when max_steps is None."""
    save_steps: int = 0
    """Checkpoint every N optimizer steps (0 = only at the end)."""
    lr: float = 2e-4
    """Peak learning rate."""
    lr_scheduler: str = "cosine"
    """cosine, linear (to 0) or constant, after warm-up."""
    warmup_steps: int = 0
    """Linear warm-up steps."""
    weight_decay: float = 0.0
    """Decoupled weight decay (AdamW) or L2 (SGD)."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 = off)."""
    seed: int = 42
    """Seed for model init, data order and dropout."""
    packing: bool = False
    """Pack examples into full seq_len blocks."""

    def __post_init__(self) -> None:
        if self.lr_scheduler not in SCHEDULERS:
            raise SwiftplanError(f"Unknown --lr-scheduler {self.lr_scheduler!r}; valid values are: {', '.join(SCHEDULERS)}.")  # fmt: skip
        if self.max_steps is not None and self.max_steps <= 0:
            raise SwiftplanError(f"--max-steps must be positive, got {self.max_steps}.")
        if self.epochs <= 0 or self.save_steps < 0 or self.warmup_steps < 0:
            raise SwiftplanError(
                "--epochs must be positive; --save-steps and --warmup-steps must not be negative."
            )
        if self.lr <= 0:
            raise SwiftplanError(f"--lr must be positive, got {self.lr}.")


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_run_dir(model: str, now: dt.datetime | None = None) -> Path:
    """runs/<model>-<timestamp>, the model name made path-safe."""
    stamp = (now or dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    path = Path(model)
    name = (path.parent.name if path.is_file() else path.name) if path.exists() else model
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    return Path("runs") / f"{slug or 'model'}-{stamp}"


def write_args(run_dir: Path, args: TrainArgs) -> None:
    """Save TrainArgs as JSON."""
    (run_dir / "train_args.json").write_text(json.dumps(dataclasses.asdict(args), indent=2) + "\n")


def read_args(run_dir: Path) -> TrainArgs:
    """Load TrainArgs written by `write_args`."""
    path = run_dir / "train_args.json"
    try:
        return TrainArgs(**json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, TypeError) as error:
        raise SwiftplanError(f"{path} is missing or damaged ({error}).", hint="Start a new run.") from error


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    """RUN/checkpoints/step-NNNNNN."""
    return run_dir / "checkpoints" / f"step-{step:06d}"


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (its state.json is written last), or None."""
    marker = run_dir / "checkpoints" / "latest"
    if not marker.is_file():
        return None
    path = run_dir / "checkpoints" / marker.read_text().strip()
    return path if (path / "state.json").is_file() else None


def mark_latest(run_dir: Path, checkpoint: Path) -> None:
    """Point RUN/checkpoints/latest at `checkpoint` (atomic rename)."""
    marker = run_dir / "checkpoints" / "latest"
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(checkpoint.name + "\n")
    tmp.replace(marker)


def read_state(checkpoint: Path) -> dict[str, Any]:
    """The loop position saved with a checkpoint (step, epoch, samples and tokens seen, world size)."""
    return json.loads((checkpoint / "state.json").read_text())


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line."""
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """All JSON lines of a file (empty when it does not exist)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
