"""Doctor with a plan: the measured failure set against the plan's prediction (`PlanComparison`, the memory
terms that grow in the failing phase), and fit's own search run again on the plan's hardware with the budget
cut by what the estimator missed (`_refit`), first keeping the plan's method and weights format, then free;
when nothing fits there either, fit's infeasibility diagnosis gives the changes. Its remedies have source 'fit'.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from swiftplan.errors import SwiftplanError
from swiftplan.planner.failure_log import PHASE_TEXT, Finding
from swiftplan.planner.plan import Plan
from swiftplan.planner.setup import ServeSetup, TrainSetup
from swiftplan.planner.workload import TrainWorkload
from swiftplan.units import GiB, format_gib
from swiftplan.usecases.doctor_advice import Remedy, _size

PHASE_TERMS: dict[str, tuple[str, ...]] = {
    "load": ("weights",),
    "start_up": ("weights", "optimizer", "master_weights"),
    "forward": ("activations", "logits"),
    "backward": ("activations", "logits", "gradients"),
    "optimizer_step": ("optimizer", "master_weights", "gradients", "transient"),
    "kv_cache_allocation": ("weights", "kv_cache"),
}
"""The plan's memory terms that grow in each phase (what a failure there points at)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PlanComparison:
    """The failure set against the plan's prediction."""

    planned_peak_bytes: int
    """The plan's peak allocated bytes per device."""
    planned_device_bytes: int
    """The plan's device total (what nvidia-smi would show)."""
    device_memory_bytes: int
    """Memory one device offers the plan."""
    needed_bytes: int | None
    """What the run wanted at the failure: allocated + requested (None when the message does not say)."""
    missed_bytes: int | None
    """How much more the run needed than the plan predicted for the device (drives the re-fit)."""
    terms: tuple[tuple[str, int], ...]
    """The plan's bytes for the terms that grow in the failing phase."""


def _compare(plan: Plan, finding: Finding) -> PlanComparison:
    per = plan.prediction.per_device_bytes
    peak, device_total = plan.prediction.peak_allocated_bytes, plan.prediction.device_total_bytes
    memory = plan.prediction.device_memory_bytes
    needed = (finding.allocated_bytes + finding.requested_bytes
              if finding.allocated_bytes is not None and finding.requested_bytes is not None else None)  # fmt: skip
    missed = None
    if finding.kind == "device_memory" and finding.shortfall_bytes is not None:
        capacity = finding.total_bytes if finding.total_bytes is not None else memory
        missed = capacity + finding.shortfall_bytes - device_total
    elif finding.kind == "kv_cache" and finding.shortfall_bytes is not None:
        missed = finding.shortfall_bytes
    names = PHASE_TERMS.get(finding.phase) or (max(("weights", "activations", "logits", "optimizer", "kv_cache"),
                                                   key=lambda n: per.get(n, 0)),)  # fmt: skip
    terms = tuple((name, per[name]) for name in names if per.get(name))
    return PlanComparison(planned_peak_bytes=peak, planned_device_bytes=device_total, device_memory_bytes=memory,
                          needed_bytes=needed, missed_bytes=missed, terms=terms)  # fmt: skip


_BACKEND_TEXT = {
    "cuda": "CUDA",
    "rocm": "ROCm (HIP)",
    "npu": "Ascend (NPU)",
    "mps": "Apple (MPS)",
    "cpu": "CPU",
}
_CAPACITY_RANGE = (0.85, 1.05)
"""A device's reported total capacity against the plan's device: drivers and ECC report 0.91-0.99 of the
physical memory (T4 with ECC 14.56 of 16 GiB, H100 79.11 of 80 GiB); well outside is another card."""


