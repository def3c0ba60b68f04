"""Tracing verifier: run the real transformers/peft code over fake tensors and measure live memory.

`trace_training` builds the model from its config.json dict with no real memory (meta device, then
`FakeTensorMode`), applies peft LoRA when asked, and runs real training steps -- forward with labels,
the model's own loss, backward, `optimizer.step()`, `zero_grad(set_to_none=True)` -- while
`MemoryTracker` counts every tensor storage allocated and freed. The last step is measured (the first
creates the optimizer state). `trace_serving` does a prefill with a `DynamicCache` and decode steps.

What a CUDA run would do differently is written into `TraceResult.notes` (see `trace_session.base_notes`).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from swiftplan.executors.trace_features import (
    OptimizerInBackward,
    TraceFeatures,
    checkpoint_selected,
    offload_decoder,
)
from swiftplan.executors.trace_memory import CATEGORIES, CUDA_BLOCK_BYTES, MemoryTracker
from swiftplan.executors.trace_model import (
    DTYPES,
    apply_lora,
    build_meta_causal_lm,
    load_config,
    lora_options,
)
from swiftplan.executors.trace_quant import QuantBase, quantize_meta_model
from swiftplan.executors.trace_session import (
    TRACE_DEVICE,
    attention_notes,
    base_notes,
    fake_session,
    hook_cache,
)
from swiftplan.planner.caching_allocator import replay

Method = Literal["full", "lora"]
Precision = Literal["bf16", "fp16", "fp32", "amp-bf16", "amp-fp16"]
OptimizerName = Literal["adamw", "adamw-fused", "adamw-for-loop", "sgd", "adafactor"]
LossName = Literal["full", "chunked", "fused_head"]
"""The model's own ForCausalLMLoss, torchtune's chunked cross-entropy (`trace_loss.chunked_loss`) or TRL 1.16's
fused LM head (`trace_loss.fused_head_loss`)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class TraceResult:
    """What one traced training step (or serving run) kept alive, in bytes."""

    peak_bytes: int
    """Max live tensor bytes during the traced step."""
    at_peak: dict[str, int]
    """Category -> bytes alive at the peak moment (keys: see `trace_memory.CATEGORIES`)."""
    phase_peaks: dict[str, int]
    """'forward'/'backward'/'optimizer' (training) or 'prefill'/'decode' (serving) -> peak bytes."""
    params: int
    """Total parameters (base + adapters)."""
    trainable_params: int
    """Parameters with requires_grad."""
    seconds: float
    """Wall time of the trace, model construction included."""
    notes: tuple[str, ...]
    """What could not be traced and what was assumed."""
    peak_reserved: int = 0
    """max_memory_reserved over the measured step: the traced allocations and frees, the model's own
    included, replayed through the caching allocator's rules (`planner.caching_allocator.replay`)."""
    events: tuple[tuple[int, int], ...] = ()
    """With `keep_events`: every allocation (serial, bytes) and free (serial, -1) in order."""
    measured_from: int = 0
    """Index in `events` of the first event of the measured step(s) (`replay`'s `measure_from`)."""

    def __post_init__(self) -> None:
        if set(self.at_peak) != set(CATEGORIES):
            raise ValueError(f"at_peak keys must be {CATEGORIES}, got {sorted(self.at_peak)}")
        if self.trainable_params > self.params:
            raise ValueError("trainable_params cannot exceed params")


def _result(
    tracker: MemoryTracker,
    model: nn.Module,
    started: float,
    notes: list[str],
    calls: Counter[str],
    *,
    training: bool,
    keep_events: bool = False,
) -> TraceResult:
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    notes = notes + attention_notes(calls, tracker.ops_seen)
    order = ("forward", "backward", "optimizer") if training else ("prefill", "decode")
    phase_peaks = {k: tracker.phase_peaks[k] for k in order if k in tracker.phase_peaks}
    return TraceResult(
        peak_bytes=tracker.peak_bytes,
        at_peak=tracker.at_peak(),
        phase_peaks=phase_peaks,
        params=params,
        trainable_params=trainable,
        seconds=time.perf_counter() - started,
        notes=tuple(base_notes(tracker.round_bytes) + notes),
        peak_reserved=replay(tracker.events, measure_from=tracker.events_from).peak_reserved,
        events=tuple(tracker.events) if keep_events else (),
        measured_from=tracker.events_from if keep_events else 0,
    )


# -- training ------------------------------------------------------------------------------------------


