"""Forward/backward/step and checkpoint state for one process: plain torch (single or DDP) or DeepSpeed.

Both engines take a micro-batch at a time; the loop decides when a step ends and how many label
tokens the whole step has on all ranks (`num_items`). Each micro-batch's loss is its summed token loss
/ num_items, times the world size because DDP and DeepSpeed average gradients over ranks: the step's
gradient is then that of the mean token loss over the whole step, as in the transformers Trainer
(transformers 5.25.0 trainer.py: `_get_num_items_in_batch` counts labels[..., 1:] != -100 over the
step's micro-batches and gathers it over ranks; `compute_loss` passes it to the model, whose
ForCausalLMLoss sums and divides by it, and multiplies by `num_processes`; `training_step` then does not
divide by the accumulation steps, and tells DeepSpeed `scale_wrt_gas=False`). The torch engine skips
DDP's all-reduce except on the last micro-batch, autocasts under amp-* (with a GradScaler for amp-fp16)
and clips; DeepSpeed does the same from ds_config.json. Checkpoint files are written through Python
file objects so that a full disk surfaces as an OSError with its errno.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import random
from pathlib import Path
from typing import Any

from swiftplan.planner.dtypes import compute_dtype
from swiftplan.planner.setup import TrainSetup


def _batch_to(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def accepts_loss_kwargs(model: Any) -> bool:
    """Whether the model's forward takes **kwargs (and so `num_items_in_batch`), checked on the model
    under a peft wrapper as the Trainer does (`model_accepts_loss_kwargs`)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters.values()
    return any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params)


def normalised_loss(call: Any, batch: dict[str, Any], *, num_items: int, kwargs_ok: bool) -> Any:
    """Summed token loss of `batch` / num_items: through the model's loss (`num_items_in_batch`) when it
    takes it, else its mean loss times this batch's label tokens / num_items."""
    if kwargs_ok:
        return call(**batch, num_items_in_batch=num_items).loss
    out = call(**batch)
    mine = int((batch["labels"][..., 1:] != -100).sum())
    return out.loss * (mine / num_items) if mine else out.logits.sum() * 0.0


def torch_save(obj: Any, path: Path) -> None:
    """torch.save through a Python file object: a failed write raises OSError (ENOSPC, EROFS ...) instead
    of the C++ writer's 'unexpected pos' RuntimeError."""
    import torch

    from swiftplan.executors.train.run_dir import named

    with named(path), open(path, "wb") as handle:
        torch.save(obj, handle)


