"""From a probe snapshot to the `Cluster` the planner sizes for.

Rules, each announced by a warning when it changes the plan:
- a probed name is matched to the catalog (`match_probed_name`); an unknown device becomes an
  Accelerator built from the probed memory and compute capability, with speed figures borrowed
  from the closest catalog entry of the same backend and compute capability (rough) or none;
- when other processes hold memory, the plan uses the free memory;
- MIG mode plans for one MIG slice; Apple plans for Metal's recommended working set;
- mixed GPUs plan for the one with the least usable memory;
- NVLink counts only when every visible GPU reaches every other (directly or through NVSwitch);
- the PCIe link the slot actually offers replaces the catalog figure.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re

from swiftplan.errors import SwiftplanError
from swiftplan.executors.probe.result import ProbedDevice, ProbeResult
from swiftplan.planner.capabilities import Feature, feature_support
from swiftplan.planner.hardware import Accelerator, Cluster, list_accelerators, match_probed_name
from swiftplan.units import GiB, format_gib

PCIE_LANE_BYTES_PER_S = {1: 0.25e9, 2: 0.5e9, 3: 0.985e9, 4: 1.969e9, 5: 3.938e9}
"""Usable bytes/s per lane per direction after line encoding (PCI-SIG rates; Gen3-5 as in the
reference README: 0.985, 1.969, 3.938 GB/s)."""

IDLE_USED_BYTES = {"cuda": 2 * GiB, "rocm": 2 * GiB, "npu": 4 * GiB}
"""Used memory an idle device shows with no process on it. NVIDIA drivers show a few hundred MiB;
Ascend reserves about 3 GB of HBM (npu-smi samples show 2.8-3.4 GB used with no process). Above this,
something this probe cannot see (another container) holds memory."""

IDLE_RESERVE_IS_UNUSABLE = frozenset({"npu"})
"""Backends whose idle reservation no process can use, so plans start from free memory. On CUDA the
idle figure overlaps the CUDA context the memory model already counts, so plans start from total."""


def _borrowed_figures(device: ProbedDevice) -> Accelerator | None:
    """Closest catalog entry with the same backend and compute capability (memory size, then name)."""
    same = [
        acc
        for acc in list_accelerators()
        if acc.backend == device.backend
        and acc.compute_capability == device.compute_capability
        and acc.dense_flops_basis("bf16") is not None
    ]

    def distance(acc: Accelerator) -> tuple[int, float]:
        similarity = difflib.SequenceMatcher(None, device.name.lower(), acc.display_name.lower()).ratio()
        return abs(acc.memory_bytes - device.total_memory_bytes), -similarity

    return min(same, key=distance, default=None)


def accelerator_for_device(device: ProbedDevice) -> tuple[Accelerator, list[str]]:
    """The catalog entry for a probed device, or one built from what the probe saw (with a warning)."""
    known = match_probed_name(device.name, device.total_memory_bytes)
    if known is not None:
        if known.unified_memory:  # this Mac's configuration, not the largest one
            known = dataclasses.replace(known, memory_bytes=device.total_memory_bytes)
        return known, []
    text = f"{device.name} {device.architecture or ''}"

    def supported(feature: Feature) -> bool:
        verdict = feature_support(
            feature, backend=device.backend, compute_capability=device.compute_capability, text=text
        )
        return verdict.status == "yes"

    donor = _borrowed_figures(device)
    slug = re.sub(r"[^a-z0-9]+", "-", device.name.lower()).strip("-")
    acc = Accelerator(
        id=f"probed-{slug}",
        name=device.name,
        vendor=device.vendor,
        backend=device.backend,
        architecture=device.architecture or "",
        memory_bytes=device.total_memory_bytes,
        memory_bandwidth_bytes_per_s=donor.memory_bandwidth_bytes_per_s if donor else None,
        memory_type=donor.memory_type if donor else "",
        bf16_flops=donor.bf16_flops if donor else None,
        fp16_flops=donor.fp16_flops if donor else None,
        fp32_flops=donor.fp32_flops if donor else None,
        tf32_flops=donor.tf32_flops if donor else None,
        fp8_flops=donor.fp8_flops if donor else None,
        int8_ops=donor.int8_ops if donor else None,
        bf16_supported=supported("bf16"),
        fp8_supported=supported("fp8"),
        compute_capability=device.compute_capability,
        pcie_bytes_per_s=donor.pcie_bytes_per_s if donor else None,
        unified_memory=device.unified_memory,
        from_catalog=False,
        source=f"probed ({device.backend}); speed figures "
        + (f"borrowed from catalog entry {donor.id}" if donor else "unknown"),
    )
    if donor:
        same = f"compute capability {donor.compute_capability}" if donor.compute_capability else "backend"
        rough = (
            f"speed figures are rough, borrowed from {donor.display_name} (same {same}, closest memory size)"
        )
    else:
        rough = "there are no speed figures for it, so speed estimates are unavailable or rough"
    return acc, [f"{device.name} is not in swiftplan's catalog: memory comes from the driver, {rough}."]


def _usable_memory(device: ProbedDevice) -> tuple[int | None, str | None]:
    """Memory a plan may use on this device (None: no usable memory) and a warning when it is reduced."""
    label = f"{device.backend} {device.index} ({device.name})"
    if device.mig_enabled:
        if not device.mig_instances:
            return None, f"{label} is in MIG mode with no MIG slices, so CUDA cannot use it; it is left out."
        slice_ = min(device.mig_instances, key=lambda mig: mig.total_memory_bytes)
        memory = (
            slice_.free_memory_bytes if slice_.free_memory_bytes is not None else slice_.total_memory_bytes
        )
        return memory, (
            f"{label} is in MIG mode: a process gets one slice ({slice_.name}, {format_gib(memory, 1)}); "
            "speed figures assume the whole GPU, so they are optimistic."
        )
    if device.unified_memory and device.recommended_max_memory_bytes:
        memory = device.recommended_max_memory_bytes
        return memory, (
            f"{device.name} shares {format_gib(device.total_memory_bytes, 1)} with the CPU; planning with Metal's "
            f"recommended working set of {format_gib(memory, 1)}."
        )
    used = device.used_memory_bytes or 0
    free = device.free_memory_bytes
    others = [proc for proc in device.processes if proc.pid != os.getpid()]
    if free is None:
        return device.total_memory_bytes, None
    if others:
        holders = ", ".join(
            f"pid {proc.pid}"
            + (f" {format_gib(proc.used_memory_bytes, 1)}" if proc.used_memory_bytes else "")
            for proc in others
        )
        held = f"{format_gib(used, 1)} is held by other processes ({holders})"
    elif used > IDLE_USED_BYTES.get(device.backend, 2 * GiB):
        held = f"{format_gib(used, 1)} is in use although no process is listed (another container?)"
    elif device.backend in IDLE_RESERVE_IS_UNUSABLE:
        return free, None
    else:
        return device.total_memory_bytes, None
    return free, f"{label}: {held}; planning with the {format_gib(free, 1)} that is free."


def _all_nvlinked(devices: list[ProbedDevice]) -> bool:
    if not all(device.nvlink_queried and device.nvlink_active_links for device in devices):
        return False
    for device in devices:
        reach = set(device.nvlink_peers)
        if device.nvlink_to_switch:
            reach |= {other.index for other in devices if other.nvlink_to_switch}
        if not {other.index for other in devices} - {device.index} <= reach:
            return False
    return True


def _with_interconnect(acc: Accelerator, devices: list[ProbedDevice]) -> tuple[Accelerator, list[str]]:
    warnings: list[str] = []
    gens = [
        (d.pcie_gen, d.pcie_width) for d in devices if d.pcie_gen in PCIE_LANE_BYTES_PER_S and d.pcie_width
    ]
    if len(gens) == len(devices) and gens:
        gen, width = min(gens, key=lambda link: PCIE_LANE_BYTES_PER_S[link[0]] * link[1])
        probed = PCIE_LANE_BYTES_PER_S[gen] * width
        if acc.pcie_bytes_per_s and probed < 0.95 * acc.pcie_bytes_per_s:
            warnings.append(
                f"PCIe link runs at Gen{gen} x{width} ({probed / 1e9:.1f} GB/s per direction), below the card's "
                f"{acc.pcie_bytes_per_s / 1e9:.1f} GB/s: offload and host transfers will be slower."
            )
        acc = dataclasses.replace(acc, pcie_gen=gen, pcie_lanes=width, pcie_bytes_per_s=probed)
    if len(devices) < 2 or not any(device.nvlink_queried for device in devices):
        return acc, warnings
    linked = [device.index for device in devices if device.nvlink_active_links]
    if _all_nvlinked(devices):
        bandwidth = acc.nvlink_bytes_per_s or acc.nvlink_bridge_bytes_per_s
        if bandwidth is None:
            warnings.append(
                "NVLink connects every GPU, but its bandwidth is not in the catalog; planning with PCIe."
            )
        return dataclasses.replace(acc, nvlink_bytes_per_s=bandwidth), warnings
    if linked:
        warnings.append(
            f"NVLink connects only some GPUs ({', '.join(map(str, linked))} of {len(devices)}); collectives across "
            "all of them are limited by PCIe, so the plan uses PCIe bandwidth."
        )
    elif acc.nvlink_bytes_per_s:
        warnings.append(
            f"{acc.display_name} normally has NVLink, but no active link was found (is nvidia-fabricmanager "
            "running?); planning with PCIe bandwidth."
        )
    return dataclasses.replace(acc, nvlink_bytes_per_s=None), warnings


def cluster_from_probe(result: ProbeResult) -> Cluster:
    """The cluster to plan for; `Cluster.notes` says how it was derived (free memory, mixed GPUs...)."""
    if not result.devices:
        tried = "; ".join(result.attempts) or "no backend reported anything"
        raise SwiftplanError(
            f"No accelerator found on this machine ({tried}), so --gpus auto has nothing to plan for. "
            "Plan for hardware you name instead, e.g. --gpus rtx4090 or --gpus 4xA100-80G, or run "
            "`swiftplan size` to see how much memory a model needs.",
            "`swiftplan probe` shows what was detected; `swiftplan gpus` lists the known accelerators.",
        )
    warnings: list[str] = []
    usable: list[tuple[ProbedDevice, Accelerator, int]] = []
    for device in result.devices:
        memory, note = _usable_memory(device)
        if note:
            warnings.append(note)
        if memory is None:
            continue
        acc, acc_warnings = accelerator_for_device(device)
        warnings.extend(w for w in acc_warnings if w not in warnings)
        usable.append((device, acc, memory))
    if not usable:
        raise SwiftplanError(
            "No usable accelerator: " + " ".join(warnings),
            "Create MIG slices, or plan for named hardware with --gpus (e.g. --gpus a100-80gb).",
        )
    device, acc, memory = min(usable, key=lambda item: item[2])
    kinds: dict[str, int] = {}
    for _, other, _ in usable:
        kinds[other.display_name] = kinds.get(other.display_name, 0) + 1
    if len(kinds) > 1:
        mix = ", ".join(f"{count} × {name}" for name, count in kinds.items())
        warnings.append(f"Mixed GPUs ({mix}): planning as {len(usable)} × {acc.display_name}, the smallest.")
    acc, link_warnings = _with_interconnect(acc, [item[0] for item in usable])
    warnings.extend(link_warnings)
    usable_bytes = min(item[2] for item in usable)
    return Cluster(
        accelerator=acc,
        gpus_per_node=len(usable),
        usable_memory_bytes=usable_bytes if usable_bytes < acc.memory_bytes else None,
        notes=tuple(warnings),
    )
