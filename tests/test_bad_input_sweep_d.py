"""Bad input the sweep found accepted by `train` and `serve` (sweep 3.4, 3.5): settings that contradict the
plan, options the chosen engine would drop, and paths a dry run did not look at.

Real command lines through the console entry point (tests/bad_input_support.py). Each row: the arguments,
then fragments the one-paragraph refusal must hold (the bad value or flag, and what would be valid).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bad_input_support import FIXTURES, assert_refused, run_cli, write_tiny_plans

TRAIN = ("train", "train.yaml", "--data", "one.jsonl", "--dry-run")
SERVE = ("serve", "serve.yaml", "--dry-run")
TOKENIZER = str(FIXTURES / "train" / "tiny_tokenizer")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """The tiny plans (one H100 each), a one-record data file, an adapter directory and an empty one."""
    write_tiny_plans(tmp_path)
    (tmp_path / "one.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    return tmp_path


REFUSED = [
    # 3.5: a launch shape other than the plan's
    ("nproc-over-plan", (*TRAIN, "--nproc-per-node", "8"),
     ["--nproc-per-node 8", "1 node × 1 NVIDIA H100", "--nproc-per-node 1", "--gpus 8xh100"]),
    ("nnodes-over-plan", (*TRAIN, "--nnodes", "4"), ["--nnodes 4", "1 node × 1", "--nnodes 1", "--gpus 4x1xh100"]),
    # 3.5: a device of another backend than the plan's accelerator
    *[(f"device-{d}", (*TRAIN, "--device", d), [f"--device {d}", "cuda device", "--device cuda", "--device cpu"])
      for d in ("mps", "npu")],
    # 3.5: a missing tokenizer path (a hub id is fine), a directory without a tokenizer
    ("tokenizer-missing", (*TRAIN, "--tokenizer", "/nonexistent"),
     ["--tokenizer /nonexistent", "does not exist", "tokenizer.json or tokenizer_config.json", "hub id"]),
    ("tokenizer-empty-dir", (*TRAIN, "--tokenizer", "empty"), ["--tokenizer empty", "a directory without"]),
    ("tokenizer-bare-name", (*TRAIN, "--tokenizer", "tokenizr"), ["--tokenizer tokenizr", "does not exist"]),
    # 3.5: --resume with nothing to resume
    ("resume-without-output-dir", (*TRAIN, "--resume"), ["--resume", "no --output-dir", "Add --output-dir RUN"]),
    # 3.5: warm-up that never ends
    ("warmup-over-max-steps", (*TRAIN, "--warmup-steps", "1000000", "--max-steps", "10"),
     ["--warmup-steps 1000000", "--max-steps 10", "below 10"]),
    ("warmup-equals-max-steps", (*TRAIN, "--warmup-steps", "10", "--max-steps", "10"), ["--warmup-steps 10"]),
    # 3.5: options of swiftplan's own loop an external engine would drop
    ("random-init-ms-swift", (*TRAIN, "--random-init", "--engine", "ms-swift"),
     ["--random-init", "--engine ms-swift would ignore it", "--engine swiftplan"]),
    ("loop-options-trl", (*TRAIN, "--engine", "trl", "--device", "cpu", "--nnodes", "1", "--tokenizer", TOKENIZER),
     ["--tokenizer", "--device cpu", "--nnodes 1", "--engine trl would ignore them"]),
    ("resume-llamafactory", (*TRAIN, "--engine", "llamafactory", "--resume", "--output-dir", "run"),
     ["--resume", "--engine-option resume_from_checkpoint=DIR"]),
    # 3.4: built-in-only options an external serving engine would drop
    ("serve-vllm-device", (*SERVE, "--engine", "vllm", "--device", "cpu"),
     ["--device cpu is a built-in server option", "vllm", "--engine builtin"]),
    ("serve-vllm-several", (*SERVE, "--engine", "vllm", "--seed", "5", "--report-dir", "R", "--tokenizer", TOKENIZER),
     ["--seed 5", "--report-dir R", "are built-in server options", "--engine builtin"]),
    ("serve-sglang-report-every", (*SERVE, "--engine", "sglang", "--report-every", "3"), ["--report-every 3", "sglang"]),
    ("serve-seed-default-zero-typed", (*SERVE, "--engine", "vllm", "--seed", "0"), ["--seed 0"]),
    ("serve-builtin-health-timeout", (*SERVE, "--engine", "builtin", "--health-timeout", "5"),
     ["--health-timeout 5 ", "built-in server", "would ignore it"]),
    # 3.4: adapter paths are checked in the dry run too
    ("serve-lora-missing", (*SERVE, "--engine", "vllm", "--lora", "a=/nonexistent"),
     ["--lora a=/nonexistent", "does not exist", "adapter_config.json"]),
    ("serve-lora-not-an-adapter", (*SERVE, "--engine", "vllm", "--lora", "a=empty"),
     ["--lora a=empty", "a directory without adapter_config.json"]),
    ("serve-lora-a-file", (*SERVE, "--engine", "builtin", "--lora", "a=one.jsonl"), ["a file, not a directory"]),
    ("serve-tokenizer-missing", (*SERVE, "--engine", "builtin", "--tokenizer", "./nope"),
     ["--tokenizer ./nope", "does not exist"]),
]  # fmt: skip


@pytest.mark.parametrize(("args", "fragments"), [row[1:] for row in REFUSED], ids=[row[0] for row in REFUSED])
def test_refused(args: tuple[str, ...], fragments: list[str], workdir: Path) -> None:
    assert_refused(run_cli(*args, cwd=workdir), *fragments)


@pytest.mark.parametrize(
    "args",
    [(*TRAIN, "--nproc-per-node", "1", "--nnodes", "1"),  # the plan's own layout, spelled out
     (*TRAIN, "--device", "cpu"),  # a debugging run on the CPU
     (*TRAIN, "--device", "cuda", "--tokenizer", "Qwen/Qwen2.5-0.5B"),  # a hub id is not looked up
     (*TRAIN, "--tokenizer", TOKENIZER, "--random-init", "--warmup-steps", "9", "--max-steps", "10"),
     (*TRAIN, "--resume", "--output-dir", "run"),  # the dry run renders; the real run checks the checkpoint
     (*TRAIN, "--engine", "ms-swift"),
     (*SERVE, "--engine", "vllm", "--lora", "a=adapter", "--lora", "b=org/adapter", "--health-timeout", "60"),
     (*SERVE, "--engine", "builtin", "--seed", "5", "--device", "cpu", "--tokenizer", TOKENIZER, "--report-every", "0")],
    ids=["plan-layout", "cpu", "hub-tokenizer", "warmup-below", "resume-with-dir", "ms-swift", "vllm-loras",
         "builtin-options"],
)  # fmt: skip
def test_what_the_plan_and_the_engine_honour_is_accepted(args: tuple[str, ...], workdir: Path) -> None:
    done = run_cli(*args, cwd=workdir)
    assert done.exit_code == 0, done.output


def test_a_gpu_plan_still_runs_its_own_layout_on_the_cpu(tmp_path: Path) -> None:
    """--device cpu with the plan's --nproc-per-node (gloo processes, as the CPU tests run a 2-GPU plan)."""
    from train_support import write_plan

    plan = write_plan(tmp_path / "plan.yaml", cluster="2xrtx4090", gpus=2)
    done = run_cli("train", str(plan), "--device", "cpu", "--nproc-per-node", "2", "--dry-run")
    assert done.exit_code == 0 and "--nproc-per-node 2" in done.output, done.output
    assert_refused(run_cli("train", str(plan), "--device", "cpu", "--nproc-per-node", "4", "--dry-run"),
                   "--nproc-per-node 4", "1 node × 2", "--gpus 4xrtx4090")  # fmt: skip


def test_warmup_past_the_runs_own_steps_is_refused_before_training(workdir: Path) -> None:
    """Without --max-steps the run's steps are the epochs over the data: known once the data is tokenized."""
    pytest.importorskip("transformers")
    (workdir / "many.jsonl").write_text('{"instruction": "a", "output": "b"}\n' * 64)
    done = run_cli("train", "train.yaml", "--data", "many.jsonl", "--random-init", "--tokenizer", TOKENIZER,
                   "--device", "cpu", "--warmup-steps", "1000", "--output-dir", "run", cwd=workdir)  # fmt: skip
    assert_refused(done, "--warmup-steps 1000", "optimizer steps", "1 epoch(s) of", "many.jsonl")
    assert not (workdir / "run").exists()
