"""Huawei Ascend NPUs: torch_npu when it is installed, else the text of `npu-smi info`.

`npu-smi info` prints one two-row block per NPU: the first row holds the NPU id, the chip name (e.g.
'910B3'), health, power and temperature; the second the chip id, PCI bus id, AICore load and the
'used / total' memory pairs, HBM last (in MB, i.e. MiB: a 64 GB card shows 65536). A process table
may follow. ASCEND_RT_VISIBLE_DEVICES is honoured for the npu-smi path (torch_npu applies it itself).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from swiftplan.executors.probe.result import BackendReport, GpuProcess, ProbedDevice

MIB = 2**20
_DEVICE_ROW = re.compile(r"^(\d+)\s+(\S+)$")
_BUS_ID = re.compile(r"^[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7]$")
_PAIR = re.compile(r"(\d+)\s*/\s*(\d+)")


def _cells(line: str) -> list[str] | None:
    line = line.strip()
    if not (line.startswith("|") and line.endswith("|")):
        return None
    return [cell.strip() for cell in line[1:-1].split("|")]


def parse_npu_smi_info(text: str) -> tuple[list[ProbedDevice], str | None]:
    """Devices (indexed by NPU id) and the driver version from `npu-smi info` output."""
    version = re.search(r"Version:\s*(\S+)", text)
    devices: list[ProbedDevice] = []
    processes: dict[int, list[GpuProcess]] = {}
    pending: tuple[int, str] | None = None
    in_process_table = False
    for line in text.splitlines():
        cells = _cells(line)
        if cells is None:
            continue
        if any("Process id" in cell for cell in cells):
            in_process_table = True
            continue
        if in_process_table:
            head = cells[0].split()
            if len(cells) >= 4 and head and head[0].isdigit() and cells[1].isdigit():
                memory = int(cells[3]) * MIB if cells[3].isdigit() else None
                processes.setdefault(int(head[0]), []).append(
                    GpuProcess(pid=int(cells[1]), used_memory_bytes=memory)
                )
            continue
        match = _DEVICE_ROW.match(cells[0])
        if match and len(cells) >= 3 and not _BUS_ID.match(cells[1]):
            pending = (int(match.group(1)), match.group(2))
            continue
        if pending is not None and len(cells) >= 3 and _BUS_ID.match(cells[1]):
            pairs = _PAIR.findall(cells[2])
            if pairs:
                used_mb, total_mb = (int(value) for value in pairs[-1])
                npu_id, chip = pending
                devices.append(
                    ProbedDevice(
                        index=npu_id,
                        backend="npu",
                        vendor="Huawei",
                        name=chip if chip.lower().startswith("ascend") else f"Ascend{chip}",
                        total_memory_bytes=total_mb * MIB,
                        free_memory_bytes=(total_mb - used_mb) * MIB,
                        used_memory_bytes=used_mb * MIB,
                        bus_id=cells[1],
                    )
                )
            pending = None
    devices = [replace(device, processes=tuple(processes.get(device.index, ()))) for device in devices]
    return devices, version.group(1) if version else None


def _visible(devices: list[ProbedDevice], value: str | None) -> tuple[list[ProbedDevice], list[str]]:
    """Apply ASCEND_RT_VISIBLE_DEVICES (comma-separated NPU ids) and renumber from 0."""
    if value is None:
        chosen = devices
    else:
        by_id = {device.index: device for device in devices}
        ids = [int(token) for token in value.split(",") if token.strip().isdigit()]
        missing = [str(i) for i in ids if i not in by_id]
        chosen = [by_id[i] for i in ids if i in by_id]
        if missing:
            return _renumber(chosen), [
                f"ASCEND_RT_VISIBLE_DEVICES names NPU {', '.join(missing)}, which npu-smi does not list."
            ]
    return _renumber(chosen), []


def _renumber(devices: list[ProbedDevice]) -> list[ProbedDevice]:
    return [replace(device, index=i) for i, device in enumerate(devices)]


def run_npu_smi() -> str | None:
    """Output of `npu-smi info`, or None when the tool is missing or fails."""
    if shutil.which("npu-smi") is None:
        return None
    try:
        result = subprocess.run(["npu-smi", "info"], capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout


def _probe_torch_npu() -> BackendReport:
    import torch
    import torch_npu  # noqa: F401  (registers torch.npu)

    npu: Any = getattr(torch, "npu")  # noqa: B009 (torch's type stubs do not know torch_npu's module)
    devices = []
    for index in range(npu.device_count()):
        free, total = npu.mem_get_info(index)
        devices.append(
            ProbedDevice(
                index=index,
                backend="npu",
                vendor="Huawei",
                name=npu.get_device_name(index),
                total_memory_bytes=int(total),
                free_memory_bytes=int(free),
                used_memory_bytes=int(total) - int(free),
            )
        )
    return BackendReport(
        backend="npu",
        note=f"{len(devices)} Ascend NPU(s) via torch_npu",
        devices=tuple(devices),
        runtime_version=f"torch {torch.__version__}, torch_npu {getattr(torch_npu, '__version__', '?')}",
    )


def probe_ascend(
    environ: Mapping[str, str] | None = None,
    *,
    has_torch_npu: Callable[[], bool] = lambda: importlib.util.find_spec("torch_npu") is not None,
    npu_smi: Callable[[], str | None] = run_npu_smi,
) -> BackendReport:
    """Ascend NPUs via torch_npu, else `npu-smi info`; absent tools are a note, not an error."""
    environ = os.environ if environ is None else environ
    warnings: list[str] = []
    if has_torch_npu():
        try:
            return _probe_torch_npu()
        except Exception as error:  # a broken CANN install must not break the probe
            warnings.append(f"torch_npu is installed but failed ({error}); falling back to npu-smi.")
    text = npu_smi()
    if text is None:
        return BackendReport(backend="npu", note="no npu-smi and no torch_npu", warnings=tuple(warnings))
    devices, version = parse_npu_smi_info(text)
    visible, visibility_warnings = _visible(devices, environ.get("ASCEND_RT_VISIBLE_DEVICES"))
    return BackendReport(
        backend="npu",
        note=f"{len(devices)} Ascend NPU(s) via npu-smi, {len(visible)} visible",
        devices=tuple(visible),
        driver_version=version,
        warnings=tuple(warnings + visibility_warnings),
    )
