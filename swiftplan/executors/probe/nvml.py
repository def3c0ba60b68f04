"""NVIDIA GPUs through NVML (the `nvidia-ml-py` package, imported as `pynvml`).

The only module that talks to NVML. It reads, per GPU: name, UUID, PCI bus id, total/free/used memory,
compute capability, PCIe generation and width, NVLink links and the GPUs at their far end, MIG mode
and slices, and the processes holding memory; plus driver and CUDA driver versions. It honours
CUDA_VISIBLE_DEVICES the way CUDA does: indices, 'GPU-<uuid prefix>' and 'MIG-<uuid>' entries, an
empty value hiding every GPU, and an entry that matches nothing ending the list.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, TypeVar

from swiftplan.executors.probe.result import BackendReport, GpuProcess, MigInstance, ProbedDevice

T = TypeVar("T")


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _bus_key(bus_id: str) -> tuple[int, int, int, int] | None:
    """'00000000:18:00.0' and '0000:18:00.0' → (domain, bus, device, function)."""
    match = re.fullmatch(r"\s*([0-9a-fA-F]+):([0-9a-fA-F]+):([0-9a-fA-F]+)\.([0-7])\s*", bus_id)
    if match is None:
        return None
    domain, bus, device, function = (int(part, 16) for part in match.groups())
    return domain, bus, device, function


def _cuda_version(value: int) -> str:
    """NVML's 12040 → '12.4'."""
    return f"{value // 1000}.{(value % 1000) // 10}"


class _RawGpu(NamedTuple):
    """One physical GPU as read, before CUDA_VISIBLE_DEVICES renumbers it."""

    device: ProbedDevice
    links: list[tuple[tuple[int, int, int, int] | None, bool]]  # (remote bus, remote is a switch)


class _Reader:
    """Thin wrapper that turns 'not supported' NVML answers into defaults."""

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml

    def get(self, fn: Callable[..., T], *args: Any, default: Any = None) -> T | Any:
        try:
            return fn(*args)
        except self.nvml.NVMLError:
            return default

    def gpu(self, index: int) -> _RawGpu:
        nvml = self.nvml
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        cc = self.get(nvml.nvmlDeviceGetCudaComputeCapability, handle)
        pci = self.get(nvml.nvmlDeviceGetPciInfo, handle)
        mig_mode = self.get(nvml.nvmlDeviceGetMigMode, handle)
        mig_enabled = bool(mig_mode and mig_mode[0] == nvml.NVML_DEVICE_MIG_ENABLE)
        device = ProbedDevice(
            index=index,
            backend="cuda",
            vendor="NVIDIA",
            name=_text(nvml.nvmlDeviceGetName(handle)),
            uuid=_text(self.get(nvml.nvmlDeviceGetUUID, handle, default="")) or None,
            bus_id=_text(pci.busId) if pci is not None else None,
            total_memory_bytes=int(memory.total),
            free_memory_bytes=int(memory.free),
            used_memory_bytes=int(memory.used),
            compute_capability=f"{cc[0]}.{cc[1]}" if cc else None,
            pcie_gen=self.get(nvml.nvmlDeviceGetMaxPcieLinkGeneration, handle),
            pcie_width=self.get(nvml.nvmlDeviceGetMaxPcieLinkWidth, handle),
            pcie_gen_current=self.get(nvml.nvmlDeviceGetCurrPcieLinkGeneration, handle),
            pcie_width_current=self.get(nvml.nvmlDeviceGetCurrPcieLinkWidth, handle),
            nvlink_queried=True,
            mig_enabled=mig_enabled,
            mig_instances=self.mig_instances(handle) if mig_enabled else (),
            processes=self.processes(handle),
        )
        links = self.nvlinks(handle)
        device = dataclasses.replace(device, nvlink_active_links=len(links))
        return _RawGpu(device=device, links=links)

    def nvlinks(self, handle: Any) -> list[tuple[tuple[int, int, int, int] | None, bool]]:
        nvml = self.nvml
        links = []
        for link in range(nvml.NVML_NVLINK_MAX_LINKS):
            state = self.get(nvml.nvmlDeviceGetNvLinkState, handle, link)
            if state != nvml.NVML_FEATURE_ENABLED:
                continue  # raises NotSupported without NVLink, InvalidArgument past the last link
            remote_type = self.get(nvml.nvmlDeviceGetNvLinkRemoteDeviceType, handle, link)
            remote = self.get(nvml.nvmlDeviceGetNvLinkRemotePciInfo, handle, link)
            bus = _bus_key(_text(remote.busId)) if remote is not None else None
            links.append((bus, remote_type == nvml.NVML_NVLINK_DEVICE_TYPE_SWITCH))
        return links

    def mig_instances(self, handle: Any) -> tuple[MigInstance, ...]:
        nvml = self.nvml
        instances = []
        for slot in range(self.get(nvml.nvmlDeviceGetMaxMigDeviceCount, handle, default=0)):
            mig = self.get(nvml.nvmlDeviceGetMigDeviceHandleByIndex, handle, slot)
            if mig is None:
                continue  # empty slot (NVML_ERROR_NOT_FOUND)
            memory = nvml.nvmlDeviceGetMemoryInfo(mig)
            instances.append(
                MigInstance(
                    uuid=_text(self.get(nvml.nvmlDeviceGetUUID, mig, default="")) or None,
                    name=_text(self.get(nvml.nvmlDeviceGetName, mig, default="MIG slice")),
                    total_memory_bytes=int(memory.total),
                    free_memory_bytes=int(memory.free),
                )
            )
        return tuple(instances)

    def processes(self, handle: Any) -> tuple[GpuProcess, ...]:
        found = self.get(self.nvml.nvmlDeviceGetComputeRunningProcesses, handle, default=[]) or []
        out = []
        for proc in found:
            used = getattr(proc, "usedGpuMemory", None)
            out.append(GpuProcess(pid=int(proc.pid), used_memory_bytes=None if used is None else int(used)))
        return tuple(out)


