"""The training loop: micro-batches → optimizer steps, metrics, checkpoints, in a deterministic data order.

The data position is a function of the global step: epoch e visits the blocks in the order of a
permutation seeded with `seed + e`, each rank taking every world-th index; step s of an epoch
reads micro-batches s*grad_accum ... s*grad_accum + grad_accum - 1 of its shard. A run resumed at
step s therefore reads exactly the blocks an uninterrupted run would have read next.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swiftplan.executors.train import run_dir as rd
from swiftplan.executors.train.report import memory_now
from swiftplan.planner.setup import TrainSetup


@dataclass(kw_only=True, slots=True)
class LoopResult:
    """What one invocation of the loop did."""

    start_step: int
    """Optimizer steps already done when it began (0, or the resumed checkpoint's)."""
    end_step: int
    """Optimizer steps done when it stopped."""
    losses: list[float] = field(default_factory=list)
    """Mean loss of each step taken here."""
    step_times_s: list[float] = field(default_factory=list)
    """Wall time of each step taken here (checkpointing excluded)."""
    memory_peak: dict[str, int] = field(default_factory=dict)
    """Largest allocated/reserved bytes sampled after a step (MPS has no peak counter)."""


def steps_per_epoch(blocks: int, *, setup: TrainSetup, world: int) -> int:
    """Full optimizer steps one pass over `blocks` gives each of `world` ranks."""
    return blocks // world // setup.micro_batch // setup.grad_accum


def shard_order(blocks: int, *, epoch: int, seed: int, rank: int, world: int) -> list[int]:
    """This rank's block indices for an epoch (equal length on every rank)."""
    import torch

    generator = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(blocks, generator=generator).tolist()
    per_rank = blocks // world
    return order[rank::world][:per_rank]


def micro_batches(step: int, *, n_blocks: int, setup: TrainSetup, seed: int, rank: int, world: int) -> list[list[int]]:  # fmt: skip
    """Block indices of each micro-batch of global optimizer step `step` (0-based) on this rank."""
    per_epoch = steps_per_epoch(n_blocks, setup=setup, world=world)
    epoch, in_epoch = divmod(step, per_epoch)
    shard = shard_order(n_blocks, epoch=epoch, seed=seed, rank=rank, world=world)
    mb = setup.micro_batch
    first = in_epoch * setup.grad_accum
    return [shard[(first + i) * mb : (first + i + 1) * mb] for i in range(setup.grad_accum)]


def _all_mean(value: float, world: int, device: Any) -> float:
    if world == 1:
        return value
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / world


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def save_checkpoint(
    engine: Any, run_dir: Path, *, step: int, rank: int, world: int, state: dict[str, Any]
) -> Path:
    """Every rank writes its part; rank 0 writes state.json last and moves the `latest` marker."""
    import json

    checkpoint = rd.checkpoint_dir(run_dir, step)
    _barrier(world)
    engine.save(checkpoint, rank=rank)
    _barrier(world)
    if rank == 0:
        (checkpoint / "state.json").write_text(json.dumps(state, indent=2) + "\n")
        rd.mark_latest(run_dir, checkpoint)
    _barrier(world)
    return checkpoint


def run_loop(engine: Any, data: dict[str, Any], *, setup: TrainSetup, args: rd.TrainArgs, run_dir: Path,
             rank: int, world: int, start_step: int, total_steps: int, device: Any,
             progress: Any = None) -> LoopResult:  # fmt: skip
    """Train from `start_step` to `total_steps`; log every step, checkpoint every save_steps and at the end."""
    import torch

    n_blocks = int(data["input_ids"].shape[0])
    per_epoch = steps_per_epoch(n_blocks, setup=setup, world=world)
    tokens_per_step = setup.micro_batch * setup.seq_len * setup.grad_accum * world
    result = LoopResult(start_step=start_step, end_step=start_step)
    engine.module.train()
    for step in range(start_step, total_steps):
        started = time.perf_counter()
        batches = micro_batches(step, n_blocks=n_blocks, setup=setup, seed=args.seed, rank=rank, world=world)
        losses = []
        real = 0
        for i, indices in enumerate(batches):
            index = torch.tensor(indices)
            batch = {key: value[index] for key, value in data.items()}
            real += int(batch["attention_mask"].sum())
            losses.append(engine.micro_step(batch, last=i == len(batches) - 1))
        engine.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - started
        loss = _all_mean(sum(losses) / len(losses), world, device)
        now = memory_now(device.type)
        for key, value in now.items():
            result.memory_peak[key] = max(result.memory_peak.get(key, 0), value)
        result.losses.append(loss)
        result.step_times_s.append(elapsed)
        result.end_step = step + 1
        if rank == 0:
            rd.append_jsonl(run_dir / "metrics.jsonl", {
                "step": step + 1, "epoch": step // per_epoch, "loss": loss, "lr": engine.lr(),
                "tokens": tokens_per_step, "real_tokens_rank0": real, "step_time_s": elapsed,
                "samples_rank0": [i for b in batches for i in b], "memory_rank0": now,
            })  # fmt: skip
            if progress is not None:
                progress(step + 1, total_steps, loss, tokens_per_step / elapsed, now)
        last = step + 1 == total_steps
        if last or (args.save_steps and (step + 1) % args.save_steps == 0):
            state = {
                "step": step + 1, "epoch": (step + 1) // per_epoch, "step_in_epoch": (step + 1) % per_epoch,
                "samples_seen": (step + 1) * setup.micro_batch * setup.grad_accum * world,
                "tokens_seen": (step + 1) * tokens_per_step, "world_size": world, "data_sha256": args.data_sha256,
            }  # fmt: skip
            save_checkpoint(engine, run_dir, step=step + 1, rank=rank, world=world, state=state)
    return result
