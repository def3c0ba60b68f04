"""Frozen snapshots of what the probe saw: the host, each device, and what each backend said."""

from __future__ import annotations

from dataclasses import dataclass

from swiftplan.planner.hardware import Backend


@dataclass(frozen=True, kw_only=True, slots=True)
class HostInfo:
    """The machine around the accelerators."""

    os: str
    """platform.system(), e.g. 'Linux', 'Darwin'."""
    machine: str
    """platform.machine(), e.g. 'x86_64', 'arm64'."""
    cpu_model: str | None
    """CPU model string where the OS reports one."""
    logical_cpus: int
    """Logical CPUs in the machine."""
    usable_cpus: int
    """Logical CPUs this process may run on (CPU affinity)."""
    ram_total_bytes: int | None
    """Physical RAM in bytes."""
    ram_available_bytes: int | None
    """RAM available to new work in bytes (MemAvailable on Linux); None where unknown."""
    disk_path: str
    """Path whose file system `disk_free_bytes` describes."""
    disk_free_bytes: int | None
    """Free bytes on that file system; None when the path does not exist."""


@dataclass(frozen=True, kw_only=True, slots=True)
class GpuProcess:
    """A process holding device memory."""

    pid: int
    """Process id (as the driver sees it; may be a host pid from inside a container)."""
    used_memory_bytes: int | None
    """Device memory it holds in bytes; None when the driver does not say."""


@dataclass(frozen=True, kw_only=True, slots=True)
class MigInstance:
    """One MIG slice of an NVIDIA GPU."""

    uuid: str | None
    """'MIG-...' UUID."""
    name: str
    """NVML name, e.g. 'NVIDIA A100-SXM4-80GB MIG 3g.40gb'."""
    total_memory_bytes: int
    """Memory of the slice in bytes."""
    free_memory_bytes: int | None
    """Free memory of the slice in bytes."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ProbedDevice:
    """One accelerator as a framework will number it (after CUDA_VISIBLE_DEVICES and friends)."""

    index: int
    """Visible index (torch's cuda:N / npu:N)."""
    backend: Backend
    """Torch device family."""
    vendor: str
    """'NVIDIA', 'AMD', 'Huawei', 'Apple'."""
    name: str
    """Name the driver reports, e.g. 'NVIDIA H100 80GB HBM3', 'Ascend910B3', 'Apple M2 Max'."""
    total_memory_bytes: int
    """Device memory the driver reports in bytes (unified memory: all RAM)."""
    free_memory_bytes: int | None = None
    """Free device memory in bytes."""
    used_memory_bytes: int | None = None
    """Used device memory in bytes."""
    uuid: str | None = None
    """Driver UUID ('GPU-...')."""
    bus_id: str | None = None
    """PCI bus id."""
    compute_capability: str | None = None
    """CUDA SM version, NVIDIA only."""
    architecture: str | None = None
    """Architecture string where the driver gives one (ROCm gfx target)."""
    pcie_gen: int | None = None
    """Highest PCIe generation this device and slot support."""
    pcie_width: int | None = None
    """Widest PCIe link this device and slot support (lanes)."""
    pcie_gen_current: int | None = None
    """Current link generation (drops when idle)."""
    pcie_width_current: int | None = None
    """Current link width."""
    nvlink_queried: bool = False
    """Whether NVLink state could be read (NVML); False means unknown, not absent."""
    nvlink_active_links: int = 0
    """Active NVLink links."""
    nvlink_peers: tuple[int, ...] = ()
    """Visible indices of GPUs reached over a direct NVLink."""
    nvlink_to_switch: bool = False
    """Whether links go to an NVSwitch (then every switch-attached GPU is a peer)."""
    mig_enabled: bool = False
    """NVIDIA Multi-Instance GPU mode is on."""
    mig_instances: tuple[MigInstance, ...] = ()
    """MIG slices this process can use (all of them, or those CUDA_VISIBLE_DEVICES names)."""
    processes: tuple[GpuProcess, ...] = ()
    """Processes holding memory on the device."""
    unified_memory: bool = False
    """Apple silicon: the GPU shares RAM with the CPU."""
    recommended_max_memory_bytes: int | None = None
    """Apple Metal's recommended working-set size in bytes."""


@dataclass(frozen=True, kw_only=True, slots=True)
class BackendReport:
    """What one probe backend found."""

    backend: Backend | None
    """The device family it looked for (None: nothing to report)."""
    note: str
    """One line for `swiftplan probe`: what it tried and what happened."""
    devices: tuple[ProbedDevice, ...] = ()
    """Devices found (visible ones only)."""
    driver_version: str | None = None
    """Driver version string."""
    runtime_version: str | None = None
    """CUDA driver API / HIP / CANN / torch version, as the backend knows it."""
    warnings: tuple[str, ...] = ()
    """Things the user should know."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ProbeResult:
    """Snapshot of this machine: host, devices of the first backend that found any, and warnings."""

    host: HostInfo
    """CPU, RAM and disk."""
    backend: Backend | None
    """Backend of `devices`; None when there is no accelerator (a valid result)."""
    devices: tuple[ProbedDevice, ...]
    """Visible accelerators."""
    driver_version: str | None = None
    """Driver of `devices`."""
    runtime_version: str | None = None
    """Runtime of `devices`."""
    attempts: tuple[str, ...] = ()
    """'<backend>: <what happened>' per backend tried, in order."""
    warnings: tuple[str, ...] = ()
    """Warnings from every backend."""

    @property
    def has_accelerator(self) -> bool:
        """Whether any accelerator is visible."""
        return bool(self.devices)
