"""The doctor use case: a failed run's log (and optionally its plan) → what ran out, by how much, when,
and the smallest changes that would fit.

The log is read by the pure `failure_log.read_log`. With a plan, the measured failure is set against the
plan's prediction (the memory terms that grow in the failing phase), and fit's own search runs again on the
plan's hardware with the budget cut by what the estimator missed, first keeping the plan's method and
weights format (so the answer is a micro-batch, checkpointing, ZeRO or offload change), then free; when
nothing fits there either, fit's infeasibility diagnosis gives the changes (QLoRA, shorter sequence,
offload, more GPUs, a bigger GPU), each checked by the estimator.
"""

from __future__ import annotations

import os
import stat
from collections import deque
from dataclasses import dataclass, replace
from typing import BinaryIO, Literal

from swiftplan.errors import SwiftplanError
from swiftplan.planner.failure_log import KIND_TEXT, PHASE_TEXT, Finding, LogReading, read_log
from swiftplan.planner.plan import Plan
from swiftplan.planner.setup import ServeSetup, TrainSetup
from swiftplan.planner.workload import TrainWorkload
from swiftplan.units import GiB, MiB, format_gib

RemedySource = Literal["fit", "log"]

PHASE_TERMS: dict[str, tuple[str, ...]] = {
    "load": ("weights",),
    "start_up": ("weights", "optimizer", "master_weights"),
    "forward": ("activations", "logits"),
    "backward": ("activations", "logits", "gradients"),
    "optimizer_step": ("optimizer", "master_weights", "gradients", "transient"),
    "kv_cache_allocation": ("weights", "kv_cache"),
}
"""The plan's memory terms that grow in each phase (what a failure there points at)."""

_ALLOC_ENV = {
    "cuda": "PYTORCH_CUDA_ALLOC_CONF",
    "rocm": "PYTORCH_HIP_ALLOC_CONF",
    "npu": "PYTORCH_NPU_ALLOC_CONF",
}


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
class Remedy:
    """One change, and whether the estimator checked it."""

    change: str
    """Short name: 'micro-batch', 'expandable_segments', '--max-model-len', …"""
    text: str
    """One sentence for the user."""
    source: RemedySource
    """'fit': a plan the estimator checked against the measured shortfall; 'log': read from the message."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PlanComparison:
    """The failure set against the plan's prediction."""

    planned_peak_bytes: int
    """The plan's peak allocated bytes per device."""
    planned_device_bytes: int
    """The plan's device total (what nvidia-smi would show)."""
    device_memory_bytes: int
    """Memory one device offers the plan."""
    needed_bytes: int | None
    """What the run wanted at the failure: allocated + requested (None when the message does not say)."""
    missed_bytes: int | None
    """How much more the run needed than the plan predicted for the device (drives the re-fit)."""
    terms: tuple[tuple[str, int], ...]
    """The plan's bytes for the terms that grow in the failing phase."""


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


def _amount(finding: Finding) -> str:
    f = finding
    if f.kind == "device_memory":
        where = f" on {f.device}" if f.device else ""
        parts = []
        if f.requested_bytes is not None:
            parts.append(f"asked for {_size(f.requested_bytes)}")
        if f.free_bytes is not None:
            parts.append(f"{_size(f.free_bytes)} free")
        if f.total_bytes is not None:
            parts.append(f"of {_size(f.total_bytes)}{' allowed' if f.backend == 'mps' else ''}")
        detail = (" (" + ", ".join(parts) + f"{where})") if parts else where
        if f.shortfall_bytes:
            return f"short by {_size(f.shortfall_bytes)}{detail}"
        return f"the allocation failed with enough memory free{detail}"
    if f.kind == "kv_cache" and f.tokens_needed is not None:
        more = f", about {_size(f.shortfall_bytes)} more KV cache" if f.shortfall_bytes else ""
        return f"{f.tokens_needed:,} tokens asked, {f.tokens_available:,} fit{more}"
    if f.kind == "kv_cache":
        return "nothing left for it after the weights and the profiling run"
    if f.kind == "host_memory":
        rss = f" (the killed process held {_size(f.process_rss_bytes)})" if f.process_rss_bytes else ""
        return f"the kernel killed the process{rss}"
    if f.kind == "nccl":
        op = f" {f.operation}" if f.operation else ""
        article = "an" if op.strip()[:1].upper() in "AEIOU_" and op else "a"
        return (
            f"{article}{op} waited past its {f.timeout_s:g} s timeout"
            if f.timeout_s
            else f"{article}{op} timed out"
        )
    return "the disk filled up"


