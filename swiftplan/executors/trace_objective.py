"""Fake-tensor traces of TRL 1.16's preference, reward-modelling and RL training steps (issue 16).

`trace_objective` builds the model from its config.json dict as `trace_training` does (meta device, then
`FakeTensorMode`; peft LoRA or full fine-tuning), and the reference a frozen copy when the objective
uses one; it then runs TRL's own loss method for one training step (`trace_objective_losses`: DPO, KTO,
CPO, SimPO, ORPO, reward modelling, GRPO on given completions), `loss.backward()`,
`optimizer.step()` and `zero_grad(set_to_none=True)`, with `MemoryTracker` counting every storage. The
last of `steps` steps is measured.

The step's phases: "scoring" (the policy without gradients: KTO's KL sequences, GRPO's old log-probs under
vLLM), "reference" (the reference's no-grad forward, wherever TRL runs it), "forward" (the policy's
decoder), "loss" (from the decoder's output: LM head, log-probs, the objective), "loss backward" (until
the gradient of the decoder's output exists), "backward" (the decoder's), "optimizer". A phase is entered
when its model or module is called (hooks), so a reference forward that TRL runs in the middle of the
loss is measured with the policy's saved activations alive, as on a GPU. The frozen reference copy's parameters are their own category, "reference".
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from swiftplan.executors.trace import (
    OptimizerName,
    _classify_optimizer_state,
    _enable_checkpointing,
    _make_optimizer,
)
from swiftplan.executors.trace_memory import CUDA_BLOCK_BYTES, MemoryTracker
from swiftplan.executors.trace_model import DTYPES, apply_lora, build_meta_causal_lm, load_config
from swiftplan.executors.trace_objective_losses import LossRun
from swiftplan.executors.trace_patches import cuda_like_kernels, fake_safe_optimizers, unpacked_inputs
from swiftplan.executors.trace_quant import QuantBase, bnb_kernels, quantize_meta_model
from swiftplan.executors.trace_session import _causal_lm_of as causal_lm_of
from swiftplan.executors.trace_session import (
    attention_notes,
    base_notes,
    make_fake,
    register_model,
    torch_linear,
)
from swiftplan.executors.trace_trl import TraceAccelerator, cuda_like_trl
from swiftplan.executors.trace_values import KnownValues, known, readable_masks
from swiftplan.planner.objective import ObjectiveSetup, resolve_reference

Kind = Literal["dpo", "kto", "orpo", "simpo", "cpo", "rm", "grpo"]
TRACEABLE: tuple[Kind, ...] = ("dpo", "kto", "orpo", "simpo", "cpo", "rm", "grpo")
PHASES = ("scoring", "reference", "forward", "loss", "loss backward", "backward", "optimizer")
FUSED_HEAD_OUTPUTS: dict[str, tuple[str, ...]] = {
    "dpo": ("log_probs", "entropy", "mean_logits", "is_top1"),  # trl/trainer/dpo_trainer.py:957-960
    "kto": ("log_probs", "entropy", "mean_logits"),  # trl/trainer/kto_trainer.py:967-970
    "grpo": ("log_probs", "entropy"),  # trl/trainer/grpo_trainer.py:1068-1073
}
"""Objectives whose trainer patches the model with `add_fused_lm_head`, and what the head computes."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ObjectiveTrace:
    """What one traced preference/RL training step kept alive, in bytes."""

    kind: str
    """The objective traced."""
    reference: str
    """The reference handling traced (planner.objective.resolve_reference): model, adapters-off,
    precomputed or none."""
    peak_bytes: int
    """Max live tensor bytes during the measured step."""
    at_peak: dict[str, int]
    """Category -> bytes alive at the peak (keys: `trace_memory.CATEGORIES`)."""
    phase_peaks: dict[str, int]
    """Phase (`PHASES`, those that ran) -> its peak bytes."""
    phase_at_peak: dict[str, dict[str, int]]
    """Phase -> category -> bytes alive at that phase's peak."""
    params: int
    """Parameters of the trained model (base + adapters)."""
    trainable_params: int
    """Parameters with requires_grad."""
    reference_params: int
    """Parameters of the frozen reference copy (0 without one)."""
    sequences: int
    """Sequences in the forward with gradients (2 × pairs for paired methods)."""
    seconds: float
    """Wall time of the trace."""
    notes: tuple[str, ...]
    """What is TRL's code, what is glue, what was assumed."""
    largest_at_peak: tuple[tuple[str, int, str], ...] = ()
    """(category, bytes, the op, shape and dtype that made it) of the largest storages alive at the peak."""

    @property
    def peak_phase(self) -> str:
        """The phase whose peak is the step's peak."""
        return max(self.phase_peaks, key=lambda p: self.phase_peaks[p])


