"""Estimate vs trace for a vision-language training step: `train_memory_with_vision` next to the fake-tensor
trace of the real Qwen2-VL / Qwen2.5-VL code (`trace_vision.trace_vision_training`), term by term at the
estimate's peak moment (tensor bytes only: the cuBLAS workspace is not a tensor)."""

from __future__ import annotations

from swiftplan.executors.trace_vision import trace_vision_training
from swiftplan.executors.verify import ADAMW_IMPLS, TERMS, Comparison, TermRow
from swiftplan.planner.calibration import constant
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.setup import TrainSetup
from swiftplan.planner.train_memory import TrainMemory
from swiftplan.planner.vision import require_vision_tower
from swiftplan.planner.vision_memory import train_memory_with_vision, vision_states
from swiftplan.planner.vision_tokens import visual_tokens

ALL_LINEAR_TEXT = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""The language model's Linears in Qwen2-VL/Qwen2.5-VL: what all-linear wraps there under ms-swift's regex."""


def _gradients_at(memory: TrainMemory, spec: ModelSpec, setup: TrainSetup, phase: str) -> int:
    """Gradient bytes alive at `phase` in the estimate: all of them after backward, the language model's and
    the first vision ones in the tower's backward, none before backward (no accumulation)."""
    device = memory.device
    if phase in ("optimizer step", "end of backward") or setup.grad_accum > 1:
        return device.gradients
    if phase == "vision backward":
        states = vision_states(require_vision_tower(spec), setup, dp=1)
        return device.gradients - states.gradients + states.first_gradients
    return 0


def estimate_at_peak(memory: TrainMemory, spec: ModelSpec, setup: TrainSetup) -> dict[str, int]:
    """Tensor bytes by the tracer's categories at the estimate's peak moment, and the peak itself."""
    device = memory.device
    phase = device.peak_phase
    at = {name: getattr(device, name) for name in TERMS}
    at["activations"] = memory.phase_activations[phase]
    if phase == "optimizer step":
        at["activations"] = device.transient
    at["logits"] = device.logits if phase == "loss and backward start" else 0
    at["gradients"] = _gradients_at(memory, spec, setup, phase)
    workspace = int(constant("runtime_overhead", "cublas_workspace_bytes"))
    return at | {"peak_allocated": device.peak_allocated - workspace}


def verify_vision_training(spec: ModelSpec, setup: TrainSetup, *, steps: int = 2) -> Comparison:
    """Trace `setup` (its `vision` images, text tokens, LoRA or full fine-tuning) and line every term up with
    the estimate on one device; Qwen2-VL and Qwen2.5-VL (their image grids drive the real code)."""
    assert setup.vision is not None
    tower = require_vision_tower(spec)
    if tower.family not in ("qwen2_vl", "qwen2_5_vl"):
        raise ValueError(f"the vision tracer runs Qwen2-VL and Qwen2.5-VL, not {tower.family}")
    tokens = visual_tokens(tower, setup.vision)
    lora = setup.lora
    targets = ALL_LINEAR_TEXT if lora is not None and lora.all_linear else (lora.targets if lora else ())
    trace = trace_vision_training(
        dict(spec.hf_config),
        grids=tokens.grids,
        text_tokens=setup.seq_len,
        method="lora" if setup.trains_adapters else "full",
        precision=setup.precision,
        lora_rank=lora.rank if lora else 16,
        lora_dropout=lora.dropout if lora else 0.0,
        lora_targets=targets,
        train_vit=not setup.vision.freeze_vit,
        train_aligner=not setup.vision.freeze_aligner,
        optimizer=ADAMW_IMPLS[setup.runtime.optimizer_impl]
        if setup.optimizer == "adamw"
        else setup.optimizer,  # type: ignore[arg-type]
        batch=setup.micro_batch,
        grad_ckpt=setup.grad_ckpt,
        steps=steps,
    )
    memory = train_memory_with_vision(spec, setup)
    estimate = estimate_at_peak(memory, spec, setup)
    traced = dict(trace.at_peak) | {"peak_allocated": trace.peak_bytes}
    rows = tuple(
        TermRow(name=name, estimate=estimate.get(name, 0), traced=traced.get(name, 0))
        for name in (*TERMS, "peak_allocated")
        if estimate.get(name, 0) or traced.get(name, 0) or name == "peak_allocated"
    )
    return Comparison(rows=rows, trace=trace, estimate_phase=memory.device.peak_phase, notes=trace.notes)
