"""Bad input the sweep found accepted or badly worded (size's options for the other task, size's budget and
filter messages, serving misses, vision and verify positions, inconsistent plan files).

Real command lines through the console entry point (tests/bad_input_support.py). Each row: the arguments,
then fragments the one-paragraph refusal must hold (the bad value or flag, and what would be valid).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from bad_input_support import assert_refused, run_cli, write_tiny_plans

M = "Qwen/Qwen2.5-0.5B"
SIZE = ("size", M, "--max-nodes", "1")
SIZE_SERVE = (*SIZE, "--task", "serve", "--concurrency", "4")

REFUSED = [
    # 3.2: size refuses the options of the other task, naming them in one message
    ("size-train-serving-options", (*SIZE, "--ttft", "1", "--decode-tps", "5", "--concurrency", "4", "--request-rate", "5"),
     ["--concurrency, --request-rate, --ttft, --decode-tps", "serving job", "--task sft", "--task serve"]),
    ("size-train-context", (*SIZE, "--context", "8192"), ["--context describes a serving job", "would ignore it"]),
    ("size-dpo-ttft", (*SIZE, "--task", "dpo", "--ttft", "1"), ["--ttft", "--task dpo"]),
    ("size-serve-training-options", (*SIZE_SERVE, "--method", "lora", "--rank", "8", "--dataset-tokens", "5M",
                                     "--epochs", "2", "--seq", "100", "--global-batch", "8", "--host-ram", "10"),
     ["--method, --rank, --dataset-tokens, --epochs, --seq, --global-batch, --host-ram", "training job",
      "size --task serve would ignore them", "--context"]),
    ("size-serve-deadline", (*SIZE_SERVE, "--deadline", "2h"), ["--deadline describes a training job"]),
    ("size-buy-rent", (*SIZE, "--buy", "--rent"), ["--buy and --rent contradict", "one of them"]),
    # section 4: filters that leave no accelerator are said to contradict, not reported as an infeasible job
    ("size-vendor-accelerators", (*SIZE, "--vendor", "apple", "--accelerators", "h100-sxm"),
     ["--vendor apple and --accelerators h100-sxm (NVIDIA) leave no accelerator", "Drop one of the two filters"]),
]  # fmt: skip


@pytest.mark.parametrize(("args", "fragments"), [row[1:] for row in REFUSED], ids=[row[0] for row in REFUSED])
def test_refused(args: tuple[str, ...], fragments: list[str]) -> None:
    assert_refused(run_cli(*args), *fragments)


def test_size_defaults_of_the_other_task_are_not_refused() -> None:
    """Only typed options are refused: the serving defaults (--context 4096, memory fraction 0.9) stay quiet
    for training, the training defaults (--seq 2048, --epochs 1) for serving."""
    assert run_cli(*SIZE, "--accelerators", "h100-sxm", "--top", "1").exit_code == 0
    assert run_cli(*SIZE_SERVE, "--accelerators", "h100-sxm", "--top", "1").exit_code == 0
    assert run_cli(*SIZE, "--accelerators", "h100-sxm", "--rent", "--top", "1").exit_code == 0


def test_size_over_budget_names_the_cheapest_option_and_its_shortfall() -> None:
    """`--buy --budget 10`: the smallest cluster (1 GPU) is the smallest shortfall, not the largest."""
    result = run_cli(*SIZE, "--buy", "--budget", "10", "--accelerators", "rtx3060")
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert (
        "The cheapest option, 1 × NVIDIA GeForce RTX 3060 12GB, sells for $329: $319 over the --budget"
        in text
    )
    assert "a --budget of $329 or more would allow it" in text
    assert "over budget by $319 (purchase price $329) with 1 GPU, the least over" in text


def _said(result_output: str) -> str:
    return " ".join(result_output.split())


def test_fit_serving_latency_miss_says_by_how_much_and_serving_changes() -> None:
    """Section 4: `fit --task serve --ttft 0.000001` names the best time to first token against the target
    and the serving changes it checked, not training's (QLoRA, shorter sequence, offload)."""
    result = run_cli("fit", M, "--gpus", "4xa100", "--task", "serve", "--ttft", "0.000001")
    assert result.exit_code == 1, result.output
    text = _said(result.output)
    assert "its time to first token is at best 0.0" in text and "against --ttft 1e-06 s" in text
    assert "× the target" in text
    assert "a shorter --context, a lower --concurrency, more GPUs, a bigger or faster GPU" in text
    assert "QLoRA" not in text and "offload" not in text


def test_fit_serving_decode_miss_suggests_a_lower_concurrency() -> None:
    """A per-user decode target missed at --concurrency 64: the shortfall, then the largest concurrency that
    meets it (and each suggestion gives the speed it reaches)."""
    result = run_cli("fit", M, "--gpus", "a100", "--task", "serve", "--decode-tps", "150", "--concurrency", "64",
                     "--context", "32768")  # fmt: skip
    assert result.exit_code == 1, result.output
    text = _said(result.output)
    # fp8 weights (vLLM's W8A16 on the A100) read half the bytes a step of the bf16 weights
    assert "it decodes at best 78.4 tokens/s per user, against --decode-tps 150 (48% short)" in text
    assert "a lower --concurrency, 17:" in text
    assert "tokens/s per user" in text.split("What would fit:")[1]


