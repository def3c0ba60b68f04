"""The doctor use case: a failed run's log (and optionally its plan) → what ran out, by how much, when,
and the smallest changes that would fit.

The log is read by the pure `failure_log.read_log`. With a plan, the measured failure is set against the
plan's prediction (the memory terms that grow in the failing phase), and fit's own search runs again on the
plan's hardware with the budget cut by what the estimator missed, first keeping the plan's method and
weights format (so the answer is a micro-batch, checkpointing, ZeRO or offload change), then free; when
nothing fits there either, fit's infeasibility diagnosis gives the changes (QLoRA, shorter sequence,
offload, more GPUs, a bigger GPU), each checked by the estimator.

This module reads the log's tail (`read_request`) and holds the request, the outcome and `diagnose`; the
headline and the log's own remedies live in doctor_advice, the comparison with the plan and the re-plan in
doctor_replan. It re-exports their public names.
"""

from __future__ import annotations

import os
import stat
from collections import deque
from dataclasses import dataclass, replace
from typing import BinaryIO

from swiftplan.errors import SwiftplanError
from swiftplan.planner.failure_log import LogReading, read_log
from swiftplan.planner.setup import ServeSetup
from swiftplan.units import GiB, MiB
from swiftplan.usecases.doctor_advice import Remedy, RemedySource, _log_remedies, _size, headline
from swiftplan.usecases.doctor_replan import PHASE_TERMS, PlanComparison, _compare, _refit, check_plan_matches