# -- models ----------------------------------------------------------------------------------------


def _build_policy(config: Any, kind: str, *, dtype: torch.dtype, attn: str, notes: list[str]) -> nn.Module:
    """The causal LM, or for reward modelling AutoModelForSequenceClassification with one label (its pad
    token set as RewardTrainer sets it from the tokenizer, reward_trainer.py:560-570)."""
    if kind != "rm":
        return build_meta_causal_lm(config, dtype=dtype, attn_implementation=attn, notes=notes)
    from transformers import AutoModelForSequenceClassification

    config.num_labels = 1
    if config.pad_token_id is None:
        config.pad_token_id = 0
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        return AutoModelForSequenceClassification.from_config(config, dtype=dtype, attn_implementation=attn)


def _build_models(hf_config: dict[str, Any], kind: str, reference: str, *, method: str, precision: str,
                  lora: dict[str, Any], grad_ckpt: bool, attn: str, notes: list[str],
                  quant_base: QuantBase | None = None) -> tuple[nn.Module, nn.Module | None]:  # fmt: skip
    """The policy (LoRA or full, checkpointing on) and, for reference="model", a frozen eval-mode copy;
    TRL's fused LM head added where the trainer adds it; with `quant_base`, both on a bitsandbytes base
    (`trace_quant`)."""
    from trl.trainer.utils import add_fused_lm_head, disable_dropout_in_model

    config = load_config(hf_config, notes=notes)
    config.use_cache = False
    dtype = torch.float32 if precision.startswith("amp-") else DTYPES[precision]
    compute = DTYPES[precision.removeprefix("amp-")]
    policy = _build_policy(config, kind, dtype=dtype, attn=attn, notes=notes)
    if quant_base is not None:
        quantize_meta_model(policy, quant_base, compute_dtype=compute, notes=notes)
    if grad_ckpt:
        _enable_checkpointing(policy, notes)
    if method == "lora":
        task = "SEQ_CLS" if kind == "rm" else "CAUSAL_LM"
        policy = apply_lora(policy, notes=notes, task_type=task, **lora)
        if quant_base is not None:
            quant_base.cast_trainable(policy, notes)
    else:
        policy.requires_grad_(True)
    disable_dropout_in_model(policy)  # every TRL config defaults disable_dropout=True
    ref: Any = None
    if reference == "model":
        ref = build_meta_causal_lm(config, dtype=dtype, attn_implementation=attn, notes=[])
        if quant_base is not None:
            quantize_meta_model(ref, quant_base, compute_dtype=compute, notes=[])
        ref.requires_grad_(False)
        ref.eval()  # accelerator.prepare_model(evaluation_mode=True), dpo_trainer.py:990
    if kind in FUSED_HEAD_OUTPUTS:
        add_fused_lm_head(causal_lm_of(policy), outputs=FUSED_HEAD_OUTPUTS[kind])
        if ref is not None:
            add_fused_lm_head(ref)
    return policy, ref


# -- the session and its hooks ---------------------------------------------------------------------