def _make_optimizer(name: OptimizerName, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if name == "adamw":
        # foreach=True is what torch picks by default for CUDA tensors (fake CPU ones would get the
        # per-parameter loop); it allocates temporaries for the whole group during step().
        return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, foreach=True)
    if name == "adamw-fused":  # transformers' Trainer default ("adamw_torch_fused") with torch >= 2.8
        return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, fused=True)
    if name == "adamw-for-loop":  # one parameter at a time (_single_tensor_adamw)
        return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, foreach=False, fused=False)
    if name == "sgd":
        return torch.optim.SGD(params, lr=1e-3, momentum=0.0, foreach=True)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=1e-3, relative_step=False, scale_parameter=False, warmup_init=False)
    raise ValueError(f"unknown optimizer {name!r}; valid: adamw, adamw-fused, adamw-for-loop, sgd, adafactor")


@dataclass(kw_only=True)
class TrainingRig:
    """A fake-tensor model, optimizer and tracker, ready to run real training steps (see `training_rig`)."""

    model: nn.Module
    """The transformers model (peft-wrapped for LoRA) with fake parameters."""
    tracker: MemoryTracker
    optimizer: torch.optim.Optimizer
    batch: int
    seq: int
    autocast_dtype: torch.dtype | None
    """Lower-precision dtype for AMP, None for pure precision."""
    notes: list[str]
    calls: Counter[str]
    """Attention kernel paths taken (see `trace_patches.cuda_like_kernels`)."""
    loss: LossName = "full"
    """Loss implementation."""
    loss_chunks: int = 8
    """Chunked loss: pieces of the logits."""
    padded: bool = False
    """The batch carries padding, and the model reads the attention mask that marks it (`_attention_mask`)."""

    def forward(self) -> torch.Tensor:
        """Forward with labels = input_ids; return the loss (the output, with its logits, is dropped
        as `Trainer.compute_loss` drops it)."""
        input_ids = torch.zeros((self.batch, self.seq), dtype=torch.long)
        mask = self._attention_mask()
        if self.loss == "chunked":
            from swiftplan.executors.trace_loss import chunked_loss

            return chunked_loss(self.model, self.tracker, input_ids, chunks=self.loss_chunks,
                                autocast=self._autocast(), attention_mask=mask)  # fmt: skip
        if self.loss == "fused_head":
            from swiftplan.executors.trace_loss import fused_head_loss

            return fused_head_loss(self.model, input_ids, autocast=self._autocast(), attention_mask=mask)
        if self.autocast_dtype is None:
            return self.model(input_ids=input_ids, attention_mask=mask, labels=input_ids).loss
        from accelerate.utils import convert_to_fp32

        with torch.autocast(TRACE_DEVICE, dtype=self.autocast_dtype):
            output = self.model(input_ids=input_ids, attention_mask=mask, labels=input_ids)
        with self.tracker.category("logits"):  # accelerate's convert_outputs_to_fp32 under native AMP
            output = convert_to_fp32(output)
        return output.loss

    def _attention_mask(self) -> torch.Tensor | None:
        """With `padded`, an attention mask whose last row ends in padding, as a collator makes it: transformers
        cannot read a fake mask's values, so it builds the B x 1 x S x S mask a padded batch gets
        (masking_utils._ignore_causal_mask_sdpa); None otherwise (every row full: SDPA runs causal, no mask)."""
        if not self.padded:
            return None
        mask = torch.ones((self.batch, self.seq), dtype=torch.long)
        mask[-1, -1] = 0
        return mask

    def _autocast(self) -> Any:
        """A context manager factory for AMP (`torch.autocast` to the autocast dtype), or None."""
        from functools import partial

        dtype = self.autocast_dtype
        return None if dtype is None else partial(torch.autocast, TRACE_DEVICE, dtype=dtype)

    def step(self) -> None:
        """One training step, each part in its phase."""
        with self.tracker.in_phase("forward"):
            loss = self.forward()
        with self.tracker.in_phase("backward"), self.tracker.category("logits"):
            loss.backward()
        del loss
        with self.tracker.in_phase("optimizer"):
            self.optimizer.step()
            _classify_optimizer_state(self.tracker, self.optimizer)
            self.optimizer.zero_grad(set_to_none=True)


def _check_training_args(method: str, precision: str, batch: int, seq: int) -> None:
    """Refuse a set-up the rig cannot trace (ValueError naming the bad value)."""
    if method not in ("full", "lora"):
        raise ValueError(f"method must be 'full' or 'lora', got {method!r}")
    if precision not in ("bf16", "fp16", "fp32", "amp-bf16", "amp-fp16"):
        raise ValueError(f"unknown precision {precision!r}; valid: bf16, fp16, fp32, amp-bf16, amp-fp16")
    if batch < 1 or seq < 2:
        raise ValueError("batch >= 1 and seq >= 2 are required")


