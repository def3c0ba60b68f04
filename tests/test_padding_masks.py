"""Padded batches (planner/padding.py): which runtimes pad which micro-batches, what SDPA's padding mask costs
each block, checked against a fake-tensor trace of the real transformers + peft step fed an attention mask that
marks padding (two blocks of a catalog model, SGD), and the flags and files that carry it."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from bad_input_support import run_cli

from swiftplan.planner import activations as act
from swiftplan.planner.model_catalog import catalog_spec, spec_from_hf_config
from swiftplan.planner.padding import has_padding, padding_masked, varied_shapes
from swiftplan.planner.runtime import apply_defaults, get_runtime, train_knobs
from swiftplan.planner.setup import LoraSetup, TrainSetup
from swiftplan.planner.train_memory import train_memory

QV = ("q_proj", "v_proj")


def _setup(
    runtime: str = "hf",
    *,
    batch: int = 2,
    seq: int = 1024,
    ckpt: bool = True,
    padding: str | None = None,
    **kwargs: object,
) -> TrainSetup:
    profile = get_runtime(runtime, "train")
    knobs = train_knobs(profile, apply_defaults(profile, {} if padding is None else {"padding": padding})[0])
    fields = dict(runtime=knobs, method="lora", lora=LoraSetup(rank=16, dropout=0.0, targets=QV), micro_batch=batch,
                  seq_len=seq, grad_ckpt=ckpt, optimizer="sgd", variable_lengths=True) | kwargs  # fmt: skip
    return TrainSetup(**fields)  # type: ignore[arg-type]


def _two_blocks(model_id: str):  # type: ignore[no-untyped-def]
    config = dict(catalog_spec(model_id).hf_config) | {"num_hidden_layers": 2}
    return spec_from_hf_config(config, name=model_id)


@pytest.mark.parametrize(
    ("runtime", "batch", "padded"),
    [("swiftplan", 1, False), ("swiftplan", 2, True), ("llamafactory", 1, True), ("axolotl", 1, True),
     ("hf", 1, False), ("hf", 2, True), ("ms-swift", 2, True), ("torch", 2, True), ("torchtune", 2, False),
     ("unsloth", 2, False)],
)  # fmt: skip
def test_each_runtime_pads_the_micro_batches_its_collator_pads(
    runtime: str, batch: int, padded: bool
) -> None:
    """Padding to a multiple (LLaMA-Factory, axolotl) pads a lone sample; padding to the longest (swiftplan's
    executor, TRL, ms-swift) never does; torchtune and Unsloth give the model no padding mask. Equal-length samples
    are never padded."""
    setup = _setup(runtime, batch=batch)
    assert has_padding(setup) is padded
    assert not has_padding(replace(setup, variable_lengths=False))


def test_only_batches_padded_to_seq_len_keep_one_shape_for_the_allocator() -> None:
    assert not varied_shapes(_setup(padding="max_length"))
    assert varied_shapes(_setup("llamafactory")) and varied_shapes(_setup("torchtune"))
    assert not varied_shapes(replace(_setup(), variable_lengths=False))


def test_only_sdpa_pays_for_the_padding_mask() -> None:
    spec = catalog_spec("meta-llama/Llama-3.1-8B")  # 32 query heads over 8 KV heads
    tokens, seq = 4 * 2048, 2048
    padded = _setup(batch=4, seq=seq)
    full = replace(padded, variable_lengths=False)
    layer = act.layer_activation_bytes(spec, padded, 0, tokens, seq)
    plain = act.layer_activation_bytes(spec, full, 0, tokens, seq)
    assert layer.attention_mask == 4 * seq * seq * 2  # B × 1 × S × S, bf16
    # k and v repeated to every query head: (q_dim - kv_dim) more for each
    assert layer.attention - plain.attention == 2 * tokens * (4096 - 1024) * 2
    flash = replace(padded, attention="flash")
    assert not padding_masked(spec, flash)
    assert act.layer_activation_bytes(spec, flash, 0, tokens, seq) == act.layer_activation_bytes(
        spec, replace(flash, variable_lengths=False), 0, tokens, seq
    )
    # with checkpointing the bool mask, one per sequence, is every block's saved argument
    assert act.block_arguments_bytes(spec, padded) - act.block_arguments_bytes(spec, full) == 4 * seq * seq


CASES = {
    "checkpointed, padded to the longest": ("meta-llama/Llama-3.1-8B", dict(runtime="hf", batch=2)),
    "no checkpointing": ("meta-llama/Llama-3.1-8B", dict(runtime="hf", batch=2, ckpt=False, seq=2048)),
    "a lone sample padded to seq_len": ("meta-llama/Llama-3.1-8B", dict(padding="max_length", batch=1, ckpt=False)),
    "all-linear qlora, TRL's fused head": ("meta-llama/Llama-3.1-8B", dict(
        runtime="hf", method="qlora", quant="nf4", lora=LoraSetup(rank=16, dropout=0.0, targets=("all-linear",)))),
    # past the window SDPA has its mask already: padding makes the checkpointed bool mask one per sequence
    "past the sliding window too": ("mistralai/Mistral-7B-v0.1", dict(runtime="hf", seq=4096)),
    "fused qkv, the forward's peak": ("microsoft/Phi-3-mini-4k-instruct", dict(
        runtime="hf", seq=2048, ckpt=False, lora=LoraSetup(rank=16, dropout=0.0, targets=("all-linear",)))),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_the_padded_peak_matches_the_trace(case: str) -> None:
    """The padded batch's peak within 0.05 % of the trace, and the mask's cost is the trace's own difference."""
    pytest.importorskip("peft")
    from swiftplan.executors.verify import verify_training

    model_id, kwargs = CASES[case]
    spec, setup = _two_blocks(model_id), _setup(**kwargs)  # type: ignore[arg-type]

    def peak(s: TrainSetup) -> tuple[int, int]:
        row = next(r for r in verify_training(spec, s).rows if r.name == "peak_allocated")
        return row.estimate, row.traced

    estimate, traced = peak(setup)
    assert estimate == pytest.approx(traced, rel=5e-4)
    plain_estimate, plain_traced = peak(replace(setup, variable_lengths=False))
    assert traced > plain_traced
    assert estimate - plain_estimate == pytest.approx(traced - plain_traced, rel=0.02)


