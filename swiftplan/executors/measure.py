"""`swiftplan fit --measure`: run the top candidates for a few real steps and rank them by what they did.

The analytic model proposes, the hardware disposes: each candidate's model is built from its config with
random weights by the train executor's own `load_model` (peft LoRA, checkpointing, the plan's dtype) and
`build_optimizer`, stepped through its `TorchEngine` on random token ids (micro-batch × seq_len, every
micro-batch of an optimizer step), and timed after one warm-up step. A CUDA out-of-memory is a pruned
trial. Nothing here fakes a measurement: without a CUDA device `--measure` refuses unless
`--measure-device cpu` asks for the same path on the CPU (smoke runs and tests; CPU timings do not rank
GPU plans). Candidates this one process cannot run (bitsandbytes weights from a random init, ZeRO,
tensor/pipeline parallelism, bitsandbytes on CPU) are skipped with the reason.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from swiftplan.errors import SwiftplanError
from swiftplan.planner.setup import TrainSetup


@dataclass(frozen=True, kw_only=True, slots=True)
class Measurement:
    """What a short real run of one candidate showed."""

    setup: TrainSetup
    """The set-up that ran."""
    peak_allocated_bytes: int = 0
    """torch.cuda.max_memory_allocated() over the run (CPU: peak RSS of the process)."""
    peak_reserved_bytes: int = 0
    """torch.cuda.max_memory_reserved() over the run (CPU: peak RSS of the process)."""
    tokens_per_s: float = 0.0
    """Measured training tokens per second on one device (after the warm-up step)."""
    step_times_s: tuple[float, ...] = ()
    """Wall time of each timed optimizer step."""
    oom: bool = False
    """The run ran out of device memory (a pruned trial)."""
    skipped: str = ""
    """Why the candidate was not run (empty when it ran)."""
    device: str = "cuda"
    """torch device type it ran on."""
    layers: int | None = None
    """Decoder layers of the measured model when --measure-layers cut it (None: the full depth)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Anything else worth keeping (the error text of an OOM)."""

    @property
    def ran(self) -> bool:
        """Timed steps completed."""
        return not self.oom and not self.skipped


def cuda_available() -> bool:
    """Whether torch sees a CUDA (or ROCm) device; False without a GPU driver or without torch.

    The driver files are checked first so a machine without a GPU answers without importing torch."""
    import os
    import sys

    if sys.platform == "linux" and not any(
        os.path.exists(p) for p in ("/proc/driver/nvidia/version", "/dev/kfd")
    ):
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def require_cuda() -> None:
    """Raise the one-paragraph error `--measure` gives on a machine without a CUDA GPU."""
    if not cuda_available():
        raise SwiftplanError(
            "--measure runs the top candidates for a few steps on this machine's GPU, and no CUDA device was found "
            "(or torch is not installed).",
            hint="Drop --measure to plan from the model alone, run it on the machine that will train, "
            "or add --measure-device cpu for a (slow) smoke run whose timings do not rank GPU plans.",
        )


def skip_reason(setup: TrainSetup, device_type: str) -> str:
    """Why this one-process, random-init measurement cannot run `setup` here ('' when it can)."""
    from swiftplan.executors.train.device import DeviceInfo, cpu_accelerator, detect_device, preflight

    info = (
        DeviceInfo(torch_device="cpu", accelerator=cpu_accelerator(), count=1)
        if device_type == "cpu"
        else detect_device("cuda")
    )
    reasons = preflight(setup, info, processes_per_node=1, random_init=True)
    if setup.parallel.zero and not any("ZeRO" in r for r in reasons):
        reasons.append(
            f"ZeRO stage {setup.parallel.zero} shards over several processes; --measure runs one process."
        )
    return " ".join(reasons)


def _random_batch(setup: TrainSetup, vocab_size: int, device: Any, generator: Any) -> dict[str, Any]:
    import torch

    ids = torch.randint(0, vocab_size, (setup.micro_batch, setup.seq_len), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def run_steps(engine: Any, batches: Sequence[dict[str, Any]], *, steps: int, device: Any) -> list[float]:
    """`steps` optimizer steps of the plan's micro-batches (all of them per step); wall time of each."""
    import torch

    from swiftplan.executors.train.loop import label_tokens

    items = max(sum(label_tokens(batch["labels"]) for batch in batches), 1)  # the step's loss normaliser
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        for i, batch in enumerate(batches):
            engine.micro_step(batch, last=i == len(batches) - 1, num_items=items)
        engine.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - started)
    return times