def test_vision_sequence_past_the_positions_is_warned_as_text_is() -> None:
    """3.8: 1000 images make a 1,227,048-token language sequence against Qwen2.5-VL's 128,000 positions:
    the same warning a text --seq gets, with the text and image shares (2 images stay quiet)."""
    vl = ("estimate", "Qwen/Qwen2.5-VL-7B-Instruct", "--gpus", "a100")
    result = run_cli(*vl, "--images-per-sample", "1000")
    assert result.exit_code == 0, result.output
    text = _said(result.output)
    assert "warning: Sequence length 1,227,048 is longer than the 128,000 positions" in text
    assert "2,048 text tokens and 1,225,000 image and video tokens" in text
    assert "positions" not in _said(run_cli(*vl, "--images-per-sample", "2").output)


def test_verify_warns_about_a_sequence_past_the_positions() -> None:
    """3.8: verify traces a --seq past the model's positions (as estimate plans it) but says so."""
    pytest.importorskip("transformers")
    from bad_input_support import FIXTURES

    tiny = str(FIXTURES / "train" / "tiny_llama")  # max_position_embeddings 256
    result = run_cli("verify", tiny, "--seq", "300")
    assert result.exit_code == 0, result.output
    assert "warning: --seq 300 is longer than the 256 positions" in _said(result.output)
    quiet = run_cli("verify", tiny, "--seq", "200", "--json")
    assert '"warnings": []' in quiet.output


@pytest.fixture
def plans(tmp_path: Path) -> Path:
    return write_tiny_plans(tmp_path)


def _edited(plans: Path, name: str, edit: Callable[[dict[str, Any]], object]) -> str:
    import yaml

    data = yaml.safe_load((plans / name).read_text())
    edit(data)
    (plans / "edited.yaml").write_text(yaml.safe_dump(data))
    return str(plans / "edited.yaml")


INCONSISTENT_PLANS = [
    ("train-seq-len", "train.yaml", lambda d: d["train"].update(seq_len=128),
     ["train.seq_len 128 and workload.seq_len 64 must be the same"]),
    ("train-attention", "train.yaml", lambda d: d["workload"].update(attention="eager"),
     ["train.attention sdpa and workload.attention eager"]),
    ("serve-context", "serve.yaml", lambda d: d["serve"].update(context=64),
     ["serve.context 64 and workload.context 128"]),
    ("offered-other-accelerator", "train.yaml", lambda d: d["hardware"].update(offered="a100"),
     ["hardware.offered 'a100' is a100-80gb-sxm, but hardware.accelerator.id is 'h100-sxm'"]),
    ("accelerator-id-bogus", "train.yaml", lambda d: d["hardware"]["accelerator"].update(id="bogus"),
     ["hardware.offered 'h100-sxm' is h100-sxm, but hardware.accelerator.id is 'bogus'"]),
    ("offered-unknown", "serve.yaml", lambda d: d["hardware"].update(offered="2xnonsense"),
     ["hardware.offered '2xnonsense' names no accelerator swiftplan knows"]),
    ("lora-alpha-negative", "train.yaml", lambda d: d["train"]["lora"].update(alpha=-3),
     ["field 'train.lora.alpha'", "greater than 0", "(got -3)"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "edit", "fragments"), [r[1:] for r in INCONSISTENT_PLANS], ids=[r[0] for r in INCONSISTENT_PLANS]
)
def test_inconsistent_plan_file_fields_are_refused(
    plans: Path, name: str, edit: Callable[[dict[str, Any]], object], fragments: list[str]
) -> None:
    """3.9: fields that contradict each other are refused naming both, not estimated as 'matches'."""
    assert_refused(run_cli("estimate", _edited(plans, name, edit)), *fragments)


def test_consistent_hand_edits_still_load(plans: Path) -> None:
    """An alias in hardware.offered, a --gpus count, and a positive alpha are the plan's own business."""
    done = run_cli("estimate", _edited(plans, "train.yaml", lambda d: d["hardware"].update(offered="H100")))
    assert done.exit_code == 0 and "matches the plan file's prediction" in done.output, done.output
    done = run_cli("estimate", _edited(plans, "train.yaml", lambda d: d["train"]["lora"].update(alpha=32)))
    assert done.exit_code == 0, done.output


def test_an_edited_prediction_note_names_the_hand_edit(plans: Path) -> None:
    """3.9: a plan whose prediction differs says a hand edit changes it, not only swiftplan's formulas."""
    done = run_cli(
        "estimate", _edited(plans, "train.yaml", lambda d: d["workload"].update(dataset_tokens=10**12))
    )
    assert done.exit_code == 0, done.output
    text = _said(done.output)
    assert "differs from the plan file's prediction in: time_to_train_s" in text
    assert "a hand edit of the file changes the prediction" in text


def test_every_plan_file_in_the_repository_still_loads() -> None:
    """The new consistency checks keep the committed plan files loading."""
    from swiftplan.plan_file import load_plan

    root = Path(__file__).parent.parent
    files = [p for where in ("tests", "benchmarks") for p in (root / where).rglob("*.y*ml")]
    plans = [p for p in files if "schema_version" in p.read_text(encoding="utf-8")]
    assert plans, "no plan files found"
    for path in plans:
        load_plan(path)
