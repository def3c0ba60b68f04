"""`swiftplan fit` (the search) on the bad-input sweep's findings (/work/sweep-report.md 2.1, 2.2, 2.7-2.10,
3.6): option clashes are refused with the smallest change, a plan never trains more sequences than
--global-batch, and time and cost count the tokens that really train. Run through the console entry
point (`run_cli`) or the fit use case, as a user would."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bad_input_support import assert_refused, run_cli

M = "Qwen/Qwen2.5-0.5B"
FIT = ("fit", M, "--trials", "8")


def _fit_json(*args: str) -> dict:
    result = run_cli(*FIT, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


# 2.8: a training --runtime the chosen --engine does not run


@pytest.mark.parametrize(
    ("engine", "runtime", "own"),
    [("trl", "torchtune", "hf"), ("ms-swift", "unsloth", "ms-swift"), ("swiftplan", "hf", "swiftplan")],
)
def test_fit_refuses_a_runtime_the_engine_does_not_run(engine: str, runtime: str, own: str) -> None:
    assert_refused(
        run_cli(*FIT, "--gpus", "4xh100", "--engine", engine, "--runtime", runtime),
        f"--engine {engine} and --runtime {runtime} disagree",
        f"{engine} runs runtime {own}",
        "drop --runtime",
    )


def test_fit_accepts_the_runtime_the_engine_runs() -> None:
    payload = _fit_json("--gpus", "h100", "--engine", "trl", "--runtime", "hf")
    assert payload["engine"] == "trl" and payload["runtime"]["name"] == "hf"


# 2.2 and 3.6: time and cost count the tokens that train; empty samples and a data set below one batch


def _lengths(tmp_path: Path, values: list[int]) -> str:
    path = tmp_path / "lengths.txt"
    path.write_text("".join(f"{n}\n" for n in values))
    return str(path)


def test_truncated_samples_count_their_kept_tokens_in_time_and_cost(tmp_path: Path) -> None:
    """1000 samples of 4096 tokens at --seq 2048: 2,048,000 tokens train, not 4,096,000 (sweep 2.2)."""
    path = _lengths(tmp_path, [4096] * 1000)
    cut = _fit_json("--gpus", "a100", "--lengths", path)
    assert cut["workload"]["dataset_tokens"] == 1000 * 2048
    assert any(
        "2,048,000 tokens" in n and "4,096,000 before truncation at --seq 2,048" in n for n in cut["notes"]
    )
    best = cut["best"]
    assert best["time_s"] == pytest.approx(1000 * 2048 / best["tokens_per_s"])
    packed = _fit_json("--gpus", "a100", "--lengths", path, "--packing")  # packing splits, nothing is cut
    assert packed["workload"]["dataset_tokens"] == 1000 * 4096
    assert any("split across packed rows" in n for n in packed["notes"])


def test_empty_samples_are_skipped_with_a_note(tmp_path: Path) -> None:
    payload = _fit_json("--gpus", "a100", "--lengths", _lengths(tmp_path, [100, 0, 300] * 10))
    assert payload["lengths"]["samples"] == 20
    assert any("10 empty sample(s) (0 tokens) skipped" in n for n in payload["notes"])
    assert_refused(run_cli(*FIT, "--gpus", "a100", "--lengths", _lengths(tmp_path, [0, 0])),
                   "only 0-token samples", "nothing to train on")  # fmt: skip


def test_a_data_set_smaller_than_one_batch_is_said_and_timed_as_it_runs(tmp_path: Path) -> None:
    payload = _fit_json("--gpus", "a100", "--lengths", _lengths(tmp_path, [100, 300]))
    assert any("holds 2 sample(s), fewer than one global batch of 16" in n and "--global-batch 2" in n
               for n in payload["notes"])  # fmt: skip
    assert payload["workload"]["dataset_tokens"] == 400
    enough = _fit_json("--gpus", "a100", "--lengths", _lengths(tmp_path, [100, 300] * 8))
    assert not any("fewer than one global batch" in n for n in enough["notes"])


# 2.10: an RL sequence is prompt + completion; lengths and data files cannot size it, and a clash is no "nothing fits"


def test_grpo_with_a_lengths_file_is_refused_with_the_options_that_say_it(tmp_path: Path) -> None:
    path = _lengths(tmp_path, [100, 200, 300])
    assert_refused(
        run_cli(*FIT, "--gpus", "4xh100", "--task", "grpo", "--lengths", path),
        "--task grpo generates its sequences",
        f"--lengths {path} cannot size them",
        "--prompt-len 300",
        "--dataset-tokens 19488",  # 3 prompts × 8 generations × (300 + 512)
    )
    data = tmp_path / "prompts.jsonl"
    data.write_text('{"prompt": "What is 2+2?"}\n')
    assert_refused(run_cli(*FIT, "--gpus", "4xh100", "--task", "grpo", "--data", str(data)),
                   "--task grpo generates its sequences", "drop --data", "--prompt-len")  # fmt: skip


def test_grpo_with_a_seq_that_is_not_prompt_plus_completion_is_refused_not_infeasible() -> None:
    assert_refused(
        run_cli(*FIT, "--gpus", "4xh100", "--task", "grpo", "--seq", "4096"),
        "--prompt-len 512 + --completion-len 512 = 1024",
        "--seq is 4096",
        "drop --seq",
    )
    payload = _fit_json("--gpus", "4xh100", "--task", "grpo", "--prompt-len", "300")
    assert payload["plan"] is not None and payload["workload"]["seq_len"] == 812


# 2.9: preference tasks read preference records, one length per pair (its longer sequence)


def test_dpo_reads_preference_records_and_sizes_on_the_longer_of_each_pair(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    chosen, rejected = "x" * 400, "y" * 4000  # ~100 and ~1000 tokens at 4 characters a token
    pairs.write_text(json.dumps({"prompt": "p" * 40, "chosen": chosen, "rejected": rejected}) + "\n")
    conversational = {"prompt": [{"role": "user", "content": "p" * 40}],
                      "chosen": [{"role": "assistant", "content": chosen}],
                      "rejected": [{"role": "assistant", "content": rejected}]}  # fmt: skip
    parts = {  # OpenAI-style content parts, as chat records take them
        "prompt": [{"role": "user", "content": [{"type": "text", "text": "p" * 40}]}],
        "chosen": [{"role": "assistant", "content": [{"type": "text", "text": chosen}]}],
        "rejected": [{"role": "assistant", "content": [{"type": "text", "text": rejected}]}],
    }
    with pairs.open("a") as out:
        out.write(json.dumps(conversational) + "\n")
        out.write(json.dumps(parts) + "\n")
    payload = _fit_json("--gpus", "a100", "--task", "dpo", "--data", str(pairs), "--global-batch", "3")
    assert payload["lengths"]["samples"] == 3
    assert payload["lengths"]["max_len"] == 1010  # prompt + rejected, the longer: (40 + 4000) / 4
    assert payload["workload"]["dataset_tokens"] == 3 * 2 * 1010  # chosen and rejected padded to the longer
    assert any("the longer of each pair" in n for n in payload["notes"])


def test_preference_tasks_refuse_records_without_preference_fields(tmp_path: Path) -> None:
    text = tmp_path / "one.jsonl"
    text.write_text('{"text": "hello world"}\n')
    assert_refused(run_cli(*FIT, "--gpus", "a100", "--task", "dpo", "--data", str(text)),
                   "one.jsonl line 1", "--task dpo reads preference records with prompt, chosen, rejected",
                   "found keys: text", '"chosen": "..."')  # fmt: skip
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    assert_refused(run_cli(*FIT, "--gpus", "a100", "--task", "kto", "--data", str(pairs)),
                   "--task kto reads preference records with prompt, completion, label")  # fmt: skip
    assert (
        _fit_json("--gpus", "a100", "--task", "kto", "--data", str(_kto(tmp_path)))["lengths"]["samples"] == 1
    )


def _kto(tmp_path: Path) -> Path:
    path = tmp_path / "kto.jsonl"
    path.write_text('{"prompt": "a question", "completion": "an answer", "label": true}\n')
    return path


# 2.1: a plan trains exactly --global-batch sequences a step (micro-batch × accumulation × dp)


def _steps(payload: dict) -> tuple[int, int, int]:
    setup, layout = payload["plan"]["train"], payload["best"]["candidate"]["layout"]
    return setup["micro_batch"], setup["grad_accum"], layout["dp"]


@pytest.mark.parametrize(("gpus", "batch", "idle"), [("4x8xh100", 16, "16 of the 32"), ("3xh100", 16, "1 of the 3"),
                                                      ("8xh100", 12, "4 of the 8"), ("8xh100", 16, None)])  # fmt: skip
def test_fit_never_trains_more_sequences_than_the_global_batch(
    gpus: str, batch: int, idle: str | None
) -> None:
    payload = _fit_json("--gpus", gpus, "--global-batch", str(batch))
    micro, accum, dp = _steps(payload)
    assert micro * accum * dp == batch
    said = [n for n in payload["notes"] if "idle" in n]
    assert bool(said) == (idle is not None), said
    if idle:
        assert f"the plan trains on {idle} GPUs" in said[0] and "--global-batch" in said[0]


def test_pins_that_cannot_split_a_typed_global_batch_are_refused_with_the_smallest_batch() -> None:
    assert_refused(run_cli(*FIT, "--gpus", "4xh100", "--dp", "4", "--global-batch", "6"),
                   "--global-batch 6 does not split evenly", "dp 4", "--global-batch 8")  # fmt: skip
    assert_refused(run_cli(*FIT, "--gpus", "4xh100", "--batch", "3", "--global-batch", "16"),
                   "--global-batch 16", "--batch 3", "--global-batch 18")  # fmt: skip


def test_an_untyped_global_batch_is_rounded_up_to_split_over_every_gpu() -> None:
    """The default 16 is no request: on 4 GPUs with micro-batches of 3 it becomes 24 (a multiple of 4 × 3), said in a
    note, and the plan uses all four GPUs with micro × accumulation × dp = 24."""
    payload = _fit_json("--gpus", "4xh100", "--batch", "3")
    assert payload["workload"]["global_batch"] == 24
    assert any("global batch 16 (the default) rounded up to 24" in n for n in payload["notes"])
    train, layout = payload["plan"]["train"], payload["plan"]["layout"]
    assert layout["gpus"] == 4 and train["micro_batch"] * train["grad_accum"] * layout["dp"] == 24


# 2.7: GRPO's global batch in whole prompts, said; a step beyond the run refused; estimate names the batch that runs


def test_fit_grpo_says_it_rounds_the_global_batch_and_refuses_a_step_beyond_the_run() -> None:
    payload = _fit_json("--gpus", "a100", "--task", "grpo", "--num-generations", "3")
    assert payload["workload"]["global_batch"] == 18
    assert any("global batch 16 (the default) rounded up to 18" in n and "--num-generations 3" in n
               for n in payload["notes"])  # fmt: skip
    typed = _fit_json("--gpus", "a100", "--task", "grpo", "--num-generations", "4", "--global-batch", "16")
    assert typed["workload"]["global_batch"] == 16
    assert_refused(run_cli(*FIT, "--gpus", "a100", "--task", "grpo", "--num-generations", "100000"),
                   "one step of 100,000 completions", "more than the whole run's 100,000,000",
                   "lower --num-generations")  # fmt: skip


def test_estimate_grpo_refuses_a_step_that_is_not_whole_prompts() -> None:
    """A typed --grad-accum that TRL would refuse (GRPOConfig: generation_batch_size must be divisible by
    num_generations) is refused, naming the --grad-accum and --batch that run; an untyped one is raised to it,
    said in a note."""
    assert_refused(run_cli("estimate", M, "--gpus", "a100", "--task", "grpo", "--num-generations", "3", "--grad-accum", "1"),
                   "= 1 completion(s), not whole prompts of --num-generations 3", "must be divisible by num_generations",
                   "--grad-accum 3", "--batch 3")  # fmt: skip
    assert_refused(run_cli("estimate", M, "--gpus", "4xa100", "--task", "grpo", "--num-generations", "8",
                           "--grad-accum", "3"),
                   "--batch 1 × --grad-accum 3 × 4 data-parallel rank(s) = 12 completion(s)",
                   "--grad-accum 4 (16 completions, 2 prompt(s)", "any multiple of 2", "--batch 2 with --grad-accum 3")  # fmt: skip
    default = run_cli("estimate", M, "--gpus", "a100", "--task", "grpo", "--num-generations", "3")
    said = " ".join(default.output.split())
    assert (
        default.exit_code == 0
        and "not whole prompts" not in said
        and "--task grpo: --grad-accum 3 so that a step generates whole" in said
    )
    whole = run_cli("estimate", M, "--gpus", "a100", "--task", "grpo", "--grad-accum", "8")
    assert whole.exit_code == 0 and "not whole prompts" not in " ".join(whole.output.split())
