"""TRL 1.16's preference, reward and RL training steps traced on fake tensors, and the planner against them.

The first part checks the traces themselves against hand computations from the model shapes and TRL's
source (file:line in each test); the second lines `train_memory` up with the traces term by term
(`verify_objective`). Where the planner does not yet model what TRL does, the comparison is an xfail whose
reason names the TRL behaviour (the issue-16 report gives the numbers).
"""

from __future__ import annotations

from functools import cache

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("trl")

from swiftplan.executors.trace_objective import ObjectiveTrace, trace_objective  # noqa: E402
from swiftplan.executors.verify_objective import ObjectiveComparison, verify_objective  # noqa: E402
from swiftplan.planner.model_catalog import catalog_spec  # noqa: E402
from swiftplan.planner.model_spec import spec_from_hf_config  # noqa: E402
from swiftplan.planner.objective import ObjectiveSetup, RolloutSetup  # noqa: E402
from swiftplan.planner.runtime import apply_defaults, get_runtime, train_knobs  # noqa: E402
from swiftplan.planner.setup import LoraSetup, TrainSetup  # noqa: E402

H, LAYERS, HEADS, KV_HEADS, VOCAB, INTER = 64, 2, 4, 2, 4096, 128
TINY = {
    "model_type": "llama",
    "hidden_size": H,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "num_key_value_heads": KV_HEADS,
    "vocab_size": VOCAB,
    "intermediate_size": INTER,
    "tie_word_embeddings": False,
}
TILE_VOCAB = 32768
"""TRL's fused LM head projects `[min(N, 4096), 32768]` tiles whatever the vocabulary
(trl/trainer/utils.py:1506 _CHUNKED_LOGPROB_CHUNK_SIZE, trl/kernels/chunked_logprob.py:28, 345)."""
GRPO_ROLLOUT = RolloutSetup(prompt_len=8, completion_len=24, engine="hf")


