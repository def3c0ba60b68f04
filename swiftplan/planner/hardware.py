"""Accelerators and clusters: what the planner knows about the hardware it plans for.

The numbers come from the packaged catalog `swiftplan/profiles/accelerators.json` (converted from
the project's reference data; every entry carries its `source`). This module is pure: it reads that
packaged file and does arithmetic, nothing else. Probing real hardware lives in
`swiftplan.executors.probe`, which builds the same `Accelerator` and `Cluster` types.

Units: bytes, bytes/s and FLOP/s (dense, no 2:4 sparsity) throughout.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Literal, get_args

from swiftplan.errors import SwiftplanError
from swiftplan.planner.calibration import constant
from swiftplan.units import format_gib

Backend = Literal["cuda", "rocm", "npu", "mps", "cpu"]
FlopsKey = Literal["bf16", "fp16", "fp32", "tf32", "fp8", "int8"]
FLOPS_KEYS: tuple[FlopsKey, ...] = get_args(FlopsKey)

DEFAULT_INTER_NODE_BYTES_PER_S = 12.5e9
"""Assumed network between nodes when none is given: one 100 Gb/s-class NIC per node (12.5 GB/s per
direction). A conservative default; HGX/DGX nodes often have 8 x 400 Gb/s, so pass the real figure
(a cluster string's '@400gbps' suffix, `swiftplan size --network-gbps`)."""

FALLBACK_PCIE_BYTES_PER_S = 31.5e9
"""Per-direction host link assumed only when the catalog has no PCIe figure (Ascend, Apple): PCIe Gen4
x16 (16 lanes x 1.969 GB/s, the reference README's per-lane figure). Used by `intra_node_bytes_per_s`."""


MAX_GPUS_PER_NODE = 20
"""Most accelerators one machine holds: HGX/DGX H100, H200 and B200, AMD's MI300X platform and Huawei's
Atlas 800T A2 take 8, NVIDIA DGX-2/HGX-2 16 (V100 SXM3 on NVSwitch), and the densest PCIe chassis 20
single-slot cards (Supermicro SuperServer 6049GP-TRT, 20 x T4). More GPUs than this are several nodes."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Accelerator:
    """One accelerator model (one device as the framework sees it), with its published figures."""

    id: str
    """Short catalog id, e.g. 'rtx4090', 'h100-sxm'."""
    name: str
    """Vendor's product name without the vendor, e.g. 'GeForce RTX 4090'."""
    vendor: str
    """'NVIDIA', 'AMD', 'Huawei', 'Apple', or whoever the probe reports."""
    backend: Backend
    """The torch device family that drives it."""
    architecture: str = ""
    """Architecture/die (e.g. 'Hopper (GH100)'); for probed ROCm devices the gfx target."""
    memory_bytes: int
    """Physical device memory in bytes (unified memory for Apple: total RAM of the configuration)."""
    memory_bandwidth_bytes_per_s: float | None
    """Peak DRAM/HBM bandwidth in bytes/s; None where unpublished (Ascend 910B)."""
    memory_type: str = ""
    """Device memory technology as the catalog names it ('HBM3', 'GDDR6X', 'LPDDR5 unified memory'...);
    empty where unknown."""
    bf16_flops: float | None = None
    """Dense BF16 tensor FLOP/s (GeForce: with FP32 accumulate)."""
    fp16_flops: float | None = None
    """Dense FP16 tensor FLOP/s (GeForce: with FP32 accumulate)."""
    fp32_flops: float | None = None
    """FP32 vector (non-tensor) FLOP/s."""
    tf32_flops: float | None = None
    """Dense TF32 tensor FLOP/s."""
    fp8_flops: float | None = None
    """Dense FP8 tensor FLOP/s (GeForce: with FP32 accumulate)."""
    int8_ops: float | None = None
    """Dense INT8 tensor ops/s."""
    bf16_supported: bool
    """Whether bf16 compute works on this device."""
    fp8_supported: bool
    """Whether the hardware has FP8 tensor math."""
    compute_capability: str | None = None
    """CUDA SM version such as '8.9' (NVIDIA only)."""
    pcie_gen: int | None = None
    """PCIe generation of the host link."""
    pcie_lanes: int | None = None
    """PCIe lanes of the host link."""
    pcie_bytes_per_s: float | None = None
    """Host link bandwidth per direction in bytes/s; None where unpublished."""
    nvlink_bytes_per_s: float | None = None
    """NVLink bandwidth per GPU per direction in bytes/s (half NVIDIA's bidirectional figure); None when
    the GPUs have no always-present NVLink (PCIe cards whose NVLink needs an optional bridge)."""
    nvlink_bridge_bytes_per_s: float | None = None
    """Per-direction bandwidth of the optional NVLink bridge for PCIe cards; the probe promotes it to
    `nvlink_bytes_per_s` when it sees active links between every GPU."""
    unified_memory: bool = False
    """True for Apple silicon: the GPU shares RAM with the CPU and the OS."""
    driver_memory_bytes: int | None = None
    """Device memory the driver reports to PyTorch as the total (`torch.cuda.get_device_properties().total_memory`,
    the "total capacity" of PyTorch's out-of-memory message) on Linux with ECC at its default: the most one
    process can hold, CUDA context included. Below `memory_bytes` by the driver's reservation (0.2-0.6 GiB)
    and, on GDDR cards with ECC on (T4, A10, L4, L40S), by 1/16 more. None where no report was found."""
    driver_memory_source: str | None = None
    """Where `driver_memory_bytes` was read (issues and logs naming the card)."""
    price_usd_per_hour: float | None = None
    """Cheapest on-demand price per GPU-hour found in the sources (see `price_source`)."""
    price_source: str | None = None
    """Provider, date and source of `price_usd_per_hour`."""
    launch_price_usd: float | None = None
    """Launch list price (MSRP) in USD where published."""
    tdp_w: float | None = None
    """Board/module maximum power in W."""
    aliases: tuple[str, ...] = ()
    """Other names `get_accelerator` accepts for this entry."""
    probe_names: tuple[str, ...] = ()
    """Device names drivers report for this model (NVML, torch, npu-smi, sysctl)."""
    from_catalog: bool = True
    """False for a device the probe found but the catalog does not know (speed figures are rough)."""
    source: str
    """Where the figures come from."""
    notes: tuple[str, ...] = ()
    """Caveats from the catalog."""

    def __post_init__(self) -> None:
        if self.backend not in get_args(Backend):
            raise ValueError(f"backend must be one of {get_args(Backend)}, got {self.backend!r}")
        if self.memory_bytes <= 0:
            raise ValueError(f"{self.id}: memory_bytes must be positive, got {self.memory_bytes}")
        if self.driver_memory_bytes is not None and not 0 < self.driver_memory_bytes <= self.memory_bytes:
            raise ValueError(
                f"{self.id}: driver_memory_bytes must be in (0, memory_bytes], got {self.driver_memory_bytes}"
            )
        if not self.source.strip():
            raise ValueError(f"{self.id}: every accelerator needs a source")
        for key, value in self.peak_flops.items():
            if value is not None and value <= 0:
                raise ValueError(f"{self.id}: {key} FLOP/s must be positive or None, got {value}")
        for key in ("memory_bandwidth_bytes_per_s", "pcie_bytes_per_s", "nvlink_bytes_per_s",
                    "nvlink_bridge_bytes_per_s", "pcie_gen", "pcie_lanes", "tdp_w"):  # fmt: skip
            if (value := getattr(self, key)) is not None and value <= 0:
                raise ValueError(f"{self.id}: {key} must be positive or None, got {value}")
        for key in ("price_usd_per_hour", "launch_price_usd"):  # 0: hardware already owned
            if (value := getattr(self, key)) is not None and value < 0:
                raise ValueError(f"{self.id}: {key} must be zero or more, or None, got {value}")

    @property
    def display_name(self) -> str:
        """Vendor and product, e.g. 'NVIDIA GeForce RTX 4090'."""
        if not self.vendor or self.name.lower().startswith(self.vendor.lower()):
            return self.name
        return f"{self.vendor} {self.name}"

    @property
    def peak_flops(self) -> dict[str, float | None]:
        """Dense peak rate per compute dtype in FLOP/s (ops/s for int8); None where unknown."""
        return {
            "bf16": self.bf16_flops,
            "fp16": self.fp16_flops,
            "fp32": self.fp32_flops,
            "tf32": self.tf32_flops,
            "fp8": self.fp8_flops,
            "int8": self.int8_ops,
        }

    @property
    def intra_node_bytes_per_s(self) -> float:
        """Per-direction GPU-to-GPU bandwidth inside a node: NVLink if present, else the PCIe link."""
        if self.nvlink_bytes_per_s is not None:
            return self.nvlink_bytes_per_s
        return self.pcie_bytes_per_s if self.pcie_bytes_per_s is not None else FALLBACK_PCIE_BYTES_PER_S

    def dense_flops_basis(self, dtype: str) -> tuple[FlopsKey, float] | None:
        """The catalog rate `dense_flops(dtype)` would use, as (key, FLOP/s); None when nothing is known.

        Fallbacks: bf16 → fp16 when bf16 is unsupported or unpublished (same tensor rate on every part
        that has both); fp8/int8 → the 16-bit rate when the hardware lacks them (weights are upcast);
        fp32 is the vector rate (PyTorch does not use TF32 unless asked); any tensor rate → fp32 vector.
        """
        order: dict[str, tuple[FlopsKey, ...]] = {
            "bf16": ("bf16", "fp16", "fp32") if self.bf16_supported else ("fp16", "fp32"),
            "fp16": ("fp16", "bf16", "fp32"),
            "fp32": ("fp32",),
            "tf32": ("tf32", "fp32"),
            "fp8": ("fp8",) if self.fp8_supported else (),
            "int8": ("int8",),
        }
        if dtype not in order:
            raise ValueError(f"unknown compute dtype {dtype!r}; expected one of {tuple(order)}")
        keys = order[dtype]
        if dtype in ("fp8", "int8"):
            keys = keys + order["bf16"]
        rates = self.peak_flops
        for key in keys:
            value = rates[key]
            if value is not None:
                return key, value
        return None

    def dense_flops(self, dtype: str) -> float:
        """Best available dense FLOP/s for a compute dtype ('bf16', 'fp16', 'fp32', 'tf32', 'fp8', 'int8')."""
        basis = self.dense_flops_basis(dtype)
        if basis is None:
            raise SwiftplanError(
                f"No published throughput for {self.display_name}, so speed cannot be estimated.",
                "Memory estimates still work; pass a device with known figures to estimate speed.",
            )
        return basis[1]


@dataclass(frozen=True, kw_only=True, slots=True)
class Cluster:
    """Identical accelerators: `nodes` machines with `gpus_per_node` devices each."""

    accelerator: Accelerator
    """The device model every rank runs on (for mixed probes: the smallest)."""
    gpus_per_node: int = 1
    """Devices per node."""
    nodes: int = 1
    """Machines."""
    inter_node_bytes_per_s: float = DEFAULT_INTER_NODE_BYTES_PER_S
    """Per-direction network bandwidth of one node, all its NICs together, in bytes/s (see
    DEFAULT_INTER_NODE_BYTES_PER_S)."""
    usable_memory_bytes: int | None = None
    """Memory per device the plan may use when it is less than the physical memory (the probe sets
    it from free memory when other processes hold some, or from the size the driver reports)."""
    notes: tuple[str, ...] = ()
    """How this cluster was derived when that changes the plan (the probe's warnings: free memory
    used, mixed GPUs, MIG, partial NVLink); shown next to the plan."""

    def __post_init__(self) -> None:
        if self.gpus_per_node < 1 or self.nodes < 1:
            raise SwiftplanError(
                f"A cluster needs at least one GPU per node and one node, got {self.nodes} × {self.gpus_per_node}."
            )
        if self.gpus_per_node > MAX_GPUS_PER_NODE:
            raise SwiftplanError(
                f"A node holds at most {MAX_GPUS_PER_NODE} GPUs (8 on HGX/DGX boards, 16 on DGX-2, 20 in the "
                f"densest PCIe chassis), got {self.gpus_per_node:,} per node; more GPUs are several nodes."
            )
        if self.inter_node_bytes_per_s <= 0:
            raise SwiftplanError(f"inter-node bandwidth must be positive, got {self.inter_node_bytes_per_s}.")
        if self.usable_memory_bytes is not None and self.usable_memory_bytes <= 0:
            raise SwiftplanError(
                f"usable memory must be positive, got {self.usable_memory_bytes} bytes.",
                "Every GPU is full: free some memory or pick other GPUs.",
            )

    @property
    def world_size(self) -> int:
        """Total devices."""
        return self.gpus_per_node * self.nodes

    @property
    def memory_bytes_per_device(self) -> int:
        """Memory one rank may plan with, in bytes: what the probe measured, else the total the driver reports
        to PyTorch for this card (`Accelerator.driver_memory_bytes`), else the physical memory.

        Unified-memory machines (Apple) give the GPU only the recommended working set, about
        (1 − mps_os_reserve_fraction) of RAM (profiles/calibration.json), unless the probe measured it.
        """
        if self.usable_memory_bytes is None:
            if self.accelerator.unified_memory:
                reserve = constant("runtime_overhead", "mps_os_reserve_fraction")
                return int(self.accelerator.memory_bytes * (1 - reserve))
            return self.accelerator.driver_memory_bytes or self.accelerator.memory_bytes
        return self.usable_memory_bytes

    @property
    def intra_node_bytes_per_s(self) -> float:
        """Per-direction bandwidth between devices of one node."""
        return self.accelerator.intra_node_bytes_per_s

    def describe(self) -> str:
        """Human summary, e.g. '2 nodes × 8 × NVIDIA H100 SXM5 80GB'."""
        text = f"{self.gpus_per_node} × {self.accelerator.display_name}"
        if self.nodes > 1:
            text = f"{self.nodes} nodes × {text}"
        if self.usable_memory_bytes is not None and self.usable_memory_bytes < self.accelerator.memory_bytes:
            text += f" ({format_gib(self.usable_memory_bytes, 1)} usable each)"
        return text


# --- catalog ---------------------------------------------------------------------------------------

_ENTRY_KEYS = frozenset(
    {
        "reference_id", "vendor", "name", "architecture", "form_factor", "release_date", "backend",
        "memory_bytes", "memory_marketed_gb", "memory_type", "memory_bandwidth_bytes_per_s", "dense_flops",
        "dense_flops_fp16_accumulate", "datasheet_sparse_figures", "bf16_supported", "fp8_supported",
        "fp4_supported", "compute_capability", "interconnect", "tdp_w", "launch_price_usd", "cloud_price",
        "unified_memory", "aliases", "probe_names", "source", "sources", "verification", "notes", "driver_memory",
    }
)  # fmt: skip
_VENDOR_WORDS = ("nvidia", "geforce", "tesla", "quadro", "amd", "instinct", "radeon", "huawei", "apple")


def _normalize(text: str) -> str:
    """Case-insensitive key that ignores spaces, dashes, underscores, dots and slashes."""
    return re.sub(r"[\s\-_./]+", "", text.lower())


def _strip_vendor(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for word in _VENDOR_WORDS:
            if key.startswith(word) and len(key) > len(word):
                key, changed = key[len(word) :], True
    return key


def _accelerator_from_entry(acc_id: str, entry: dict[str, Any]) -> Accelerator:
    unknown = set(entry) - _ENTRY_KEYS
    if unknown:
        raise ValueError(f"accelerators.json entry {acc_id!r} has unknown keys: {sorted(unknown)}")
    flops = entry["dense_flops"]
    link = entry["interconnect"]
    nvlink = link.get("nvlink")
    nvlink_per_direction = None if nvlink is None else nvlink["bytes_per_s_bidirectional"] / 2
    bridge_only = bool(nvlink and nvlink["bridge_only"])
    price = entry.get("cloud_price")
    driver = entry.get("driver_memory")
    price_source = None
    if price is not None:
        price_source = f"{price['provider']} {price['instance']}, {price['as_of']} ({price['source']})"

    def _float(value: Any) -> float | None:
        return None if value is None else float(value)

    return Accelerator(
        id=acc_id,
        name=entry["name"],
        vendor=entry["vendor"],
        backend=entry["backend"],
        architecture=entry["architecture"],
        memory_bytes=int(entry["memory_bytes"]),
        memory_bandwidth_bytes_per_s=_float(entry["memory_bandwidth_bytes_per_s"]),
        memory_type=str(entry.get("memory_type") or ""),
        bf16_flops=_float(flops["bf16"]),
        fp16_flops=_float(flops["fp16"]),
        fp32_flops=_float(flops["fp32"]),
        tf32_flops=_float(flops["tf32"]),
        fp8_flops=_float(flops["fp8"]),
        int8_ops=_float(flops["int8"]),
        bf16_supported=bool(entry["bf16_supported"]),
        fp8_supported=bool(entry["fp8_supported"]),
        compute_capability=entry["compute_capability"],
        pcie_gen=link["pcie_gen"],
        pcie_lanes=link["pcie_lanes"],
        pcie_bytes_per_s=_float(link["pcie_bytes_per_s_per_direction"]),
        nvlink_bytes_per_s=None if bridge_only else nvlink_per_direction,
        nvlink_bridge_bytes_per_s=nvlink_per_direction if bridge_only else None,
        unified_memory=bool(entry["unified_memory"]),
        driver_memory_bytes=None if driver is None else round(driver["total_gib"] * 2**30),
        driver_memory_source=None if driver is None else driver["source"],
        price_usd_per_hour=None if price is None else float(price["usd_per_gpu_hour"]),
        price_source=price_source,
        launch_price_usd=_float(entry["launch_price_usd"]),
        tdp_w=_float(entry["tdp_w"]),
        aliases=tuple(entry["aliases"]),
        probe_names=tuple(entry["probe_names"]),
        source=entry["source"],
        notes=tuple(entry["notes"]),
    )


@lru_cache(maxsize=1)
def _catalog() -> dict[str, Accelerator]:
    text = resources.files("swiftplan.profiles").joinpath("accelerators.json").read_text(encoding="utf-8")
    data = json.loads(text)
    return {acc_id: _accelerator_from_entry(acc_id, entry) for acc_id, entry in data["accelerators"].items()}


@lru_cache(maxsize=1)
def _alias_index() -> dict[str, str]:
    """Normalized name → catalog id. Ids and aliases win over full product names."""
    index: dict[str, str] = {}
    for acc in _catalog().values():
        for name in (acc.id, *acc.aliases):
            index.setdefault(_normalize(name), acc.id)
    for acc in _catalog().values():
        for name in (acc.name, acc.display_name):
            index.setdefault(_normalize(name), acc.id)
    return index


def list_accelerators() -> tuple[Accelerator, ...]:
    """Every catalog entry, in catalog order."""
    return tuple(_catalog().values())


def get_accelerator(name: str) -> Accelerator:
    """Look up a catalog entry by id, alias or product name ('rtx4090', 'RTX 4090', 'A100-80G', 'H100')."""
    index = _alias_index()
    key = _normalize(name)
    acc_id = index.get(key) or index.get(_strip_vendor(key))
    if acc_id is not None:
        return _catalog()[acc_id]
    close = difflib.get_close_matches(_strip_vendor(key), list(index), n=8, cutoff=0.6)
    suggestions = list(dict.fromkeys(index[match] for match in close))[:4]
    hint = "Run `swiftplan gpus` to list the known accelerators."
    if suggestions:
        hint = f"Did you mean {', '.join(suggestions)}? " + hint
    raise SwiftplanError(f"Unknown GPU {name!r}.", hint)


_COUNT_PREFIX = re.compile(r"^\s*([+-]?\d+(?:\.\d*)?)\s*[x×*]\s*(.*)$", re.IGNORECASE)
_NETWORK_SUFFIX = re.compile(r"^(.*?)\s*@\s*(\S*?)\s*gbps\s*$", re.IGNORECASE)
BITS_PER_BYTE = 8


def network_bytes_per_s(gbps: float) -> float:
    """A network's Gb/s (10^9 bits per second, as NICs and cluster specs state it) in bytes/s: gbps × 1e9 / 8."""
    return gbps * 1e9 / BITS_PER_BYTE


def _parse_count(raw: str, text: str) -> int:
    if not re.fullmatch(r"\+?\d+", raw) or int(raw) < 1:
        raise SwiftplanError(
            f"Bad GPU count {raw!r} in {text!r}: counts must be whole numbers of at least 1.",
            "Examples: rtx4090, 4xA100-80G, 2x8xH100.",
        )
    return int(raw)


def max_gpus_per_node(accelerator: Accelerator) -> int:
    """Most devices of this model one machine holds: 1 for Apple silicon (one GPU per Mac, the catalog
    notes), else MAX_GPUS_PER_NODE."""
    return 1 if accelerator.backend == "mps" else MAX_GPUS_PER_NODE


def _check_per_node(accelerator: Accelerator, per_node: int, text: str) -> None:
    most = max_gpus_per_node(accelerator)
    if per_node <= most:
        return
    if most == 1:
        raise SwiftplanError(
            f"{text!r} puts {per_node:,} {accelerator.display_name} in one machine; a Mac has one GPU.",
            f"Several Macs are NODESx1x{accelerator.id} (e.g. 2x1x{accelerator.id}).",
        )
    nodes = -(-per_node // 8)
    raise SwiftplanError(
        f"{text!r} puts {per_node:,} GPUs in one node; one machine holds at most {most} "
        "(8 on HGX/DGX and MI300X boards, 16 on DGX-2, 20 in the densest PCIe chassis).",
        f"Spell several nodes as NODESxGPUSxMODEL, e.g. {nodes}x8x{accelerator.id}.",
    )


def parse_cluster(text: str) -> Cluster:
    """Parse 'rtx4090', '4xA100-80G' (one node) or '2x8xH100' (nodes x GPUs per node x model); a suffix
    '@400gbps' states the network between nodes, Gb/s per node (else DEFAULT_INTER_NODE_BYTES_PER_S)."""
    if text.strip().lower() == "auto":
        raise SwiftplanError(
            "'auto' means probing this machine, which parse_cluster does not do.",
            "Use the CLI's --gpus auto, or swiftplan.executors.probe.cluster_from_probe.",
        )
    network = DEFAULT_INTER_NODE_BYTES_PER_S
    if network_match := _NETWORK_SUFFIX.match(text):
        raw = network_match.group(2)
        if not re.fullmatch(r"\d+(?:\.\d*)?", raw) or float(raw) <= 0:
            raise SwiftplanError(
                f"Bad network speed {raw!r} in {text!r}: Gb/s per node must be a positive number.",
                "Example: 2x8xH100@400gbps.",
            )
        network = network_bytes_per_s(float(raw))
    elif "@" in text:
        raise SwiftplanError(
            f"Bad network suffix {text[text.index('@') :]!r} in {text!r}: the network between nodes is written "
            "@<Gb/s per node>gbps.",
            "Example: 2x8xH100@400gbps.",
        )
    counts: list[int] = []
    rest = network_match.group(1) if network_match else text
    while len(counts) < 2 and (match := _COUNT_PREFIX.match(rest)):
        counts.append(_parse_count(match.group(1), text))
        rest = match.group(2)
    if not rest.strip():
        raise SwiftplanError(f"No GPU model in {text!r}.", "Examples: rtx4090, 4xA100-80G, 2x8xH100.")
    if _COUNT_PREFIX.match(rest):
        raise SwiftplanError(
            f"Too many counts in {text!r}: at most nodes x GPUs-per-node x model.", "Example: 2x8xH100."
        )
    accelerator = get_accelerator(rest.strip())
    _check_per_node(accelerator, counts[-1] if counts else 1, text)
    if len(counts) == 2:
        return Cluster(
            accelerator=accelerator, nodes=counts[0], gpus_per_node=counts[1], inter_node_bytes_per_s=network
        )
    return Cluster(
        accelerator=accelerator, gpus_per_node=counts[0] if counts else 1, inter_node_bytes_per_s=network
    )


def match_probed_name(name: str, memory_bytes: int | None = None) -> Accelerator | None:
    """Catalog entry for a name a driver reported ('NVIDIA A100-SXM4-80GB', 'Ascend910B3', 'Apple M2 Max').

    When several entries share a probe name (RTX 3080 10 GB / 12 GB) the memory size decides. A match
    is rejected when the reported memory cannot be that model: more than 2 % above the catalog size,
    or (discrete memory) below 85 % of it. Unified-memory parts come in smaller configurations, so only
    the upper bound applies to them.
    """
    key = _normalize(name)
    candidates = [
        acc
        for acc in _catalog().values()
        if key in {_normalize(probe) for probe in acc.probe_names}
        or _strip_vendor(key) in {_strip_vendor(_normalize(probe)) for probe in acc.probe_names}
    ]
    if not candidates:
        alias_id = _alias_index().get(key) or _alias_index().get(_strip_vendor(key))
        candidates = [_catalog()[alias_id]] if alias_id else []
    if memory_bytes is None:
        return candidates[0] if candidates else None

    def plausible(acc: Accelerator) -> bool:
        if memory_bytes > acc.memory_bytes * 1.02:
            return False
        return acc.unified_memory or memory_bytes >= acc.memory_bytes * 0.85

    fitting = [acc for acc in candidates if plausible(acc)]
    return min(fitting, key=lambda acc: abs(acc.memory_bytes - memory_bytes), default=None)
