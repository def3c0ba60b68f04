"""What the hardware panel shows: devices with memory used/free, the cluster plans are sized for. Pure.

Built from a probe snapshot (`from_probe`) or from a catalog cluster string (`from_catalog`); the
panel only formats these fields.
"""

from __future__ import annotations

from dataclasses import dataclass

from swiftplan.errors import SwiftplanError
from swiftplan.executors.probe.result import ProbeResult
from swiftplan.planner.hardware import Cluster, list_accelerators, parse_cluster
from swiftplan.units import format_gib

MAX_DEVICE_ROWS = 16
"""A catalog cluster lists at most this many devices (one row per GPU), then one summary row."""


@dataclass(frozen=True, kw_only=True, slots=True)
class DeviceRow:
    """One device line."""

    label: str
    """'cuda 0', 'node 1 gpu 3'."""
    name: str
    """Device name."""
    total_bytes: int
    """Device memory."""
    used_bytes: int | None = None
    """Memory in use when probed; None for catalog devices."""
    free_bytes: int | None = None
    """Free memory when probed; None for catalog devices."""


@dataclass(frozen=True, kw_only=True, slots=True)
class HardwareView:
    """Everything the hardware panel shows."""

    source: str
    """Where the hardware came from: 'probe (nvml, driver 550.54)' or 'catalog: 4xrtx4090'."""
    host_line: str | None
    """CPU, RAM and disk of this machine (probe only)."""
    devices: tuple[DeviceRow, ...]
    """One row per device."""
    cluster: Cluster | None
    """What plans are sized for; None when the probe found nothing usable."""
    gpus_text: str
    """The --gpus string for the CLI ('auto' when probed)."""
    summary: str
    """The cluster in words, or why there is none."""
    notes: tuple[str, ...] = ()
    """Probe warnings and cluster notes."""
    host_ram_bytes: int | None = None
    """RAM available for offload on this host (probe), None for catalog clusters."""


def _host_line(result: ProbeResult) -> str:
    host = result.host
    cpu = host.cpu_model or host.machine
    parts = [f"{host.os} {cpu}", f"{host.usable_cpus}/{host.logical_cpus} CPUs"]
    if host.ram_total_bytes is not None:
        ram = f"RAM {format_gib(host.ram_total_bytes, 1)}"
        if host.ram_available_bytes is not None:
            ram += f" ({format_gib(host.ram_available_bytes, 1)} available)"
        parts.append(ram)
    if host.disk_free_bytes is not None:
        parts.append(f"disk {format_gib(host.disk_free_bytes, 0)} free at {host.disk_path}")
    return " · ".join(parts)


def _budget(cluster: Cluster) -> str:
    return (
        f"{cluster.describe()}: plans use {format_gib(cluster.memory_bytes_per_device, 1)} per device, "
        f"{cluster.world_size} device(s)"
    )


def from_probe(result: ProbeResult) -> HardwareView:
    """The panel for a probe snapshot, with the cluster `--gpus auto` would plan for."""
    from swiftplan.executors.probe.cluster import cluster_from_probe

    rows = tuple(
        DeviceRow(
            label=f"{device.backend} {device.index}",
            name=device.name,
            total_bytes=device.total_memory_bytes,
            used_bytes=device.used_memory_bytes,
            free_bytes=device.free_memory_bytes,
        )
        for device in result.devices
    )
    backend = result.backend or "no accelerator"
    driver = f", driver {result.driver_version}" if result.driver_version else ""
    cluster: Cluster | None = None
    try:
        cluster = cluster_from_probe(result) if result.devices else None
    except SwiftplanError as error:
        summary = error.message
    else:
        summary = (
            _budget(cluster)
            if cluster
            else "No accelerator found on this machine: press c to plan for GPUs from the catalog."
        )
    tried = () if result.devices else tuple(f"tried {attempt}" for attempt in result.attempts)
    notes = tuple(dict.fromkeys((*result.warnings, *(cluster.notes if cluster else ()), *tried)))
    return HardwareView(
        source=f"probe ({backend}{driver})",
        host_line=_host_line(result),
        devices=rows,
        cluster=cluster,
        gpus_text="auto",
        summary=summary,
        notes=notes,
        host_ram_bytes=result.host.ram_available_bytes,
    )


def from_catalog(text: str) -> HardwareView:
    """The panel for a catalog cluster string such as 'rtx4090', '4xA100-80G' or '2x8xH100'."""
    cluster = parse_cluster(text)
    acc = cluster.accelerator
    rows = [
        DeviceRow(
            label=f"node {node} gpu {gpu}" if cluster.nodes > 1 else f"gpu {gpu}",
            name=acc.display_name,
            total_bytes=acc.memory_bytes,
        )
        for node in range(cluster.nodes)
        for gpu in range(cluster.gpus_per_node)
    ]
    if len(rows) > MAX_DEVICE_ROWS:
        rest = len(rows) - MAX_DEVICE_ROWS + 1
        rows = [*rows[: MAX_DEVICE_ROWS - 1], DeviceRow(label=f"+{rest}", name=acc.display_name, total_bytes=acc.memory_bytes)]  # fmt: skip
    from swiftplan.planner.search.candidate import cluster_text

    return HardwareView(
        source=f"catalog: {text.strip()}",
        host_line=None,
        devices=tuple(rows),
        cluster=cluster,
        gpus_text=cluster_text(cluster),
        summary=_budget(cluster),
        notes=acc.notes,
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class CatalogOption:
    """One accelerator in the cluster picker."""

    id: str
    """Catalog id, the value --gpus takes."""
    label: str
    """'rtx4090     NVIDIA GeForce RTX 4090 · 24 GiB · $0.34/h'."""
    search_text: str
    """Lower-case text the picker's filter matches against (id, name, aliases)."""


def catalog_options() -> tuple[CatalogOption, ...]:
    """Every catalog accelerator as a picker line, in catalog order."""
    options = []
    for acc in list_accelerators():
        price = f" · ${acc.price_usd_per_hour:.2f}/h" if acc.price_usd_per_hour is not None else ""
        label = f"{acc.id:<18} {acc.display_name} · {format_gib(acc.memory_bytes, 0)}{price}"
        text = " ".join((acc.id, acc.display_name, *acc.aliases)).lower()
        options.append(CatalogOption(id=acc.id, label=label, search_text=text))
    return tuple(options)
