"""`swiftplan train PLAN --preflight`: the longest batch the data can produce, run first (forward, backward,
optimizer step) on the target device, and its measured peak next to the plan's, before the real run.

(Not `device.preflight`, which checks packages and devices; this one runs the worst batch.) The blocks
`swiftplan train` builds are all `seq_len` wide, so the longest batch is the micro-batch of blocks with
the most real tokens: the widest attention and the most loss tokens the data will ever put on the device.
Runs in this process on one device with the plan's optimizer (plain torch; under ZeRO the shape is
reported and the step is left to the real run, which needs the DeepSpeed launch).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from swiftplan.executors.train.tokens import TokenBlocks, trim_to_longest


@dataclass(frozen=True, kw_only=True, slots=True)
class LongestBatch:
    """The micro-batch with the most real tokens."""

    block_indices: tuple[int, ...]
    """Which blocks (in the order `swiftplan train` built them)."""
    shape: tuple[int, int]
    """(sequences, tokens per sequence) as the device sees it."""
    real_tokens: int
    """Non-padding tokens in the batch."""
    longest_sample_tokens: int
    """Real tokens in its longest block."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PreflightResult:
    """What the preflight found and, when it ran the batch, measured."""

    batch: LongestBatch
    ran: bool
    """Whether forward, backward and the optimizer step ran."""
    device: str
    """torch device type."""
    planned_peak_bytes: int
    """The plan's peak allocated bytes per device."""
    measured_peak_bytes: int | None = None
    """Peak allocated after the step (CPU: process peak RSS, not comparable with a GPU prediction)."""
    method: str = ""
    """How the peak was measured."""
    loss: float | None = None
    """The batch's loss (finite means the step ran through)."""
    seconds: float | None = None
    """Wall time of the step."""
    note: str = ""
    """Why the step did not run, or what the CPU figure means."""


def longest_batch(blocks: TokenBlocks, micro_batch: int) -> LongestBatch:
    """The `micro_batch` blocks with the most real tokens (ties: the earliest), shaped as the run cuts them: to their
    longest real row (`tokens.trim_to_longest`)."""
    real = [sum(mask) for mask in blocks.attention_mask]
    if not real:
        raise ValueError("no blocks")
    chosen = sorted(range(len(real)), key=lambda i: (-real[i], i))[: max(1, micro_batch)]
    width = max(1, max(real[i] for i in chosen))
    return LongestBatch(block_indices=tuple(sorted(chosen)), shape=(len(chosen), width),
                        real_tokens=sum(real[i] for i in chosen), longest_sample_tokens=max(real[i] for i in chosen))  # fmt: skip


def run_preflight(prepared: Any, *, run: bool = True) -> PreflightResult:
    """Find the longest batch of a prepared run and, when `run`, put it through one optimizer step on the
    prepared run's device. `prepared` is a `PreparedRun` (with blocks: not a resume)."""
    from swiftplan.errors import SwiftplanError

    setup, blocks = prepared.setup, prepared.blocks
    if blocks is None:
        raise SwiftplanError("--preflight needs the data: it does not apply to --resume.")
    batch = longest_batch(blocks, setup.micro_batch)
    planned = prepared.plan.prediction.peak_allocated_bytes
    device_type = prepared.device.torch_device
    common = dict(batch=batch, device=device_type, planned_peak_bytes=planned)
    if not run:
        return PreflightResult(**common, ran=False, note="dry pass: shape only")
    if setup.parallel.zero or prepared.plan.layout.gpus > 1:
        return PreflightResult(**common, ran=False,
                               note="the plan shards over several devices (ZeRO / DDP): the step needs the real launch, "
                                    "which runs this batch first when started with --preflight.")  # fmt: skip
    return _run(prepared, batch, common)


def _run(prepared: Any, batch: LongestBatch, common: dict[str, Any]) -> PreflightResult:
    import torch

    from swiftplan.executors.train.engine import TorchEngine
    from swiftplan.executors.train.model import build_optimizer, load_model, trainable_parameters
    from swiftplan.executors.train.report import memory_now, peak_memory, reset_peak

    setup, args, blocks = prepared.setup, prepared.args, prepared.blocks
    device = torch.device(args.device if args.device != "cuda" else "cuda:0")
    reset_peak(device.type)
    model = load_model(args.model, setup, device=device, random_init=args.random_init, seed=args.seed,
                       vocab_size=len(prepared.tokenizer))  # fmt: skip
    optimizer = build_optimizer(setup, trainable_parameters(model), lr=args.lr, weight_decay=args.weight_decay,
                                device_type=device.type)  # fmt: skip
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    engine = TorchEngine(model, optimizer, scheduler, setup=setup, device=device, world=1,
                         max_grad_norm=args.max_grad_norm)  # fmt: skip
    index = list(batch.block_indices)
    data = trim_to_longest(
        {
            "input_ids": torch.tensor([blocks.input_ids[i] for i in index]),
            "labels": torch.tensor([blocks.labels[i] for i in index]),
            "attention_mask": torch.tensor([blocks.attention_mask[i] for i in index]),
        }
    )
    items = max(1, int((data["labels"][:, 1:] != -100).sum()))
    started = time.perf_counter()
    loss = engine.micro_step(data, last=True, num_items=items)
    engine.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    peak = peak_memory(device.type, memory_now(device.type))
    del engine, optimizer, model  # the real run loads its own
    if device.type == "cuda":
        torch.cuda.empty_cache()
    note = "CPU: process peak RSS, not comparable with the GPU prediction" if device.type == "cpu" else ""
    return PreflightResult(**common, ran=True, measured_peak_bytes=int(peak["peak_allocated_bytes"]),
                           method=str(peak["method"]), loss=float(loss), seconds=seconds, note=note)  # fmt: skip