def _free(device_type: str) -> None:
    import torch

    gc.collect()
    if device_type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _measure_one(model: str, setup: TrainSetup, *, steps: int, layers: int | None, device: Any,
                 vocab_size: int, overrides: dict[str, Any], seed: int) -> Measurement:  # fmt: skip
    import torch

    from swiftplan.executors.train.engine import TorchEngine
    from swiftplan.executors.train.model import build_optimizer, load_model, trainable_parameters
    from swiftplan.executors.train.report import peak_memory

    net = optimizer = engine = None
    try:
        net = load_model(model, setup, device=device, random_init=True, seed=seed, vocab_size=vocab_size,
                         config_overrides=overrides)  # fmt: skip
        net.train()
        optimizer = build_optimizer(setup, trainable_parameters(net), lr=1e-5, weight_decay=0.0,
                                    device_type=device.type)  # fmt: skip
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _step: 1.0)
        engine = TorchEngine(net, optimizer, scheduler, setup=setup, device=device, world=1,
                             max_grad_norm=1.0)  # fmt: skip
        generator = torch.Generator().manual_seed(seed)
        batches = [_random_batch(setup, vocab_size, device, generator) for _ in range(setup.grad_accum)]
        run_steps(engine, batches, steps=1, device=device)  # warm-up: kernels, allocator, optimizer state
        times = run_steps(engine, batches, steps=steps, device=device)
        peak = peak_memory(device.type, {})
        tokens = setup.micro_batch * setup.seq_len * setup.grad_accum * steps
        return Measurement(
            setup=setup,
            peak_allocated_bytes=int(peak.get("peak_allocated_bytes") or 0),
            peak_reserved_bytes=int(peak.get("peak_reserved_bytes") or 0),
            tokens_per_s=tokens / sum(times),
            step_times_s=tuple(times),
            device=device.type,
            layers=layers,
        )
    except torch.cuda.OutOfMemoryError as error:
        peak_alloc = torch.cuda.max_memory_allocated() if device.type == "cuda" else 0
        return Measurement(setup=setup, oom=True, peak_allocated_bytes=peak_alloc, device=device.type,
                           layers=layers, extra={"error": str(error).splitlines()[0][:300] if str(error) else "OOM"})  # fmt: skip
    finally:
        del engine, optimizer, net
        _free(device.type)