def _size(num_bytes: int) -> str:
    return format_gib(num_bytes, 2) if num_bytes >= 100 * MiB else f"{num_bytes / MiB:.0f} MiB"


def headline(finding: Finding) -> str:
    """'device memory ran out during the optimizer step: short by 0.99 GiB (…)'."""
    if finding.kind == "nccl":
        return f"an NCCL collective timed out ({PHASE_TEXT[finding.phase]}): {_amount(finding)}."
    return f"{KIND_TEXT[finding.kind]} ran out during {PHASE_TEXT[finding.phase]}: {_amount(finding)}."


def _fragmentation(finding: Finding) -> Remedy | None:
    """expandable_segments when the allocator held a lot it could not hand out."""
    unallocated = finding.reserved_unallocated_bytes
    if finding.backend not in _ALLOC_ENV or not unallocated:
        return None
    large = unallocated >= 512 * MiB and (
        unallocated >= (finding.shortfall_bytes or 0) or unallocated >= 0.05 * (finding.total_bytes or 0)
    )
    if not large:
        return None
    env = _ALLOC_ENV[finding.backend]
    return Remedy(change="expandable_segments", source="log",
                  text=f"{env}=expandable_segments:True: the allocator held {_size(unallocated)} reserved but "
                       f"unallocated (fragmentation), "
                       f"{'more than' if unallocated >= (finding.shortfall_bytes or 0) else 'part of'} the shortfall.")  # fmt: skip