def _select_visible(
    gpus: list[ProbedDevice], value: str | None
) -> tuple[list[tuple[int, MigInstance | None]], list[str]]:
    """Physical indices (and MIG slice) CUDA will expose, in CUDA's order, plus warnings."""
    if value is None:
        return [(gpu.index, None) for gpu in gpus], []
    if not value.strip():
        return [], ["CUDA_VISIBLE_DEVICES is set but empty, so CUDA sees no GPU."]
    chosen: list[tuple[int, MigInstance | None]] = []
    warnings: list[str] = []
    for raw in value.split(","):
        token = raw.strip()
        found: tuple[int, MigInstance | None] | None = None
        if re.fullmatch(r"\d+", token):
            if int(token) in {gpu.index for gpu in gpus}:
                found = (int(token), None)
        elif token.upper().startswith("MIG-"):
            for gpu in gpus:
                for mig in gpu.mig_instances:
                    if mig.uuid and mig.uuid.lower() == token.lower():
                        found = (gpu.index, mig)
        elif token:
            prefix = token.lower() if token.upper().startswith("GPU-") else f"gpu-{token.lower()}"
            matches = [gpu.index for gpu in gpus if gpu.uuid and gpu.uuid.lower().startswith(prefix)]
            if len(matches) == 1:
                found = (matches[0], None)
        if found is None:
            warnings.append(
                f"CUDA_VISIBLE_DEVICES entry {token!r} matches no GPU; CUDA ignores it and every entry after it."
            )
            break
        if found in chosen:
            warnings.append(f"CUDA_VISIBLE_DEVICES names {token!r} twice; counting it once.")
            continue
        chosen.append(found)
    return chosen, warnings


def _visible_devices(raw: dict[int, _RawGpu], value: str | None) -> tuple[list[ProbedDevice], list[str]]:
    selection, warnings = _select_visible([gpu.device for gpu in raw.values()], value)
    bus_to_visible = {}
    for visible, (physical, _) in enumerate(selection):
        key = _bus_key(raw[physical].device.bus_id or "")
        if key is not None:
            bus_to_visible[key] = visible
    devices = []
    for visible, (physical, mig) in enumerate(selection):
        gpu = raw[physical]
        peers = sorted({bus_to_visible[bus] for bus, _ in gpu.links if bus in bus_to_visible} - {visible})
        to_switch = any(is_switch for _, is_switch in gpu.links)
        devices.append(
            dataclasses.replace(
                gpu.device,
                index=visible,
                nvlink_peers=tuple(peers),
                nvlink_to_switch=to_switch,
                mig_instances=(mig,) if mig is not None else gpu.device.mig_instances,
            )
        )
    return devices, warnings


def probe_nvml(environ: Mapping[str, str] | None = None) -> BackendReport:
    """Read every visible NVIDIA GPU; a missing library or driver is a note, not an error."""
    environ = os.environ if environ is None else environ
    try:
        import pynvml as nvml
    except ImportError:
        return BackendReport(backend="cuda", note="nvidia-ml-py (pynvml) is not installed")
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as error:
        if isinstance(error, nvml.NVMLError_LibraryNotFound):
            return BackendReport(backend="cuda", note="no NVIDIA driver (NVML library not found)")
        if isinstance(error, nvml.NVMLError_DriverNotLoaded):
            return BackendReport(backend="cuda", note="NVIDIA driver installed but not loaded")
        return BackendReport(backend="cuda", note=f"NVML could not start: {error}")
    try:
        reader = _Reader(nvml)
        driver = _text(reader.get(nvml.nvmlSystemGetDriverVersion, default="")) or None
        cuda = reader.get(nvml.nvmlSystemGetCudaDriverVersion)
        raw: dict[int, _RawGpu] = {}
        unreadable: list[str] = []
        for index in range(nvml.nvmlDeviceGetCount()):
            try:
                raw[index] = reader.gpu(index)
            except nvml.NVMLError as error:
                unreadable.append(f"GPU {index} could not be read through NVML ({error}); it is left out.")
    finally:
        with contextlib.suppress(nvml.NVMLError):
            nvml.nvmlShutdown()
    devices, warnings = _visible_devices(raw, environ.get("CUDA_VISIBLE_DEVICES"))
    warnings = unreadable + warnings
    names = {device.name for device in devices}
    if (
        len(names) > 1
        and environ.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID"
        and environ.get("CUDA_VISIBLE_DEVICES")
    ):
        warnings.append(
            "Mixed GPU models: CUDA numbers GPUs fastest-first unless CUDA_DEVICE_ORDER=PCI_BUS_ID, while "
            "NVML numbers them by PCI bus, so CUDA_VISIBLE_DEVICES indices may pick different cards than shown."
        )
    note = f"{len(raw) + len(unreadable)} NVIDIA GPU(s), {len(devices)} visible"
    return BackendReport(
        backend="cuda",
        note=note,
        devices=tuple(devices),
        driver_version=driver,
        runtime_version=f"CUDA {_cuda_version(cuda)}" if cuda else None,
        warnings=tuple(warnings),
    )
