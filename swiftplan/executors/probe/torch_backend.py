"""ROCm (and CUDA without NVML) through torch.cuda, Apple GPUs through torch.backends.mps.

torch is imported lazily and only when the machine hints at a device torch could drive (ROCm's
/dev/kfd, NVIDIA's /dev/nvidiactl, or macOS), so probing a plain CPU host stays fast. Apple's chip
name and RAM come from `sysctl` (machdep.cpu.brand_string, hw.memsize); Metal's recommended
working-set size from torch.mps.recommended_max_memory().
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from swiftplan.executors.probe.result import BackendReport, ProbedDevice
from swiftplan.planner.hardware import Backend

ROCM_DEVICE_NODE = "/dev/kfd"
NVIDIA_DEVICE_NODE = "/dev/nvidiactl"


def read_sysctl(name: str) -> str | None:
    """`sysctl -n name` on macOS/BSD; None when unavailable."""
    try:
        result = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def _hints(system: str, path_exists: Callable[[str], bool]) -> list[str]:
    hints = []
    if system == "darwin":
        hints.append("macOS")
    if path_exists(ROCM_DEVICE_NODE):
        hints.append(ROCM_DEVICE_NODE)
    if path_exists(NVIDIA_DEVICE_NODE):
        hints.append(NVIDIA_DEVICE_NODE)
    return hints


def _cuda_like(torch: Any) -> BackendReport:
    hip = getattr(torch.version, "hip", None)
    backend: Backend = "rocm" if hip else "cuda"
    devices = []
    warnings = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        arch = getattr(props, "gcnArchName", None) if hip else None
        try:
            free, total = torch.cuda.mem_get_info(index)
        except RuntimeError as error:
            free, total = None, props.total_memory
            warnings.append(f"Device {index}: free memory unknown ({error}).")
        devices.append(
            ProbedDevice(
                index=index,
                backend=backend,
                vendor="AMD" if hip else "NVIDIA",
                name=props.name or (f"AMD {arch}" if arch else f"{backend} device {index}"),
                total_memory_bytes=int(total),
                free_memory_bytes=None if free is None else int(free),
                used_memory_bytes=None if free is None else int(total) - int(free),
                compute_capability=None if hip else f"{props.major}.{props.minor}",
                architecture=arch,
            )
        )
    runtime = f"torch {torch.__version__}, " + (f"HIP {hip}" if hip else f"CUDA {torch.version.cuda}")
    return BackendReport(
        backend=backend,
        note=f"{len(devices)} {backend.upper()} device(s) via torch.cuda",
        devices=tuple(devices),
        runtime_version=runtime,
        warnings=tuple(warnings),
    )


def _mps(torch: Any, sysctl: Callable[[str], str | None], macos_version: str) -> BackendReport:
    chip = sysctl("machdep.cpu.brand_string") or "Apple silicon"
    memsize = sysctl("hw.memsize")
    warnings = []
    if memsize and memsize.isdigit():
        total = int(memsize)
    else:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        warnings.append("sysctl hw.memsize unavailable; unified memory size taken from sysconf.")
    recommended = None
    if hasattr(torch, "mps") and hasattr(torch.mps, "recommended_max_memory"):
        recommended = int(torch.mps.recommended_max_memory())
    if not chip.startswith("Apple"):
        warnings.append(f"MPS on a non-Apple-silicon Mac ({chip}): memory and speed figures are rough.")
    major = macos_version.split(".")[0]
    if major.isdigit() and int(major) < 14:
        warnings.append(
            f"macOS {macos_version}: PyTorch's MPS backend needs macOS 14+ for bf16; use fp16 or fp32."
        )
    device = ProbedDevice(
        index=0,
        backend="mps",
        vendor="Apple",
        name=chip,
        total_memory_bytes=total,
        unified_memory=True,
        recommended_max_memory_bytes=recommended,
    )
    return BackendReport(
        backend="mps",
        note=f"Apple GPU via torch.backends.mps ({chip})",
        devices=(device,),
        runtime_version=f"torch {torch.__version__}, macOS {macos_version or 'unknown'}",
        warnings=tuple(warnings),
    )


def probe_torch(
    torch_module: Any | None = None,
    *,
    system: str | None = None,
    path_exists: Callable[[str], bool] = os.path.exists,
    sysctl: Callable[[str], str | None] = read_sysctl,
    macos_version: str | None = None,
) -> BackendReport:
    """Devices torch can drive (ROCm, CUDA, MPS); imports torch only when the host hints at one."""
    system = (system or sys.platform).lower()
    torch: Any = torch_module
    if torch is None:
        hints = _hints(system, path_exists)
        if not hints:
            return BackendReport(backend=None, note="not tried: no /dev/kfd, no /dev/nvidiactl, not macOS")
        try:
            import torch  # heavy: only when a device is hinted
        except ImportError:
            return BackendReport(
                backend=None,
                note=f"torch is not installed ({', '.join(hints)} present)",
                warnings=(
                    f"Found {', '.join(hints)} but torch is not installed, so those devices were not probed.",
                ),
            )
    if torch.cuda.is_available():
        return _cuda_like(torch)
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return _mps(torch, sysctl, macos_version if macos_version is not None else platform.mac_ver()[0])
    return BackendReport(backend=None, note=f"torch {torch.__version__} sees no CUDA, ROCm or MPS device")
