"""Host facts: RAM (/proc/meminfo or sysconf), CPUs, and free disk of a path. Standard library only."""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path

from swiftplan.executors.probe.result import HostInfo

MEMINFO_PATH = Path("/proc/meminfo")
CPUINFO_PATH = Path("/proc/cpuinfo")


def parse_meminfo(text: str) -> tuple[int | None, int | None]:
    """(MemTotal, MemAvailable) in bytes from /proc/meminfo text (values there are in KiB)."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            scale = 1024 if len(fields) > 1 and fields[1].lower() == "kb" else 1
            values[key.strip()] = int(fields[0]) * scale
    return values.get("MemTotal"), values.get("MemAvailable")


def _ram_bytes() -> tuple[int | None, int | None]:
    if MEMINFO_PATH.exists():
        total, available = parse_meminfo(MEMINFO_PATH.read_text())
        if total is not None:
            return total, available
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total = page * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None, None
    try:
        available = page * os.sysconf("SC_AVPHYS_PAGES")  # Linux only; free, not reclaimable
    except (ValueError, OSError):
        available = None
    return total, available


def _cpu_model() -> str | None:
    if CPUINFO_PATH.exists():
        for line in CPUINFO_PATH.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.partition(":")[2].strip() or None
    return platform.processor() or None


def _usable_cpus(logical: int) -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return logical


def probe_host(disk_path: str | os.PathLike[str] = ".") -> HostInfo:
    """Snapshot of RAM, CPUs and the free space of `disk_path` (where checkpoints and caches go)."""
    total, available = _ram_bytes()
    logical = os.cpu_count() or 1
    path = Path(disk_path).expanduser()
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        free = None
    return HostInfo(
        os=platform.system(),
        machine=platform.machine(),
        cpu_model=_cpu_model(),
        logical_cpus=logical,
        usable_cpus=_usable_cpus(logical),
        ram_total_bytes=total,
        ram_available_bytes=available,
        disk_path=str(path),
        disk_free_bytes=free,
    )
