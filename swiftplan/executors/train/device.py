"""Which device this run trains on, and whether the plan's options can run there (before any loading).

The verdicts come from `swiftplan.planner.capabilities.check` (the device) and the swiftplan entry of
`profiles/engines.json` (what the loop runs on that device family); on top of them come what only this
machine can say (packages importable, enough devices for the processes asked for).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Literal

from swiftplan.errors import SwiftplanError
from swiftplan.planner.capabilities import check
from swiftplan.planner.hardware import Accelerator, Backend
from swiftplan.planner.setup import TrainSetup

DeviceChoice = Literal["auto", "cuda", "npu", "mps", "cpu"]
DEVICE_CHOICES: tuple[str, ...] = ("auto", "cuda", "npu", "mps", "cpu")
BNB_QUANTS = ("nf4", "fp4", "int8")
PREQUANTIZED = ("gptq", "awq", "fp8")


@dataclass(frozen=True, kw_only=True, slots=True)
class DeviceInfo:
    """The device family this run uses and what is known of it."""

    torch_device: Literal["cuda", "npu", "mps", "cpu"]
    """torch device type ('cuda' also for ROCm)."""
    accelerator: Accelerator
    """Catalog entry (or one built from the probe) the capability checks run against."""
    count: int
    """Devices of this kind visible to this process (CPU: 1)."""

    @property
    def backend(self) -> Backend:
        """cuda, rocm, npu, mps or cpu."""
        return self.accelerator.backend

    @property
    def dist_backend(self) -> str:
        """torch.distributed backend for several processes on this device type."""
        return {"cuda": "nccl", "npu": "hccl"}.get(self.torch_device, "gloo")


def cpu_accelerator() -> Accelerator:
    """The host CPU as an `Accelerator` (for capability checks; it has no speed figures)."""
    pages = os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    memory = pages * os.sysconf("SC_PAGE_SIZE") if pages else 2**34
    return Accelerator(id="cpu", name="host CPU", vendor="", backend="cpu", memory_bytes=memory,
                       memory_bandwidth_bytes_per_s=None, bf16_supported=True, fp8_supported=False,
                       from_catalog=False, source="this machine (train executor, CPU)")  # fmt: skip


def _probed(backend_report: object) -> tuple[Accelerator, int] | None:
    from swiftplan.executors.probe.cluster import accelerator_for_device

    devices = getattr(backend_report, "devices", ())
    if not devices:
        return None
    accelerator, _notes = accelerator_for_device(devices[0])
    return accelerator, len(devices)


def detect_device(choice: str = "auto") -> DeviceInfo:
    """The device to train on: the one asked for, or with 'auto' CUDA/ROCm, then Ascend, then MPS, then CPU."""
    if choice not in DEVICE_CHOICES:
        raise SwiftplanError(f"Unknown device {choice!r}; valid values are: {', '.join(DEVICE_CHOICES)}.")
    if choice == "cpu":
        return DeviceInfo(torch_device="cpu", accelerator=cpu_accelerator(), count=1)
    from swiftplan.executors.probe.torch_backend import probe_torch

    found: dict[str, tuple[Accelerator, int]] = {}
    torch_report = probe_torch()
    probed = _probed(torch_report)
    if probed is not None:
        found["mps" if torch_report.backend == "mps" else "cuda"] = probed
    if choice in ("auto", "npu") and importlib.util.find_spec("torch_npu") is not None:
        from swiftplan.executors.probe.ascend import probe_ascend

        probed = _probed(probe_ascend())
        if probed is not None:
            found["npu"] = probed
    for kind in ("cuda", "npu", "mps") if choice == "auto" else (choice,):
        if kind in found:
            accelerator, count = found[kind]
            return DeviceInfo(torch_device=kind, accelerator=accelerator, count=count)
    if choice == "auto":
        return DeviceInfo(torch_device="cpu", accelerator=cpu_accelerator(), count=1)
    raise SwiftplanError(f"--device {choice}: no such device is visible to torch on this machine.",
                         hint="Use --device auto to pick what is there (CPU as the last resort).")  # fmt: skip


def _missing(module: str) -> bool:
    return importlib.util.find_spec(module) is None


def preflight(
    setup: TrainSetup, device: DeviceInfo, *, processes_per_node: int, random_init: bool
) -> list[str]:
    """Every reason this plan cannot train on `device` with this executor; empty when it can.

    What the device can run comes from capabilities.json, what the loop runs on it from engines.json
    (the same entries the search narrows its space with); on top come what only this machine can
    say: packages installed, devices visible, and what a random init cannot build."""
    from swiftplan.planner.engines import engine_reasons, get_engine, train_requirements

    acc = device.accelerator
    reasons = check(acc, precision=setup.precision, quant=setup.quant, optimizer=setup.optimizer,
                    zero_stage=setup.parallel.zero, attention=setup.attention)  # fmt: skip
    needs = train_requirements(setup, backend=device.backend, gpus=processes_per_node)
    reasons += engine_reasons(get_engine("swiftplan", "train"), needs)
    reasons += _missing_packages(setup, device)
    if random_init and setup.quant in BNB_QUANTS:
        reasons.append(f"--random-init builds an unquantized model from its config; it cannot make a {setup.quant}-quantized base.")  # fmt: skip
    if setup.quant in PREQUANTIZED and random_init:
        reasons.append(f"quantization {setup.quant} needs a checkpoint already quantized that way; --random-init has none.")  # fmt: skip
    if device.torch_device in ("cuda", "npu") and processes_per_node > device.count:
        reasons.append(f"{processes_per_node} processes per node need {processes_per_node} devices; {device.count} {device.accelerator.display_name} visible.")  # fmt: skip
    return reasons


def _missing_packages(setup: TrainSetup, device: DeviceInfo) -> list[str]:
    """The optional packages the plan needs on this device that are not installed."""
    if device.backend not in ("cuda", "rocm", "npu"):
        return []  # the engine table already refused what needs them here
    wanted = []
    if setup.quant in BNB_QUANTS or setup.optimizer in ("adamw-8bit", "paged-adamw-8bit"):
        wanted.append(
            ("bitsandbytes", f"quantization {setup.quant} / optimizer {setup.optimizer}", "bitsandbytes")
        )
    if setup.parallel.zero:
        wanted.append(("deepspeed", f"ZeRO stage {setup.parallel.zero}", "deepspeed"))
    if setup.attention == "flash" and device.backend != "npu":
        wanted.append(("flash_attn", "attention flash", "flash-attn"))
    return [
        f"{what} needs {module} (pip install {package})."
        for module, what, package in wanted
        if _missing(module)
    ]


def require_runnable(
    setup: TrainSetup, device: DeviceInfo, *, processes_per_node: int, random_init: bool
) -> None:
    """Raise one SwiftplanError listing every reason from `preflight`."""
    reasons = preflight(setup, device, processes_per_node=processes_per_node, random_init=random_init)
    if reasons:
        listed = " ".join(f"({i}) {r}" for i, r in enumerate(reasons, 1)) if len(reasons) > 1 else reasons[0]
        raise SwiftplanError(
            f"This plan cannot train on {device.accelerator.display_name}: {listed}",
            hint="Re-plan for this device (swiftplan fit ... --gpus auto) or run where the plan's hardware is.",
        )
