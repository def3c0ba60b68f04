"""Bad input the sweep found in doctor's logs and plans, hand-edited plan files, --lengths/--data files and
model configs: each is refused with one clear message naming the bad value and what is valid, or read for
what it says, never a traceback, a hang or a silently wrong answer.

Real command lines through the console entry point (tests/bad_input_support.py); `serve.yaml` and
`train.yaml` are the tiny plans of `write_tiny_plans` (one H100 SXM).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from bad_input_support import FIXTURES, assert_refused, run_cli, write_tiny_plans

DOCTOR = FIXTURES / "doctor"
OOM = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate "


@pytest.fixture(scope="module")
def plans(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_plans(tmp_path_factory.mktemp("plans"))


def _log(tmp_path: Path, text: str) -> str:
    path = tmp_path / "run.log"
    path.write_text(text, encoding="utf-8")
    return str(path)


def _said(output: str) -> str:
    return " ".join(output.split())


# doctor: numbers a log garbled are read as not given (ValueError and OverflowError tracebacks before)
GARBLED = [
    ("dot", f"{OOM}. MiB. GPU 0 has a total capacity of 80 GiB of which 1 MiB is free."),
    ("dots", f"{OOM}1.2.3 MiB. GPU 0 has a total capacity of . GiB of which .. MiB is free."),
    ("huge-size", f"{OOM}{'9' * 400}.0 GiB. GPU 0 has a total capacity of 80 GiB of which 1 MiB is free."),
    ("mps-dots", "RuntimeError: MPS backend out of memory (MPS allocated: 1.2.0 GB, other allocations: 2 GB, "
                 "max allowed: 18.13 GB). Tried to allocate 256 MB on private pool."),
    ("kv-size-dots", "INFO kv_cache_size=1.1.1 GiB\nValueError: The model's max seq len (32768) is larger than the "
                     "maximum number of tokens that can be stored in KV cache (100). vllm"),
    ("kv-5000-digits", f"ValueError: The model's max seq len ({'9' * 5000}) is larger than the maximum number of "
                       "tokens that can be stored in KV cache (100). vllm"),
    ("host-rss", f"Out of memory: Killed process 1234 (python) total-vm:1kB, anon-rss:{'9' * 400}kB"),
    ("nccl-timeout", "[Rank 0] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=1, OpType=ALLREDUCE, "
                     f"Timeout(ms)={'9' * 400}) ran for 600034 milliseconds before timing out."),
]  # fmt: skip


@pytest.mark.parametrize("text", [row[1] for row in GARBLED], ids=[row[0] for row in GARBLED])
def test_doctor_reads_a_garbled_number_as_not_given(tmp_path: Path, text: str) -> None:
    result = run_cli("doctor", _log(tmp_path, text), "--json")
    assert "Traceback" not in result.output and result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["found"] is True
    for name in ("requested_bytes", "total_bytes", "process_rss_bytes", "tokens_needed", "timeout_s"):
        value = answer["finding"][name]
        assert value is None or value < 2**60, (name, value)


def test_doctor_does_not_claim_memory_was_free_when_a_cut_off_message_does_not_say(tmp_path: Path) -> None:
    """A message cut before 'of which X is free' said 'the allocation failed with enough memory free'."""
    result = run_cli("doctor", _log(tmp_path, f"{OOM}130.00 MiB. GPU 0 has a total capa"))
    assert result.exit_code == 0, result.output
    assert "the message does not say how much was free (asked for 0.13 GiB on GPU 0)" in _said(result.output)
    assert "enough memory free" not in result.output


def test_doctor_sizes_below_a_mebibyte_are_not_zero(tmp_path: Path) -> None:
    """'Tried to allocate 130 KB' with 10 KB free read 'short by 0 MiB (asked for 0 MiB, 0 MiB free'."""
    text = f"{OOM}130 KB. GPU 0 has a total capacity of 80 GB of which 10 KB is free."
    result = run_cli("doctor", _log(tmp_path, text))
    assert "short by 120 KiB (asked for 130 KiB, 10 KiB free" in _said(result.output), result.output


def test_doctor_names_a_collective_the_log_does_not_name(tmp_path: Path) -> None:
    """No OpType in the watchdog line: 'a timed out' is now 'a collective timed out'."""
    text = ("[Rank 0] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=1, OpType=, Timeout(ms)=0) "
            "ran for 600034 milliseconds before timing out.")  # fmt: skip
    result = run_cli("doctor", _log(tmp_path, text))
    assert ": a collective timed out." in _said(result.output), result.output


def test_doctor_kv_counts_that_contradict_give_no_negative_shortfall(tmp_path: Path) -> None:
    """max seq len below what the cache holds: 'about -9216 MiB more KV cache' before."""
    text = ("INFO KV cache memory: 10 GiB\nValueError: The model's max seq len (10) is larger than the maximum "
            "number of tokens that can be stored in KV cache (100). vllm")  # fmt: skip
    result = run_cli("doctor", _log(tmp_path, text), "--json")
    answer = json.loads(result.output)
    assert answer["finding"]["shortfall_bytes"] is None and "more KV cache" not in answer["headline"], answer[
        "headline"
    ]


# doctor --plan: a plan the logged run cannot have followed (its numbers gave a wrong shortfall and re-plan)
def test_doctor_refuses_a_plan_for_a_device_of_another_size(plans: Path, tmp_path: Path) -> None:
    """A 24 GiB card's log against an H100 plan read 'beyond the plan's prediction: 23.92 GiB' and
    re-planned the H100 on 55 GiB."""
    text = f"{OOM}2.00 GiB. GPU 0 has a total capacity of 23.65 GiB of which 1.19 GiB is free."
    result = run_cli("doctor", _log(tmp_path, text), "--plan", str(plans / "train.yaml"))
    assert_refused(result, "GPU 0 has a total capacity of 23.65 GiB (line 1)", "H100 SXM5 80GB",
                   "reports 67.24 GiB to 84.00 GiB", "leave out --plan")  # fmt: skip


def test_doctor_refuses_a_bigger_cards_log_too(plans: Path) -> None:
    """The TRL log is from a 95 GiB card: against an 80 GiB plan the run 'needed 94.49 GiB more'."""
    result = run_cli("doctor", str(DOCTOR / "cuda_oom_adamw_step.log"), "--plan", str(plans / "train.yaml"))
    assert_refused(result, "total capacity of 94.99 GiB (line 10)", "H100 SXM5 80GB")


def test_doctor_refuses_a_serving_plan_for_a_training_step(plans: Path) -> None:
    result = run_cli("doctor", str(DOCTOR / "cuda_oom_adamw_step.log"), "--plan", str(plans / "serve.yaml"))
    assert_refused(result, "(line 10) is in the optimizer step, a training step", "is a serving plan",
                   "a training plan (`swiftplan fit MODEL -o plan.yaml`) would")  # fmt: skip


def test_doctor_refuses_a_training_plan_for_a_kv_cache_failure(plans: Path) -> None:
    result = run_cli("doctor", str(DOCTOR / "vllm_max_model_len.log"), "--plan", str(plans / "train.yaml"))
    assert_refused(result, "a serving engine's KV cache", "is a training plan (sft, no rollout engine)",
                   "--task serve", "GRPO/PPO plan")  # fmt: skip


def test_doctor_refuses_a_plan_for_another_device_family(plans: Path) -> None:
    result = run_cli("doctor", str(DOCTOR / "rocm_hip_oom_forward.log"), "--plan", str(plans / "train.yaml"))
    assert_refused(result, "from a ROCm (HIP) device", "H100 SXM5 80GB, a CUDA device")


def test_doctor_keeps_a_plan_for_the_logged_device(plans: Path, tmp_path: Path) -> None:
    """An H100's own log (79.11 GiB) is compared with the H100 plan, as before."""
    text = f"{OOM}2.00 GiB. GPU 0 has a total capacity of 79.11 GiB of which 1.19 GiB is free."
    result = run_cli("doctor", _log(tmp_path, text), "--plan", str(plans / "train.yaml"))
    assert result.exit_code == 0 and "beyond the plan's prediction" in result.output, result.output


