"""The training loop: micro-batches → optimizer steps, metrics, checkpoints, in a deterministic data order.

The loss of a step is the sum of its token losses over every micro-batch and rank divided by the
step's label tokens (the transformers Trainer's `num_items_in_batch`), not a mean of micro-batch means.

The data position is a function of the global step: epoch e visits the blocks in the order of a
permutation seeded with `seed + e`, each rank taking every world-th index; step s of an epoch
reads micro-batches s*grad_accum ... s*grad_accum + grad_accum - 1 of its shard. A run resumed at
step s therefore reads exactly the blocks an uninterrupted run would have read next.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swiftplan.executors.train import run_dir as rd
from swiftplan.executors.train.report import memory_now
from swiftplan.executors.train.tokens import trim_to_longest
from swiftplan.planner.setup import TrainSetup


@dataclass(kw_only=True, slots=True)
class LoopResult:
    """What one invocation of the loop did."""

    start_step: int
    """Optimizer steps already done when it began (0, or the resumed checkpoint's)."""
    end_step: int
    """Optimizer steps done when it stopped."""
    losses: list[float] = field(default_factory=list)
    """Loss of each step taken here: summed token loss over all ranks / the step's label tokens."""
    step_times_s: list[float] = field(default_factory=list)
    """Wall time of each step taken here (checkpointing excluded)."""
    memory_peak: dict[str, int] = field(default_factory=dict)
    """Largest allocated/reserved bytes sampled after a step (MPS has no peak counter)."""
    memory_now: dict[str, int] = field(default_factory=dict)
    """Allocated/reserved bytes after the last step."""
    stopped_by: int = 0
    """Signal that stopped the run early, the one this rank received or else the one the other ranks did
    (-1: another rank's, not SIGINT or SIGTERM; 0: not stopped)."""
    saved_on_stop: bool = False
    """A checkpoint was written at end_step because of the stop."""


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


def label_tokens(labels: Any) -> int:
    """Tokens that are a prediction target: labels[..., 1:] != -100 (a causal LM shifts its labels by one,
    so position 0 is never one; the transformers Trainer counts `num_items_in_batch` the same way)."""
    return int((labels[..., 1:] != -100).sum())


def _all_sum(values: list[float], world: int, device: Any) -> list[float]:
    if world == 1:
        return values
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return [float(x) for x in tensor.tolist()]


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""The signals a run saves and stops on; each has its own vote so every rank can name the one received."""


def _stop_votes(signum: int) -> list[float]:
    """One vote per stop signal plus one for any other (1 where this rank received it), summed over the
    ranks with the step's label-token count: a rank whose own handler has not run yet (torchrun signals
    the ranks one after another) still learns which signal the others got."""
    known = [float(signum == int(sig)) for sig in _STOP_SIGNALS]
    return [*known, float(signum > 0 and not any(known))]


def _agreed_signal(votes: list[float]) -> int:
    """The stop signal other ranks voted for (SIGTERM over SIGINT when both were: torchrun forwards a
    Ctrl-C as SIGTERM); -1 when they stopped for another reason."""
    for sig, count in reversed(list(zip(_STOP_SIGNALS, votes, strict=False))):
        if count:
            return int(sig)
    return -1


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def save_checkpoint(engine: Any, run_dir: Path, *, step: int, rank: int, world: int, state: dict[str, Any],
                    keep: int = 0) -> Path:  # fmt: skip
    """Every rank writes its part into .tmp-step-N; rank 0 then writes state.json (with every file's size),
    fsyncs, renames the directory to step-N, moves the `latest` marker and deletes what `keep` retires.
    A file-system failure is one SwiftplanError naming the file and the errno."""
    import shutil

    target, tmp = rd.checkpoint_dir(run_dir, step), rd.checkpoint_tmp_dir(run_dir, step)
    if rank == 0:
        with rd.writing("the checkpoint", tmp):
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
    _barrier(world)
    with rd.writing("the checkpoint", tmp):
        engine.save(tmp, rank=rank)
    _barrier(world)
    if rank == 0:
        with rd.writing("the checkpoint", target):
            rd.publish_checkpoint(tmp, target, state)
            rd.mark_latest(run_dir, target)
            rd.prune_checkpoints(run_dir, keep=keep)
    _barrier(world)
    return target


def _state(step: int, *, setup: TrainSetup, args: rd.TrainArgs, world: int, per_epoch: int) -> dict[str, Any]:
    tokens_per_step = setup.micro_batch * setup.seq_len * setup.grad_accum * world
    return {"step": step, "epoch": step // per_epoch, "step_in_epoch": step % per_epoch,
            "samples_seen": step * setup.micro_batch * setup.grad_accum * world,
            "tokens_seen": step * tokens_per_step, "world_size": world, "data_sha256": args.data_sha256}  # fmt: skip


def _train_step(engine: Any, data: dict[str, Any], batches: list[list[int]], *, items: int, device: Any) -> tuple[float, int]:  # fmt: skip
    """Forward/backward of every micro-batch and one optimizer step; (this rank's share of the step's
    loss, its real tokens). Each micro-batch's summed token loss is divided by `items`, the label tokens
    of the whole step on all ranks, as the transformers Trainer does since its gradient-accumulation fix."""
    import torch

    share, real = 0.0, 0
    for i, indices in enumerate(batches):
        index = torch.tensor(indices)
        batch = trim_to_longest({key: value[index] for key, value in data.items()})
        real += int(batch["attention_mask"].sum())
        share += engine.micro_step(batch, last=i == len(batches) - 1, num_items=items)
    engine.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return share, real


def run_loop(engine: Any, data: dict[str, Any], *, setup: TrainSetup, args: rd.TrainArgs, run_dir: Path,
             rank: int, world: int, start_step: int, total_steps: int, device: Any,
             progress: Any = None, stop: Any = None) -> LoopResult:  # fmt: skip
    """Train from `start_step` to `total_steps`; log every step, checkpoint every save_steps and at the end.

    `stop()` returns a signal number once the process was asked to stop (0 before): the ranks agree at
    each step boundary (one all-reduce, shared with the label-token count), save there and return."""
    n_blocks = int(data["input_ids"].shape[0])
    per_epoch = steps_per_epoch(n_blocks, setup=setup, world=world)
    tokens_per_step = setup.micro_batch * setup.seq_len * setup.grad_accum * world
    result = LoopResult(start_step=start_step, end_step=start_step)
    saved = start_step
    engine.module.train()
    for step in range(start_step, total_steps):
        started = time.perf_counter()
        batches = micro_batches(step, n_blocks=n_blocks, setup=setup, seed=args.seed, rank=rank, world=world)
        local = sum(label_tokens(data["labels"][b]) for b in batches)
        signum = int(stop()) if stop is not None else 0
        items, *votes = _all_sum([float(local), *_stop_votes(signum)], world, device)
        if any(votes):
            result.stopped_by = signum or _agreed_signal(votes)
            break
        share, real = _train_step(engine, data, batches, items=max(int(items), 1), device=device)
        elapsed = time.perf_counter() - started
        loss = _all_sum([share], world, device)[0]
        _record(result, loss, elapsed, step, device)
        if rank == 0:
            _log(run_dir, step=step, per_epoch=per_epoch, loss=loss, lr=engine.lr(), tokens=tokens_per_step,
                 real=real, elapsed=elapsed, batches=batches, memory=result.memory_now)  # fmt: skip
            if progress is not None:
                progress(step + 1, total_steps, loss, tokens_per_step / elapsed, result.memory_now)
        if step + 1 == total_steps or (args.save_steps and (step + 1) % args.save_steps == 0):
            _save(
                engine, run_dir, step + 1, setup=setup, args=args, rank=rank, world=world, per_epoch=per_epoch
            )
            saved = step + 1
    if result.stopped_by and result.end_step > saved:
        _save(
            engine,
            run_dir,
            result.end_step,
            setup=setup,
            args=args,
            rank=rank,
            world=world,
            per_epoch=per_epoch,
        )
        result.saved_on_stop = True
    return result


def _save(engine: Any, run_dir: Path, step: int, *, setup: TrainSetup, args: rd.TrainArgs, rank: int, world: int,
          per_epoch: int) -> None:  # fmt: skip
    state = _state(step, setup=setup, args=args, world=world, per_epoch=per_epoch)
    save_checkpoint(
        engine, run_dir, step=step, rank=rank, world=world, state=state, keep=args.save_total_limit
    )


def _record(result: LoopResult, loss: float, elapsed: float, step: int, device: Any) -> None:
    result.memory_now = memory_now(device.type)
    for key, value in result.memory_now.items():
        result.memory_peak[key] = max(result.memory_peak.get(key, 0), value)
    result.losses.append(loss)
    result.step_times_s.append(elapsed)
    result.end_step = step + 1


def _log(run_dir: Path, *, step: int, per_epoch: int, loss: float, lr: float, tokens: int, real: int,
         elapsed: float, batches: list[list[int]], memory: dict[str, int]) -> None:  # fmt: skip
    path = run_dir / "metrics.jsonl"
    with rd.writing("the metrics log", path):
        rd.append_jsonl(path, {
            "step": step + 1, "epoch": step // per_epoch, "loss": loss, "lr": lr, "tokens": tokens,
            "real_tokens_rank0": real, "step_time_s": elapsed, "samples_rank0": [i for b in batches for i in b],
            "memory_rank0": memory,
        })  # fmt: skip