def check_plan_matches(plan: Plan, finding: Finding, plan_path: str) -> None:
    """Refuse a plan the logged run cannot have followed (the other task, another device family, a device of
    another size): set against it, the log's numbers would give a wrong shortfall and a wrong re-plan."""
    setup, accelerator = plan.setup, plan.hardware.accelerator
    where = f"line {finding.line_number}"
    hint = "Pass the plan file the run followed, or leave out --plan to read the log alone."
    if (
        isinstance(setup, TrainSetup)
        and finding.kind == "kv_cache"
        and setup.objective.kind not in ("grpo", "ppo")
    ):
        raise SwiftplanError(
            f"The log's failure ({where}) is a serving engine's KV cache at start-up (vLLM or SGLang), but the "
            f"plan file {plan_path} is a training plan ({setup.objective.kind}, no rollout engine): the run did "
            "not follow it; a serving plan (`swiftplan fit MODEL --task serve -o plan.yaml`) or a GRPO/PPO plan "
            "would.", hint=hint)  # fmt: skip
    if isinstance(setup, ServeSetup) and finding.phase in ("backward", "optimizer_step"):
        raise SwiftplanError(
            f"The log's failure ({where}) is in {PHASE_TEXT[finding.phase]}, a training step, but the plan "
            f"file {plan_path} is a serving plan: the run did not follow it; a training plan (`swiftplan fit "
            "MODEL -o plan.yaml`) would.", hint=hint)  # fmt: skip
    backend = finding.backend
    if (
        backend is not None
        and backend != accelerator.backend
        and (
            backend != "cuda"
            or accelerator.backend in ("npu", "mps")  # ROCm builds of PyTorch may say "CUDA"
        )
    ):
        raise SwiftplanError(
            f"The log's out-of-memory message ({where}) comes from a {_BACKEND_TEXT[backend]} device, but the "
            f"plan file {plan_path} is for {accelerator.name}, a {_BACKEND_TEXT[accelerator.backend]} device: "
            "the run did not follow it.", hint=hint)  # fmt: skip
    total = finding.total_bytes
    if total and backend != "mps" and not accelerator.unified_memory:
        low = _CAPACITY_RANGE[0] * min(accelerator.memory_bytes, plan.prediction.device_memory_bytes)
        if not low <= total <= _CAPACITY_RANGE[1] * accelerator.memory_bytes:
            device = finding.device or "device"
            raise SwiftplanError(
                f"The log's {device} has a total capacity of {_size(total)} ({where}), but the plan file "
                f"{plan_path} is for {accelerator.name} ({_size(accelerator.memory_bytes)}; a run on it reports "
                f"{_size(int(low))} to {_size(int(_CAPACITY_RANGE[1] * accelerator.memory_bytes))}): the run was "
                "on another device, so the plan's prediction says nothing about this failure.",
                hint=f"{hint} `swiftplan fit MODEL --gpus GPU` plans for the device in the log.")  # fmt: skip


def _setup_diff(old: TrainSetup, new: TrainSetup, old_gpus: int, new_gpus: int) -> str:
    pairs = (
        ("method", old.method, new.method), ("weights", old.quant, new.quant),
        ("micro-batch", old.micro_batch, new.micro_batch), ("checkpointing", old.grad_ckpt, new.grad_ckpt),
        ("ZeRO", old.parallel.zero, new.parallel.zero), ("offload", old.parallel.offload, new.parallel.offload),
        ("optimizer", old.optimizer, new.optimizer), ("GPUs", old_gpus, new_gpus),
        ("tp", old.parallel.tp, new.parallel.tp), ("pp", old.parallel.pp, new.parallel.pp),
    )  # fmt: skip
    changed = [f"{name} {a} → {b}" for name, a, b in pairs if a != b]
    return ", ".join(changed) or "the same set-up on the re-measured budget"


def _refit(plan: Plan, missed: int) -> tuple[list[Remedy], list[str]]:
    """fit again on the plan's hardware with the budget cut by what the estimator missed."""
    from swiftplan.planner.search.pins import Pins
    from swiftplan.usecases import fit

    setup = plan.setup
    if not isinstance(setup, TrainSetup) or not isinstance(plan.workload, TrainWorkload):
        return [], ["re-planning from a log covers training plans; a serving plan gets the log's advice."]
    memory = plan.prediction.device_memory_bytes
    usable = memory - missed
    if usable <= GiB:
        return [], [
            f"the run needed {_size(missed)} more than the plan predicted; too much to re-plan on this GPU."
        ]
    cluster = replace(plan.hardware, usable_memory_bytes=usable)
    workload = plan.workload
    base = fit.FitRequest(model=plan.model, gpus=plan.offered, task="train", engine=plan.engine,
                          seq_len=setup.seq_len, global_batch=workload.global_batch,
                          dataset_tokens=workload.dataset_tokens, epochs=workload.epochs,
                          attention=workload.attention, variable_lengths=setup.variable_lengths,
                          vision=workload.vision, compare_engines=False, trials=40)  # fmt: skip
    note = (
        f"re-planned on {_size(usable)} per device: the plan's {_size(memory)} less the "
        f"{_size(missed)} the run needed beyond the plan's prediction."
    )
    kept = replace(base, pins=Pins(methods=(setup.method,), quants=(setup.quant,)))
    for request, label in ((kept, "same method"), (base, "any method")):
        try:
            outcome = fit.search_fit(fit.prepare_fit(request, cluster=cluster))
        except SwiftplanError as error:
            return [], [note, f"re-planning failed: {error.message}"]
        if outcome.plan is not None:
            new = outcome.plan
            assert isinstance(new.setup, TrainSetup)
            diff = _setup_diff(setup, new.setup, plan.layout.gpus, new.layout.gpus)
            text = (f"{diff} ({label}): {format_gib(new.prediction.device_total_bytes, 1)} per device by the "
                    f"estimator, with {_size(missed)} added for what this run showed it misses.")  # fmt: skip
            return [Remedy(change="re-plan", text=text, source="fit")], [note]
        if request is base and outcome.diagnosis is not None:
            remedies = [
                Remedy(change=s.change, text=s.text, source="fit") for s in outcome.diagnosis.suggestions
            ]
            return remedies, [note, outcome.diagnosis.summary]
    return [], [note]
