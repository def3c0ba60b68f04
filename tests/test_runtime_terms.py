"""Runtime memory terms: the chunked-CE and foreach-AdamW formulas against a fake-tensor trace of the
real torch code (MemoryTracker, as `swiftplan verify` uses), and each knob moving the breakdown."""

from __future__ import annotations

import dataclasses

import pytest

from swiftplan.planner.architecture import largest_param_elements
from swiftplan.planner.model_catalog import catalog_spec
from swiftplan.planner.runtime_terms import (
    adamw_impl_temporary_bytes,
    chunked_loss_bytes,
    fused_linear_chunk_tokens,
    reduce_bucket_bytes,
    zero3_live_parameter_bytes,
)
from swiftplan.planner.setup import LoraSetup, Parallelism, RuntimeKnobs, TrainSetup
from swiftplan.planner.train_memory import train_memory

torch = pytest.importorskip("torch")
QWEN7B = catalog_spec("Qwen/Qwen2.5-7B-Instruct")


def _traced_peak(fn) -> int:  # type: ignore[no-untyped-def]
    """Peak live bytes of the storages `fn` allocates, on fake tensors (no real memory)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from swiftplan.executors.trace_memory import MemoryTracker

    with FakeTensorMode():
        inputs = fn(None)
        with MemoryTracker(round_bytes=1) as tracker:
            tracker._measuring = True
            fn(inputs)
            return tracker.peak_bytes


@pytest.mark.parametrize("chunks", [1, 4, 8])
def test_chunked_cross_entropy_matches_a_trace(chunks: int) -> None:
    """torchtune's pattern: the model returns `chunks` bf16 logit pieces; each is upcast and
    cross-entropied; backward follows. Formula within 2 % of the traced peak."""
    import torch.nn.functional as F

    tokens, hidden, vocab = 2048, 512, 16384

    def step(inputs):  # type: ignore[no-untyped-def]
        if inputs is None:
            h = torch.randn(tokens, hidden, dtype=torch.bfloat16, requires_grad=True)
            return h, torch.randn(vocab, hidden, dtype=torch.bfloat16), torch.randint(0, vocab, (tokens,))
        h, w, labels = inputs
        pieces = [c @ w.t() for c in h.chunk(chunks)]
        loss = sum(
            F.cross_entropy(p.float(), lab, reduction="sum")
            for p, lab in zip(pieces, labels.chunk(chunks), strict=True)
        )
        del pieces
        loss.backward()  # type: ignore[union-attr]
        return None

    inputs_bytes = (tokens + vocab) * hidden * 2  # h and the head weight, counted elsewhere by the planner
    traced = _traced_peak(step) - inputs_bytes
    planned = chunked_loss_bytes(tokens, vocab, chunks=chunks, compute_bytes=2)
    assert planned == pytest.approx(traced, rel=0.02)


@pytest.mark.parametrize(("impl", "kwargs"), [("foreach", {"foreach": True}), ("fused", {"fused": True})])
def test_adamw_step_temporary_matches_a_trace(impl: str, kwargs: dict) -> None:
    """torch.optim.AdamW.step() on fake fp32 parameters: foreach allocates one parameter-sized temporary
    (the sqrt of exp_avg_sq), fused none. The step's peak beyond its state is the formula's value."""
    shapes = [(1024, 1024), (4096, 256), (300,)]
    params_total = sum(torch.Size(s).numel() for s in shapes)
    largest = max(torch.Size(s).numel() for s in shapes)

    def step(inputs):  # type: ignore[no-untyped-def]
        if inputs is None:
            params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
            for p in params:
                p.grad = torch.randn(p.shape)
            opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0, **kwargs)
            return opt
        inputs.step()  # first step creates the state: 2 moments + step counters
        return None

    traced = _traced_peak(step)
    state = 2 * params_total * 4
    extra = adamw_impl_temporary_bytes(RuntimeKnobs(optimizer_impl=impl), trainable=params_total,  # type: ignore[arg-type]
                                       largest=largest, state_bytes=4)  # fmt: skip
    assert traced - state == pytest.approx(extra, abs=64 * 1024 + 0.02 * extra)


def _mem(**knobs):  # type: ignore[no-untyped-def]
    setup = TrainSetup(method="lora", lora=LoraSetup(rank=16), seq_len=4096, runtime=RuntimeKnobs(**knobs))
    return train_memory(QWEN7B, setup).device


def test_default_knobs_are_todays_numbers() -> None:
    assert (
        train_memory(QWEN7B, TrainSetup()).device
        == train_memory(QWEN7B, TrainSetup(runtime=RuntimeKnobs(name="swiftplan"))).device
    )


def test_loss_implementations_order_the_logits_term() -> None:
    full, chunked, fused = _mem().logits, _mem(loss="chunked").logits, _mem(loss="fused_linear").logits
    assert fused < chunked < full
    # Qwen2.5-7B: 4096 tokens × 152,064 vocab × 12 B for the full loss
    assert full == 4096 * 152_064 * 12
    assert fused_linear_chunk_tokens(4096, 152_064, 3584) == 128  # ceil(4096 / 43) = 96 → 128


def test_foreach_adds_one_trainable_sized_temporary_at_the_step() -> None:
    setup = TrainSetup(method="full", seq_len=512)
    fused = train_memory(QWEN7B, setup)
    foreach = train_memory(QWEN7B, dataclasses.replace(setup, runtime=RuntimeKnobs(optimizer_impl="foreach")))
    assert foreach.device.peak_phase == "optimizer step"
    assert foreach.device.transient - fused.device.transient == fused.trainable_params * 2


def test_modules_to_save_trains_copies_of_embedding_and_head() -> None:
    base, saved = _mem(), _mem(modules_to_save=("embed_tokens", "lm_head"))
    copies = 2 * QWEN7B.vocab_size * QWEN7B.hidden_size
    assert saved.adapters - base.adapters == copies * 2  # bf16 copies
    assert saved.gradients - base.gradients == copies * 2
    assert saved.optimizer - base.optimizer == copies * 2 * 2  # two AdamW moments in bf16


def test_deepspeed_bucket_and_zero3_live_parameters() -> None:
    zero2 = TrainSetup(
        method="full", parallel=Parallelism(zero=2), seq_len=512, runtime=RuntimeKnobs(ds_buckets=False)
    )
    plain = train_memory(QWEN7B, zero2, world_size=8).device
    bucket = train_memory(
        QWEN7B, dataclasses.replace(zero2, runtime=RuntimeKnobs(ds_buckets=True)), world_size=8
    ).device
    assert bucket.gradients - plain.gradients == 2 * 500_000_000 * 2  # overlap_comm: two buckets
    single = train_memory(
        QWEN7B,
        dataclasses.replace(zero2, runtime=RuntimeKnobs(ds_buckets=True, ds_overlap_comm=False)),
        world_size=8,
    ).device
    assert single.gradients - plain.gradients == 500_000_000 * 2
    zero3 = dataclasses.replace(zero2, parallel=Parallelism(zero=3))
    live = train_memory(
        QWEN7B, dataclasses.replace(zero3, runtime=RuntimeKnobs(ds_buckets=True)), world_size=8
    ).device
    assert live.peak_allocated != train_memory(QWEN7B, zero3, world_size=8).device.peak_allocated


def test_fsdp_shards_a_4bit_base() -> None:
    qlora = TrainSetup(method="qlora", seq_len=1024)
    single = train_memory(QWEN7B, qlora).device
    sharded = train_memory(
        QWEN7B, dataclasses.replace(qlora, runtime=RuntimeKnobs(fsdp="fsdp2")), world_size=4
    ).device
    assert sharded.weights < single.weights / 3
    hybrid = RuntimeKnobs(fsdp="fsdp2", fsdp_sharding="hybrid_shard", fsdp_shard_group=2)
    assert (
        train_memory(QWEN7B, dataclasses.replace(qlora, runtime=hybrid), world_size=4).device.weights
        > sharded.weights
    )


def test_optimizer_in_backward_keeps_one_gradient() -> None:
    setup = TrainSetup(method="full", seq_len=512)
    base = train_memory(QWEN7B, setup).device
    inbwd = train_memory(
        QWEN7B, dataclasses.replace(setup, runtime=RuntimeKnobs(optimizer_in_backward=True))
    ).device
    assert inbwd.gradients == QWEN7B.vocab_size * QWEN7B.hidden_size * 2
    assert inbwd.peak_allocated < base.peak_allocated


def test_zero3_auto_buckets_follow_the_hidden_size() -> None:
    """ "auto" ZeRO-3 sizes (LLaMA-Factory's, ms-swift's, axolotl's configs): the reduce bucket is hidden² and
    the prefetch 0.9·hidden², where DeepSpeed's defaults are 5e8 and 5e7; max live 0 prefetches nothing."""
    knobs = RuntimeKnobs(ds_buckets=True, ds_auto_buckets=True)
    hidden2 = QWEN7B.hidden_size**2
    assert reduce_bucket_bytes(QWEN7B, knobs, stage=3, grad_bytes=2) == hidden2 * 2
    assert (
        reduce_bucket_bytes(QWEN7B, knobs, stage=2, grad_bytes=2) == 2 * 500_000_000 * 2
    )  # ZeRO-2 keeps its size
    largest = largest_param_elements(QWEN7B)
    auto = zero3_live_parameter_bytes(QWEN7B, knobs, weight_bytes=2, tp=1)
    assert auto == (largest + int(0.9 * hidden2)) * 2
    default = zero3_live_parameter_bytes(QWEN7B, RuntimeKnobs(ds_auto_buckets=False), weight_bytes=2, tp=1)
    assert default == (largest + 50_000_000) * 2
    none_ahead = zero3_live_parameter_bytes(QWEN7B, RuntimeKnobs(max_live_parameters=0), weight_bytes=2, tp=1)
    assert none_ahead == largest * 2
