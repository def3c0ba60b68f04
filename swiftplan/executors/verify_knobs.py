"""Which runtime knobs `swiftplan verify` can run in its fake-tensor trace (no torch import: the CLI
refuses the others before the trace extra is needed)."""

from __future__ import annotations

from swiftplan.errors import SwiftplanError
from swiftplan.planner.setup import RuntimeKnobs


def untraceable_knobs(knobs: RuntimeKnobs) -> list[str]:
    """What of the runtime the tracer cannot run on fake CPU tensors, one sentence each naming the flag;
    empty when it can run all of it."""
    reasons = []
    if knobs.loss == "fused_linear":
        reasons.append(
            "--loss fused_linear: Liger's fused linear cross-entropy (and TRL's chunked_nll before 1.16) run "
            "Triton/custom autograd kernels that do not run on fake tensors (use --loss full, chunked or "
            "fused_head here)"
        )
    if knobs.loss == "fused_head" and knobs.fsdp != "none":
        reasons.append(
            f"--loss fused_head with --fsdp {knobs.fsdp}: the FSDP trace runs the model's own loss (TRL's fused "
            "head is traced on one device)"
        )
    if knobs.loss == "full_legacy":
        reasons.append(
            "--loss full_legacy: the tracer runs the installed transformers 5; the 4.31-4.45 loss is traced in its "
            "own environment by benchmarks/trace_legacy_loss.py (benchmarks/results/legacy_loss_trace.md)"
        )
    if knobs.keep_output:
        reasons.append(
            "--keep-output: the traced step drops the model output before backward, as the HF Trainer does; "
            "benchmarks/trace_legacy_loss.py traces both loops (benchmarks/results/legacy_loss_trace.md)"
        )
    if knobs.fsdp == "fsdp1":
        reasons.append(
            "--fsdp fsdp1: the tracer runs FSDP2's fully_shard on a fake process group; FSDP1's FlatParameter "
            "(one flat buffer per wrapped unit, freed and re-gathered by resizing its storage) is not "
            "instrumented, so its bytes would be miscounted (--fsdp fsdp2 shards the same states per parameter)"
        )
    if knobs.float8:
        reasons.append(
            "--float8: torchao's Float8Linear is checked on its own in the tests, not swapped into the traced model"
        )
    return reasons


def refuse_untraceable(knobs: RuntimeKnobs, *, world_size: int = 1, task: str = "train") -> None:
    """One SwiftplanError listing every setting of `knobs` the tracer cannot run on `world_size` devices for
    `task` (nothing when it can)."""
    reasons = untraceable_knobs(knobs) + untraceable_fsdp(knobs, world_size=world_size, task=task)
    reasons += untraceable_step_knobs(knobs, task=task)
    if reasons := reasons + untraceable_adapter_dtype(knobs, task=task):
        raise SwiftplanError(
            f"verify cannot trace runtime {knobs.name}'s " + "; ".join(reasons) + ".",
            hint="Override the setting with its flag, or `swiftplan estimate --runtime "
            f"{knobs.name} ...` for the analytic estimate alone.",
        )


def untraceable_fsdp(knobs: RuntimeKnobs, *, world_size: int, task: str = "train") -> list[str]:
    """What of the FSDP layout the tracer cannot run on `world_size` fake ranks, one sentence each naming the
    flag; empty without FSDP or when it can run all of it."""
    if knobs.fsdp == "none":
        return []
    reasons = []
    if task not in ("train", "sft"):
        reasons.append(f"--fsdp {knobs.fsdp} with --task {task}: FSDP is traced for SFT (--task train) only")
    if world_size < 2:
        reasons.append(
            f"--fsdp {knobs.fsdp} needs --gpus with 2 or more devices (e.g. --gpus 4xH100): the trace plays rank 0 "
            f"of that many on a fake process group, got {world_size}"
        )
    group = knobs.fsdp_shard_group
    if (
        knobs.fsdp_sharding == "hybrid_shard"
        and group
        and world_size >= 2
        and world_size % min(group, world_size)
    ):
        reasons.append(
            f"--fsdp-shard-group {group} must divide the {world_size} devices of --gpus for the traced mesh"
        )
    return reasons


def untraceable_adapter_dtype(knobs: RuntimeKnobs, *, task: str = "train") -> list[str]:
    """--adapter-dtype model where the trace would still build peft's fp32 adapters: the single-device SFT
    trace passes autocast_adapter_dtype=False to get_peft_model (`trace_features.TraceFeatures`); the
    objective and FSDP traces do not yet. kbit-bf16 is traced wherever a bitsandbytes base is (`QuantBase`)."""
    if knobs.adapter_dtype != "model":
        return []
    if task not in ("train", "sft"):
        return [f"--adapter-dtype model with --task {task}: the objective trace builds peft's fp32 adapters"]
    if knobs.fsdp != "none":
        return [f"--adapter-dtype model with --fsdp {knobs.fsdp}: the FSDP trace builds peft's fp32 adapters"]
    return []


def untraceable_step_knobs(knobs: RuntimeKnobs, *, task: str = "train") -> list[str]:
    """--optimizer-in-backward and --modules-to-save where the trace would not run them: the single-device SFT
    trace steps each parameter from its gradient hook and builds peft's modules_to_save copies
    (`trace_features.OptimizerInBackward`, `trace_model.apply_lora`); the objective and FSDP traces do not."""
    if task not in ("train", "sft"):
        where = (f"--task {task}", "the objective trace")
    elif knobs.fsdp != "none":
        where = (f"--fsdp {knobs.fsdp}", "the FSDP trace")
    else:
        return []
    reasons = []
    if knobs.modules_to_save:
        reasons.append(
            f"--modules-to-save {','.join(knobs.modules_to_save)} with {where[0]}: {where[1]}'s peft model trains "
            "LoRA only (the single-device SFT trace builds peft's modules_to_save copies)"
        )
    if knobs.optimizer_in_backward:
        reasons.append(
            f"--optimizer-in-backward with {where[0]}: {where[1]} steps the optimizer after backward (the "
            "single-device SFT trace steps each parameter from its gradient hook)"
        )
    return reasons
