"""`swiftplan gpus`: the accelerator catalog, with the figures the planner uses."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from swiftplan.cli._output import console, print_json

EPILOG = """
Examples:

  swiftplan gpus

  swiftplan gpus --backend rocm

  swiftplan gpus --json

Any id or alias works with --gpus, alone or with counts: rtx4090, 4xA100-80G (4 GPUs), 2x8xH100 (2 nodes of 8).

Bandwidths are per direction and FLOP/s dense (no 2:4 sparsity); a rate in brackets is the fallback used where no bf16 figure exists. Prices are snapshots: check them before you buy.
"""


def _interconnect(acc: Any) -> str:
    if acc.nvlink_bytes_per_s:
        return f"NVLink {acc.nvlink_bytes_per_s / 1e9:.0f} GB/s"
    pcie = f"PCIe{acc.pcie_gen} x{acc.pcie_lanes}" if acc.pcie_gen else "—"
    if acc.nvlink_bridge_bytes_per_s:
        pcie += f" (NVLink bridge {acc.nvlink_bridge_bytes_per_s / 1e9:.0f} GB/s)"
    return pcie


def _row(acc: Any) -> dict[str, Any]:
    basis = acc.dense_flops_basis("bf16")
    return {
        "id": acc.id,
        "name": acc.display_name,
        "backend": acc.backend,
        "memory_bytes": acc.memory_bytes,
        "driver_memory_bytes": acc.driver_memory_bytes,
        "driver_memory_source": acc.driver_memory_source,
        "memory_bandwidth_bytes_per_s": acc.memory_bandwidth_bytes_per_s,
        "dense_bf16_flops": basis[1] if basis else None,
        "dense_bf16_flops_from": basis[0] if basis else None,
        "peak_flops": acc.peak_flops,
        "compute_capability": acc.compute_capability,
        "pcie_bytes_per_s": acc.pcie_bytes_per_s,
        "nvlink_bytes_per_s": acc.nvlink_bytes_per_s,
        "nvlink_bridge_bytes_per_s": acc.nvlink_bridge_bytes_per_s,
        "price_usd_per_hour": acc.price_usd_per_hour,
        "price_source": acc.price_source,
        "launch_price_usd": acc.launch_price_usd,
        "aliases": list(acc.aliases),
        "source": acc.source,
    }


def gpus_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (bytes, bytes/s, FLOP/s).")] = False,
    backend: Annotated[str | None, typer.Option("--backend", help="Only cuda, rocm, npu or mps.")] = None,
) -> None:
    """List the accelerators swiftplan knows, with memory, bandwidth, dense bf16 rate and price."""
    from rich.table import Table

    from swiftplan.errors import SwiftplanError
    from swiftplan.planner.hardware import list_accelerators
    from swiftplan.units import gib

    if backend is not None and backend.lower() not in ("cuda", "rocm", "npu", "mps"):
        raise SwiftplanError(f"Unknown backend {backend!r}; valid values are: cuda, rocm, npu, mps.")
    accelerators = [acc for acc in list_accelerators() if backend is None or acc.backend == backend.lower()]
    if as_json:
        print_json([_row(acc) for acc in accelerators])
        return
    table = Table(
        title="swiftplan accelerator catalog",
        caption="usable: the total the driver reports to PyTorch, what plans use; bandwidths per direction; FLOP/s dense",
    )
    # the id is what --gpus takes: never cut it
    table.add_column("id", no_wrap=True, min_width=max((len(acc.id) for acc in accelerators), default=2))
    for column in (
        "name",
        "memory GiB",
        "usable GiB",
        "bandwidth GB/s",
        "bf16 TFLOP/s",
        "interconnect",
        "$/GPU-h",
    ):
        table.add_column(column, justify="left" if column in ("name", "interconnect") else "right")
    for acc in accelerators:
        basis = acc.dense_flops_basis("bf16")
        flops = (
            "—"
            if basis is None
            else f"{basis[1] / 1e12:,.0f}" + ("" if basis[0] == "bf16" else f" ({basis[0]})")
        )
        bandwidth = acc.memory_bandwidth_bytes_per_s
        table.add_row(
            acc.id,
            acc.name,
            f"{gib(acc.memory_bytes):g}",
            "—" if acc.driver_memory_bytes is None else f"{acc.driver_memory_bytes / 2**30:.2f}",
            "—" if bandwidth is None else f"{bandwidth / 1e9:,.0f}",
            flops,
            _interconnect(acc),
            "—" if acc.price_usd_per_hour is None else f"{acc.price_usd_per_hour:.2f}",
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add `gpus` to the CLI."""
    app.command("gpus", epilog=EPILOG)(gpus_command)