@contextlib.contextmanager
def _session(policy: nn.Module, ref: nn.Module | None, round_bytes: int,
             calls: Counter[str]) -> Iterator[MemoryTracker]:  # fmt: skip
    """Both models fake; fake mode, tracking, known values and the CUDA-path patches active inside."""
    mode = FakeTensorMode(allow_non_fake_inputs=False)
    policy_state = make_fake(policy, mode)
    ref_state = make_fake(ref, mode) if ref is not None else []
    tracker = MemoryTracker(round_bytes=round_bytes, phase_snapshots=True)
    with torch_linear(), mode, tracker, bnb_kernels(policy_state), fake_safe_optimizers(), unpacked_inputs(), \
            cuda_like_kernels(calls), cuda_like_trl():  # fmt: skip
        register_model(tracker, policy)
        tracker.classify(policy_state, "weights")
        if ref is not None:
            tracker.classify(ref.parameters(), "reference")
            tracker.classify(ref_state, "reference")
            for b in ref.buffers():
                tracker.track(b)
        with KnownValues(), readable_masks():
            yield tracker


def _adapters_disabled(model: nn.Module) -> bool:
    """peft's `disable_adapter()` is active (TRL's `use_adapter(model, None)`)."""
    return any(getattr(m, "disable_adapters", False) for m in model.modules() if hasattr(m, "lora_A"))


def _hook_phases(tracker: MemoryTracker, top: nn.Module, *, frozen: bool, logits_after: bool) -> None:
    """Calling `top` enters its phase: "forward" with gradients, else "reference" (the frozen copy, or
    adapters disabled) or "scoring"; returning restores the caller's phase and, for a model whose loss
    is inside its forward (`logits_after` False), the "activations" category; a model whose loss runs after
    its forward (`logits_after`) stays in "loss"."""
    stack: list[str | None] = []

    def enter(_module: nn.Module, _args: Any) -> None:
        if torch.is_grad_enabled() and not frozen:
            phase = "forward"
        else:
            phase = "reference" if frozen or _adapters_disabled(top) else "scoring"
        stack.append(tracker.set_phase(phase))
        tracker.context_category = "activations"

    def leave(_module: nn.Module, _args: Any, _output: Any) -> None:
        previous = stack.pop()
        if not logits_after:
            tracker.set_phase(previous)
            tracker.context_category = "activations"

    top.register_forward_pre_hook(enter)
    top.register_forward_hook(leave)


def _hook_loss(tracker: MemoryTracker, lm: Any, *, logits: bool) -> None:
    """The policy's "loss" phase starts at its decoder's output and its "backward" when that output's
    gradient exists. With `logits`, everything after the decoder (LM head, fused or not, and the log-probs)
    is "logits", in forward and in backward until that gradient (as `trace_session.hook_logits`, whose
    LM-head hook a fused head never calls)."""
    decoder = getattr(lm, lm.base_model_prefix)

    def after_decoder(_module: nn.Module, _args: Any, output: Any) -> None:
        if logits:
            tracker.context_category = "logits"
        hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state
        if hidden.requires_grad:
            tracker.set_phase("loss")

            def grad_hook(grad: torch.Tensor) -> None:
                tracker.classify([grad], "activations")
                tracker.context_category = "activations"
                tracker.set_phase("backward")

            hidden.register_hook(grad_hook)

    decoder.register_forward_hook(after_decoder)


# -- the step --------------------------------------------------------------------------------------


