"""Hardware probe: the only code that touches drivers (NVML, torch, torch_npu, npu-smi, sysctl).

`probe()` asks each backend in turn (NVML, then Ascend, then torch for ROCm/MPS/CUDA-without-NVML)
and keeps the devices of the first that finds any. No accelerator is a valid result, not an error;
`cluster_from_probe` turns a result into the `Cluster` the planner sizes for.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from swiftplan.executors.probe.ascend import probe_ascend
from swiftplan.executors.probe.cluster import accelerator_for_device, cluster_from_probe
from swiftplan.executors.probe.host import probe_host
from swiftplan.executors.probe.nvml import probe_nvml
from swiftplan.executors.probe.result import (
    BackendReport,
    GpuProcess,
    HostInfo,
    MigInstance,
    ProbedDevice,
    ProbeResult,
)
from swiftplan.executors.probe.torch_backend import probe_torch

__all__ = [
    "BackendReport",
    "GpuProcess",
    "HostInfo",
    "MigInstance",
    "ProbeResult",
    "ProbedDevice",
    "accelerator_for_device",
    "cluster_from_probe",
    "probe",
]


def probe(
    *,
    disk_path: str | os.PathLike[str] = ".",
    environ: Mapping[str, str] | None = None,
    backends: tuple[tuple[str, Callable[[], BackendReport]], ...] | None = None,
) -> ProbeResult:
    """Snapshot of this machine: host facts plus the accelerators of the first backend that finds any.

    `backends` ((label, probe function) pairs, tried in order) exists for tests.
    """
    environ = os.environ if environ is None else environ
    if backends is None:
        backends = (
            ("nvml", lambda: probe_nvml(environ)),
            ("ascend", lambda: probe_ascend(environ)),
            ("torch", probe_torch),
        )
    attempts: list[str] = []
    warnings: list[str] = []
    found: BackendReport | None = None
    for label, backend in backends:
        report = backend()
        attempts.append(f"{label}: {report.note}")
        warnings.extend(report.warnings)
        if report.devices:
            found = report
            break
    return ProbeResult(
        host=probe_host(disk_path),
        backend=found.backend if found else None,
        devices=found.devices if found else (),
        driver_version=found.driver_version if found else None,
        runtime_version=found.runtime_version if found else None,
        attempts=tuple(attempts),
        warnings=tuple(warnings),
    )
