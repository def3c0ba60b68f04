"""`swiftplan probe`: what this machine has (host, accelerators) and the cluster `--gpus auto` plans for."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

import typer

from swiftplan.cli._output import console, print_json

EPILOG = """
Examples:

  swiftplan probe

  swiftplan probe --json

  CUDA_VISIBLE_DEVICES=0,1 swiftplan probe

  swiftplan probe --disk-path ~/.cache/huggingface

The probe reads NVML (NVIDIA), torch_npu or npu-smi (Ascend), and torch (ROCm, Apple MPS). A machine without an accelerator is a valid answer: plan for named hardware with --gpus rtx4090 instead.
"""


def _size(num_bytes: int | None) -> str:
    from swiftplan.units import format_gib

    return "—" if num_bytes is None else format_gib(num_bytes, 1)


def _cluster_payload(result: Any) -> tuple[dict[str, Any] | None, str | None]:
    """The cluster `--gpus auto` would use, or why there is none."""
    from swiftplan.errors import SwiftplanError
    from swiftplan.executors.probe import cluster_from_probe

    if not result.has_accelerator:
        return None, None
    try:
        cluster = cluster_from_probe(result)
    except SwiftplanError as error:
        return None, error.message
    payload = {
        "describe": cluster.describe(),
        "accelerator_id": cluster.accelerator.id,
        "from_catalog": cluster.accelerator.from_catalog,
        "world_size": cluster.world_size,
        "memory_bytes_per_device": cluster.memory_bytes_per_device,
        "intra_node_bytes_per_s": cluster.intra_node_bytes_per_s,
        "notes": list(cluster.notes),
    }
    return payload, None


def _print_host(host: Any) -> None:
    from rich.table import Table

    table = Table(title="host", show_header=False, title_justify="left")
    table.add_column("field", style="dim")
    table.add_column("value")
    table.add_row("system", f"{host.os} {host.machine}")
    table.add_row(
        "cpu",
        f"{host.cpu_model or 'unknown'} ({host.usable_cpus} of {host.logical_cpus} logical CPUs usable)",
    )
    table.add_row("ram", f"{_size(host.ram_total_bytes)} total, {_size(host.ram_available_bytes)} available")
    table.add_row("disk", f"{_size(host.disk_free_bytes)} free at {host.disk_path}")
    console.print(table)


def _link(device: Any) -> str:
    parts = []
    if device.pcie_gen:
        parts.append(f"PCIe{device.pcie_gen} x{device.pcie_width}")
    if device.nvlink_active_links:
        peers = "NVSwitch" if device.nvlink_to_switch else ",".join(map(str, device.nvlink_peers)) or "?"
        parts.append(f"NVLink ×{device.nvlink_active_links} → {peers}")
    return ", ".join(parts) or "—"


def _print_devices(result: Any) -> None:
    from rich.table import Table

    header = f"{result.backend} devices"
    versions = ", ".join(
        v for v in (result.driver_version and f"driver {result.driver_version}", result.runtime_version) if v
    )
    table = Table(title=f"{header} ({versions})" if versions else header, title_justify="left")
    for column in ("#", "name", "memory", "free", "cc / arch", "link", "MIG", "processes"):
        table.add_column(column, justify="right" if column in ("#", "memory", "free") else "left")
    for device in result.devices:
        mig = "—"
        if device.mig_enabled:
            mig = ", ".join(m.name.rsplit(" ", 1)[-1] for m in device.mig_instances) or "on, no slices"
        table.add_row(
            str(device.index),
            device.name,
            _size(device.total_memory_bytes),
            _size(device.free_memory_bytes),
            device.compute_capability or device.architecture or "—",
            _link(device),
            mig,
            ", ".join(str(p.pid) for p in device.processes) or "—",
        )
    console.print(table)


def probe_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    disk_path: Annotated[str, typer.Option("--disk-path", help="Report free disk space here.")] = ".",
) -> None:
    """Show this machine's host resources and accelerators, and the cluster `--gpus auto` would plan for."""
    from swiftplan.executors.probe import probe

    result = probe(disk_path=disk_path)
    cluster, cluster_error = _cluster_payload(result)
    if as_json:
        payload = dataclasses.asdict(result)
        payload["has_accelerator"] = result.has_accelerator
        payload["cluster"] = cluster
        payload["cluster_error"] = cluster_error
        print_json(payload)
        return
    _print_host(result.host)
    if result.has_accelerator:
        _print_devices(result)
    else:
        console.print(
            "[bold]No accelerator found[/] — planning needs --gpus with named hardware (e.g. rtx4090)."
        )
    for attempt in result.attempts:
        console.print(f"[dim]  {attempt}[/]", highlight=False)
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if cluster is not None:
        console.print(f"[bold]--gpus auto plans for:[/] {cluster['describe']}", highlight=False)
        for note in cluster["notes"]:
            console.print(f"[yellow]note:[/] {note}", highlight=False)
    elif cluster_error:
        console.print(f"[yellow]--gpus auto cannot plan here:[/] {cluster_error}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add `probe` to the CLI."""
    app.command("probe", epilog=EPILOG)(probe_command)
