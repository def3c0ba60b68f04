"""Planner vs trace for preference, reward and RL objectives: `train_memory` next to `trace_objective`.

Each row is one term or one moment of the step, in tensor bytes (the estimate without the cuBLAS
workspace, which is not a tensor):

- weights, adapters, reference, optimizer: alive through the whole step;
- activations at loss and logits: the policy's saved activations and the LM head's and loss's bytes at the
  moment of the loss (the planner's "loss and backward start"; traced, at the peak of the "loss" and "loss
  backward" phases: from the decoder's output until its gradient exists);
- loss and backward start: that moment's total;
- reference forward: the peak of the no-grad scoring (the reference, KTO's KL sequences, GRPO's old
  log-probs) — the planner's "reference forward" moment;
- training: the peak of the forward with gradients and the backward (the planner's largest other moment
  but the optimizer step); optimizer step; peak_allocated.
"""

from __future__ import annotations

from dataclasses import dataclass

from swiftplan.executors.trace_objective import ObjectiveTrace, trace_objective
from swiftplan.executors.trace_quant import QuantBase
from swiftplan.executors.verify import ADAMW_IMPLS, TermRow
from swiftplan.planner.calibration import constant
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.setup import TrainSetup
from swiftplan.planner.train_memory import TrainMemory, train_memory

STATE_TERMS = ("weights", "adapters", "reference", "optimizer")
"""Terms alive through the whole step."""
_SCORING = ("reference", "scoring")
_LOSS = ("loss", "loss backward")
_TRAINING = ("forward", "loss", "loss backward", "backward")


@dataclass(frozen=True, kw_only=True, slots=True)
class ObjectiveComparison:
    """Estimate vs trace for one objective set-up."""

    rows: tuple[TermRow, ...]
    """Terms, then moments, then peak_allocated (last)."""
    trace: ObjectiveTrace
    """The raw trace."""
    memory: TrainMemory
    """The planner's estimate."""

    def row(self, name: str) -> TermRow:
        """The row called `name`."""
        return next(r for r in self.rows if r.name == name)

    @property
    def notes(self) -> tuple[str, ...]:
        """What the trace ran and what it could not (the tracer's notes: base, LoRA, attention kernels)."""
        return self.trace.notes


def _trace(spec: ModelSpec, setup: TrainSetup, steps: int) -> ObjectiveTrace:
    lora = setup.lora
    quant_base = QuantBase.of(setup)  # a bitsandbytes base is traced for real (trace_quant)
    if quant_base is None and setup.quant != "none":
        raise ValueError(
            f"--quant {setup.quant} bases are not traceable under an objective (bitsandbytes NF4/FP4/int8 are); "
            "use --quant nf4, fp4 or int8, or --method lora or full"
        )
    return trace_objective(
        dict(spec.hf_config),
        setup.objective,
        method="full" if setup.method == "full" else "lora",
        quant_base=quant_base,
        precision=setup.precision,
        batch=setup.micro_batch,
        seq=setup.seq_len,
        lora_rank=lora.rank if lora else 16,
        lora_targets="all-linear" if lora and lora.all_linear else (lora.targets if lora else ("q_proj",)),
        optimizer=ADAMW_IMPLS[setup.runtime.optimizer_impl],
        grad_ckpt=setup.grad_ckpt,
        attn_implementation="eager" if setup.attention == "eager" or spec.eager_attention_only else "sdpa",
        steps=steps,
    )


def _traced(trace: ObjectiveTrace, phases: tuple[str, ...], category: str | None = None) -> int:
    """The largest peak among `phases`, or with `category` that category's bytes at that peak."""
    ran = [p for p in phases if p in trace.phase_peaks]
    if not ran:
        return 0
    phase = max(ran, key=lambda p: trace.phase_peaks[p])
    return trace.phase_peaks[phase] if category is None else trace.phase_at_peak[phase].get(category, 0)


def verify_objective(spec: ModelSpec, setup: TrainSetup, *, steps: int = 2) -> ObjectiveComparison:
    """Trace `setup`'s objective on `spec` and line every term and moment up with `train_memory` (one
    device, no sharding)."""
    if setup.parallel.tp > 1 or setup.parallel.pp > 1 or setup.parallel.zero or setup.runtime.fsdp != "none":
        raise ValueError("parallelism is not traced: compare a single device (tp 1, pp 1, ZeRO 0, no FSDP)")
    trace = _trace(spec, setup, steps)
    memory = train_memory(spec, setup)
    device = memory.device
    phases = dict(memory.phase_peaks)
    scoring = ("reference forward", "scoring", "generation")  # no-grad passes and generate(), not training
    training = max(v for k, v in phases.items() if k not in (*scoring, "optimizer step"))
    workspace = int(constant("runtime_overhead", "cublas_workspace_bytes"))
    pairs = [(name, getattr(device, name), trace.at_peak.get(name, 0)) for name in STATE_TERMS]
    at_loss = memory.phase_activations.get("loss and backward start", 0)
    pairs += [
        ("activations at loss", at_loss, _traced(trace, _LOSS, "activations")),
        ("logits", device.logits, _traced(trace, _LOSS, "logits")),
        ("loss and backward start", phases.get("loss and backward start", 0), _traced(trace, _LOSS)),
        ("reference forward", max(phases.get(k, 0) for k in scoring[:2]), _traced(trace, _SCORING)),
        ("training", training, _traced(trace, _TRAINING)),
        ("optimizer step", phases.get("optimizer step", 0), trace.phase_peaks.get("optimizer", 0)),
        ("peak_allocated", device.peak_allocated - workspace, trace.peak_bytes),
    ]
    rows = tuple(
        TermRow(name=name, estimate=est, traced=traced)
        for name, est, traced in pairs
        if est or traced or name == "peak_allocated"
    )
    return ObjectiveComparison(rows=rows, trace=trace, memory=memory)