__all__ = [
    "PHASE_TERMS",
    "STREAM_LIMIT_BYTES",
    "TAIL_BYTES",
    "DoctorOutcome",
    "DoctorRequest",
    "PlanComparison",
    "Remedy",
    "RemedySource",
    "diagnose",
    "headline",
    "read_request",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class DoctorRequest:
    """A log and, optionally, the plan the run followed."""

    text: str
    """The log or console output."""
    source: str
    """Where it came from (a path, or 'stdin')."""
    plan_path: str | None = None
    """The plan file the run followed."""
    first_line: int = 1
    """The log's line number of `text`'s first line (above 1 when only the log's end was read)."""
    skipped_bytes: int = 0
    """Bytes of the log before `text`, not read into it."""
    ended: bool = True
    """Whether the log was read to its end (False: a stream stopped at STREAM_LIMIT_BYTES)."""


TAIL_BYTES = 8 * MiB
"""How much of a log's end doctor reads: a failure and the traceback that led to it are at the end. 8 MiB
is about 100,000 lines, read in a few seconds; the whole of a multi-GB log would take many minutes."""
STREAM_LIMIT_BYTES = 4 * GiB
"""Where doctor stops reading a pipe or device that does not end (`doctor /dev/zero`, `yes | doctor -`)."""
_CHUNK_BYTES = 4 * MiB


def read_request(log: str, *, plan_path: str | None = None, stdin: BinaryIO | None = None) -> DoctorRequest:
    """The request for a log file, or '-' for standard input: its last TAIL_BYTES (whole lines, UTF-8 with
    bad bytes replaced) and the line number they start at, in memory bounded by TAIL_BYTES."""
    import sys

    if log == "-":
        stream = stdin if stdin is not None else sys.stdin.buffer
        return _tail_request(stream, "stdin", plan_path, limit=STREAM_LIMIT_BYTES)
    try:
        with open(log, "rb", buffering=0) as file:
            regular = stat.S_ISREG(os.fstat(file.fileno()).st_mode)
            return _tail_request(file, log, plan_path, limit=None if regular else STREAM_LIMIT_BYTES)
    except OSError as error:
        raise SwiftplanError(f"Cannot read log {log}: {error.strerror or error}.",
                             hint="Pass a file, or - to read standard input.") from error  # fmt: skip


def _tail_request(
    stream: BinaryIO, source: str, plan_path: str | None, *, limit: int | None
) -> DoctorRequest:
    """Read `stream` to its end (or to `limit` bytes), keeping only the last TAIL_BYTES and counting the
    newlines in what was dropped."""
    kept: deque[bytes] = deque()
    kept_bytes = total = newlines = 0
    ended = False
    while limit is None or total < limit:
        chunk = stream.read(_CHUNK_BYTES)
        if not chunk:
            ended = True
            break
        kept.append(chunk)
        kept_bytes += len(chunk)
        total += len(chunk)
        while kept_bytes - len(kept[0]) >= TAIL_BYTES:
            dropped = kept.popleft()
            kept_bytes -= len(dropped)
            newlines += dropped.count(b"\n")
    data = b"".join(kept)
    skipped = total - len(data)
    if len(data) > TAIL_BYTES:
        cut = len(data) - TAIL_BYTES
        newlines += data.count(b"\n", 0, cut)
        data, skipped = data[cut:], skipped + cut
    if skipped and (start := data.find(b"\n")) != -1:  # begin at a whole line
        newlines += 1
        data, skipped = data[start + 1 :], skipped + start + 1
    text = data.decode("utf-8", errors="replace").replace("\x00", "")  # a crashed log's zero-filled blocks
    return DoctorRequest(text=text, source=source, plan_path=plan_path,
                         first_line=newlines + 1, skipped_bytes=skipped, ended=ended)  # fmt: skip


def _reading_notes(request: DoctorRequest, lines: int) -> list[str]:
    """What part of the log was read, when not all of it."""
    notes = []
    if request.skipped_bytes:
        notes.append(f"read only the log's end: {_count(lines, 'line')} from line {request.first_line:,}, after "
                     f"skipping {_size(request.skipped_bytes)}; a failure and its traceback are at the end, and "
                     "reading all of a large log would take minutes.")  # fmt: skip
    if not request.ended:
        notes.append(f"stopped reading {request.source} after {_size(STREAM_LIMIT_BYTES)} without reaching its "
                     "end; pass the log as a file (doctor reads up to its end).")  # fmt: skip
    return notes


@dataclass(frozen=True, kw_only=True, slots=True)
class DoctorOutcome:
    """doctor's answer."""

    source: str
    reading: LogReading
    headline: str
    """One sentence: what ran out, by how much, when."""
    plan_path: str | None
    comparison: PlanComparison | None
    remedies: tuple[Remedy, ...]
    notes: tuple[str, ...]


def _count(number: int, noun: str) -> str:
    """'1 line', '2,400 lines'."""
    return f"{number:,} {noun}" + ("" if number == 1 else "s")


def _lines_read(request: DoctorRequest, reading: LogReading) -> str:
    """'240 lines', or 'the last 99,000 lines' when the log's start was skipped."""
    lines = _count(reading.lines_scanned, "line")
    return f"the last {lines}" if request.skipped_bytes else lines


def diagnose(request: DoctorRequest) -> DoctorOutcome:
    """Read the log; with a plan, compare and re-plan against the measured shortfall."""
    reading = read_log(request.text)
    if request.first_line > 1:  # line numbers in the log, not in the part of it read
        shift = request.first_line - 1
        reading = replace(reading, findings=tuple(replace(f, line_number=f.line_number + shift)
                                                  for f in reading.findings))  # fmt: skip
    reading_notes = _reading_notes(request, reading.lines_scanned)
    finding = reading.primary
    plan = None
    if request.plan_path is not None:
        from swiftplan.executors.model_source import known_spec
        from swiftplan.plan_file import load_plan
        from swiftplan.planner.model_limits import check_plan_shape

        plan = load_plan(request.plan_path)
        if (spec := known_spec(plan.model)) is not None:  # a layout the model refuses: no run followed it
            check_plan_shape(spec, plan.setup, f"Plan file {request.plan_path}")
    if finding is None:
        return DoctorOutcome(source=request.source, reading=reading, plan_path=request.plan_path, comparison=None,
                             headline=f"no known failure found in {_lines_read(request, reading)}.",
                             remedies=(), notes=tuple(reading_notes))  # fmt: skip
    remedies, notes = [], reading_notes
    comparison = None
    if plan is not None:
        check_plan_matches(plan, finding, request.plan_path or "")
        comparison = _compare(plan, finding)
        if isinstance(plan.setup, ServeSetup) and finding.kind == "device_memory":
            notes.append(
                "the plan is for serving; the log's device-memory failure is compared with its KV budget."
            )
        if comparison.missed_bytes is not None and comparison.missed_bytes > 0:
            refit, refit_notes = _refit(plan, comparison.missed_bytes)
            remedies.extend(refit)
            notes.extend(refit_notes)
        elif comparison.missed_bytes is not None:
            notes.append(f"the plan predicted {_size(comparison.planned_device_bytes)} of {_size(comparison.device_memory_bytes)};"
                         " the run failed inside that, so the memory went to fragmentation or to another process.")  # fmt: skip
    remedies.extend(_log_remedies(finding))
    return DoctorOutcome(source=request.source, reading=reading, headline=headline(finding),
                         plan_path=request.plan_path, comparison=comparison, remedies=tuple(remedies),
                         notes=tuple(notes))  # fmt: skip