def _loss_run(kind: str, policy: nn.Module, ref: nn.Module | None, objective: ObjectiveSetup, reference: str,
              *, batch: int, seq: int, acc: TraceAccelerator) -> LossRun:  # fmt: skip
    """The objective's TRL loss path (`trace_objective_losses`)."""
    from swiftplan.executors import trace_objective_losses as losses

    prompt = objective.prompt_len if 0 < objective.prompt_len < seq else 0
    precomputed = reference == "precomputed"
    if kind == "dpo":
        return losses.setup_dpo(
            policy, ref, pairs=batch, seq=seq, prompt_len=prompt, precomputed=precomputed, acc=acc
        )
    if kind == "kto":
        return losses.setup_kto(
            policy, ref, examples=batch, seq=seq, prompt_len=prompt, precomputed=precomputed, acc=acc
        )
    if kind in ("cpo", "simpo"):
        return losses.setup_cpo(
            policy, pairs=batch, seq=seq, prompt_len=prompt, simpo=kind == "simpo", acc=acc
        )
    if kind == "orpo":
        return losses.setup_orpo(policy, pairs=batch, seq=seq, prompt_len=prompt, acc=acc)
    if kind == "rm":
        return losses.setup_rm(policy, pairs=batch, seq=seq, acc=acc)
    rollout = objective.rollout
    assert rollout is not None  # ObjectiveSetup gives grpo its defaults
    return losses.setup_grpo(policy, ref, completions=batch, prompt_len=rollout.prompt_len,
                             completion_len=rollout.completion_len, beta=GRPO_KL_BETA if objective.kl else 0.0,
                             vllm=rollout.engine == "vllm", acc=acc)  # fmt: skip


GRPO_KL_BETA = 0.04
"""beta for GRPO with a KL penalty (ms-swift's default; TRL's GRPOConfig.beta defaults to 0.0 = no KL).
Its value changes no tensor size."""


