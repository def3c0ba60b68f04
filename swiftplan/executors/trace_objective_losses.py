"""TRL 1.16's loss paths for one training step, per objective: the batch its collator would produce, the
trainer attributes its `__init__` would set, and the call into its own loss method.

Each `setup_*` returns a `LossRun`: the real (CPU) batch tensors, made fake and value-known by the
caller, and `loss(batch)`, which calls TRL. What is glue and what is TRL is said in each docstring
(paths relative to the installed `trl` package).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch

from swiftplan.executors.trace_trl import TraceAccelerator, aux_loss_attrs, shell, trainer_config

Batch = dict[str, torch.Tensor]


@dataclass(kw_only=True)
class LossRun:
    """One objective's step: its inputs and the TRL call that turns them into the loss."""

    batch: Batch
    """Real CPU tensors as the trainer's collator (or rollout) would hand them over."""
    loss: Callable[[Batch], torch.Tensor]
    """Runs TRL's loss on the fake, value-known batch."""
    sequences: int
    """Sequences in the forward with gradients."""
    notes: list[str] = field(default_factory=list)


def _masks(rows: int, seq: int, prompt_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids (token 1, never the pad id 0), attention_mask (no padding) and completion_mask (0 on the
    first `prompt_len` tokens): every row a full-length prompt + completion, as a packed-to-length batch."""
    ids = torch.ones((rows, seq), dtype=torch.long)
    attention = torch.ones((rows, seq), dtype=torch.long)
    completion = torch.ones((rows, seq), dtype=torch.long)
    completion[:, :prompt_len] = 0
    return ids, attention, completion


def setup_dpo(model: Any, ref: Any, *, pairs: int, seq: int, prompt_len: int, precomputed: bool,
              acc: TraceAccelerator) -> LossRun:  # fmt: skip
    """`DPOTrainer._compute_loss` (trl/trainer/dpo_trainer.py:1285-1612) on chosen + rejected concatenated
    (DataCollatorForPreference, dpo_trainer.py:146-209): TRL's code end to end. Glue: the attributes
    `__init__` maps from DPOConfig (dpo_trainer.py:800-830, 895-905) and, with precomputed reference
    log-probs, the batch's `ref_chosen_logps`/`ref_rejected_logps` (dpo_trainer.py:203-206)."""
    from trl import DPOConfig, DPOTrainer

    args = trainer_config(DPOConfig, precompute_ref_log_probs=precomputed)
    trainer = shell(DPOTrainer, model, args, acc, ref_model=ref, beta=args.beta,
                    precompute_ref_logps=precomputed, loss_types=args.loss_type,
                    loss_weights=args.loss_weights or [1.0] * len(args.loss_type), ld_alpha=args.ld_alpha,
                    f_divergence_type=args.f_divergence_type,
                    f_alpha_divergence_coef=args.f_alpha_divergence_coef,
                    label_smoothing=args.label_smoothing, use_weighting=args.use_weighting,
                    **aux_loss_attrs(model, args))  # fmt: skip
    ids, attention, completion = _masks(2 * pairs, seq, prompt_len)
    batch = {"input_ids": ids, "attention_mask": attention, "completion_mask": completion}
    if precomputed:
        batch |= {"ref_chosen_logps": torch.zeros(pairs), "ref_rejected_logps": torch.zeros(pairs)}
    return LossRun(
        batch=batch, loss=lambda b: DPOTrainer._compute_loss(trainer, model, b, False), sequences=2 * pairs
    )


def setup_kto(model: Any, ref: Any, *, examples: int, seq: int, prompt_len: int, precomputed: bool,
              acc: TraceAccelerator) -> LossRun:  # fmt: skip
    """`KTOTrainer._compute_loss` (trl/trainer/kto_trainer.py:1370-1563): the KL sequences scored by the
    policy without gradients (`_compute_kl_logps`, kto_trainer.py:1337-1368), the policy forward, the
    reference's KL and completion forwards, all TRL's. Glue: attributes from KTOConfig (kto_trainer.py:815,
    831-836, 905-916) and the batch of DataCollatorForUnpairedPreference (kto_trainer.py:161-210): half
    desirable labels, KL completions as long as the completions."""
    from trl import KTOConfig, KTOTrainer

    args = trainer_config(KTOConfig, precompute_ref_log_probs=precomputed)
    trainer = shell(KTOTrainer, model, args, acc, ref_model=ref, beta=args.beta,
                    precompute_ref_logps=precomputed, loss_type=args.loss_type,
                    desirable_weight=args.desirable_weight, undesirable_weight=args.undesirable_weight,
                    calculate_KL=args.loss_type not in ["apo_zero_unpaired"],
                    **aux_loss_attrs(model, args))  # fmt: skip
    ids, attention, completion = _masks(examples, seq, prompt_len)
    label = torch.zeros(examples, dtype=torch.bool)
    label[: (examples + 1) // 2] = True
    batch = {"input_ids": ids, "attention_mask": attention, "completion_mask": completion, "label": label,
             "KL_input_ids": ids.clone(), "KL_attention_mask": attention.clone(),
             "KL_completion_mask": completion.clone()}  # fmt: skip
    if precomputed:
        batch |= {"ref_logps": torch.zeros(examples), "ref_KL_logps": torch.zeros(examples)}
    return LossRun(
        batch=batch, loss=lambda b: KTOTrainer._compute_loss(trainer, model, b, False), sequences=examples
    )


def _pair_batch(pairs: int, seq: int, prompt_len: int) -> Batch:
    """The tokenized pair CPOTrainer/ORPOTrainer's DPODataCollatorWithPadding hands over: chosen_* and
    rejected_* ids, mask and labels (-100 on the prompt)."""
    ids, attention, completion = _masks(pairs, seq, prompt_len)
    labels = ids.masked_fill(completion == 0, -100)
    return {f"{side}_{key}": value.clone() for side in ("chosen", "rejected")
            for key, value in (("input_ids", ids), ("attention_mask", attention), ("labels", labels))}  # fmt: skip


def setup_cpo(model: Any, *, pairs: int, seq: int, prompt_len: int, simpo: bool,
              acc: TraceAccelerator) -> LossRun:  # fmt: skip
    """`CPOTrainer.compute_loss` (trl/experimental/cpo/cpo_trainer.py:919-938): `concatenated_forward`
    (full logits from the model's own forward), the chosen NLL (`cpo_alpha` > 0), `get_batch_logps` with
    `selective_log_softmax`, `cpo_loss`; all TRL's. SimPO is CPOTrainer with loss_type="simpo" and
    cpo_alpha=0 (cpo_config.py:54-56: no NLL term). Glue: attributes from CPOConfig (cpo_trainer.py:191,
    278-286, 343-373) and the tokenized batch."""
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    overrides: dict[str, Any] = {"loss_type": "simpo", "cpo_alpha": 0.0} if simpo else {}
    args = trainer_config(CPOConfig, **overrides)
    trainer = shell(CPOTrainer, model, args, acc, is_encoder_decoder=False, pad_token_id=0,
                    beta=args.beta, label_smoothing=args.label_smoothing, loss_type=args.loss_type,
                    cpo_alpha=args.cpo_alpha, simpo_gamma=args.simpo_gamma, alpha=args.alpha,
                    aux_loss_enabled=getattr(model.config, "output_router_logits", False),
                    aux_loss_coef=getattr(model.config, "router_aux_loss_coef", 0.0),
                    _peft_has_been_casted_to_bf16=False)  # fmt: skip
    return LossRun(
        batch=_pair_batch(pairs, seq, prompt_len),
        loss=lambda b: cast(torch.Tensor, CPOTrainer.compute_loss(trainer, model, b)),
        sequences=2 * pairs,
    )


def setup_orpo(model: Any, *, pairs: int, seq: int, prompt_len: int, acc: TraceAccelerator) -> LossRun:
    """`ORPOTrainer.compute_loss` (trl/experimental/orpo/orpo_trainer.py:879-901): `concatenated_forward`
    (full logits, the chosen NLL over prompt and response, `get_batch_logps`), `odds_ratio_loss`; all
    TRL's. Glue: attributes from ORPOConfig (orpo_trainer.py:201, 288-296, 344-358) and the batch."""
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    args = trainer_config(ORPOConfig)
    trainer = shell(ORPOTrainer, model, args, acc, is_encoder_decoder=False,
                    padding_value=args.padding_value if args.padding_value is not None else 0, beta=args.beta,
                    aux_loss_enabled=getattr(model.config, "output_router_logits", False),
                    aux_loss_coef=getattr(model.config, "router_aux_loss_coef", 0.0),
                    _peft_has_been_casted_to_bf16=False)  # fmt: skip
    return LossRun(
        batch=_pair_batch(pairs, seq, prompt_len),
        loss=lambda b: cast(torch.Tensor, ORPOTrainer.compute_loss(trainer, model, b)),
        sequences=2 * pairs,
    )


def setup_rm(model: Any, *, pairs: int, seq: int, acc: TraceAccelerator) -> LossRun:
    """`RewardTrainer.compute_loss` (trl/trainer/reward_trainer.py:778-817) on chosen + rejected
    concatenated (DataCollatorForPreference, reward_trainer.py:203-240), the model an
    AutoModelForSequenceClassification with num_labels=1 (reward_trainer.py:396); TRL's code. Glue: the
    metric attributes and the batch."""
    from trl import RewardConfig, RewardTrainer

    trainer = shell(RewardTrainer, model, trainer_config(RewardConfig), acc)
    ids, attention, _ = _masks(2 * pairs, seq, 0)
    return LossRun(
        batch={"input_ids": ids, "attention_mask": attention},
        loss=lambda b: RewardTrainer.compute_loss(trainer, model, b),
        sequences=2 * pairs,
    )


def _grpo_trainer(model: Any, ref: Any, args: Any, acc: TraceAccelerator) -> Any:
    """A GRPOTrainer with the attributes `__init__` maps from GRPOConfig (grpo_trainer.py:782-850,
    944-990) and the Trainer's `current_gradient_accumulation_steps` (1: one micro-batch per step)."""
    from trl import GRPOTrainer

    return shell(GRPOTrainer, model, args, acc, ref_model=ref, beta=args.beta,
                 max_completion_length=args.max_completion_length, temperature=args.temperature,
                 use_vllm=args.use_vllm, vllm_importance_sampling_correction=args.vllm_importance_sampling_correction,
                 vllm_importance_sampling_mode=args.vllm_importance_sampling_mode, loss_type=args.loss_type,
                 importance_sampling_level=args.importance_sampling_level,
                 off_policy_mask_threshold=args.off_policy_mask_threshold,
                 top_entropy_quantile=args.top_entropy_quantile, entropy_coef=args.entropy_coef,
                 use_adaptive_entropy=args.use_adaptive_entropy,
                 _entropy_bonus_enabled=args.entropy_coef != 0.0 or args.use_adaptive_entropy,
                 num_iterations=args.num_iterations, epsilon_low=args.epsilon,
                 epsilon_high=args.epsilon_high if args.epsilon_high is not None else args.epsilon,
                 current_gradient_accumulation_steps=1, **aux_loss_attrs(model, args))  # fmt: skip


def setup_grpo(model: Any, ref: Any, *, completions: int, prompt_len: int, completion_len: int, beta: float,
               vllm: bool, acc: TraceAccelerator) -> LossRun:  # fmt: skip
    """One GRPO micro-step on generated sequences (generation itself is not traced).

    Scoring, as `_generate_and_score_completions` does it under no_grad (grpo_trainer.py:2641-2731):
    with vLLM, the policy's old log-probs (`vllm_importance_sampling_correction`, default True) and the
    sequence-level importance ratio (mode "sequence_mask", grpo_trainer.py:2666-2710); with beta > 0, the
    reference log-probs from the frozen copy or the policy with adapters disabled (`use_adapter`). Then
    `GRPOTrainer._compute_loss` (grpo_trainer.py:3020-3292): TRL's. Glue: the batch (prompt and completion
    ids, masks, advantages, `num_items_in_batch`, vLLM's sampling log-probs), the scoring calls' order and
    the importance-ratio arithmetic (four ops on completions × completion_len fp32 values)."""
    from trl import GRPOConfig, GRPOTrainer
    from trl.models.utils import disable_gradient_checkpointing
    from trl.trainer.utils import use_adapter

    args = trainer_config(GRPOConfig, beta=beta, use_vllm=vllm)
    trainer = _grpo_trainer(model, ref, args, acc)
    prompt, prompt_mask, _ = _masks(completions, prompt_len, 0)
    completion, completion_mask, _ = _masks(completions, completion_len, 0)
    batch = {"prompt_ids": prompt, "prompt_mask": prompt_mask, "completion_ids": completion,
             "completion_mask": completion_mask, "advantages": torch.zeros(completions),
             "num_items_in_batch": torch.tensor(completions * completion_len)}  # fmt: skip
    if vllm:
        batch["sampling_per_token_logps"] = torch.zeros(completions, completion_len)

    def score(b: Batch, model_or_ref: Any) -> torch.Tensor:
        ids = torch.cat([b["prompt_ids"], b["completion_ids"]], dim=1)
        mask = torch.cat([b["prompt_mask"], b["completion_mask"]], dim=1)
        return GRPOTrainer._get_per_token_logps_and_entropies(
            trainer, model_or_ref, ids, mask, completion_len, batch_size=completions
        )[0]

    def loss(b: Batch) -> torch.Tensor:
        with torch.no_grad(), disable_gradient_checkpointing(model, args.gradient_checkpointing_kwargs):
            if vllm:
                old = b["old_per_token_logps"] = score(b, model)
                diff = ((old - b["sampling_per_token_logps"]) * b["completion_mask"]).nan_to_num(nan=0.0)
                b["importance_sampling_ratio"] = torch.exp(diff.sum(dim=-1, keepdim=True))
            if beta != 0.0 and ref is not None:
                b["ref_per_token_logps"] = score(b, ref)
            elif beta != 0.0:
                with use_adapter(model, adapter_name=None):
                    b["ref_per_token_logps"] = score(b, model)
        return GRPOTrainer._compute_loss(trainer, model, b)

    return LossRun(batch=batch, loss=loss, sequences=completions)