def _enable_checkpointing(model: Any, notes: list[str]) -> None:
    """Non-reentrant activation checkpointing around every decoder layer, as transformers enables it (on a
    transformers `PreTrainedModel`)."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:  # transformers < 5
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    notes.append("gradient checkpointing: non-reentrant torch.utils.checkpoint around every decoder layer")


def _numerics_notes(precision: str, optimizer: str) -> list[str]:
    """What the trace's autocast and optimizer do differently from a CUDA run."""
    notes = []
    if precision.startswith("amp-"):
        low = precision.removeprefix("amp-")
        notes.append(
            f"{precision}: fp32 parameters, forward and loss under CPU autocast to {low} (op lists differ "
            "slightly from CUDA autocast; linear/matmul/SDPA are lower-precision on both); outputs "
            "converted to fp32 as accelerate does; no GradScaler"
        )
    if optimizer == "adamw":
        notes.append(
            "AdamW foreach (torch's default on CUDA): step() holds a sqrt(exp_avg_sq) temporary the size "
            "of all trainable params; 'adamw-fused' (the HF Trainer default) has none"
        )
    if optimizer == "adamw-for-loop":
        notes.append(
            "AdamW for_loop: step() holds sqrt(exp_avg_sq) and its quotient, each the size of one parameter"
        )
    return notes


def _build_model(
    hf_config: dict[str, Any], *, method: Method, dtype: torch.dtype, lora: dict[str, Any], grad_ckpt: bool,
    attn_implementation: str, features: TraceFeatures, notes: list[str], quant_base: QuantBase | None = None,
    compute_dtype: torch.dtype | None = None,
) -> nn.Module:  # fmt: skip
    """The meta-device transformers model, checkpointed as `grad_ckpt` and `features` say (every block, or every
    k-th: transformers' every_n_layers before peft, torchtune's rule after), LoRA-wrapped for method lora; with
    `quant_base`, its linear layers in bitsandbytes 4-bit or int8 first (4-bit computing in `compute_dtype`), as
    from_pretrained with a BitsAndBytesConfig loads them (`trace_quant`)."""
    config = load_config(hf_config, notes=notes)
    config.use_cache = False  # transformers' Trainer sets this (TrainingArguments.use_cache=False)
    model = build_meta_causal_lm(config, dtype=dtype, attn_implementation=attn_implementation, notes=notes)
    if quant_base is not None:
        quantize_meta_model(model, quant_base, compute_dtype=compute_dtype or dtype, notes=notes)
    if grad_ckpt and features.ckpt_every == 1:
        _enable_checkpointing(model, notes)
    elif grad_ckpt:
        checkpoint_selected(model, features, notes, after_lora=False)
    if method == "lora":
        model = apply_lora(
            model,
            **lora,
            notes=notes,
            autocast_adapter_dtype=features.adapter_dtype != "model",
            modules_to_save=features.modules_to_save,
        )
        if quant_base is not None:
            quant_base.cast_trainable(model, notes)
    else:
        model.requires_grad_(True)
    if grad_ckpt:
        checkpoint_selected(model, features, notes, after_lora=True)
    return model