def _fake_batch(real: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch as fake tensors holding the real values (allocated, like a batch moved to the GPU)."""
    return {k: known(torch.empty(v.shape, dtype=v.dtype), v) for k, v in real.items()}


def _step(tracker: MemoryTracker, run: LossRun, optimizer: torch.optim.Optimizer, acc: TraceAccelerator,
          *, logits_backward: bool) -> None:  # fmt: skip
    """One training step: the loss under the Trainer's autocast, backward, optimizer step, zero_grad."""
    with tracker.in_phase("forward"):
        batch = _fake_batch(run.batch)  # Trainer.training_step keeps its inputs until after backward
        with acc.autocast():
            loss = run.loss(batch)
        tracker.context_category = "activations"
    backward_category = "logits" if logits_backward else "activations"
    with tracker.in_phase("loss backward"), tracker.category(backward_category):
        loss.backward()  # the decoder output's gradient hook moves on to "backward"
    del loss, batch
    with tracker.in_phase("optimizer"):
        optimizer.step()
        _classify_optimizer_state(tracker, optimizer)
        optimizer.zero_grad(set_to_none=True)


def _check(objective: ObjectiveSetup, method: str, precision: str, batch: int, seq: int) -> str:
    """Refuse what the tracer cannot run; return the resolved reference handling."""
    if objective.kind not in TRACEABLE:
        raise ValueError(f"objective {objective.kind!r} is not traced; traceable: {', '.join(TRACEABLE)}")
    if method not in ("full", "lora"):
        raise ValueError(f"method must be 'full' or 'lora', got {method!r}")
    if precision not in ("bf16", "fp16", "fp32", "amp-bf16", "amp-fp16"):
        raise ValueError(f"unknown precision {precision!r}; valid: bf16, fp16, fp32, amp-bf16, amp-fp16")
    if batch < 1 or seq < 2:
        raise ValueError("batch >= 1 and seq >= 2 are required")
    if objective.kind == "kto" and batch < 2:
        raise ValueError(
            "KTO's KL term needs at least 2 examples per micro-batch (trl kto_trainer.py:844-846)"
        )
    return resolve_reference(objective, trains_adapters=method == "lora")


def trace_objective(
    hf_config: dict[str, Any],
    objective: ObjectiveSetup,
    *,
    method: Literal["full", "lora"],
    precision: str = "bf16",
    batch: int = 1,
    seq: int = 512,
    lora_rank: int = 16,
    lora_targets: Sequence[str] | Literal["all-linear"] = ("q_proj", "v_proj"),
    optimizer: OptimizerName = "adamw-fused",
    grad_ckpt: bool = False,
    attn_implementation: str = "sdpa",
    steps: int = 2,
    round_bytes: int = CUDA_BLOCK_BYTES,
    quant_base: QuantBase | None = None,
) -> ObjectiveTrace:
    """Trace `steps` TRL training steps of `objective` and measure the last one.

    `batch` counts what the planner's micro_batch counts: pairs (dpo, cpo, simpo, orpo, rm), examples
    (kto) or completions (grpo, whose sequences are the rollout's prompt_len + completion_len; `seq` is
    ignored). `seq` is the tokens of each sequence, `objective.prompt_len` of them prompt (not scored).
    `optimizer` defaults to the HF Trainer's fused AdamW. `quant_base` puts the models on a bitsandbytes base
    (4-bit or int8, LoRA only), as `trace.trace_training` does.
    """
    reference = _check(objective, method, precision, batch, seq)
    if quant_base is not None:
        quant_base.require_lora(method)
    if steps < 1:
        raise ValueError("steps >= 1 is required")
    started = time.perf_counter()
    kind = objective.kind
    if kind == "grpo" and objective.rollout is not None:
        seq = objective.rollout.seq_len
    notes: list[str] = []
    lora = {"rank": lora_rank, "alpha": None, "dropout": 0.0, "targets": lora_targets}
    policy, ref = _build_models(hf_config, kind, reference, method=method, precision=precision, lora=lora,
                                grad_ckpt=grad_ckpt, attn=attn_implementation, notes=notes, quant_base=quant_base)  # fmt: skip
    amp = precision.removeprefix("amp-") if precision.startswith("amp-") else None
    acc = TraceAccelerator(DTYPES[amp] if amp else None)
    run = _loss_run(kind, policy, ref, objective, reference, batch=batch, seq=seq, acc=acc)  # real tensors
    calls: Counter[str] = Counter()
    with _session(policy, ref, round_bytes, calls) as tracker:
        policy.train()
        lm = causal_lm_of(policy)
        unfused = kind in ("cpo", "simpo", "orpo")
        _hook_phases(tracker, policy, frozen=False, logits_after=unfused)
        if ref is not None:
            _hook_phases(tracker, ref, frozen=True, logits_after=False)
        for model in (lm, ref):
            if model is not None:
                _hook_loss(tracker, model, logits=kind != "rm")
        trainable = [p for p in policy.parameters() if p.requires_grad]
        for p in trainable:
            p.register_post_accumulate_grad_hook(lambda p: tracker.classify([p.grad], "gradients"))
        opt = _make_optimizer(optimizer, trainable)
        for step in range(steps):
            if step == steps - 1:
                tracker.start_measuring()
            _step(tracker, run, opt, acc, logits_backward=kind != "rm")
        tracker.stop_measuring()
    notes += run.notes + attention_notes(calls, tracker.ops_seen)
    return _result(tracker, kind, reference, policy, ref, run, started, notes)


def _result(tracker: MemoryTracker, kind: str, reference: str, policy: nn.Module, ref: nn.Module | None,
            run: LossRun, started: float, notes: list[str]) -> ObjectiveTrace:  # fmt: skip
    phases = [p for p in PHASES if p in tracker.phase_peaks]
    return ObjectiveTrace(
        kind=kind,
        reference=reference,
        peak_bytes=tracker.peak_bytes,
        at_peak=tracker.at_peak(),
        phase_peaks={p: tracker.phase_peaks[p] for p in phases},
        phase_at_peak={p: tracker.at_phase_peak(p) for p in phases},
        params=sum(p.numel() for p in policy.parameters()),
        trainable_params=sum(p.numel() for p in policy.parameters() if p.requires_grad),
        reference_params=sum(p.numel() for p in ref.parameters()) if ref is not None else 0,
        sequences=run.sequences,
        seconds=time.perf_counter() - started,
        notes=tuple(base_notes(tracker.round_bytes) + notes),
        largest_at_peak=tuple(tracker.peak_storages()[:LARGEST_SHOWN]),
    )


LARGEST_SHOWN = 16
"""Storages listed in `ObjectiveTrace.largest_at_peak`."""
