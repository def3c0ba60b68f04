"""--keep-output: a training loop that holds the model output (its logits) through backward."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from swiftplan.planner.activations import logits_bytes
from swiftplan.planner.model_catalog import catalog_spec
from swiftplan.planner.runtime_terms import legacy_loss_bytes
from swiftplan.planner.setup import LoraSetup, RuntimeKnobs, TrainSetup
from tests.bad_input_support import run_cli

SPEC = catalog_spec("Qwen/Qwen2.5-0.5B")
VOCAB = SPEC.vocab_size


def _setup(**knobs: object) -> TrainSetup:
    return TrainSetup(
        method="lora", lora=LoraSetup(rank=8), micro_batch=2, seq_len=256, runtime=RuntimeKnobs(**knobs)
    )  # type: ignore[arg-type]


def test_full_loss_keeps_the_compute_dtype_logits_beside_the_three_loss_tensors():
    # transformers 5.25 traced (benchmarks/results/legacy_loss_trace.md): 12.000 B per token x vocab with the
    # output dropped, 14.000 with it kept (bf16 logits).
    tokens = 2 * 256
    assert logits_bytes(SPEC, _setup()) == tokens * VOCAB * 12
    assert logits_bytes(SPEC, _setup(keep_output=True)) == tokens * VOCAB * 14


def test_legacy_loss_keeps_the_fp32_logits_through_backward():
    # transformers 4.38.2 traced with vocab 32000 (benchmarks/results/legacy_loss_trace.md, keeps_output rows):
    # 261,376,008 B at 2 x 256 and 523,904,008 B at 1 x 1024 (8 B of labels and scalars aside).
    assert legacy_loss_bytes(batch=2, seq=256, vocab=32000, keep_output=True) == 261_376_000
    assert legacy_loss_bytes(batch=1, seq=1024, vocab=32000, keep_output=True) == 523_904_000
    dropped = legacy_loss_bytes(batch=2, seq=256, vocab=32000)
    assert dropped == 196_096_000  # the trainer rows: the forward peak, unchanged by keeping the output


@pytest.mark.parametrize("loss", ["chunked", "fused_linear"])
def test_losses_that_never_hold_the_full_logits_are_unchanged(loss):
    assert logits_bytes(SPEC, _setup(loss=loss, keep_output=True)) == logits_bytes(SPEC, _setup(loss=loss))


def test_the_flag_reaches_the_estimate_and_engines_that_drop_the_output_refuse_it():
    base = run_cli("estimate", "Qwen/Qwen2.5-0.5B", "--gpus", "rtx4090", "--json")
    kept = run_cli(
        "estimate", "Qwen/Qwen2.5-0.5B", "--gpus", "rtx4090", "--json", "--keep-output", "--engine", "torch"
    )
    assert base.exit_code == 0
    assert kept.exit_code != 0  # no engine named torch: the error lists the engines
    kept = run_cli(
        "estimate", "Qwen/Qwen2.5-0.5B", "--gpus", "rtx4090", "--json", "--keep-output", "--runtime", "torch"
    )
    assert kept.exit_code == 0, kept.output
    logits = {t["name"]: t for t in json.loads(kept.output)["terms"]}["logits"]
    assert "--keep-output" in logits["formula"]
    refused = run_cli(
        "estimate", "Qwen/Qwen2.5-0.5B", "--gpus", "rtx4090", "--keep-output", "--engine", "trl"
    )
    said = " ".join(refused.output.split())  # estimate reports the engine's refusal beside the estimate
    assert "engine trl cannot run it" in said and "drops the model output before backward" in said


def test_plan_files_keep_the_knob(tmp_path):
    from swiftplan.plan_file import load_plan, save_plan
    from swiftplan.planner.hardware import parse_cluster
    from swiftplan.usecases.estimate import plan_for_setup

    setup = replace(_setup(name="axolotl"), runtime=RuntimeKnobs(name="axolotl"))
    plan = plan_for_setup("Qwen/Qwen2.5-0.5B", parse_cluster("rtx4090"), setup, engine="axolotl")
    path = tmp_path / "plan.yaml"
    save_plan(plan, path)
    assert "keep_output: false" in path.read_text()
    assert load_plan(path).setup.runtime.keep_output is False  # type: ignore[union-attr]
