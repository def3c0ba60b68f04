"""`MemoryBreakdown`: per-device bytes by term, with the formula and source behind each."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

TENSOR_TERMS = (
    "weights",
    "adapters",
    "gradients",
    "optimizer",
    "master_weights",
    "activations",
    "logits",
    "kv_cache",
    "reference",
    "aux_models",
)
"""The breakdown terms that are tensors (what a trace can see), in display order."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Term:
    """One line of the explanation: a named quantity, its value and how it was obtained."""

    name: str
    """Which term (matches a MemoryBreakdown field)."""
    value_bytes: int
    """Its size on one device, bytes."""
    formula: str
    """The arithmetic, with the numbers filled in."""
    source: str = ""
    """Where a constant in the formula came from, when it is not a model or set-up fact."""


@dataclass(frozen=True, kw_only=True, slots=True)
class MemoryBreakdown:
    """Memory on one device (the most loaded one), in bytes.

    `peak_allocated` is what torch.cuda.max_memory_allocated() would report after a few
    steps; `peak_reserved` adds the caching allocator's block rounding and fragmentation
    (torch.cuda.max_memory_reserved(), planner/allocator.py); `device_total` adds what the
    process holds outside the allocator (CUDA context, NCCL) and is what nvidia-smi would show.
    """

    weights: int = 0
    """Base-model parameters (quantized where set)."""
    adapters: int = 0
    """LoRA/DoRA parameters."""
    gradients: int = 0
    """.grad of trainable parameters (sharded under ZeRO-2/3)."""
    optimizer: int = 0
    """Optimizer moments (sharded under ZeRO-1+; 0 on device when offloaded)."""
    master_weights: int = 0
    """fp32 master copy kept by DeepSpeed mixed precision."""
    activations: int = 0
    """Tensors saved for backward (training) or the prefill workspace (serving)."""
    logits: int = 0
    """LM-head output and loss intermediates at their peak."""
    kv_cache: int = 0
    """Serving: paged KV cache for the requested sequences."""
    reference: int = 0
    """Preference/RL: a frozen reference copy of the model (0 with adapters disabled or precomputed log-probs)."""
    aux_models: int = 0
    """PPO: the trained value model's states and the frozen reward model."""
    transient: int = 0
    """Short-lived extra at the peak moment (optimizer-step temporaries, gathered ZeRO-3 layers)."""
    runtime_overhead: int = 0
    """Outside torch allocations: CUDA context and caching-allocator slack."""
    peak_allocated: int = 0
    """Peak of live tensor bytes (torch.cuda.max_memory_allocated)."""
    peak_reserved: int = 0
    """Peak of the caching allocator's segments (torch.cuda.max_memory_reserved); 0 when not modelled."""
    device_total: int = 0
    """What the device shows in use at the peak (nvidia-smi)."""
    peak_phase: str = ""
    """When the peak happens (forward/loss, backward, optimizer step, decode)."""
    terms: tuple[Term, ...] = field(default=(), compare=False)
    """How each figure was computed."""

    def as_dict(self) -> dict[str, int]:
        """The byte fields only, for JSON output."""
        data = asdict(self)
        data.pop("terms")
        data.pop("peak_phase")
        return data

    def dominant(self) -> str:
        """Name of the largest term that counts toward the peak."""
        return max(TENSOR_TERMS, key=lambda name: getattr(self, name))
