"""How each runtime turns the LM head's output into the per-token log-probs a preference or RL loss
needs, and the bytes that costs (pure). SFT's cross-entropy is `activations.logits_bytes`; these are
the objectives' own paths:

- `bf16_rows` — ms-swift 4.6 pops the labels, so the model returns compute-dtype logits, and scores them
  with TRL 0.29.1's `selective_log_softmax`, whose bf16 branch runs `log_softmax` one sequence at a time
  (swift/rlhf_trainers/dpo_trainer.py:130, rlhf_mixin.py:169; trl 0.29.1 trainer/utils.py:558-564).
  Per token × vocab entry: the logits and each row's log_softmax output are saved (2 × 2 B); backward adds
  the logits' gradient (6 B at its peak); the no-grad reference pass holds its own logits plus one row's
  log_softmax (replayed on fake tensors: benchmarks/trace_swift_logps.py gives 4.00 / 7.05 / 6.00 B).
- `fused_head` — TRL 1.16's DPO, KTO and GRPO call the model with `fused_lm_head=True`
  (trl/trainer/utils.py:1548 add_fused_lm_head): the head runs in [4096 × 32768] tiles over the scored
  positions only (`hidden_states[mask]`, utils.py:1644) inside ChunkedLogProbFunction
  (trl/kernels/chunked_logprob.py:299): it saves the scored hidden states and two fp32 per-token
  statistics; backward allocates an fp32 hidden-state gradient (and an fp32 LM-head gradient when the head
  trains) and recomputes one tile at a time.
- `full_logits` — TRL 1.16's CPO, ORPO and SimPO (trl.experimental) call the model without labels and
  keep its compute-dtype logits over every position (cpo_trainer.py:815-822, orpo_trainer.py:771-777); at
  the start of backward CPO/ORPO hold three such tensors (two slice gradients and their sum), SimPO two
  (the logits and logprob_entropy's empty_like gradient) — traced (tests/test_trace_objective.py).
- `loss` — anything else: the runtime's cross-entropy kernel over the scored tokens (SFT's rule).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from swiftplan.planner import activations as act
from swiftplan.planner import fused_head
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.objective import SFT
from swiftplan.planner.setup import LossImpl, TrainSetup

LogprobKernel = Literal["loss", "bf16_rows", "fused_head", "full_logits"]

FUSED_HEAD_OBJECTIVES = frozenset({"dpo", "kto", "grpo"})
"""TRL 1.16 trainers that call the fused head; CPO/ORPO/SimPO live in trl.experimental and keep full logits."""
FP32 = 4
_ROWS_SAVED_BYTES = 2
"""bf16_rows: logits and each row's log_softmax output, both in the compute dtype (× its bytes)."""


def logprob_kernel(setup: TrainSetup) -> LogprobKernel:
    """The kernel the runtime uses for the objective's log-probs."""
    kind, runtime = setup.objective.kind, setup.runtime.name
    if kind == "sft" and setup.runtime.loss == "fused_head":
        return "fused_head"
    if kind in ("sft", "rm"):
        return "loss"
    if runtime == "ms-swift":
        return "bf16_rows"
    if runtime == "hf" and kind in FUSED_HEAD_OBJECTIVES:
        return "fused_head"
    if runtime == "hf" and kind in ("cpo", "orpo", "simpo"):
        return "full_logits"
    return "loss"


def logprob_positions(setup: TrainSetup, *, scored: int) -> int:
    """Positions per sequence the kernel computes: a rollout's completion (logits_to_keep), the scored
    positions for TRL's fused head (hidden_states[mask]); otherwise the whole sequence, since the LM head
    runs over every position before the prompt is masked."""
    if setup.objective.rollout is not None:
        return setup.objective.rollout.completion_len
    return scored if logprob_kernel(setup) == "fused_head" else setup.seq_len


def fused_head_activation_saving(spec: ModelSpec, setup: TrainSetup, tokens: int) -> int:
    """What SFT's activations count for the plain LM head that TRL's fused head does not keep
    (`fused_head.input_not_saved_bytes`)."""
    if logprob_kernel(setup) != "fused_head":
        return 0
    return fused_head.input_not_saved_bytes(spec, setup, tokens)