@contextlib.contextmanager
def training_rig(
    hf_config: dict[str, Any],
    *,
    method: Method,
    precision: Precision,
    lora_rank: int = 16,
    lora_alpha: int | None = None,
    lora_dropout: float = 0.0,
    lora_targets: Sequence[str] | Literal["all-linear"] = ("q_proj", "v_proj"),
    lora_dora: bool = False,
    optimizer: OptimizerName = "adamw",
    batch: int = 1,
    seq: int = 512,
    grad_ckpt: bool = False,
    attn_implementation: str = "sdpa",
    round_bytes: int = CUDA_BLOCK_BYTES,
    loss: LossName = "full",
    loss_chunks: int = 8,
    features: TraceFeatures | None = None,
    quant_base: QuantBase | None = None,
    padded: bool = False,
) -> Iterator[TrainingRig]:
    """Build the training set-up of `trace_training`; fake and tracking modes are active inside."""
    _check_training_args(method, precision, batch, seq)
    if quant_base is not None:
        quant_base.require_lora(method)
    notes: list[str] = []
    amp = precision.startswith("amp-")
    features = features or TraceFeatures()
    lora = lora_options(
        rank=lora_rank, alpha=lora_alpha, dropout=lora_dropout, targets=lora_targets, dora=lora_dora
    )
    model = _build_model(hf_config, method=method, dtype=torch.float32 if amp else DTYPES[precision], lora=lora,
                         grad_ckpt=grad_ckpt, attn_implementation=attn_implementation, features=features, notes=notes,
                         quant_base=quant_base, compute_dtype=DTYPES[precision.removeprefix("amp-")])  # fmt: skip
    notes += _numerics_notes(precision, optimizer)
    if padded:
        notes.append("padded batch: the attention mask marks the last row's last token as padding, so transformers "
                     "hands SDPA a B x 1 x S x S mask (planner/padding.py)")  # fmt: skip
    calls: Counter[str] = Counter()
    with fake_session(model, round_bytes, calls) as tracker, contextlib.ExitStack() as stack:
        model.train()
        if loss == "fused_head":  # TRL's fused LM head, its kernels on their CUDA path
            from swiftplan.executors.trace_loss import install_fused_head
            from swiftplan.executors.trace_trl import cuda_like_trl
            from swiftplan.executors.trace_values import KnownValues

            install_fused_head(model, tracker)
            stack.enter_context(cuda_like_trl())
            stack.enter_context(KnownValues())  # the label mask's values (trace_loss.fused_head_loss)
            notes.append(
                "loss: TRL 1.16's fused LM head (add_fused_lm_head, ChunkedLogProbFunction on its CUDA path)"
            )
        trainable = [p for p in model.parameters() if p.requires_grad]
        for p in trainable:
            p.register_post_accumulate_grad_hook(lambda p: tracker.classify([p.grad], "gradients"))
        if features.activation_offload:  # the decoder's saved tensors to host memory (trace_features)
            offload_decoder(model, tracker, notes)
        if features.optimizer_in_backward:  # one optimizer per parameter, stepped by its grad hook
            stepped: torch.optim.Optimizer = OptimizerInBackward(
                trainable,
                lambda ps: _make_optimizer(optimizer, ps),
                tracker=tracker,
                after_step=lambda opt: _classify_optimizer_state(tracker, opt),
            )
            notes.append(
                f"optimizer in backward: one {optimizer} per parameter, stepped from its post-accumulate-grad "
                "hook and its gradient set to None there (torchtune OptimizerInBackward)"
            )
        else:
            stepped = _make_optimizer(optimizer, trainable)
        yield TrainingRig(
            model=model,
            tracker=tracker,
            optimizer=stepped,
            batch=batch,
            seq=seq,
            autocast_dtype=DTYPES[precision.removeprefix("amp-")] if amp else None,
            notes=notes,
            calls=calls,
            loss=loss,
            loss_chunks=loss_chunks,
            padded=padded,
        )


def trace_training(
    hf_config: dict[str, Any],
    *,
    method: Method,
    precision: Precision,
    lora_rank: int = 16,
    lora_alpha: int | None = None,
    lora_dropout: float = 0.0,
    lora_targets: Sequence[str] | Literal["all-linear"] = ("q_proj", "v_proj"),
    lora_dora: bool = False,
    optimizer: OptimizerName = "adamw",
    batch: int = 1,
    seq: int = 512,
    grad_ckpt: bool = False,
    attn_implementation: str = "sdpa",
    steps: int = 2,
    round_bytes: int = CUDA_BLOCK_BYTES,
    loss: LossName = "full",
    loss_chunks: int = 8,
    features: TraceFeatures | None = None,
    seq_lengths: Sequence[int] = (),
    keep_events: bool = False,
    quant_base: QuantBase | None = None,
    padded: bool = False,
) -> TraceResult:
    """Trace `steps` real training steps and measure the last one.

    `seq_lengths`: one step per length instead (batches of varying shape, as dynamic padding makes
    them), all measured: the peaks are the run's, and `peak_reserved` shows what the changing shapes
    leave reserved. `keep_events` returns the allocation log itself (`TraceResult.events`).

    `precision`: "bf16"/"fp16"/"fp32" create the model in that dtype (optimizer state follows the
    parameters, no autocast); "amp-bf16"/"amp-fp16" keep fp32 parameters and run forward and loss under
    autocast, as the HF Trainer does with `bf16=True` on an fp32 model. `round_bytes=1` turns off the
    512-byte allocator rounding (for exact hand checks). `loss="chunked"` computes the loss over
    `loss_chunks` pieces of the logits as torchtune does (`trace_loss.chunked_loss`). `features` runs
    selective checkpointing and activation offloading (`trace_features`). `quant_base` loads the base in
    bitsandbytes NF4/FP4 or int8 (LoRA only) and, when it says so, runs peft's k-bit preparation (`trace_quant`).
    `padded`: the batch's last row ends in padding, so the model gets an attention mask that says so.
    """
    if steps < 1:
        raise ValueError("steps >= 1 is required")
    started = time.perf_counter()
    with training_rig(
        hf_config,
        method=method,
        precision=precision,
        lora_rank=lora_rank,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        lora_targets=lora_targets,
        lora_dora=lora_dora,
        optimizer=optimizer,
        batch=batch,
        seq=seq,
        grad_ckpt=grad_ckpt,
        attn_implementation=attn_implementation,
        round_bytes=round_bytes,
        loss=loss,
        loss_chunks=loss_chunks,
        features=features,
        quant_base=quant_base,
        padded=padded,
    ) as rig:
        if seq_lengths:
            rig.tracker.start_measuring()
            for length in seq_lengths:
                rig.seq = length
                rig.step()
        for step in range(0 if seq_lengths else steps):
            if step == steps - 1:
                rig.tracker.start_measuring()
            rig.step()
        rig.tracker.stop_measuring()
    return _result(
        rig.tracker, rig.model, started, rig.notes, rig.calls, training=True, keep_events=keep_events
    )


