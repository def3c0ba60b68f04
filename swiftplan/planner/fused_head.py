"""TRL 1.16's fused LM head: the bytes its loss path holds (pure).

TRL 1.16's trainers patch the causal LM with `add_fused_lm_head` (trl/trainer/utils.py:1548): called with
`fused_lm_head=True`, the model runs the decoder, keeps only the positions whose next-token label is not
-100 (`hidden_states[mask]`, utils.py:1644) and scores them in `ChunkedLogProbFunction`
(trl/kernels/chunked_logprob.py:299), which projects [4096 tokens × 32768 vocabulary] tiles through the LM
head into one reused buffer and folds each into running fp32 statistics, so no tokens × vocabulary tensor
exists. It saves the scored hidden states and two fp32 per-token statistics; backward allocates an fp32
hidden-state gradient (and an fp32 LM-head gradient when the head trains), recomputes one tile at a time and
casts the fp32 gradients to the parameters' dtype while they live. SFTTrainer computes its loss this way
(sft_trainer.py:1144, `-log_probs` summed over the label mask), as DPO, KTO and GRPO compute their log-probs
(`logprob_kernels`). Traced with TRL's own code on fake tensors (`executors/trace_trl.py`).
"""

from __future__ import annotations

from swiftplan.planner.dtypes import activation_dtype_bytes, dtype_bytes
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.setup import TrainSetup
from swiftplan.planner.states import state_dtypes

TOKEN_TILE = 4096
"""ChunkedLogProbFunction's tokens per tile (trl 1.16 kernels/chunked_logprob.py:31 TOKEN_CHUNK_SIZE)."""
VOCAB_TILE = 32768
"""Vocabulary entries per tile (trl 1.16 trainer/utils.py:1506 _CHUNKED_LOGPROB_CHUNK_SIZE)."""
FP32 = 4
INT64 = 8
FORWARD_STATISTICS = 7
"""fp32 running statistics per token in the forward (chunked_logprob.py:338-344: max, sum_exp, x_sum_exp,
sq_sum_exp, z_sum, max_before_target, target_logit)."""
SOURCE = (
    "huggingface/trl 1.16.0 trainer/utils.py:1548-1660 add_fused_lm_head, "
    "kernels/chunked_logprob.py:299 ChunkedLogProbFunction"
)


def head_trains(setup: TrainSetup) -> bool:
    """The LM head's weight gets a gradient: full fine-tuning, or peft's trainable copy (modules_to_save lm_head,
    which get_output_embeddings() hands the fused head)."""
    return setup.method == "full" or "lm_head" in setup.runtime.modules_to_save


def _hidden_bytes(setup: TrainSetup) -> int:
    """The decoder output's element size: the stream's dtype (fp32 under autocast, whose residual stream and final
    norm stay fp32; the tiles are computed in the autocast dtype)."""
    return FP32 if setup.precision.startswith("amp-") else activation_dtype_bytes(setup)


def _cast_bytes(dtype_size: int) -> int:
    """What `grad.to(dtype)` of an fp32 gradient allocates: nothing when the dtype is fp32."""
    return 0 if dtype_size == FP32 else dtype_size


def saved_bytes(spec: ModelSpec, setup: TrainSetup, tokens: int) -> int:
    """What the head keeps for backward over `tokens` scored positions: their hidden states (the boolean-mask
    copy), log_z and entropy (or log_z twice), and the int64 targets `labels[mask]`."""
    return tokens * spec.hidden_size * _hidden_bytes(setup) + 2 * tokens * FP32 + tokens * INT64


def head_bytes(spec: ModelSpec, setup: TrainSetup, tokens: int, *, backward: bool, tp: int = 1) -> int:
    """The head's peak over `tokens` scored positions: forward, what it saves + one tile + the running
    statistics; backward, what it saved + one tile + the fp32 hidden-state gradient and its cast to the hidden
    states' dtype (+ the fp32 LM-head gradient and its cast to the weight's dtype when the head trains)."""
    hidden = spec.hidden_size
    vocab = spec.vocab_size // tp
    cb = activation_dtype_bytes(setup)
    # the tile buffer is chunk_size wide whatever the vocabulary (trl 1.16 kernels/chunked_logprob.py:347, 413)
    tile = min(tokens, TOKEN_TILE) * VOCAB_TILE * cb
    saved = saved_bytes(spec, setup, tokens)
    # under autocast the fp32 hidden chunk and weight tiles are cast to the compute dtype as they are used: one
    # weight tile at a time in forward (a temporary), two in backward (`w_chunk` is bound when the next is made), one
    # when the vocabulary fits a single tile (Phi-3's 32,064: traced)
    casts = 0
    if setup.precision.startswith("amp-"):
        weight_tiles = 2 if backward and vocab > VOCAB_TILE else 1
        casts = min(tokens, TOKEN_TILE) * hidden * cb + min(vocab, VOCAB_TILE) * hidden * cb * weight_tiles
    if not backward:
        return saved + tile + casts + FORWARD_STATISTICS * tokens * FP32
    head_grad = 0
    if head_trains(setup):
        dtypes = state_dtypes(setup)
        weight = dtype_bytes(dtypes.saved if setup.trains_adapters else dtypes.weights)
        head_grad = spec.vocab_size * hidden * (FP32 + _cast_bytes(weight)) // tp
    return saved + tile + casts + tokens * hidden * (FP32 + _cast_bytes(_hidden_bytes(setup))) + head_grad


def input_not_saved_bytes(spec: ModelSpec, setup: TrainSetup, tokens: int) -> int:
    """What the plain LM-head matmul keeps and the fused head does not: a trained head's input (T × H; the fused
    head keeps its own masked copy, counted in `saved_bytes`) and, under autocast, the head weight's
    low-precision copy (the fused head casts one tile of it at a time)."""
    cb = activation_dtype_bytes(setup)
    head_input = tokens * spec.hidden_size * cb if head_trains(setup) else 0
    weight_copy = spec.vocab_size * spec.hidden_size * cb if setup.precision.startswith("amp-") else 0
    return head_input + weight_copy


def formula(spec: ModelSpec, setup: TrainSetup, tokens: int, *, tp: int = 1) -> str:
    """The term's formula in words, for the breakdown."""
    head = " + fp32 LM-head gradient and its cast" if head_trains(setup) else ""
    return (f"{tokens} scored tokens: their hidden states, one {min(tokens, TOKEN_TILE)} × {VOCAB_TILE} "
            f"tile, fp32 hidden-state gradient{head} (fused LM head, no full logits)")  # fmt: skip