def training_logprob_bytes(
    spec: ModelSpec, setup: TrainSetup, *, sequences: int, scored: int, tp: int
) -> int:
    """The log-prob path's peak beside the policy's backward."""
    kernel = logprob_kernel(setup)
    tokens = sequences * logprob_positions(setup, scored=scored)
    if kernel == "bf16_rows":
        return 3 * tokens * (spec.vocab_size // tp) * act.activation_dtype_bytes(setup)
    if kernel == "fused_head":
        return fused_head.head_bytes(spec, setup, tokens, backward=True, tp=tp)
    if kernel == "full_logits":
        copies = 2 if setup.objective.kind == "simpo" else 3
        return copies * tokens * (spec.vocab_size // tp) * act.activation_dtype_bytes(setup)
    return act.logits_bytes(spec, _scored_as_sft(setup, sequences=sequences, scored=scored), tp=tp)


def plain_loss(setup: TrainSetup) -> LossImpl:
    """The loss kernel an objective scored by the runtime's cross-entropy (the "loss" kernel) uses: TRL's fused
    head only for SFT, where its trainer calls it; the full loss for an objective outside FUSED_HEAD_OBJECTIVES."""
    loss = setup.runtime.loss
    return "full" if loss == "fused_head" and setup.objective.kind != "sft" else loss


def _scored_as_sft(setup: TrainSetup, *, sequences: int, scored: int) -> TrainSetup:
    """The objective's scoring as an SFT loss over its positions, for the runtime's cross-entropy kernel
    (`plain_loss`)."""
    runtime = replace(setup.runtime, loss=plain_loss(setup))
    positions = logprob_positions(setup, scored=scored)
    return replace(setup, micro_batch=sequences, seq_len=positions, objective=SFT, runtime=runtime)


def kept_policy_logprob_bytes(
    spec: ModelSpec, setup: TrainSetup, *, sequences: int, scored: int, tp: int
) -> int:
    """What the policy's log-prob path keeps for backward while the reference scores after it."""
    kernel = logprob_kernel(setup)
    tokens = sequences * logprob_positions(setup, scored=scored)
    vocab = spec.vocab_size // tp
    if kernel == "bf16_rows":
        return _ROWS_SAVED_BYTES * tokens * vocab * act.activation_dtype_bytes(setup)
    if kernel == "fused_head":
        return fused_head.saved_bytes(spec, setup, tokens)
    return tokens * vocab * FP32  # the fp32 log_softmax output cross-entropy saves


def no_grad_logprob_bytes(
    spec: ModelSpec, setup: TrainSetup, *, sequences: int, scored: int, seq_len: int, tp: int
) -> int:
    """The reference's (no-grad) log-prob path at its peak."""
    kernel = logprob_kernel(setup)
    tokens = sequences * logprob_positions(setup, scored=scored)
    vocab = spec.vocab_size // tp
    cb = act.activation_dtype_bytes(setup)
    if kernel == "bf16_rows":
        return tokens * vocab * cb + seq_len * vocab * cb  # its logits and one row's log_softmax
    if kernel == "fused_head":
        return fused_head.head_bytes(spec, setup, tokens, backward=False, tp=tp)
    return act.logits_bytes(spec, _scored_as_sft(setup, sequences=sequences, scored=scored), tp=tp)


def kernel_source(setup: TrainSetup) -> str:
    """Where the log-prob rule comes from, for the breakdown."""
    return {
        "bf16_rows": "ms-swift 4.6 swift/rlhf_trainers/dpo_trainer.py:130, rlhf_mixin.py:169 (TRL 0.29.1 "
        "selective_log_softmax, bf16 rows); replayed in benchmarks/trace_swift_logps.py",
        "fused_head": fused_head.SOURCE,
        "full_logits": "huggingface/trl 1.16.0 trl/experimental cpo_trainer.py:815-822, orpo_trainer.py:771-777; "
        "traced (tests/test_trace_objective.py)",
        "loss": "",
    }[logprob_kernel(setup)]


def kernel_formula(spec: ModelSpec, setup: TrainSetup, *, sequences: int, scored: int, tp: int) -> str:
    """The logits term's formula under the objective's log-prob kernel ('' for the loss kernel)."""
    kernel = logprob_kernel(setup)
    tokens = sequences * logprob_positions(setup, scored=scored)
    vocab = spec.vocab_size // tp
    if kernel == "bf16_rows":
        return (f"{tokens} tokens × {vocab} vocab × 3 × {act.activation_dtype_bytes(setup)} B: compute-dtype logits, "
                "each row's log_softmax output and the logits' gradient (bf16 selective_log_softmax)")  # fmt: skip
    if kernel == "full_logits":
        copies = 2 if setup.objective.kind == "simpo" else 3
        return (f"{tokens} tokens × {vocab} vocab × {copies} × {act.activation_dtype_bytes(setup)} B: TRL's "
                f"{setup.objective.kind.upper()} keeps the full logits (no fused loss)")  # fmt: skip
    if kernel == "fused_head":
        return fused_head.formula(spec, setup, tokens, tp=tp)
    return ""