def _classify_optimizer_state(tracker: MemoryTracker, opt: torch.optim.Optimizer) -> None:
    """optimizer.state tensors are "optimizer"; Adam's `step` counters live on the CPU on a real
    non-capturable, non-fused CUDA run, so they are not counted there (fused keeps them on the device)."""
    cpu_steps = isinstance(opt, torch.optim.Adam) and not opt.defaults.get("fused")
    for state in opt.state.values():
        step = state.get("step")
        if cpu_steps and isinstance(step, torch.Tensor):
            tracker.forget([step])
        kept = (
            v for k, v in state.items() if isinstance(v, torch.Tensor) and not (cpu_steps and k == "step")
        )
        tracker.classify(kept, "optimizer")


# -- serving -------------------------------------------------------------------------------------------


def trace_serving(
    hf_config: dict[str, Any],
    *,
    dtype: Literal["bf16", "fp16", "fp32"] = "bf16",
    batch: int = 1,
    prompt_len: int = 512,
    decode_steps: int = 1,
    attn_implementation: str = "sdpa",
    round_bytes: int = CUDA_BLOCK_BYTES,
) -> TraceResult:
    """Trace a prefill of batch x prompt_len with a `DynamicCache`, then `decode_steps` one-token steps.

    Mirrors `generate()`: no grad, logits only for the last position (`logits_to_keep=1`), the next
    token from an fp32 copy of those logits. "kv_cache" is every tensor the cache holds.
    """
    if batch < 1 or prompt_len < 1 or decode_steps < 0:
        raise ValueError("batch >= 1, prompt_len >= 1 and decode_steps >= 0 are required")
    from transformers import DynamicCache

    started = time.perf_counter()
    notes: list[str] = []
    config = load_config(hf_config, notes=notes)
    config.use_cache = True
    model = build_meta_causal_lm(
        config, dtype=DTYPES[dtype], attn_implementation=attn_implementation, notes=notes
    )
    calls: Counter[str] = Counter()
    with fake_session(model, round_bytes, calls) as tracker, torch.no_grad():
        model.eval()
        tracker.start_measuring()
        model_config: Any = model.config  # the config as the model adjusted it (attention, dtype)
        cache = DynamicCache(config=model_config)
        hook_cache(tracker, cache)
        tokens = torch.zeros((batch, prompt_len), dtype=torch.long)
        for phase, n in (("prefill", 1), ("decode", decode_steps)):
            if n == 0:
                continue
            with tracker.in_phase(phase):
                for _ in range(n):
                    out = model(input_ids=tokens, past_key_values=cache, use_cache=True, logits_to_keep=1)
                    with tracker.category("logits"):
                        next_logits = out.logits[:, -1, :].to(copy=True, dtype=torch.float32)
                    del out
                    tokens = next_logits.argmax(dim=-1, keepdim=True)
                    del next_logits
        tracker.stop_measuring()
    notes.append(
        f"DynamicCache (torch.cat per decode step); cache holds {prompt_len + decode_steps} tokens at the end"
    )
    return _result(tracker, model, started, notes, calls, training=False)