# hand-edited plan files: launch values the plan did not size are refused before the command is printed
def _edited(plans: Path, tmp_path: Path, name: str, edit: Any) -> str:
    data = yaml.safe_load((plans / name).read_text(encoding="utf-8"))
    edit(data)
    path = tmp_path / f"edited-{name}"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return str(path)


def _three_gpus(data: dict[str, Any]) -> None:
    data["serve"]["tp"] = data["layout"]["tp"] = data["layout"]["gpus"] = data["hardware"][
        "gpus_per_node"
    ] = 3
    data["hardware"]["offered"] = "3xh100-sxm"


EDITED_SERVE = [
    # rendered --tensor-parallel-size 3 for a plan sized on one GPU
    ("serve-tp-not-layout", lambda d: d["serve"].update(tp=3),
     ["serve.tp 3 and layout.tp 1 must be the same", "Edit both"]),
    # rendered --tensor-parallel-size 3 for a model of 4 heads (vLLM refuses to start)
    ("serve-tp-not-heads", _three_gpus,
     ["serve.tp 3 does not split", "4 attention heads and 2 key/value heads", "valid tensor-parallel degrees: 1, 2, 4"]),
    # rendered --max-num-seqs 1000000000000000
    ("serve-concurrency-not-workload", lambda d: d["serve"].update(concurrency=10**15),
     ["serve.concurrency 1000000000000000 is not workload.concurrency 1 split over the plan's 1 replica(s) (1 each)"]),
    ("serve-concurrency-past-prediction",
     lambda d: (d["serve"].update(concurrency=10**9), d["workload"].update(concurrency=10**9)),
     ["serve.concurrency 1,000,000,000 is more than the 4,632,716 sequences", "prediction.max_concurrency"]),
    ("serve-gmu-not-workload", lambda d: d["serve"].update(gpu_memory_utilization=0.5),
     ["serve.gpu_memory_utilization 0.5 and workload.gpu_memory_utilization 0.9 must be the same"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("edit", "fragments"), [row[1:] for row in EDITED_SERVE], ids=[row[0] for row in EDITED_SERVE]
)
def test_every_command_refuses_a_hand_edited_serving_plan(
    plans: Path, tmp_path: Path, edit: Any, fragments: list[str]
) -> None:
    """Loading the file is the one gate: serve printed a launch the plan never sized; `estimate plan.yaml` named
    `--tp 3`, a flag nobody typed, or estimated the edited tp over a layout sized for another; doctor compared a
    log with a plan no engine could launch."""
    path = _edited(plans, tmp_path, "serve.yaml", edit)
    log = _log(tmp_path, f"{OOM}2.00 GiB. GPU 0 has a total capacity of 79.11 GiB of which 1.19 GiB is free.")
    for command in (("serve", path, "--dry-run"), ("estimate", path), ("doctor", log, "--plan", path)):
        assert_refused(run_cli(*command), f"Plan file {path}", *fragments)


def _train_three_gpus(data: dict[str, Any]) -> None:
    data["train"]["parallel"]["tp"] = data["layout"]["tp"] = data["layout"]["gpus"] = 3
    data["layout"]["dp"] = 1
    data["hardware"]["gpus_per_node"] = 3
    data["hardware"]["offered"] = "3xh100-sxm"
    data["workload"]["global_batch"] = data["train"]["micro_batch"] * data["train"]["grad_accum"]
    data["engine"] = "megatron-swift"  # an engine that runs tensor parallelism


EDITED_TRAIN = [
    # estimated the weights /tp2 over a layout of one GPU
    ("train-tp-not-layout", lambda d: d["train"]["parallel"].update(tp=2),
     ["train.parallel.tp 2 and layout.tp 1 must be the same", "edit both"]),
    ("train-pp-not-layout", lambda d: d["train"]["parallel"].update(pp=2),
     ["train.parallel.pp 2 and layout.pp 1 must be the same"]),
    # estimate said "--tp 3 does not divide"
    ("train-tp-not-heads", _train_three_gpus,
     ["train.parallel.tp 3 does not split", "4 attention heads and 2 key/value heads"]),
    # estimate named no file or field
    ("train-targets", lambda d: d["train"]["lora"].update(targets=["nope_proj"]),
     ["train.lora.targets", "nope_proj match no module"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("edit", "fragments"), [row[1:] for row in EDITED_TRAIN], ids=[row[0] for row in EDITED_TRAIN]
)
def test_every_command_refuses_a_hand_edited_training_layout(
    plans: Path, tmp_path: Path, edit: Any, fragments: list[str]
) -> None:
    path = _edited(plans, tmp_path, "train.yaml", edit)
    for command in (("estimate", path), ("train", path, "--dry-run")):
        assert_refused(run_cli(*command), f"Plan file {path}", *fragments)


def test_serve_launches_a_plan_of_several_replicas_each_with_its_share(tmp_path: Path) -> None:
    """fit splits --concurrency over the replicas (serve.concurrency per replica, workload.concurrency in all):
    serve launches the plan as written, and refuses a per-replica figure that is not the split."""
    plan = tmp_path / "two.yaml"
    made = run_cli("fit", "Qwen/Qwen2.5-0.5B", "--gpus", "2xrtx4090", "--task", "serve", "--concurrency", "64",
                   "-o", str(plan))  # fmt: skip
    assert made.exit_code == 0, made.output
    data = yaml.safe_load(plan.read_text())
    assert (data["workload"]["concurrency"], data["serve"]["concurrency"], data["layout"]["gpus"]) == (
        64,
        32,
        2,
    )
    launched = run_cli("serve", str(plan), "--dry-run")
    assert launched.exit_code == 0 and "--max-num-seqs 32" in launched.output, launched.output
    data["serve"]["concurrency"] = 40
    plan.write_text(yaml.safe_dump(data))
    assert_refused(run_cli("serve", str(plan), "--dry-run"),
                   "serve.concurrency 40 is not workload.concurrency 64 split over the plan's 2 replica(s) (32 each)")  # fmt: skip


def test_train_refuses_lora_targets_the_model_does_not_have(plans: Path, tmp_path: Path) -> None:
    """train.lora.targets [nope_proj] printed a launch; peft raises on it when the run starts."""
    path = _edited(plans, tmp_path, "train.yaml", lambda d: d["train"]["lora"].update(targets=["nope_proj"]))
    assert_refused(run_cli("train", path, "--dry-run"), f"Plan file {path}: train.lora.targets",
                   "nope_proj match no module", "down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj")  # fmt: skip


SERVE_OPTIONS = [
    ("host-garbage", ("--host", "not a host!!"), ["--host 'not a host!!' is neither an IP address nor a host name"]),
    ("host-bad-ipv4", ("--host", "999.1.1.1"), ["--host '999.1.1.1' is not an IPv4 address", "127.0.0.1"]),
    ("host-empty", ("--host", " "), ["--host is empty", "127.0.0.1", "0.0.0.0"]),
    ("served-name-empty", ("--served-model-name", ""), ["--served-model-name '' is empty", "leave --served-model-name out"]),
]  # fmt: skip


@pytest.mark.parametrize(
    "args,fragments", [row[1:] for row in SERVE_OPTIONS], ids=[row[0] for row in SERVE_OPTIONS]
)
def test_serve_options_refused_in_a_dry_run(plans: Path, args: tuple[str, ...], fragments: list[str]) -> None:
    assert_refused(run_cli("serve", str(plans / "serve.yaml"), "--dry-run", *args), *fragments)


@pytest.mark.parametrize("host", ["::1", "localhost", "my-box.local", "0.0.0.0", "10.1.2.3"])
def test_serve_host_names_and_addresses_still_pass(plans: Path, host: str) -> None:
    result = run_cli("serve", str(plans / "serve.yaml"), "--dry-run", "--host", host)
    assert result.exit_code == 0 and f"--host {host}" in result.output, result.output


# --lengths files
TINY = str(FIXTURES / "train" / "tiny_llama")


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        # int() refused past 4,300 digits: a ValueError traceback before
        (
            "9" * 5000 + "\n",
            ["line 1", "(5,000 digits) is more tokens than one sample holds", "0 to 1,000,000,000,000"],
        ),
        ("100\n" + "1" * 20 + "\n", ["line 2", "(20 digits)", "a whole number from 0"]),
        # str.isdigit() passes a superscript two, which int() refuses: a traceback before
        ("100\n\u00b2\n", ["line 2", "'²' is not a token count", "one whole number of tokens per line"]),
        ("100\n-5\n", ["line 2", "'-5' is not a token count", "one whole number of tokens per line"]),
    ],
    ids=["5000-digits", "20-digits", "superscript", "negative"],
)
def test_fit_refuses_a_lengths_file_line_that_is_no_token_count(
    tmp_path: Path, content: str, fragments: list[str]
) -> None:
    path = tmp_path / "lengths.txt"
    path.write_text(content, encoding="utf-8")
    assert_refused(
        run_cli("fit", TINY, "--gpus", "h100", "--lengths", str(path), "--trials", "2"), str(path), *fragments
    )


def test_fit_reads_a_lengths_file_with_a_byte_order_mark(tmp_path: Path) -> None:
    """A spreadsheet's export starts with U+FEFF: "'\\ufeff100' is not a token count" before."""
    path = tmp_path / "lengths.txt"
    path.write_bytes(b"\xef\xbb\xbf100\n200\n")
    result = run_cli("fit", TINY, "--gpus", "h100", "--lengths", str(path), "--trials", "2", "--json")
    assert result.exit_code == 0, result.output


# malformed config.json given as MODEL
def _config(tmp_path: Path, **changes: Any) -> str:
    config = json.loads((FIXTURES / "train" / "tiny_llama" / "config.json").read_text(encoding="utf-8"))
    config.update(changes)
    path = tmp_path / "model"
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return str(path)


CONFIGS = [
    # planned as 2 × 10^33 parameters
    ("hidden-huge", {"hidden_size": 10**30}, ["hidden_size=1,000,000,000,000,000,000,000,000,000,000",
                                              "widths of at most 16,777,216"]),
    # the string "no" counted a tied LM head (truthy); verify ended in transformers' validation traceback
    ("tie-string", {"tie_word_embeddings": "no"}, ["tie_word_embeddings='no'", "must be true or false"]),
    ("bias-number", {"attention_bias": 1}, ["attention_bias=1", "must be true or false"]),
    # estimate ignored it; verify ended in transformers' validation traceback
    ("rope-string", {"rope_scaling": "yes"}, ["rope_scaling='yes'", '{"rope_type": "linear", "factor": 4.0}, or null']),
    # accepted everywhere
    ("rope-negative", {"rope_scaling": {"type": "linear", "factor": -2}}, ["rope_scaling.factor=-2",
                                                                           "must be a positive number"]),
    # estimate accepted; verify ended in 'k not in range for dimension'
    ("topk-past-experts", {"model_type": "mixtral", "num_local_experts": 2, "num_experts_per_tok": 4},
     ["num_experts_per_tok=4, more than its 2 experts (num_local_experts)"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "fragments"), [row[1:] for row in CONFIGS], ids=[row[0] for row in CONFIGS]
)
@pytest.mark.parametrize("verb", ["estimate", "verify"])
def test_a_malformed_config_is_refused_naming_its_key(
    tmp_path: Path, verb: str, changes: dict[str, Any], fragments: list[str]
) -> None:
    model = _config(tmp_path, **changes)
    args = ("--gpus", "h100", "--seq", "64") if verb == "estimate" else ("--seq", "32", "--batch", "1")
    assert_refused(run_cli(verb, model, *args), *fragments)


def test_verify_refuses_a_config_transformers_cannot_build_without_its_traceback(tmp_path: Path) -> None:
    """A VLM whose text_config names a text model_type: transformers fails inside from_config
    ("'dict' object has no attribute 'to_dict'"), which was verify's traceback."""
    text = {k: v for k, v in json.loads(_config_text()).items() if k not in ("architectures", "model_type")}
    config = {"model_type": "qwen2_vl", "text_config": {**text, "model_type": "qwen2"}, "vision_config": "x"}
    path = tmp_path / "vlm"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    assert_refused(run_cli("verify", str(path), "--seq", "32", "--batch", "1"),
                   "transformers cannot build a", "from this config.json", "SWIFTPLAN_DEBUG=1")  # fmt: skip


def _config_text() -> str:
    return (FIXTURES / "train" / "tiny_llama" / "config.json").read_text(encoding="utf-8")


def test_images_for_a_vision_config_of_no_known_layout_say_so(tmp_path: Path) -> None:
    """Said 'a text-only model (its config has no vision_config)' of a config that has one."""
    text = {k: v for k, v in json.loads(_config_text()).items() if k not in ("architectures", "model_type")}
    config = {
        "model_type": "qwen2_vl",
        "text_config": {**text, "model_type": "qwen2"},
        "vision_config": {"depth": 2},
    }
    path = tmp_path / "vlm"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    result = run_cli("estimate", str(path), "--gpus", "h100", "--seq", "512", "--images-per-sample", "1")
    assert_refused(result, "has a vision_config, but of no vision layout swiftplan sizes (model_type none / qwen2)",
                   "Qwen2-VL, Qwen2.5-VL, InternVL and LLaVA")  # fmt: skip