def measure_candidates(
    model: str,
    setups: Sequence[TrainSetup],
    *,
    steps: int = 3,
    layers: int | None = None,
    device: str = "cuda",
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> list[Measurement]:
    """Run each set-up for one warm-up and `steps` timed optimizer steps on one device; one Measurement each.

    `layers` builds the model with that many decoder layers (faster; recorded in the result). `device` is
    'cuda' (refused without a CUDA device) or 'cpu'.
    """
    if steps < 1:
        raise SwiftplanError(f"--measure-steps must be at least 1, got {steps}.")
    if layers is not None and layers < 1:
        raise SwiftplanError(f"--measure-layers must be at least 1, got {layers}.")
    if device not in ("cuda", "cpu"):
        raise SwiftplanError(f"--measure-device takes cuda or cpu, got {device!r}.")
    if device == "cuda":
        require_cuda()
    import torch

    from swiftplan.executors.model_source import resolve_model

    hf_config = dict(resolve_model(model).hf_config)
    vocab_size = int(hf_config.get("vocab_size") or hf_config.get("text_config", {}).get("vocab_size") or 0)
    if vocab_size < 1:
        raise SwiftplanError(f"{model}: its config has no vocab_size; --measure cannot make token batches.")
    overrides: dict[str, Any] = {}
    if layers is not None:
        overrides["num_hidden_layers"] = layers
        if isinstance(hf_config.get("layer_types"), list):
            overrides["layer_types"] = hf_config["layer_types"][:layers]
    torch_device = torch.device(device)
    out = []
    for index, setup in enumerate(setups, 1):
        reason = skip_reason(setup, device)
        if reason:
            out.append(Measurement(setup=setup, skipped=reason, device=device, layers=layers))
            continue
        if progress is not None:
            progress(f"measuring candidate {index}/{len(setups)} on {device} ...")
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        out.append(_measure_one(model, setup, steps=steps, layers=layers, device=torch_device,
                                vocab_size=vocab_size, overrides=overrides, seed=seed))  # fmt: skip
    return out


def record_trials(study: Any, evaluations: Sequence[Any], measurements: Sequence[Measurement], *,
                  objective: str) -> list[int]:  # fmt: skip
    """Add one trial per run measurement to `study`: complete (the study's objective values with time and
    cost scaled by predicted/measured speed) or pruned on OOM; user attrs carry what was measured.
    Returns the new trials' numbers. Skipped candidates are not recorded."""
    import optuna

    numbers = []
    for rank, (evaluation, m) in enumerate(zip(evaluations, measurements, strict=True), 1):
        if m.skipped:
            continue
        attrs = {
            "measured": True,
            "measured_candidate": rank,
            "measured_setup": label(m.setup),
            "measured_tokens_per_s": m.tokens_per_s,
            "measured_peak_allocated": m.peak_allocated_bytes,
            "measured_peak_reserved": m.peak_reserved_bytes,
            "measured_device": m.device,
            "measured_layers": m.layers,
            "predicted_tokens_per_s": per_device_tokens(evaluation),
            "predicted_peak_allocated": evaluation.estimate.memory.peak_allocated,
            "oom": m.oom,
        }
        if m.oom:
            trial = optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, user_attrs=attrs)
        else:
            ratio = per_device_tokens(evaluation) / m.tokens_per_s if m.tokens_per_s > 0 else 1.0
            if len(study.directions) > 1:
                values = list(evaluation.pareto_values(len(study.directions) > 3))
                values[:2] = [v * ratio for v in values[:2]]  # time and cost follow the speed
                trial = optuna.trial.create_trial(values=values, user_attrs=attrs)
            else:
                value = evaluation.objective(objective)
                value = value * ratio if objective in ("time", "cost") else value / ratio
                trial = optuna.trial.create_trial(value=value, user_attrs=attrs)
        study.add_trial(trial)
        numbers.append(study.get_trials(deepcopy=False)[-1].number)
    return numbers


def label(setup: TrainSetup) -> str:
    """A short one-line name of a set-up for the table and the trial's user attrs."""
    parts: list[str] = [setup.method]
    if setup.lora is not None and setup.method != "full":
        parts.append(f"r{setup.lora.rank}")
    if setup.quant != "none":
        parts.append(setup.quant)
    parts += [setup.precision, setup.optimizer, f"mb {setup.micro_batch}×{setup.grad_accum}"]
    if setup.grad_ckpt:
        parts.append("ckpt")
    if setup.parallel.zero:
        parts.append(f"ZeRO-{setup.parallel.zero}")
    return " ".join(parts)


def per_device_tokens(evaluation: Any) -> float:
    """The prediction's training tokens/s per device (what one measured process compares with)."""
    return evaluation.tokens_per_s / max(1, evaluation.gpus)


def ranked(measurements: Sequence[Measurement]) -> list[int]:
    """Indices of the measurements that ran, fastest measured first."""
    ran = [i for i, m in enumerate(measurements) if m.ran]
    return sorted(ran, key=lambda i: -measurements[i].tokens_per_s)