def test_a_padded_non_checkpointed_run_needs_a_mask_and_repeated_kv_per_block() -> None:
    """32 blocks of Llama-3.1-8B at 4 × 4096 tokens: 128 MiB of mask and 192 MiB of repeated k, v each."""
    spec = catalog_spec("meta-llama/Llama-3.1-8B")
    padded = _setup(batch=4, seq=4096, ckpt=False)
    grown = (
        train_memory(spec, padded).device.peak_allocated
        - train_memory(spec, replace(padded, variable_lengths=False)).device.peak_allocated
    )
    assert grown == 32 * (4 * 4096 * 4096 * 2 + 2 * 4 * 4096 * (4096 - 1024) * 2)


def _activations(*args: str) -> tuple[float, str]:
    result = run_cli("estimate", "meta-llama/Llama-3.1-8B", "--batch", "4", "--seq", "4096", "--gpus", "1xh100",
                     "--runtime", "hf", "--json", *args)  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output[result.output.index("{") :])
    row = next(t for t in payload["terms"] if t["name"] == "activations")
    return row["bytes"], row["formula"]


def test_estimate_counts_the_mask_for_variable_lengths_under_the_runtimes_padding() -> None:
    plain, _ = _activations()
    padded, formula = _activations("--variable-lengths")
    assert padded > plain
    assert "padding mask" in formula and "longest padding" in formula
    unmasked, formula = _activations("--variable-lengths", "--padding", "unmasked")
    assert unmasked == plain and "padding mask" not in formula


def test_a_bad_padding_value_is_named() -> None:
    result = run_cli("estimate", "meta-llama/Llama-3.1-8B", "--padding", "left")
    assert result.exit_code != 0
    assert "--padding" in result.output and "max_length" in result.output and "unmasked" in result.output
    assert "Traceback" not in result.output


def test_fit_on_unpacked_lengths_plans_padded_batches_and_the_plan_file_keeps_it(tmp_path) -> None:
    from swiftplan.plan_file import load_plan

    lengths = tmp_path / "lengths.txt"
    lengths.write_text("".join(f"{n}\n" for n in [300] * 90 + [1800] * 10))
    plan_path = tmp_path / "plan.yaml"
    result = run_cli("fit", "Qwen/Qwen2.5-0.5B", "--gpus", "rtx4090", "--lengths", str(lengths), "--seq", "2048",
                     "-o", str(plan_path))  # fmt: skip
    assert result.exit_code == 0, result.output
    plan = load_plan(plan_path)
    assert plan.setup.variable_lengths and plan.workload.variable_lengths
    packed = tmp_path / "packed.yaml"
    result = run_cli("fit", "Qwen/Qwen2.5-0.5B", "--gpus", "rtx4090", "--lengths", str(lengths), "--seq", "2048",
                     "--packing", "-o", str(packed))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert not load_plan(packed).setup.variable_lengths


def test_an_engine_refuses_a_padding_its_collator_does_not_do_once_samples_vary() -> None:
    """LLaMA-Factory pads to a multiple of 8: a plan with padding to the longest sample is not what it runs, but
    only when the samples vary in length (equal lengths pad nothing)."""
    base = ("estimate", "meta-llama/Llama-3.1-8B", "--runtime", "llamafactory", "--padding", "longest", "--gpus",
            "1xh100")  # fmt: skip
    refused = run_cli(*base, "--variable-lengths").output
    assert "llamafactory does not run padding 'longest'" in refused and "multiple of 8" in refused
    assert "cannot run" not in run_cli(*base).output


@pytest.mark.parametrize(
    "args",
    [("estimate", "Qwen/Qwen2.5-0.5B", "--padding", "longest"), ("fit", "Qwen/Qwen2.5-0.5B", "--gpus", "rtx4090", "--padding", "longest"),
     ("size", "Qwen/Qwen2.5-0.5B", "--padding", "longest")],
)  # fmt: skip
def test_padding_without_samples_of_many_lengths_is_refused_not_ignored(args: tuple[str, ...]) -> None:
    result = run_cli(*args)
    assert (
        result.exit_code != 0 and "--padding longest" in result.output and "change nothing" in result.output
    )
    assert "Traceback" not in result.output
