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
    RUN/checkpoints/.tmp-step-000012/   a save in progress (renamed to step-000012 when complete)
    RUN/checkpoints/latest         name of the newest complete checkpoint (informational)
    RUN/final/             the trained adapter (peft format) or model (safetensors)
    RUN/run_report.json    predicted vs measured

A checkpoint is written into `.tmp-step-N`, every file fsynced, state.json (with the size of every
other file) written last, and the directory renamed to `step-N`: a checkpoint is complete when its
state.json exists and every file it lists has the listed size. Resume takes the newest complete one
and names each newer one it skips (truncated, partial, deleted) and why.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
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
    save_total_limit: int = 0
    """Keep the newest N complete checkpoints, deleting older ones (0 = keep all, as the HF Trainer's None)."""
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
        if self.epochs <= 0 or self.save_steps < 0 or self.warmup_steps < 0 or self.save_total_limit < 0:
            raise SwiftplanError(
                "--epochs must be positive; --save-steps, --save-total-limit and --warmup-steps must not be negative."
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


def require_directory(run_dir: Path) -> None:
    """--output-dir must be a directory (or not exist yet): one line instead of a failure mid-run."""
    for path in (run_dir, *run_dir.parents):
        if path.exists():
            if not path.is_dir():
                raise SwiftplanError(f"--output-dir {run_dir}: {path} is a file, not a directory.",
                                     hint="Choose another --output-dir, or move the file away.")  # fmt: skip
            return


def write_args(run_dir: Path, args: TrainArgs) -> None:
    """Save TrainArgs as JSON."""
    write_text_atomic(run_dir / "train_args.json", json.dumps(dataclasses.asdict(args), indent=2) + "\n")


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


def checkpoint_tmp_dir(run_dir: Path, step: int) -> Path:
    """RUN/checkpoints/.tmp-step-NNNNNN: where a save is written before it is renamed into place."""
    return run_dir / "checkpoints" / f".tmp-step-{step:06d}"


_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why `checkpoint` cannot be resumed from (None when it is complete)."""
    if not checkpoint.is_dir():
        return "it is gone"
    try:
        state = json.loads((checkpoint / "state.json").read_text())
    except FileNotFoundError:
        return "it has no state.json (its save did not finish)"
    except (OSError, ValueError) as error:
        return f"its state.json is unreadable ({error})"
    for name, size in state.get("files", {}).items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} is {path.stat().st_size} bytes, {size} were written (truncated or damaged)"
    return None


@dataclass(frozen=True, kw_only=True, slots=True)
class Resumable:
    """The checkpoint to resume from, and the newer ones that cannot be used."""

    checkpoint: Path | None
    """The newest complete checkpoint (None: none)."""
    skipped: tuple[str, ...] = ()
    """One sentence per newer checkpoint skipped, naming it and why."""


def _step_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name))]
    return sorted(found, reverse=True)


def find_resumable(run_dir: Path) -> Resumable:
    """The newest complete checkpoint; newer partial or damaged ones (and a `latest` marker naming a
    deleted one) are skipped with the reason."""
    skipped = []
    marker = run_dir / "checkpoints" / "latest"
    named = marker.read_text().strip() if marker.is_file() else ""
    steps = _step_dirs(run_dir)
    if named and not (run_dir / "checkpoints" / named).exists():
        skipped.append(f"checkpoints/latest names {named}, which is gone")
    for _, path in steps:
        problem = checkpoint_problem(path)
        if problem is None:
            return Resumable(checkpoint=path, skipped=tuple(skipped))
        skipped.append(f"skipped {path.name}: {problem}")
    return Resumable(checkpoint=None, skipped=tuple(skipped))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    return find_resumable(run_dir).checkpoint


def prune_checkpoints(run_dir: Path, *, keep: int) -> list[Path]:
    """Delete leftover `.tmp-step-*` saves and, with keep > 0, every checkpoint older than the newest
    `keep` complete ones; returns what was deleted."""
    root = run_dir / "checkpoints"
    doomed = [p for p in root.glob(".tmp-step-*") if p.is_dir()]
    if keep > 0:
        complete = [path for _, path in _step_dirs(run_dir) if checkpoint_problem(path) is None]
        if len(complete) > keep:
            oldest_kept = complete[keep - 1].name
            doomed += [path for _, path in _step_dirs(run_dir) if path.name < oldest_kept]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def file_sizes(directory: Path) -> dict[str, int]:
    """Relative path → size of every file under `directory`."""
    return {
        str(p.relative_to(directory)): p.stat().st_size for p in sorted(directory.rglob("*")) if p.is_file()
    }


def fsync_tree(directory: Path) -> None:
    """fsync every file and directory under `directory` (and itself), so a rename publishes written bytes."""
    for path in sorted(directory.rglob("*"), reverse=True):
        _fsync_path(path)
    _fsync_path(directory)


@contextlib.contextmanager
def named(path: Path) -> Iterator[None]:
    """Give an OSError raised by a write or fsync (which carry no file name) the file's name."""
    try:
        yield
    except OSError as error:
        if error.filename is not None or not error.errno:
            raise
        raise OSError(error.errno, error.strerror, str(path)) from error


def _fsync_path(path: Path) -> None:
    with named(path):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary file next to `path`, fsync it, rename it over `path`, fsync the directory."""
    tmp = path.with_name(f".{path.name}.tmp")
    with named(tmp), tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)
    _fsync_path(path.parent)


def publish_checkpoint(tmp: Path, target: Path, state: dict[str, Any]) -> None:
    """Finish a save: state.json (listing every file's size) last, fsync, rename `tmp` to `target`."""
    state = {**state, "files": file_sizes(tmp)}
    write_text_atomic(tmp / "state.json", json.dumps(state, indent=2) + "\n")
    fsync_tree(tmp)
    if target.exists():  # an incomplete save of this step from an earlier, interrupted process
        shutil.rmtree(target)
    tmp.rename(target)
    _fsync_path(target.parent)


def mark_latest(run_dir: Path, checkpoint: Path) -> None:
    """Point RUN/checkpoints/latest at `checkpoint` (atomic rename)."""
    write_text_atomic(run_dir / "checkpoints" / "latest", checkpoint.name + "\n")


def read_state(checkpoint: Path) -> dict[str, Any]:
    """The loop position saved with a checkpoint (step, epoch, samples and tokens seen, world size)."""
    return json.loads((checkpoint / "state.json").read_text())


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line."""
    with named(path), path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """All JSON lines of a file (empty when it does not exist)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(path: Path, *, step: int) -> int:
    """Keep the lines of steps 1..`step` (a resumed run logs the rest again; a line cut by a kill goes
    too); returns how many lines were dropped."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            dropped += 1
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        write_text_atomic(path, "".join(line + "\n" for line in kept))
    return dropped


_WRITE_HINTS = {
    errno.ENOSPC: "Free space on that file system or choose another --output-dir; complete checkpoints are kept and --resume continues from the newest.",
    errno.EDQUOT: "The disk quota is used up; free space or choose another --output-dir, then --resume.",
    errno.EROFS: "--output-dir must be on a writable file system.",
    errno.EACCES: "--output-dir must be a directory this user can write.",
    errno.EPERM: "--output-dir must be a directory this user can write.",
    errno.ENOTDIR: "--output-dir (or a directory inside it) is a file, not a directory.",
    errno.EEXIST: "--output-dir (or a directory inside it) is a file, not a directory.",
}  # fmt: skip


def errno_meaning(error: OSError) -> str:
    """'No space left on device (ENOSPC)'."""
    code = error.errno or 0
    return f"{os.strerror(code)} ({errno.errorcode.get(code, code)})"


def _probe(directory: Path) -> OSError | None:
    """Write and fsync 4 KiB in `directory` (or its nearest existing parent): the OS's own answer."""
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    if not directory.is_dir():
        return NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(directory))
    with contextlib.suppress(OSError):
        if os.statvfs(directory).f_bavail == 0:
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
    probe = directory / f".swiftplan-write-probe-{os.getpid()}"
    try:
        with probe.open("wb") as handle:
            handle.write(b"\0" * 4096)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        return error
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return None


def os_error_of(error: BaseException, directory: Path) -> OSError | None:
    """The file-system error behind a failed write: the OSError itself or its cause, the OS error a
    native writer names ('os error 28'), or, for an opaque one (torch's C++ writer), a probe write."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            return seen
        seen = seen.__cause__ or seen.__context__
    match = re.search(r"os error (\d+)", str(error))
    if match:
        code = int(match.group(1))
        return OSError(code, os.strerror(code))
    return _probe(directory)


@contextlib.contextmanager
def writing(what: str, path: Path) -> Iterator[None]:
    """Turn a file-system failure while writing `what` at `path` into one SwiftplanError naming the
    file and the errno; anything that is not a file-system failure passes through."""
    try:
        yield
    except SwiftplanError:
        raise
    except Exception as error:
        cause = os_error_of(error, path if path.is_dir() else path.parent)
        if cause is None:
            raise
        where = cause.filename or path
        raise SwiftplanError(f"Cannot write {what} {where}: {errno_meaning(cause)}.",
                             hint=_WRITE_HINTS.get(cause.errno or 0)) from error  # fmt: skip