def _log_remedies(finding: Finding) -> list[Remedy]:
    """Changes the message itself points at (not checked by the estimator)."""
    f, out = finding, []
    if f.kind == "device_memory":
        if (frag := _fragmentation(f)) is not None:
            out.append(frag)
        if f.requested_bytes and f.total_bytes and f.requested_bytes > f.total_bytes:
            out.append(Remedy(change="one tensor larger than the device", source="log",
                              text=f"one allocation ({_size(f.requested_bytes)}) is larger than the device reports "
                                   f"({_size(f.total_bytes)}): on unified-memory parts raise the GPU carve-out; "
                                   "otherwise shard that tensor (tensor parallel) or shorten the sequence."))  # fmt: skip
        elif f.shortfall_bytes == 0 and f.free_bytes:
            out.append(Remedy(change="fragmentation or a cap", source="log",
                              text=f"{_size(f.free_bytes)} was free yet the allocation failed: fragmentation, a "
                                   "per-process memory fraction, or another process grabbing memory at the same time."))  # fmt: skip
        if f.backend == "mps":
            out.append(Remedy(change="MPS watermark", source="log",
                              text="the MPS allocator stops at its high watermark (max allowed): lower micro-batch or "
                                   "sequence; PYTORCH_MPS_HIGH_WATERMARK_RATIO=0.0 lifts the cap at the risk of swapping."))  # fmt: skip
        by_phase = {
            "forward": "activations and logits grow with micro-batch × sequence: lower --micro-batch or --seq, or "
            "turn on gradient checkpointing.",
            "backward": "the backward pass holds activations and gradients: gradient checkpointing, a smaller "
            "micro-batch, or a shorter sequence.",
            "optimizer_step": "the optimizer step allocates moments and temporaries: an 8-bit or paged optimizer, "
            "ZeRO-2/3 sharding across GPUs, or optimizer offload to host RAM.",
            "load": "the weights do not fit as loaded: quantize (QLoRA / nf4), shard them (ZeRO-3, tensor "
            "parallel) over more devices, or a device with more memory.",
        }
        generic = (
            "lower the micro-batch or the sequence length, turn on gradient checkpointing, or quantize the "
            "weights; pass --plan to get a change the estimator checked against this shortfall."
        )
        out.append(Remedy(change=f"{f.phase} memory", source="log", text=by_phase.get(f.phase, generic)))
    elif f.kind == "kv_cache":
        if "vllm" in f.frameworks and f.tokens_available:
            fit_len = f.tokens_available // 256 * 256 or f.tokens_available
            out.append(Remedy(change="--max-model-len", source="log",
                              text=f"--max-model-len {fit_len} fits the cache as sized; or raise "
                                   "--gpu-memory-utilization so it holds the full length."))  # fmt: skip
        elif "sglang" in f.frameworks or "mem-fraction-static" in f.line:
            out.append(Remedy(change="--mem-fraction-static", source="log",
                              text="SGLang sizes its KV pool from --mem-fraction-static after the weights: raise it "
                                   "(a large model left no pool); if activations then run out, lower --chunked-prefill-size."))  # fmt: skip
        else:
            out.append(Remedy(change="--gpu-memory-utilization", source="log",
                              text="the weights and the profiling run left no memory for cache blocks: raise "
                                   "--gpu-memory-utilization, lower --max-model-len / --max-num-seqs, quantize the "
                                   "weights (fp8, AWQ) or add tensor parallelism."))  # fmt: skip
    elif f.kind == "host_memory":
        load = f.phase == "load"
        out.append(Remedy(change="host RAM", source="log",
                          text=("loading materialised the checkpoint in RAM on every rank: load with "
                                "low_cpu_mem_usage / device_map, or fewer processes per node while loading. " if load
                                else "")
                               + "Offloaded optimizer state and dataloader workers live in host RAM too: plan with "
                                 "the real RAM (swiftplan fit --host-ram GiB) and fewer --dataloader workers."))  # fmt: skip
    elif f.kind == "nccl":
        wait = f" for {f.timeout_s:g} s" if f.timeout_s else ""
        out.append(Remedy(change="find the stalled rank", source="log",
                          text=f"the other ranks waited{wait} on one that stopped: read its log first (an OOM, a long "
                               "checkpoint save or uneven data usually); raise the timeout (ddp_timeout, "
                               "init_process_group(timeout=…)) only for a known slow step; NCCL_DEBUG=INFO shows where."))  # fmt: skip
    elif f.kind == "disk":
        out.append(Remedy(change="checkpoint space", source="log",
                          text="keep fewer checkpoints (save_total_limit), save adapters only, or write output_dir to "
                               "a larger disk; a full checkpoint with optimizer state is several times the weights."))  # fmt: skip
    return out


def _compare(plan: Plan, finding: Finding) -> PlanComparison:
    per = plan.prediction.per_device_bytes
    peak, device_total = plan.prediction.peak_allocated_bytes, plan.prediction.device_total_bytes
    memory = plan.prediction.device_memory_bytes
    needed = (finding.allocated_bytes + finding.requested_bytes
              if finding.allocated_bytes is not None and finding.requested_bytes is not None else None)  # fmt: skip
    missed = None
    if finding.kind == "device_memory" and finding.shortfall_bytes is not None:
        capacity = finding.total_bytes if finding.total_bytes is not None else memory
        missed = capacity + finding.shortfall_bytes - device_total
    elif finding.kind == "kv_cache" and finding.shortfall_bytes is not None:
        missed = finding.shortfall_bytes
    names = PHASE_TERMS.get(finding.phase) or (max(("weights", "activations", "logits", "optimizer", "kv_cache"),
                                                   key=lambda n: per.get(n, 0)),)  # fmt: skip
    terms = tuple((name, per[name]) for name in names if per.get(name))
    return PlanComparison(planned_peak_bytes=peak, planned_device_bytes=device_total, device_memory_bytes=memory,
                          needed_bytes=needed, missed_bytes=missed, terms=terms)  # fmt: skip