def rng_state(device_type: str) -> dict[str, Any]:
    """Python, torch (and CUDA) RNG states, so dropout and sampling continue exactly after a resume."""
    import torch

    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if device_type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved."""
    import torch

    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def save_weights(module: Any, directory: Path) -> None:
    """Adapter in peft format (adapter_model.safetensors + adapter_config.json), or the full model."""
    directory.mkdir(parents=True, exist_ok=True)
    module.save_pretrained(directory, safe_serialization=True)


def load_weights(module: Any, directory: Path) -> None:
    """Load what `save_weights` wrote into `module` in place."""
    from safetensors.torch import load_file

    if (directory / "adapter_model.safetensors").is_file():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(module, load_file(directory / "adapter_model.safetensors"))
        return
    index = directory / "model.safetensors.index.json"
    if (
        index.is_file()
    ):  # sharded: every file the index names (where the helper lives moved in transformers 5)
        state: dict[str, Any] = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state.update(load_file(directory / shard))
    else:
        state = load_file(directory / "model.safetensors")
    module.load_state_dict(state, strict=False)


class TorchEngine:
    """Single process or DistributedDataParallel, with the plan's autocast and the planned optimizer."""

    def __init__(self, model: Any, optimizer: Any, scheduler: Any, *, setup: TrainSetup, device: Any,
                 world: int, max_grad_norm: float) -> None:  # fmt: skip
        import torch

        self.module = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.device = device
        self.world = world
        self.kwargs_ok = accepts_loss_kwargs(model)
        self.max_grad_norm = max_grad_norm
        self.params = [p for p in model.parameters() if p.requires_grad]
        amp = setup.precision.startswith("amp-")
        self.autocast_dtype = getattr(torch, {"bf16": "bfloat16", "fp16": "float16"}[compute_dtype(setup.precision)]) if amp else None  # fmt: skip
        self.scaler = torch.amp.GradScaler(device.type) if setup.precision == "amp-fp16" else None
        self.model = model
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [device.index] if device.type == "cuda" and device.index is not None else None
            self.model = DistributedDataParallel(model, device_ids=ids)

    def micro_step(self, batch: dict[str, Any], *, last: bool, num_items: int) -> float:
        """Forward and backward of one micro-batch; returns its share of the step's loss (summed token
        loss / num_items, before the world-size factor)."""
        import torch

        sync = (
            contextlib.nullcontext() if last or not hasattr(self.model, "no_sync") else self.model.no_sync()
        )
        cast = (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype is not None
                else contextlib.nullcontext())  # fmt: skip
        with sync:
            with cast:
                loss = normalised_loss(self.model, _batch_to(batch, self.device), num_items=num_items,
                                       kwargs_ok=self.kwargs_ok)  # fmt: skip
            scaled = loss * self.world
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        return float(loss.detach())

    def step(self) -> None:
        """Clip, optimizer step, scheduler step, zero the gradients."""
        import torch

        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def save(self, checkpoint: Path, *, rank: int) -> None:
        """Rank 0 writes weights, optimizer, scheduler and scaler; every rank its RNG state."""

        checkpoint.mkdir(parents=True, exist_ok=True)
        if rank == 0:
            save_weights(self.module, checkpoint)
            extra = {"scaler": self.scaler.state_dict()} if self.scaler is not None else {}
            torch_save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), **extra},
                       checkpoint / "trainer_state.pt")  # fmt: skip
        torch_save(rng_state(self.device.type), checkpoint / f"rng-rank{rank}.pt")

    def save_final(self, directory: Path, *, rank: int) -> None:
        """Trained weights in Hugging Face / peft format (rank 0)."""
        if rank == 0:
            save_weights(self.module, directory)

    def load(self, checkpoint: Path, *, rank: int) -> None:
        """Restore what `save` wrote (each rank reads the shared files and its own RNG)."""
        import torch

        load_weights(self.module, checkpoint)
        state = torch.load(checkpoint / "trainer_state.pt", map_location=self.device, weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(torch.load(checkpoint / f"rng-rank{rank}.pt", weights_only=False))


class DeepSpeedEngine:
    """DeepSpeed ZeRO 1-3 (with offload) from the rendered ds_config.json; DeepSpeed accumulates and steps."""

    def __init__(self, model: Any, optimizer: Any, scheduler_factory: Any, *, config: dict[str, Any], device: Any,
                 world: int = 1) -> None:  # fmt: skip
        import deepspeed

        self.world = world
        self.kwargs_ok = accepts_loss_kwargs(model)
        params = [p for p in model.parameters() if p.requires_grad]
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            model_parameters=params,
            optimizer=optimizer,
            lr_scheduler=scheduler_factory,
            config=config,
        )
        self.module = self.engine.module
        self.device = device

    def micro_step(self, batch: dict[str, Any], *, last: bool, num_items: int) -> float:
        loss = normalised_loss(self.engine, _batch_to(batch, self.device), num_items=num_items,
                               kwargs_ok=self.kwargs_ok)  # fmt: skip
        self.engine.backward(loss * self.world, scale_wrt_gas=False)  # normalised over the step already
        self.engine.step()  # an optimizer step only at the accumulation boundary
        return float(loss.detach())

    def step(self) -> None:
        """Nothing: DeepSpeed stepped in the last micro_step."""

    def lr(self) -> float:
        return float(self.engine.get_lr()[0])

    def save(self, checkpoint: Path, *, rank: int) -> None:

        checkpoint.mkdir(parents=True, exist_ok=True)
        self.engine.save_checkpoint(str(checkpoint), tag="deepspeed")
        torch_save(rng_state(self.device.type), checkpoint / f"rng-rank{rank}.pt")

    def save_final(self, directory: Path, *, rank: int) -> None:
        """Trained weights in Hugging Face / peft format (ZeRO-3 shards gathered first; a collective)."""
        state = (
            self.engine._zero3_consolidated_16bit_state_dict()
            if self.engine.zero_optimization_stage() == 3
            else None
        )
        if rank == 0:
            directory.mkdir(parents=True, exist_ok=True)
            self.module.save_pretrained(directory, safe_serialization=True, state_dict=state)

    def load(self, checkpoint: Path, *, rank: int) -> None:
        import torch

        self.engine.load_checkpoint(str(checkpoint), tag="deepspeed")
        set_rng_state(torch.load(checkpoint / f"rng-rank{rank}.pt", weights_only=False))
