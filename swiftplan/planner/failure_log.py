"""Reading a failed run's log: what ran out, by how much, and when. Pure: text in, typed findings out.

Each recogniser matches one family of messages, quoted from real logs (tests/fixtures/doctor/, each
with the public issue it came from): PyTorch's CUDA/HIP allocator message in its 2.1+ form ("Tried to
allocate X. GPU 0 has a total capacity of … of which … is free … allocated by PyTorch, and … reserved
by PyTorch but unallocated") and its older form ("(GPU 0; … total capacity; … already allocated; …
free; … reserved in total by PyTorch)", also what torch_npu prints for Ascend), the MPS allocator, the
host's OOM killer (kernel lines, torchrun's exit code -9, a shell's exit 137 or "Killed"), NCCL's
watchdog, vLLM's and SGLang's start-up checks on the KV cache, and ENOSPC. The phase comes from the
traceback frames around the message. Sizes in these messages are printed by formatters that divide
by 1024 (PyTorch's `format_size`, vLLM's `GiB_bytes`), so "GB" and "MB" are read as GiB and MiB.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["device_memory", "host_memory", "kv_cache", "nccl", "disk"]
Phase = Literal[
    "load", "start_up", "forward", "backward", "optimizer_step", "kv_cache_allocation", "checkpoint_save",
    "collective", "unknown",
]  # fmt: skip
Backend = Literal["cuda", "rocm", "npu", "mps"]

KIND_TEXT: dict[str, str] = {
    "device_memory": "device memory",
    "host_memory": "host memory (RAM)",
    "kv_cache": "KV cache",
    "nccl": "NCCL (a collective timed out)",
    "disk": "disk space",
}
PHASE_TEXT: dict[str, str] = {
    "load": "loading the model",
    "start_up": "start-up (engine and optimizer set-up)",
    "forward": "the forward pass",
    "backward": "the backward pass",
    "optimizer_step": "the optimizer step",
    "kv_cache_allocation": "KV-cache allocation at start-up",
    "checkpoint_save": "saving a checkpoint",
    "collective": "a collective (all-reduce, all-gather, reduce-scatter)",
    "unknown": "an unknown phase (no traceback frames around the message)",
}

_UNITS = {"b": 1, "bytes": 1, "kb": 2**10, "kib": 2**10, "mb": 2**20, "mib": 2**20, "gb": 2**30,
          "gib": 2**30, "tb": 2**40, "tib": 2**40}  # fmt: skip
_SIZE = r"([\d.]+)\s*(bytes|[KMGT]i?B|B)"


@dataclass(frozen=True, kw_only=True, slots=True)
class Finding:
    """One failure read from the log."""

    kind: Kind
    """What ran out."""
    phase: Phase
    """When, from the traceback frames around the message."""
    line: str
    """The message as logged."""
    line_number: int
    """1-based line of the message in the log."""
    backend: Backend | None = None
    """Which device allocator spoke (device memory only)."""
    device: str | None = None
    """'GPU 1', 'NPU 2', when the message names one."""
    frameworks: tuple[str, ...] = ()
    """Libraries seen in the log (deepspeed, bitsandbytes, unsloth, vllm, sglang, …)."""
    requested_bytes: int | None = None
    """The allocation that failed."""
    total_bytes: int | None = None
    """Device capacity (MPS: the allocator's 'max allowed')."""
    free_bytes: int | None = None
    """Free device memory when it failed."""
    allocated_bytes: int | None = None
    """Live tensors (allocated by PyTorch; MPS: MPS allocated)."""
    reserved_unallocated_bytes: int | None = None
    """Cached by the allocator but not in use: fragmentation `expandable_segments` can return."""
    other_bytes: int | None = None
    """Memory outside this process's tensors (non-PyTorch, other processes; MPS: other allocations)."""
    shortfall_bytes: int | None = None
    """How much more the run needed than it had."""
    tokens_needed: int | None = None
    """KV cache: the model length asked for."""
    tokens_available: int | None = None
    """KV cache: the tokens the cache could hold."""
    kv_cache_bytes: int | None = None
    """KV cache: its size, when the engine logged it."""
    timeout_s: float | None = None
    """NCCL: the collective timeout."""
    operation: str | None = None
    """NCCL: the collective that timed out (ALLREDUCE, _REDUCE_SCATTER_BASE, …)."""
    process_rss_bytes: int | None = None
    """Host OOM killer: resident memory of the killed process."""


@dataclass(frozen=True, kw_only=True, slots=True)
class LogReading:
    """Everything recognised in one log."""

    findings: tuple[Finding, ...]
    """Distinct failures, the root cause first (memory before the NCCL timeouts it causes on other ranks)."""
    lines_scanned: int
    """Lines read."""
    clues: tuple[str, ...] = field(default_factory=tuple)
    """What doctor looked at closest: lines mentioning errors that matched no recogniser, else the log's last lines."""

    @property
    def primary(self) -> Finding | None:
        return self.findings[0] if self.findings else None


_MAX_BYTES = 2**60
"""Above this (1 EiB) a size in a log is garbled, not a measurement: no device or host holds that much."""
_MAX_COUNT = 10**15
"""Above this a token count or a timeout in milliseconds is garbled (vLLM's cache holds millions of tokens)."""


def to_bytes(number: str, unit: str) -> int | None:
    """'3.39', 'GiB' → bytes; None for what is not a number ('.', '1.2.3', a cut-off line) or is past
    _MAX_BYTES, so a garbled message reads as one that does not say, not as a crash or an absurd size."""
    try:
        value = float(number) * _UNITS[unit.lower()]
    except (ValueError, OverflowError):
        return None
    return int(value) if 0 <= value <= _MAX_BYTES else None


def _count(digits: str) -> int | None:
    """A whole number from a log, None past _MAX_COUNT (and before int() meets a 5,000-digit string)."""
    return int(digits) if len(digits) <= 16 and int(digits) <= _MAX_COUNT else None


def _size(pattern: str, text: str) -> int | None:
    match = re.search(pattern.replace("SIZE", _SIZE), text, re.IGNORECASE)
    return to_bytes(match.group(1), match.group(2)) if match else None


_FRAMEWORKS = ("deepspeed", "bitsandbytes", "unsloth", "vllm", "sglang", "accelerate", "peft", "trl", "fsdp",
               "llamafactory", "torch_npu")  # fmt: skip

# Innermost evidence wins in this order: a recomputing backward also shows forward frames, an optimizer
# step runs after both, and loading shows module .to() calls that look like a forward.
_PHASE_CLUES: tuple[tuple[Phase, tuple[str, ...]], ...] = (
    ("checkpoint_save", ("serialization.py", "save_pretrained", "_save_checkpoint", "save_model", "safetensors")),
    ("optimizer_step", ("optimizer.step", "_optimizer_step", "optim/adamw.py", "optim/adam.py", "exp_avg",
                        "optimizer.py\", line", "grad_scaler.py", "_multi_tensor_adam")),
    ("backward", ("backward(", "run_backward", "autograd/", "_engine_run_backward")),
    ("kv_cache_allocation", ("_allocate_kv_cache", "initialize_cache", "determine_num_available_blocks",
                             "profile_max_num_token", "init_memory_pool", "raise_if_cache_size_invalid")),
    ("load", ("from_pretrained", "_load_pretrained_model", "load_state_dict", "loading checkpoint shards",
              "set_module_tensor_to_device", "set_module_quantized_tensor_to_device", "load_model")),
    ("start_up", ("deepspeed.initialize", "_configure_optimizer", "_configure_zero_optimizer",
                  "initialize_optimizer_states", "accelerator.prepare", "_setup_for_real_optimizer")),
    ("forward", ("forward", "_call_impl", "compute_loss", "_convert_to_fp32", "model_forward", "outputs = model(")),
)  # fmt: skip


def _phase(window: list[str]) -> Phase:
    text = "\n".join(window).lower()
    for phase, clues in _PHASE_CLUES:
        if any(clue.lower() in text for clue in clues):
            return phase
    return "unknown"


def _window(lines: list[str], index: int, before: int = 60, after: int = 12) -> list[str]:
    return lines[max(0, index - before) : index + after + 1]


def _backend(line: str) -> Backend:
    lowered = line.lower()
    if "hip out of memory" in lowered:
        return "rocm"
    if "npu out of memory" in lowered:
        return "npu"
    if "mps backend out of memory" in lowered:
        return "mps"
    return "cuda"


def _device_oom(line: str, phase: Phase, number: int, frameworks: tuple[str, ...]) -> Finding:
    """PyTorch's allocator message in either form, or MPS's."""
    requested = _size(r"Tried to allocate SIZE", line)
    device = re.search(r"\b(GPU|NPU) (\d+)", line)
    common = dict(kind="device_memory", phase=phase, line=line.strip(), line_number=number,
                  backend=_backend(line), frameworks=frameworks, requested_bytes=requested,
                  device=f"{device.group(1)} {device.group(2)}" if device else None)  # fmt: skip
    if "MPS backend out of memory" in line:
        allocated = _size(r"MPS allocated: SIZE", line)
        other = _size(r"other allocations: SIZE", line)
        limit = _size(r"max allowed: SIZE", line)
        used = (allocated or 0) + (other or 0) + (requested or 0)
        shortfall = used - limit if limit is not None else None
        return Finding(**common, total_bytes=limit, allocated_bytes=allocated, other_bytes=other,  # type: ignore[arg-type]
                       shortfall_bytes=max(shortfall, 0) if shortfall is not None else None)  # fmt: skip
    in_use = None
    if "total capacity;" in line:  # the older form, and torch_npu's
        total = _size(r"SIZE total capacity", line)
        allocated = _size(r"SIZE already allocated", line)
        free = _size(r"SIZE free", line)
        reserved = _size(r"SIZE reserved in total", line)
        unallocated = (
            reserved - allocated
            if reserved is not None and allocated is not None and reserved >= allocated
            else None
        )
    else:
        total = _size(r"total capac\w* of SIZE", line)
        free = _size(r"of which SIZE is free", line)
        allocated = _size(r"SIZE is allocated by PyTorch", line)
        unallocated = _size(r"SIZE is reserved by PyTorch but unallocated", line)
        in_use = _size(r"(?:this process|Process \d+) has SIZE memory in use", line)
        reserved = (allocated or 0) + (unallocated or 0) if allocated is not None else None
    other = None
    if total is not None and free is not None and reserved is not None:
        other = max(total - free - reserved, 0)
    elif total is not None and free is not None and in_use is not None:
        other = max(total - free - in_use, 0)
    shortfall = max(requested - free, 0) if requested is not None and free is not None else None
    return Finding(**common, total_bytes=total, free_bytes=free, allocated_bytes=allocated,  # type: ignore[arg-type]
                   reserved_unallocated_bytes=unallocated, other_bytes=other, shortfall_bytes=shortfall)  # fmt: skip


def _kv_cache(line: str, lines: list[str], number: int, frameworks: tuple[str, ...]) -> Finding:
    kv_bytes = None
    for earlier in reversed(lines[: number - 1]):
        kv_bytes = _size(r"kv_cache_size=SIZE", earlier) or _size(r"KV cache memory: SIZE", earlier)
        if kv_bytes is not None:
            break
    needed = available = shortfall = None
    lengths = re.search(r"max seq len \((\d+)\) is larger than the maximum number of tokens that can be "
                        r"stored in KV cache \((\d+)\)", line)  # fmt: skip
    if lengths:
        needed, available = _count(lengths.group(1)), _count(lengths.group(2))
        if needed is None or available is None:  # a garbled count: neither is worth quoting
            needed = available = None
        if kv_bytes is not None and needed is not None and available is not None and needed > available > 0:
            shortfall = int(kv_bytes * (needed - available) / available)
    return Finding(kind="kv_cache", phase="kv_cache_allocation", line=line.strip(), line_number=number,
                   frameworks=frameworks, tokens_needed=needed, tokens_available=available,
                   kv_cache_bytes=kv_bytes, shortfall_bytes=shortfall)  # fmt: skip


def _nccl(line: str, number: int, frameworks: tuple[str, ...]) -> Finding:
    op = re.search(r"OpType=(\w+)", line)
    timeout = re.search(r"Timeout\(ms\)=(\d+)", line)
    timeout_ms = _count(timeout.group(1)) if timeout else None
    return Finding(kind="nccl", phase="collective", line=line.strip(), line_number=number, frameworks=frameworks,
                   operation=op.group(1) if op else None,
                   timeout_s=timeout_ms / 1000 if timeout_ms is not None else None)  # fmt: skip


def _host(line: str, lines: list[str], number: int, frameworks: tuple[str, ...]) -> Finding:
    rss = re.search(r"anon-rss:(\d+)kB", line)
    phase = _phase(_window(lines, number - 1, before=40, after=0))
    return Finding(kind="host_memory", phase=phase if phase in ("load", "start_up", "checkpoint_save") else "unknown",
                   line=line.strip(), line_number=number, frameworks=frameworks,
                   process_rss_bytes=to_bytes(rss.group(1), "KiB") if rss else None)  # fmt: skip


_DEVICE_OOM = re.compile(r"(CUDA|HIP|NPU) out of memory\. Tried to allocate|MPS backend out of memory")
_NO_BLOCKS = "No available memory for the cache blocks"
_MAX_LEN = re.compile(r"max seq len \(\d+\) is larger than the maximum number of tokens")
_SGLANG = re.compile(r"Not enough memory\. Please try to increase --mem-fraction-static")
_NCCL = re.compile(r"Watchdog caught collective operation timeout")
_HOST = re.compile(r"Out of memory: Kill(?:ed)? process|Killed process \d+ .*anon-rss|invoked oom-killer|"
                   r"failed \(exitcode: -9\)|exit(?:ed with)? (?:code|status)[ :]*137\b|^\s*Killed\s*$")  # fmt: skip
_DISK = re.compile(r"No space left on device|\[Errno 28\]|ENOSPC|StorageFull")
_CLUE = re.compile(r"error|exception|fail|killed|out of memory|oom|timeout|exit", re.IGNORECASE)
_RANK_PREFIX = re.compile(
    r"^\s*(?:\[\d+\]\s*)?(?:\[rank\d+\]:)?|\[?[Rr]ank \d+\]?|pid[ =]\d+|\b\d{2}:\d{2}:\d{2}[.\d]*"
)


def _key(finding: Finding) -> tuple[str, str]:
    """Same failure on several ranks or repeated lines: one finding."""
    return finding.kind, _RANK_PREFIX.sub("", finding.line)[:160]


_ORDER = {"device_memory": 0, "kv_cache": 1, "host_memory": 2, "disk": 3, "nccl": 4}


def read_log(text: str) -> LogReading:
    """Every failure recognised in a log, root cause first. Lines are counted as `grep -n` counts them (newlines
    only: a progress bar's carriage returns stay inside its line)."""
    lines = text.removesuffix("\n").split("\n") if text else []
    lowered = text.lower()
    frameworks = tuple(name for name in _FRAMEWORKS if re.search(rf"\b{name}\b", lowered))
    found: dict[tuple[str, str], Finding] = {}
    clues: list[str] = []
    for index, line in enumerate(lines):
        number = index + 1
        finding: Finding | None = None
        if _DEVICE_OOM.search(line):
            finding = _device_oom(line, _phase(_window(lines, index)), number, frameworks)
        elif _NO_BLOCKS in line or _MAX_LEN.search(line) or _SGLANG.search(line):
            if "raise ValueError(" in line:  # the source line quoted in a traceback, not the error
                continue
            finding = _kv_cache(line, lines, number, frameworks)
        elif _NCCL.search(line):
            finding = _nccl(line, number, frameworks)
        elif _HOST.search(line):
            finding = _host(line, lines, number, frameworks)
        elif _DISK.search(line):
            finding = Finding(kind="disk", phase=_phase(_window(lines, index)), line=line.strip(),
                              line_number=number, frameworks=frameworks)  # fmt: skip
        elif _CLUE.search(line) and not line.lstrip().startswith("#"):
            clues.append(line.strip())
        if finding is not None:
            found.setdefault(_key(finding), finding)
    if not clues:
        clues = [line.strip() for line in lines if line.strip()][-5:]
    findings = _merge_host(sorted(found.values(), key=lambda f: (_ORDER[f.kind], f.line_number)))
    return LogReading(findings=tuple(findings), lines_scanned=len(lines), clues=tuple(clues[-12:]))


def _merge_host(findings: list[Finding]) -> list[Finding]:
    """The kernel's two lines about one kill ('Out of memory: Kill process' and 'Killed process … anon-rss')
    are one finding: keep the first, with the RSS from whichever line had it."""
    host = [f for f in findings if f.kind == "host_memory"]
    if len(host) < 2:
        return findings
    rss = next((f.process_rss_bytes for f in host if f.process_rss_bytes is not None), None)
    phase: Phase = next((f.phase for f in host if f.phase != "unknown"), "unknown")
    first = host[0]
    merged = Finding(kind="host_memory", phase=phase, line=first.line, line_number=first.line_number,
                     frameworks=first.frameworks, process_rss_bytes=rss)  # fmt: skip
    rest = [f for f in findings if f.kind != "host_memory"]
    return sorted([*rest, merged], key=lambda f: (_ORDER[f.kind], f.line_number))