def _setup_diff(old: TrainSetup, new: TrainSetup, old_gpus: int, new_gpus: int) -> str:
    pairs = (
        ("method", old.method, new.method), ("weights", old.quant, new.quant),
        ("micro-batch", old.micro_batch, new.micro_batch), ("checkpointing", old.grad_ckpt, new.grad_ckpt),
        ("ZeRO", old.parallel.zero, new.parallel.zero), ("offload", old.parallel.offload, new.parallel.offload),
        ("optimizer", old.optimizer, new.optimizer), ("GPUs", old_gpus, new_gpus),
        ("tp", old.parallel.tp, new.parallel.tp), ("pp", old.parallel.pp, new.parallel.pp),
    )  # fmt: skip
    changed = [f"{name} {a} → {b}" for name, a, b in pairs if a != b]
    return ", ".join(changed) or "the same set-up on the re-measured budget"


def _refit(plan: Plan, missed: int) -> tuple[list[Remedy], list[str]]:
    """fit again on the plan's hardware with the budget cut by what the estimator missed."""
    from swiftplan.planner.search.pins import Pins
    from swiftplan.usecases import fit

    setup = plan.setup
    if not isinstance(setup, TrainSetup) or not isinstance(plan.workload, TrainWorkload):
        return [], ["re-planning from a log covers training plans; a serving plan gets the log's advice."]
    memory = plan.prediction.device_memory_bytes
    usable = memory - missed
    if usable <= GiB:
        return [], [
            f"the run needed {_size(missed)} more than the plan predicted; too much to re-plan on this GPU."
        ]
    cluster = replace(plan.hardware, usable_memory_bytes=usable)
    workload = plan.workload
    base = fit.FitRequest(model=plan.model, gpus=plan.offered, task="train", engine=plan.engine,
                          seq_len=setup.seq_len, global_batch=workload.global_batch,
                          dataset_tokens=workload.dataset_tokens, epochs=workload.epochs,
                          attention=workload.attention, variable_lengths=setup.variable_lengths,
                          vision=workload.vision, compare_engines=False, trials=40)  # fmt: skip
    note = (
        f"re-planned on {_size(usable)} per device: the plan's {_size(memory)} less the "
        f"{_size(missed)} the run needed beyond the plan's prediction."
    )
    kept = replace(base, pins=Pins(methods=(setup.method,), quants=(setup.quant,)))
    for request, label in ((kept, "same method"), (base, "any method")):
        try:
            outcome = fit.search_fit(fit.prepare_fit(request, cluster=cluster))
        except SwiftplanError as error:
            return [], [note, f"re-planning failed: {error.message}"]
        if outcome.plan is not None:
            new = outcome.plan
            assert isinstance(new.setup, TrainSetup)
            diff = _setup_diff(setup, new.setup, plan.layout.gpus, new.layout.gpus)
            text = (f"{diff} ({label}): {format_gib(new.prediction.device_total_bytes, 1)} per device by the "
                    f"estimator, with {_size(missed)} added for what this run showed it misses.")  # fmt: skip
            return [Remedy(change="re-plan", text=text, source="fit")], [note]
        if request is base and outcome.diagnosis is not None:
            remedies = [
                Remedy(change=s.change, text=s.text, source="fit") for s in outcome.diagnosis.suggestions
            ]
            return remedies, [note, outcome.diagnosis.summary]
    return [], [note]


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
        from swiftplan.plan_file import load_plan

        plan = load_plan(request.plan_path)
    if finding is None:
        return DoctorOutcome(source=request.source, reading=reading, plan_path=request.plan_path, comparison=None,
                             headline=f"no known failure found in {_lines_read(request, reading)}.",
                             remedies=(), notes=tuple(reading_notes))  # fmt: skip
    remedies, notes = [], reading_notes
    comparison = None
    if plan is not None:
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