def tiny_params() -> int:
    """Embedding + per layer (q, k, v, o, gate/up/down, 2 RMSNorms) + final norm + untied LM head."""
    kv = KV_HEADS * (H // HEADS)
    per_layer = 2 * H * H + 2 * H * kv + 3 * H * INTER + 2 * H
    return VOCAB * H + LAYERS * per_layer + H + VOCAB * H


def trace(
    kind: str, method: str = "lora", *, batch: int = 2, seq: int = 32, **objective: object
) -> ObjectiveTrace:
    return trace_objective(
        TINY,
        ObjectiveSetup(kind=kind, **objective),
        method=method,
        batch=batch,
        seq=seq,
        round_bytes=1,  # type: ignore[arg-type]
    )


def tile_rows(t: ObjectiveTrace) -> list[int]:
    """Rows of the fused head's `[rows, 32768]` bf16 tile buffers alive at the peak."""
    suffix = f", {TILE_VOCAB}) bfloat16"
    return [
        int(o.split("(")[1].split(",")[0])
        for _, _, o in t.largest_at_peak
        if o.endswith(suffix) and "empty" in o
    ]


# -- the reference ---------------------------------------------------------------------------------


def test_dpo_lora_reference_is_the_policy_with_adapters_off() -> None:
    adapters_off = trace("dpo", prompt_len=8)
    precomputed = trace("dpo", prompt_len=8, reference="precomputed")
    assert adapters_off.reference == "adapters-off"
    # DPOTrainer: PEFT and no ref_model -> use_adapter(model, None) around the same model (dpo_trainer.py:1328-1336)
    assert adapters_off.reference_params == 0
    assert adapters_off.at_peak["reference"] == 0
    assert adapters_off.at_peak["weights"] == precomputed.at_peak["weights"] == tiny_params() * 2
    ref = adapters_off.phase_at_peak["reference"]
    assert ref["gradients"] == 0  # torch.no_grad() (dpo_trainer.py:1326)
    # it runs after the policy forward: the policy's saved activations are alive during it
    assert ref["activations"] >= adapters_off.phase_at_peak["loss"]["activations"] * 0.9


def test_precomputed_reference_runs_no_reference_forward() -> None:
    precomputed = trace("dpo", prompt_len=8, reference="precomputed")
    adapters_off = trace("dpo", prompt_len=8)
    assert "reference" not in precomputed.phase_peaks
    assert "reference" in adapters_off.phase_peaks
    # the batch carries the pairs' fp32 reference log-probs instead (2 x 2 x 4 bytes, dpo_trainer.py:203-206)
    assert precomputed.peak_bytes <= adapters_off.peak_bytes + 2 * 2 * 4


def test_full_fine_tuning_reference_is_a_frozen_copy() -> None:
    t = trace("dpo", "full", prompt_len=8)
    p = tiny_params()
    assert t.reference == "model"
    assert t.reference_params == t.params == t.trainable_params == p
    assert t.at_peak["reference"] == p * 2  # bf16, no gradient, no optimizer state
    # AdamW (the HF Trainer's fused one) on the policy only: two bf16 moments, one fp32 step per tensor (21)
    assert t.at_peak["optimizer"] == 2 * p * 2 + 21 * 4
    assert t.phase_at_peak["reference"]["gradients"] == 0


# -- the fused LM head: what is scored -------------------------------------------------------------


@pytest.mark.parametrize(("batch", "seq", "prompt"), [(2, 32, 8), (1, 48, 16), (3, 24, 0)])
def test_dpo_scores_only_completion_tokens_in_one_tile(batch: int, seq: int, prompt: int) -> None:
    t = trace("dpo", batch=batch, seq=seq, prompt_len=prompt)
    # chosen + rejected (2 x batch rows); labels -100 on the prompt, shifted by one: seq - prompt scored
    # per row (seq - 1 without a prompt); compact scoring on CUDA (utils.py:1641-1648)
    scored = 2 * batch * (seq - max(prompt, 1))
    assert tile_rows(t) == [scored]
    head = scored * TILE_VOCAB * 2
    assert head <= t.phase_at_peak["loss"]["logits"] < head + scored * (2 * H + 200) + 2 * batch * seq * 20


def test_grpo_scores_the_completion_only() -> None:
    t = trace("grpo", batch=4, rollout=GRPO_ROLLOUT)
    # logits_to_keep = completion length: labels[:, :-logits_to_keep] = -100 (grpo_trainer.py:1495-1496)
    assert tile_rows(t) == [4 * GRPO_ROLLOUT.completion_len]
    assert t.reference == "none" and "reference" not in t.phase_peaks


def test_grpo_kl_scores_the_reference_before_the_policy_forward() -> None:
    t = trace("grpo", batch=4, kl=True, rollout=GRPO_ROLLOUT)
    assert t.reference == "adapters-off" and t.reference_params == 0
    ref, forward = t.phase_at_peak["reference"], t.phase_at_peak["loss"]
    # _generate_and_score_completions scores under no_grad before compute_loss (grpo_trainer.py:2641-2731):
    # no saved activations of the policy yet
    assert ref["gradients"] == 0
    assert ref["activations"] < forward["activations"] / 2


def test_grpo_with_vllm_scores_old_log_probs_with_the_policy() -> None:
    rollout = RolloutSetup(prompt_len=8, completion_len=24, placement="server", gpus=1)
    t = trace("grpo", batch=4, rollout=rollout)
    # vllm_importance_sampling_correction (default True) -> old_per_token_logps (grpo_trainer.py:2652-2665)
    assert "scoring" in t.phase_peaks and "reference" not in t.phase_peaks
    assert t.phase_at_peak["scoring"]["gradients"] == 0


def test_kto_scores_kl_sequences_without_gradients_first() -> None:
    t = trace("kto", batch=4, prompt_len=8)
    # _compute_kl_logps under no_grad before the policy forward (kto_trainer.py:1337-1379)
    assert "scoring" in t.phase_peaks and "reference" in t.phase_peaks
    assert t.phase_at_peak["scoring"]["gradients"] == 0
    assert t.phase_peaks["scoring"] < t.phase_peaks["loss"]
    assert tile_rows(t) == [4 * (32 - 8)]  # unpaired: batch rows only


def test_kto_needs_two_examples() -> None:
    with pytest.raises(ValueError, match="KL"):
        trace("kto", batch=1)


# -- reference-free methods -------------------------------------------------------------------------


def test_cpo_keeps_the_full_logits() -> None:
    t = trace("cpo", batch=2, prompt_len=8)
    # CPOTrainer.concatenated_forward: the model's own forward returns B x S x V logits (cpo_trainer.py:815-822)
    logits = 2 * 2 * 32 * VOCAB * 2
    assert t.phase_at_peak["loss"]["logits"] >= logits
    assert tile_rows(t) == []  # no fused head


def test_simpo_has_no_nll_term() -> None:
    cpo, simpo = trace("cpo", batch=2, prompt_len=8), trace("simpo", batch=2, prompt_len=8)
    # cpo_alpha=0: nll_loss = torch.tensor(0.0), no cross-entropy over the chosen logits (cpo_trainer.py:840-843)
    assert simpo.phase_at_peak["loss"]["logits"] < cpo.phase_at_peak["loss"]["logits"]


def test_reward_model_has_a_score_head_and_no_vocabulary() -> None:
    t = trace("rm", "full", batch=2)
    # AutoModelForSequenceClassification(num_labels=1): the LM head (V x H) becomes score (1 x H)
    assert t.params == t.trainable_params == tiny_params() - VOCAB * H + H
    assert t.at_peak["logits"] == 0
    lora = trace("rm", batch=2)
    assert lora.trainable_params > 0 and lora.at_peak["reference"] == 0


def test_refuses_what_it_cannot_trace() -> None:
    with pytest.raises(ValueError, match="not traced"):
        trace("ppo")
    with pytest.raises(ValueError, match="method"):
        trace_objective(TINY, ObjectiveSetup(kind="dpo"), method="qlora")  # type: ignore[arg-type]


# -- the planner against the traces -----------------------------------------------------------------

_HF = get_runtime("hf", "train")
HF_KNOBS = train_knobs(_HF, apply_defaults(_HF, {})[0])
"""TRL's runtime profile (profiles/runtimes/hf.yaml): the planner's loss kernel for TRL."""
SMALL = spec_from_hf_config(
    dict(catalog_spec("Qwen/Qwen2.5-0.5B").hf_config) | {"num_hidden_layers": 2}, name="qwen2.5-0.5b-2-layers"
)
"""Qwen2.5-0.5B's shapes with two blocks: realistic widths, traced in about a second."""
SERVER = RolloutSetup(prompt_len=64, completion_len=192, placement="server", gpus=1)

CASES = {  # gradient checkpointing on, as TRL's configs default (trl/trainer/base_config.py)
    "dpo-lora": ("dpo", "lora", 2, 256, True, {"prompt_len": 64}),
    "dpo-lora-no-ckpt": ("dpo", "lora", 1, 512, False, {"prompt_len": 128}),
    "dpo-full": ("dpo", "full", 2, 256, True, {"prompt_len": 64}),
    "dpo-precomputed": ("dpo", "lora", 2, 256, True, {"prompt_len": 64, "reference": "precomputed"}),
    "kto-lora": ("kto", "lora", 2, 256, True, {"prompt_len": 64}),
    "kto-full": ("kto", "full", 4, 128, True, {"prompt_len": 32}),
    "cpo-lora": ("cpo", "lora", 2, 256, True, {"prompt_len": 64}),
    "simpo-full": ("simpo", "full", 2, 256, True, {"prompt_len": 64}),
    "orpo-lora": ("orpo", "lora", 2, 256, True, {"prompt_len": 64}),
    "rm-lora": ("rm", "lora", 2, 256, True, {}),
    "rm-full": ("rm", "full", 2, 256, True, {}),
    "grpo-lora": ("grpo", "lora", 4, 256, True, {"rollout": SERVER}),
    "grpo-lora-kl": ("grpo", "lora", 4, 256, True, {"rollout": SERVER, "kl": True}),
    "grpo-full-kl": ("grpo", "full", 4, 256, True, {"rollout": SERVER, "kl": True}),
}


@cache
def compare(case: str) -> ObjectiveComparison:
    kind, method, batch, seq, ckpt, objective = CASES[case]
    lora = {"lora": LoraSetup(rank=16)} if method == "lora" else {}
    setup = TrainSetup(
        method=method,  # type: ignore[arg-type]
        micro_batch=batch,
        seq_len=seq,
        grad_ckpt=ckpt,
        runtime=HF_KNOBS,
        objective=ObjectiveSetup(kind=kind, **objective),  # type: ignore[arg-type]
        **lora,  # type: ignore[arg-type]
    )
    return verify_objective(SMALL, setup)


def within(c: ObjectiveComparison, name: str, tolerance: float = 0.01) -> None:
    row = c.row(name)
    assert row.error is not None and abs(row.error) <= tolerance, (
        f"{name}: planner {row.estimate:,} vs trace {row.traced:,} ({row.error:+.2%})"
    )


FUSED_HEAD = (
    "planner: TRL's fused-head backward also holds the compute-dtype casts of its fp32 hidden-state and LM-head "
    "gradients (grad_hidden.to / grad_weight.to, trl/kernels/chunked_logprob.py:453-456)"
)
FULL_LOGITS = "planner: TRL's CPO/ORPO/SimPO (trl.experimental) keep the full B x S x V logits; no fused loss"
KTO_REFERENCE = "planner: KTO's reference scores its KL and completion sequences one after the other (kto_trainer.py:1430-1436)"
VLLM_OLD_LOGPS = "planner: GRPO under vLLM scores old log-probs with the policy, without gradients (grpo_trainer.py:2652-2665)"
HEAD_INPUT = (
    "planner: counts the LM head's B x S x H input; TRL's fused head keeps its masked N x H copy instead"
)
SEQ_CLS = (
    "planner: a reward model's trainable score head keeps its input and makes its input gradient (B x S x H each); "
    "peft SEQ_CLS trains a copy of it (modules_to_save); its embedding gradient comes last (no LM head)"
)
LORA_NO_CKPT = (
    "planner: DPO's LoRA run without checkpointing keeps 1.8 % less at the loss than the planner counts, where SFT's at "
    "this shape agrees with it (verify_training); not explained yet"
)


def pending(term: str, case: str) -> str | None:
    """Why the planner is known to differ from the trace on `term` for `case` (None: it must agree)."""
    kind, method, _, _, ckpt, objective = CASES[case]
    if kind == "rm":
        return SEQ_CLS
    fused = FULL_LOGITS if kind in ("cpo", "simpo", "orpo") else FUSED_HEAD
    if term in ("logits", "loss and backward start", "training", "peak_allocated"):
        return KTO_REFERENCE if kind == "kto" and term == "peak_allocated" and method == "lora" else fused
    if term == "reference forward":
        return VLLM_OLD_LOGPS if kind == "grpo" and not objective.get("kl") else KTO_REFERENCE
    if term == "activations at loss":
        return LORA_NO_CKPT if not ckpt else HEAD_INPUT if method == "full" else None
    return None


def check(c: ObjectiveComparison, term: str, case: str) -> None:
    """`within`, or an xfail naming what the planner does not model yet when the case is known to differ."""
    reason = pending(term, case)
    try:
        within(c, term)
    except AssertionError as e:
        if reason is None:
            raise
        pytest.xfail(f"{reason} ({e})")


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("term", ["weights", "adapters", "reference", "optimizer", "optimizer step"])
def test_planner_states_match_the_trace(case: str, term: str) -> None:
    c = compare(case)
    if not any(r.name == term for r in c.rows):
        assert term in ("adapters", "reference")  # none on either side
        return
    check(c, term, case)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize(
    "term", ["activations at loss", "logits", "reference forward", "training", "peak_allocated"]
)
def test_planner_step_terms_match_the_trace(case: str, term: str) -> None:
    c = compare(case)
    if not any(r.name == term for r in c.rows):
        return
    check(c, term, case)


# -- the machinery: known values and TRL's CUDA paths ----------------------------------------------


def test_known_values_answer_data_dependent_ops() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    from swiftplan.executors.trace_memory import MemoryTracker
    from swiftplan.executors.trace_values import KnownValues, known, value_of

    completion = torch.zeros(2, 6, dtype=torch.long)
    completion[:, 2:] = 1
    with FakeTensorMode(), MemoryTracker(round_bytes=1) as tracker, KnownValues() as values:
        mask = known(torch.empty(2, 6, dtype=torch.long), completion)
        labels = torch.ones(2, 6, dtype=torch.long).masked_fill(mask == 0, -100)
        labels[:, :-3] = -100  # an in-place write on a view reaches the known value
        selected = torch.empty(2, 6, 8)[labels != -100]  # boolean index: shape from the values
        assert selected.shape == (6, 8)
        assert int((labels != -100).sum()) == 6 and bool(mask.any())
        assert float(torch.empty(3).sum()) == 1.0  # unknown data reads 1
        assert values.unknown_reads == 1
        real = value_of(labels)
        assert tracker.live_bytes > 0  # every fake op is still counted
    assert real is not None and real[0].tolist() == [-100, -100, -100, 1, 1, 1]


def test_selective_log_softmax_takes_trls_triton_path() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    from swiftplan.executors.trace_memory import MemoryTracker
    from swiftplan.executors.trace_trl import cuda_like_trl

    rows, seq, vocab = 2, 16, 1024
    with FakeTensorMode(), MemoryTracker(round_bytes=1) as tracker, cuda_like_trl():
        from trl.trainer.utils import selective_log_softmax

        logits = torch.empty(rows, seq, vocab, dtype=torch.bfloat16, requires_grad=True)
        index = torch.zeros(rows, seq, dtype=torch.long)
        before = tracker.live_bytes
        logps = selective_log_softmax(logits, index)
        # trl/kernels/logprob_entropy.py:165-168, 192: four fp32 per-row outputs, the log-probs returned and
        # log_z, expected_logit saved (the entropy dropped); no fp32 copy of the logits (the torch
        # fallback, utils.py:578-599, would log_softmax every row)
        assert tracker.live_bytes - before == 3 * rows * seq * 4
        before = tracker.live_bytes
        logps.sum().backward()
        assert logits.grad is not None and logits.grad.dtype == torch.bfloat16  # empty_like(logits), :208
