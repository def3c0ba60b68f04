"""`swiftplan verify` runs two more runtime knobs on fake tensors (issue 14): the optimizer step fused into
backward (torchtune's OptimizerInBackward: one torch AdamW per parameter, stepped from torch's
post-accumulate-grad hook, its gradient set to None there) and peft's modules_to_save (LoraConfig
(modules_to_save=[...]): a trainable copy of the embedding and/or the LM head beside LoRA).

Qwen2.5-0.5B's widths with six blocks, tied (its own config) and untied. 64 tokens for the optimizer in
backward and the step moments, so that backward and the step, not the loss, hold the peak; 512 where the loss
does. The planner's peak within 0.1 % of the trace (measured: 0.00-0.01 %), its gradients, adapters and
trainable parameters exact."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from swiftplan.errors import SwiftplanError  # noqa: E402
from swiftplan.executors.verify import Comparison, verify_training  # noqa: E402
from swiftplan.executors.verify_knobs import refuse_untraceable  # noqa: E402
from swiftplan.planner.model_catalog import catalog_spec  # noqa: E402
from swiftplan.planner.model_spec import ModelSpec, spec_from_hf_config  # noqa: E402
from swiftplan.planner.setup import LoraSetup, RuntimeKnobs, TrainSetup  # noqa: E402
from swiftplan.planner.train_memory import CHUNK_SUM, HEAD_STEP, train_memory  # noqa: E402


def _six(tied: bool) -> ModelSpec:
    config = dict(catalog_spec("Qwen/Qwen2.5-0.5B").hf_config) | {"num_hidden_layers": 6}
    return spec_from_hf_config(config | {"tie_word_embeddings": tied}, name=f"qwen2.5-0.5b-6-{tied}")


TIED, UNTIED = _six(True), _six(False)
HEAD = TIED.vocab_size * TIED.hidden_size
"""One vocab × hidden matrix (151,936 × 896)."""
PEAK_REL = 0.001


def _rows(comparison: Comparison) -> dict[str, tuple[int, int]]:
    return {row.name: (row.estimate, row.traced) for row in comparison.rows}


def _full(*, grad_ckpt: bool, impl: str = "fused", in_backward: bool = True, seq: int = 64) -> TrainSetup:
    knobs = RuntimeKnobs(optimizer_in_backward=in_backward, optimizer_impl=impl)  # type: ignore[arg-type]
    return TrainSetup(method="full", seq_len=seq, grad_ckpt=grad_ckpt, runtime=knobs)


def _lora(modules: tuple[str, ...], *, grad_ckpt: bool = False, impl: str = "fused", seq: int = 512,
          in_backward: bool = False) -> TrainSetup:  # fmt: skip
    knobs = RuntimeKnobs(modules_to_save=modules, optimizer_impl=impl, optimizer_in_backward=in_backward)  # type: ignore[arg-type]
    return TrainSetup(method="lora", lora=LoraSetup(rank=16, dropout=0.0), seq_len=seq, grad_ckpt=grad_ckpt,
                      runtime=knobs)  # fmt: skip


# -- the optimizer in backward ------------------------------------------------------------------------

OIB_CASES = [
    (tied, ckpt, impl) for tied in (True, False) for ckpt in (True, False) for impl in ("fused", "foreach")
]
OIB_CASES += [(True, False, "for_loop"), (False, False, "for_loop")]


@pytest.mark.parametrize(
    ("tied", "grad_ckpt", "impl"), OIB_CASES, ids=[f"tied{t}-ckpt{c}-{i}" for t, c, i in OIB_CASES]
)
def test_optimizer_in_backward_matches_the_trace(tied: bool, grad_ckpt: bool, impl: str) -> None:
    """One AdamW per parameter stepped from its gradient hook: one vocab × hidden bf16 gradient alive at the
    peak on both sides (all 0.5B-6 gradients would be 723 MB untied), the AdamW state whole, the peak within
    0.1 %. Tied: the head's gradient waits in autograd's buffer for the embedding's, summed out of place at
    the end of backward (three vocab × hidden tensors). Untied: the head's gradient is made beside the logits'
    gradient, and stepped, while every activation is still saved (foreach: its sqrt temporary; for_loop: the
    sqrt and the quotient)."""
    spec = TIED if tied else UNTIED
    comparison = verify_training(spec, _full(grad_ckpt=grad_ckpt, impl=impl))
    rows = _rows(comparison)
    assert rows["gradients"] == (HEAD * 2, HEAD * 2)
    assert rows["optimizer"][0] == pytest.approx(rows["optimizer"][1], rel=PEAK_REL)
    assert rows["peak_allocated"][0] == pytest.approx(rows["peak_allocated"][1], rel=PEAK_REL)
    # tied for_loop: the sum's step (it and two temporaries) equals the sum's making (three tensors)
    assert comparison.estimate_phase in (("end of backward", "optimizer step") if tied else (HEAD_STEP,))
    assert comparison.trace.phase_peaks["backward"] == comparison.trace.peak_bytes  # the step ran in backward
    assert any("optimizer in backward" in note for note in comparison.notes)
    if tied:  # the held head gradient ("logits": made in the loss region) and the embedding's, beside the sum
        assert rows["activations"][1] + rows["logits"][1] == pytest.approx(2 * HEAD * 2, rel=PEAK_REL)


def test_the_step_after_backward_holds_every_gradient_and_in_backward_one() -> None:
    """The same set-up stepped after backward: every gradient at the step (the trace's optimizer phase); in
    backward, the optimizer phase holds no gradient at all, and the peak drops by the planner's difference."""
    setup = _full(grad_ckpt=True, in_backward=False)
    after, inside = verify_training(UNTIED, setup), verify_training(UNTIED, _full(grad_ckpt=True))
    every = train_memory(UNTIED, setup).trainable_params * 2
    assert _rows(after)["gradients"][1] == pytest.approx(every, rel=PEAK_REL)
    assert inside.trace.phase_peaks["optimizer"] < after.trace.phase_peaks["optimizer"]
    saved = after.peak.traced - inside.peak.traced
    assert after.peak.estimate - inside.peak.estimate == pytest.approx(saved, rel=0.01)


def test_lora_with_the_optimizer_in_backward_steps_each_adapter_and_the_head_copy() -> None:
    """LoRA under the knob (peft's adapters and a modules_to_save head copy, each with its own AdamW): the
    copy's bf16 gradient is the largest alive, made and stepped at the head's backward."""
    comparison = verify_training(
        UNTIED, _lora(("lm_head",), grad_ckpt=True, impl="foreach", seq=64, in_backward=True)
    )
    rows = _rows(comparison)
    assert comparison.estimate_phase == HEAD_STEP
    assert rows["gradients"] == (HEAD * 2, HEAD * 2)
    assert rows["peak_allocated"][0] == pytest.approx(rows["peak_allocated"][1], rel=PEAK_REL)


def test_for_loop_adamw_holds_the_sqrt_and_its_quotient() -> None:
    """torch's `_single_tensor_adam`: denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps) holds two
    temporaries the size of the parameter stepped: the largest's, twice (the planner held one before)."""
    rows = _rows(verify_training(UNTIED, _full(grad_ckpt=False, impl="for_loop", in_backward=False)))
    assert rows["activations"][1] == pytest.approx(2 * HEAD * 2, rel=0.001)
    assert rows["peak_allocated"][0] == pytest.approx(rows["peak_allocated"][1], rel=PEAK_REL)


# -- the chunked loss: the head applied once per piece -----------------------------------------------------


def _weight_sized_allocations(chunks: int, *, tied: bool) -> int:
    """Real CPU tensors (autograd's `accumulate`, the path CUDA shares): a vocab × hidden weight applied to
    `chunks` pieces (and, tied, looked up first); how many weight-sized blocks its backward allocates (the
    CPU allocator's events): one per piece, one for the embedding's gradient, one per sum made out of place."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    vocab, hidden, seq = 2048, 96, 256
    weight = torch.nn.Parameter(torch.randn(vocab, hidden))
    ids = torch.randint(0, vocab, (1, seq))
    states = torch.nn.functional.embedding(ids, weight) * 1.0 if tied else torch.randn(1, seq, hidden)
    loss = sum(
        torch.nn.functional.linear(piece, weight).square().sum() for piece in states.chunk(chunks, dim=1)
    )
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        loss.backward()

    def count(node: object) -> int:
        fields = node.extra_fields  # type: ignore[attr-defined]
        here = node.tag == _EventType.Allocation and fields.alloc_size == weight.numel() * 4  # type: ignore[attr-defined]
        return int(here) + sum(count(child) for child in node.children)  # type: ignore[attr-defined]

    return sum(count(root) for root in prof.profiler.kineto_results.experimental_event_tree())  # type: ignore[union-attr]


def test_autograd_sums_a_pieces_head_gradients_out_of_place_once() -> None:
    """The evidence for `chunked_head_sum_bytes`: a gradient arriving as a view (the head's, through
    mm_mat2_backward's and TBackward0's `.t()`) is summed out of place (a third weight-sized block beside the
    held and the new gradient), the fresh sum then in place; tied, the embedding's gradient is added out of
    place to one piece's gradient but in place to a chunked sum (input_buffer.cpp `can_accumulate_inplace`)."""
    # In a fresh interpreter: earlier tests in the same process leave autograd/profiler state that changed
    # the count in the full suite (4 instead of 5); the measurement itself needs nothing of theirs.
    code = (
        "import json; from tests.test_trace_knobs import _weight_sized_allocations as n; "
        "print(json.dumps([n(4, tied=False), n(1, tied=True), n(4, tied=True)]))"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    untied_4, tied_1, tied_4 = json.loads(done.stdout.strip().splitlines()[-1])
    assert untied_4 == 4 + 1  # 4 pieces, 1 sum (7 if every sum were new)
    assert tied_1 == 1 + 1 + 1  # piece, embedding, sum
    assert tied_4 == 4 + 1 + 1  # 4 pieces, embedding, 1 sum


CHUNK_CASES = [(tied, ckpt, impl, seq) for tied in (True, False) for ckpt in (True, False)
               for impl, seq in (("fused", 512), ("foreach", 64))]  # fmt: skip


@pytest.mark.parametrize(
    ("tied", "grad_ckpt", "impl", "seq"),
    CHUNK_CASES,
    ids=[f"tied{t}-ckpt{c}-{i}-{s}" for t, c, i, s in CHUNK_CASES],
)
def test_the_chunked_loss_with_the_optimizer_in_backward_sums_the_pieces_head_gradients(
    tied: bool, grad_ckpt: bool, impl: str, seq: int
) -> None:
    """torchtune's chunked loss applies the head to each of 8 pieces, so its backward sums 8 weight
    gradients before the head's (or tied embedding's) step: three vocab × hidden gradients beside every
    saved activation and the 6 unreached pieces' logits gradients (traced as "logits"). The planner held one
    gradient there and was 9.5-13.8 % under the trace untied, 0.7-12 % tied."""
    spec = TIED if tied else UNTIED
    setup = replace(_full(grad_ckpt=grad_ckpt, impl=impl, seq=seq), runtime=replace(
        _full(grad_ckpt=grad_ckpt, impl=impl).runtime, loss="chunked"))  # fmt: skip
    comparison = verify_training(spec, setup)
    rows = _rows(comparison)
    assert comparison.estimate_phase == CHUNK_SUM
    assert rows["logits"][1] == pytest.approx(
        3 * HEAD * 2 + 6 * (seq // 8) * spec.vocab_size * 2, rel=PEAK_REL
    )
    assert rows["logits"][0] == pytest.approx(rows["logits"][1], rel=PEAK_REL)
    assert rows["peak_allocated"][0] == pytest.approx(rows["peak_allocated"][1], rel=PEAK_REL)
    assert comparison.trace.phase_peaks["backward"] == comparison.trace.peak_bytes


def test_the_chunked_loss_sums_the_head_gradients_without_the_knob_too() -> None:
    """The same moment with the step after backward: no other gradient exists yet when the head's are summed."""
    setup = _full(grad_ckpt=False, in_backward=False, seq=512)
    comparison = verify_training(UNTIED, replace(setup, runtime=replace(setup.runtime, loss="chunked")))
    assert comparison.estimate_phase == CHUNK_SUM
    rows = _rows(comparison)
    assert rows["peak_allocated"][0] == pytest.approx(rows["peak_allocated"][1], rel=PEAK_REL)


@pytest.mark.xfail(strict=True, reason=(
    "the fake-tensor trace adds the tied embedding's gradient out of place to the pieces' summed head gradient "
    "(FakeTensor is tensor-subclass-like); autograd adds it in place on a GPU (input_buffer.cpp "
    "can_accumulate_inplace; test_autograd_sums_a_pieces_head_gradients_out_of_place_once), one vocab × hidden "
    "gradient less, as the planner counts: the trace is 4 % over at its end of backward"))  # fmt: skip
def test_tied_chunked_end_of_backward_overcounted_by_the_trace() -> None:
    setup = _full(grad_ckpt=False, impl="foreach", in_backward=False)
    comparison = verify_training(TIED, replace(setup, runtime=replace(setup.runtime, loss="chunked")))
    rows = _rows(comparison)
    assert rows["peak_allocated"][0] == pytest.approx(rows["peak_allocated"][1], rel=PEAK_REL)


# -- modules_to_save ----------------------------------------------------------------------------------

SAVE_CASES = [
    (tied, modules, ckpt, impl, seq)
    for tied in (True, False)
    for modules, ckpt, impl, seq in [
        (("embed_tokens", "lm_head"), False, "fused", 512),  # the loss holds the peak
        (("lm_head",), True, "fused", 512),
        (("embed_tokens",), False, "fused", 64),  # the step holds it
        (("embed_tokens", "lm_head"), False, "foreach", 64),
        (("lm_head",), True, "foreach", 64),
        (("embed_tokens", "lm_head"), False, "for_loop", 64),
    ]
]


@pytest.mark.parametrize(
    ("tied", "modules", "grad_ckpt", "impl", "seq"),
    SAVE_CASES,
    ids=[f"tied{t}-{'+'.join(m)}-ckpt{c}-{i}-{s}" for t, m, c, i, s in SAVE_CASES],
)
def test_modules_to_save_matches_the_trace(
    tied: bool, modules: tuple[str, ...], grad_ckpt: bool, impl: str, seq: int
) -> None:
    """peft 0.21 wraps each module in a ModulesToSaveWrapper with a trainable bf16 deep copy — one per module
    named, tied embeddings included (peft's ensure_weight_tying=False default) — counted as adapters with the
    fp32 LoRA weights: exact; their bf16 gradients exact at the step; AdamW's foreach temporaries in each
    parameter's own dtype (bf16 for the copies); the peak within 0.1 %."""
    spec = TIED if tied else UNTIED
    setup = _lora(modules, grad_ckpt=grad_ckpt, impl=impl, seq=seq)
    comparison = verify_training(spec, setup)
    rows = _rows(comparison)
    assert rows["adapters"][0] == rows["adapters"][1]
    assert comparison.trace.trainable_params == train_memory(spec, setup).trainable_params
    assert any(f"modules_to_save {','.join(modules)}" in note and f"in {len(modules)} copies" in note
               for note in comparison.notes)  # fmt: skip
    if seq == 64:
        assert comparison.estimate_phase == "optimizer step"
        assert rows["gradients"][0] == rows["gradients"][1]
    assert rows["peak_allocated"][0] == pytest.approx(rows["peak_allocated"][1], rel=PEAK_REL)


# -- what stays refused -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("knobs", "task", "fragment"),
    [
        (RuntimeKnobs(optimizer_in_backward=True, fsdp="fsdp2"), "train", "--optimizer-in-backward with --fsdp fsdp2"),
        (RuntimeKnobs(modules_to_save=("lm_head",)), "dpo", "--modules-to-save lm_head with --task dpo"),
        (RuntimeKnobs(optimizer_in_backward=True), "grpo", "--optimizer-in-backward with --task grpo"),
    ],
)  # fmt: skip
def test_the_traces_that_do_not_run_the_knobs_refuse_them_by_name(knobs: RuntimeKnobs, task: str, fragment: str) -> None:  # fmt: skip
    with pytest.raises(SwiftplanError, match=fragment):
        refuse_untraceable(knobs, world_size=2, task=task)
    refuse_untraceable(RuntimeKnobs(optimizer_in_backward=True, modules_to_save=("lm_head",)))  # SFT: traced
