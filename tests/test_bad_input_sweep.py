"""Bad input a later sweep found accepted: rollout settings vLLM or TRL would refuse (a --rollout-tp that does
not divide the heads or the colocated training processes, one the hf engine would ignore), and a zero
--prompt-len a rollout quietly replaced with 512.

Real command lines through the console entry point (tests/bad_input_support.py). Each row: the arguments,
then fragments the one-paragraph refusal must hold (the bad value or flag, and what would be valid).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bad_input_support import assert_refused, run_cli

M = "Qwen/Qwen2.5-0.5B"  # 14 attention heads
M7 = "Qwen/Qwen2.5-7B"  # 28 attention heads
GRPO = ("estimate", M, "--gpus", "h100", "--task", "grpo")

REFUSED = [
    # vLLM shards a rollout engine by the attention heads: 4 does not divide Qwen2.5-0.5B's 14
    ("rollout-tp-heads", ("estimate", M, "--gpus", "4xh100", "--task", "grpo", "--rollout-tp", "4"),
     ["--rollout-tp 4", "14 attention heads", "1, 2, 7, 14"]),
    ("rollout-tp-huge", (*GRPO, "--rollout-tp", "99999999999999999999"),
     ["--rollout-tp 99999999999999999999", "14 attention heads", "1, 2, 7, 14"]),
    ("rollout-server-tp-heads", ("estimate", M, "--gpus", "4xh100", "--task", "grpo", "--rollout", "server",
                                 "--rollout-gpus", "3", "--rollout-tp", "3"),
     ["--rollout-tp 3", "14 attention heads", "1, 2, 7, 14"]),
    # TRL groups the colocated training processes by the rollout's tp and refuses a tp that does not divide them
    ("rollout-tp-colocated-world", ("estimate", M7, "--gpus", "2xh100", "--task", "grpo", "--rollout-tp", "4"),
     ["--rollout-tp 4", "2 training process(es)", "a --rollout-tp of 1, 2 here", "--rollout server"]),
    ("fit-rollout-tp-colocated-world", ("fit", M7, "--gpus", "h100", "--task", "grpo", "--rollout-tp", "4"),
     ["--rollout-tp 4", "1 training process(es)", "a --rollout-tp of 1 here"]),
    ("size-rollout-tp-heads", ("size", M, "--task", "grpo", "--rollout-tp", "4", "--max-nodes", "1"),
     ["--rollout-tp 4", "14 attention heads", "1, 2, 7, 14"]),
    # generate() runs on the trainer's own model: a rollout tp would change the prediction and nothing else
    ("rollout-tp-hf-engine", (*GRPO, "--rollout-engine", "hf", "--rollout-tp", "2"),
     ["--rollout-tp 2", "hf engine", "would ignore it", "--rollout-engine vllm"]),
    ("rollout-tp-ppo-default-hf", ("estimate", M, "--gpus", "h100", "--task", "ppo", "--rollout-tp", "2"),
     ["--rollout-tp 2", "ppo's default", "Drop --rollout-tp"]),
    # a rollout generates from a prompt: 0 was quietly read as the default 512
    ("rollout-prompt-len-0", (*GRPO, "--prompt-len", "0"), ["--prompt-len", "positive integer", "got 0"]),
    # fit's --measure-* options without --measure, --study-name without --storage: nothing reads them
    ("fit-measure-top-alone", ("fit", M, "--gpus", "h100", "--measure-top", "0"),
     ["--measure-top sets how --measure runs", "would change nothing", "Add --measure", "drop --measure-top"]),
    ("fit-measure-options-alone", ("fit", M, "--gpus", "h100", "--measure-steps", "2", "--measure-device", "cpu"),
     ["--measure-steps, --measure-device set how --measure runs", "they would change nothing"]),
    ("fit-study-name-alone", ("fit", M, "--gpus", "h100", "--study-name", "mine"),
     ["--study-name 'mine'", "without --storage", "would change nothing", "--storage sqlite:///study.db"]),
    # --measure-layers builds fewer layers than the model's, never more (99,999 exhausted the machine's memory)
    ("fit-measure-layers-past-model", ("fit", M, "--gpus", "h100", "--measure", "--measure-device", "cpu",
                                       "--measure-layers", "99999"),
     ["--measure-layers 99,999", "24 layers of Qwen/Qwen2.5-0.5B", "--measure-layers 1-24"]),
    # --plot with a suffix matplotlib has no writer for: a traceback after the whole sizing ran
    ("size-plot-format", ("size", M, "--max-nodes", "1", "--accelerators", "h100-sxm", "--plot", "costs.txt"),
     ["--plot costs.txt", "cannot draw a '.txt' file", "Name a .png file", ".svg"]),
    ("size-plot-number", ("size", M, "--max-nodes", "1", "--accelerators", "h100-sxm", "--plot", "2.5"),
     ["--plot 2.5", "'.5' file"]),
    # verify checks the LoRA targets and rank as estimate does (peft's NoMatchingPeftModuleError traceback)
    ("verify-targets-unknown", ("verify", M, "--seq", "64", "--targets", "foo"),
     ["LoRA target(s) foo", "match no module", "q_proj", "all-linear"]),
    ("verify-rank-past-matrices", ("verify", M, "--seq", "64", "--rank", "99999"),
     ["LoRA rank 99,999", "q_proj (896 × 896)", "at most 896"]),
    # verify: a batch whose logits no tensor can hold (torch's "Overflow when unpacking long long" traceback)
    ("verify-batch-huge", ("verify", M, "--seq", "64", "--batch", "99999999999999999999"),
     ["--batch 99,999,999,999,999,999,999", "151,936-wide logits", "more than one tensor can hold",
      "--batch 237,131,404,137 or less"]),
    ("verify-dpo-batch-huge", ("verify", M, "--seq", "64", "--task", "dpo", "--batch", "99999999999999999999"),
     ["× 2 (chosen and rejected)", "--batch 118,565,702,068 or less"]),
    ("verify-serve-concurrency-huge", ("verify", M, "--task", "serve", "--concurrency", "99999999999999999999"),
     ["--concurrency 99,999,999,999,999,999,999", "4,096 tokens", "--concurrency 3,705,178,189 or less"]),
    # LoRA options with --method full (it trains no adapters): planned without them, silently
    ("estimate-full-rank", ("estimate", M, "--gpus", "h100", "--method", "full", "--rank", "8"),
     ["--rank shapes LoRA adapters", "--method full trains none", "Drop --rank", "--method lora or qlora"]),
    ("estimate-full-targets-dropout", ("estimate", M, "--gpus", "h100", "--method", "full", "--targets",
                                       "all-linear", "--lora-dropout", "0.1"),
     ["--targets, --lora-dropout shape LoRA adapters", "they would change nothing"]),
    ("fit-full-rank", ("fit", M, "--gpus", "h100", "--method", "full", "--rank", "8"),
     ["--rank shapes LoRA adapters", "--method full trains none"]),
    ("size-full-rank", ("size", M, "--max-nodes", "1", "--method", "full", "--rank", "8"),
     ["--rank shapes LoRA adapters", "--method full trains none"]),
    ("verify-full-rank", ("verify", M, "--method", "full", "--rank", "8"), ["--rank shapes LoRA adapters"]),
    # verify: the other task's options were traced without, and --quant none with qlora was traced as nf4
    ("verify-serve-training-options", ("verify", M, "--task", "serve", "--rank", "8", "--batch", "2"),
     ["--rank, --batch describe training", "verify --task serve would ignore them"]),
    ("verify-train-context", ("verify", M, "--context", "100"),
     ["--context describes serving (--task serve)", "verify --task train would ignore it"]),
    ("verify-serve-prompt-len", ("verify", M, "--task", "serve", "--prompt-len", "5"),
     ["--prompt-len describes a training objective; it does not apply to --task serve"]),
    ("estimate-serve-objective-options", ("estimate", M, "--task", "serve", "--prompt-len", "5", "--reference",
                                          "model"),
     ["--reference, --prompt-len describe training objectives; they do not apply to --task serve"]),
    ("verify-qlora-quant-none", ("verify", M, "--method", "qlora", "--quant", "none"),
     ["--method qlora", "contradicts --quant none", "nf4 or fp4", "--method lora"]),
]  # fmt: skip


@pytest.mark.parametrize(("args", "fragments"), [row[1:] for row in REFUSED], ids=[row[0] for row in REFUSED])
def test_refused(args: tuple[str, ...], fragments: list[str]) -> None:
    assert_refused(run_cli(*args), *fragments)


def test_rollout_tp_that_divides_heads_and_processes_still_plans() -> None:
    """28 heads and 4 colocated processes: --rollout-tp 4 is what TRL and vLLM run."""
    result = run_cli("estimate", M7, "--gpus", "4xh100", "--task", "grpo", "--rollout-tp", "4")
    assert result.exit_code == 0, result.output


def test_size_leaves_out_clusters_the_rollout_tp_does_not_divide() -> None:
    """size plans each cluster: 1 × H100 cannot host a colocated --rollout-tp 4 and is listed with why. (A 1.5B
    model with 12 heads: the 7B's GRPO step no longer fits beside its colocated engine once ZeRO-3's prefetching
    is counted.)"""
    result = run_cli("size", "Qwen/Qwen2.5-1.5B", "--task", "grpo", "--rollout-tp", "4", "--max-nodes", "1",
                     "--accelerators", "h100-sxm", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.output)
    assert outcome["options"] and all(o["gpus"] % 4 == 0 for o in outcome["options"])
    one = next(r for r in outcome["rejected"] if r["gpus"] == 1)
    assert "--rollout-tp 4 does not divide the 1 training process(es)" in one["reason"]


def test_size_plot_without_a_suffix_says_the_file_it_wrote(tmp_path: Path) -> None:
    """matplotlib adds .png to a name without a suffix: the command names that file, not the one typed."""
    pytest.importorskip("matplotlib")
    result = run_cli(
        "size", M, "--max-nodes", "1", "--accelerators", "h100-sxm", "--plot", "costs", cwd=tmp_path
    )
    assert result.exit_code == 0, result.output
    assert "wrote costs.png" in result.output
    assert (tmp_path / "costs.png").is_file()


@pytest.mark.parametrize(
    ("nodes", "said"),
    [("1", "1, 2, 4, 8 GPUs in one node;"), ("2", "in one node or 2 nodes of 8 over 100 Gb/s"),
     ("3", "in one node or 2-3 nodes of 8 over 100 Gb/s")],
)  # fmt: skip
def test_size_names_the_clusters_it_considered(nodes: str, said: str) -> None:
    """--max-nodes 1 said "or 2-1 nodes of 8": the note names only the node counts sized."""
    result = run_cli("size", M, "--max-nodes", nodes, "--accelerators", "h100-sxm", "--json")
    assert result.exit_code == 0, result.output
    notes = " ".join(json.loads(result.output)["notes"])
    assert said in notes and "2-1 nodes" not in notes


def test_lora_options_stay_quiet_when_a_method_trains_adapters() -> None:
    """fit --method full,lora searches LoRA too: --rank shapes those plans and is kept."""
    assert run_cli("fit", M, "--gpus", "h100", "--method", "full,lora", "--rank", "8").exit_code == 0


@pytest.mark.parametrize(
    ("field", "value", "fragments"),
    [("name", 0, ["'hardware.accelerator.name' must be text, got 0"]),
     ("vendor", True, ["'hardware.accelerator.vendor' must be text, got True"]),
     ("source", None, ["'hardware.accelerator.source' must be text, got None"]),
     ("name", [], ["'hardware.accelerator.name' must be text, got []"]),  # the YAML list, not its tuple
     ("bf16_flops", float("inf"), ["'hardware.accelerator.bf16_flops' must be a finite number or null, got inf"]),
     ("price_usd_per_hour", "cheap", ["'hardware.accelerator.price_usd_per_hour' must be a finite number or null",
                                      "got 'cheap'"]),
     ("backend", "tpu", ["'hardware.accelerator.backend' must be one of cuda"]),
     # the right type, out of range: a negative bandwidth planned a speed from it
     ("memory_bandwidth_bytes_per_s", -1, ["memory_bandwidth_bytes_per_s must be positive or None, got -1"]),
     ("pcie_bytes_per_s", 0, ["pcie_bytes_per_s must be positive or None, got 0"]),
     ("price_usd_per_hour", -2.5, ["price_usd_per_hour must be zero or more, or None, got -2.5"])],
)  # fmt: skip
def test_plan_file_accelerator_values_of_the_wrong_type(
    tmp_path: Path, field: str, value: object, fragments: list[str]
) -> None:
    """A hand-edited hardware snapshot: a number for the name, text for the price or an infinite FLOP/s rate
    ended in AttributeError, TypeError or ZeroDivisionError tracebacks."""
    import yaml
    from bad_input_support import write_tiny_plans

    write_tiny_plans(tmp_path)
    plan = yaml.safe_load((tmp_path / "train.yaml").read_text())
    plan["hardware"]["accelerator"][field] = value
    (tmp_path / "edited.yaml").write_text(yaml.safe_dump(plan))
    assert_refused(run_cli("estimate", str(tmp_path / "edited.yaml")), "Plan file", *fragments)
