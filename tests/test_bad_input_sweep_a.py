"""Findings of the bad-input sweep (part A): each is refused with one clear message, never a traceback,
a hang or a silently wrong plan.

Real command lines through the console entry point (`bad_input_support.run_cli`); `serve.yaml` and
`train.yaml` are the tiny plans of `write_tiny_plans`. Nothing here reaches the network: every model
name below is refused before the hub is asked.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import yaml
from bad_input_support import assert_refused, run_cli, run_cli_bounded, write_tiny_plans

M = "Qwen/Qwen2.5-0.5B"
FIT = ("fit", M, "--gpus", "a100")
SIZE = ("size", M)
TRAIN = ("train", "train.yaml", "--data", "one.jsonl")
SERVE = ("serve", "serve.yaml", "--dry-run")

CASES = [
    # 1.1 a token count that is not a finite number (an OverflowError traceback before)
    ("fit-tokens-inf", (*FIT, "--dataset-tokens", "inf"), ["--dataset-tokens 'inf'", "50M, 1.5B"]),
    ("fit-tokens-1e400", (*FIT, "--dataset-tokens", "1e400"), ["--dataset-tokens '1e400'", "50M"]),
    ("fit-tokens-infB", (*FIT, "--dataset-tokens", "infB"), ["'infB'", "50M"]),
    ("size-tokens-1e999M", (*SIZE, "--dataset-tokens", "1e999M"), ["--dataset-tokens '1e999M'", "50M"]),
    ("size-tokens-neg-inf", (*SIZE, "--dataset-tokens", "-infM"), ["'-infM'", "50M"]),
    # 1.2 hub ids that are not well formed (an HFValidationError traceback before)
    (
        "est-hub-url",
        ("estimate", f"https://huggingface.co/{M}", "--gpus", "a100"),
        ["web address", f"type the hub model id alone ({M})"],
    ),
    (
        "fit-hub-url-tree",
        ("fit", f"huggingface.co/{M}/tree/main", "--gpus", "a100"),
        ["web address", f"({M})"],
    ),
    ("est-hub-revision", ("estimate", f"{M}@main", "--gpus", "a100"), ["revision ('main')", f"Type {M}"]),
    ("size-hub-three-parts", ("size", "a/b/c"), ["'a/b/c' is not a hub model id", "namespace/name"]),
    ("est-hub-space", ("estimate", "Qwen/Qwen 2.5", "--gpus", "a100"), ["'Qwen/Qwen 2.5'", "no spaces"]),
    ("est-hub-double-slash", ("estimate", "Qwen//x", "--gpus", "a100"), ["'Qwen//x'", "namespace/name"]),
    ("verify-hub-leading-dash", ("verify", "org/-bad"), ["'org/-bad'", "not starting or ending with '-'"]),
    (
        "est-hub-too-long",
        ("estimate", "o/" + "x" * 97, "--gpus", "a100"),
        ["is not a hub model id", "up to 96"],
    ),
    # 1.3 train --write-config where no directory can be made or written (a traceback before)
    (
        "write-config-at-file",
        (*TRAIN, "--engine", "ms-swift", "--write-config", "one.jsonl"),
        ["--write-config one.jsonl is a file, not a directory", "give a directory"],
    ),
    (
        "write-config-under-file",
        (*TRAIN, "--engine", "llamafactory", "--write-config", "/dev/null/x"),
        ["--write-config /dev/null/x", "/dev/null is a file, not a directory"],
    ),
    (
        "write-config-under-proc",
        (*TRAIN, "--engine", "llamafactory", "--write-config", "/proc/x"),
        ["Cannot create --write-config /proc/x", "a directory this user can write"],
    ),
    (
        "write-config-proc-dry-run",
        (*TRAIN, "--engine", "llamafactory", "--write-config", "/proc", "--dry-run"),
        ["Cannot write --write-config /proc", "no file can be created there"],
    ),
    # 1.5 size --max-nodes with no upper bound (no answer within a minute before)
    (
        "size-max-nodes-10000",
        (*SIZE, "--max-nodes", "10000"),
        ["--max-nodes 10000", "at most 256 nodes", "fit"],
    ),
    (
        "size-max-nodes-257",
        (*SIZE, "--task", "serve", "--max-nodes", "257"),
        ["--max-nodes 257", "at most 256"],
    ),
    # 2.11 an empty --api-key turned authentication off without a word
    (
        "serve-api-key-empty",
        (*SERVE, "--engine", "builtin", "--api-key", ""),
        ["--api-key '' is empty", "without authentication"],
    ),
    (
        "serve-api-key-blank",
        (*SERVE, "--engine", "vllm", "--api-key", " "),
        ["--api-key ' ' is blank", "leave --api-key out"],
    ),
    # 2.6 overrides that bypass the plan (the tiny plan: a 2-layer Llama, 256 positions, context 128 × 1 sequence)
    (
        "serve-model-other",
        (*SERVE, "--engine", "vllm", "--model", "Qwen/Qwen2.5-72B"),
        [
            "--model Qwen/Qwen2.5-72B is not the plan's model",
            "model_type is qwen2",
            "swiftplan fit Qwen/Qwen2.5-72B",
        ],
    ),
    (
        "serve-context-past-positions",
        (*SERVE, "--context", "100000"),
        ["--context 100000", "256 positions", "--context 256 or less"],
    ),
    (
        "serve-concurrency-past-plan",
        (*SERVE, "--engine", "vllm", "--concurrency", "100000000"),
        ["--concurrency 100000000", "more than the plan sized", "4,632,716 × 128"],
    ),
    # 3.7 serve --dry-run accepted anything as a model
    (
        "serve-dir-without-config",
        ("serve", "adir", "--dry-run"),
        ["adir is a directory without a config.json"],
    ),
    (
        "serve-json-not-config",
        ("serve", "est.json", "--dry-run"),
        ["est.json is not a model's config.json", "model_type"],
    ),
    ("serve-dev-null", ("serve", "/dev/null", "--dry-run"), ["/dev/null is not a model", "config.json"]),
    ("serve-csv", ("serve", "one.csv", "--dry-run", "--engine", "vllm"), ["one.csv is not a model"]),
    (
        "serve-hub-offline",
        ("serve", "no/such", "--dry-run"),
        ["'no/such' is not in the catalog", "hub is off"],
    ),
    ("serve-url", ("serve", f"https://huggingface.co/{M}", "--dry-run"), ["web address", f"({M})"]),
    ("serve-unknown", ("serve", "bogus", "--dry-run"), ["Unknown model 'bogus'"]),
    (
        "serve-model-dir-without-config",
        (*SERVE, "--model", "adir"),
        ["adir is a directory without a config.json"],
    ),
    # 2.12 numbers that are not finite, which --json printed as Infinity
    ("size-budget-inf", (*SIZE, "--budget", "inf", "--json"), ["--budget", "finite", "'inf'"]),
    ("size-budget-1e400", (*SIZE, "--budget", "1e400"), ["--budget", "finite", "'1e400'"]),
    ("size-budget-infk", (*SIZE, "--budget", "infk", "--buy"), ["--budget", "'infk'"]),
    (
        "plan-epochs-inf",
        ("estimate", "epochs_inf.yaml", "--json"),
        ["epochs_inf.yaml", "workload.epochs", "finite"],
    ),
    ("plan-network-nan", ("estimate", "network_nan.yaml"), ["hardware.inter_node_bytes_per_s", "finite"]),
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the tiny serving and training plans, a one-record data file, and things that
    are not models (a CSV, an estimate's JSON, an empty directory), and the training plan with .inf
    epochs and a .nan network."""
    where = write_tiny_plans(tmp_path_factory.mktemp("sweep_a"))
    (where / "one.jsonl").write_text('{"text": "hello world"}\n')
    (where / "one.csv").write_text("a,b\n1,2\n")
    (where / "est.json").write_text('{"model": "Qwen/Qwen2.5-0.5B", "fits": true}\n')
    (where / "adir").mkdir()
    plan = yaml.safe_load((where / "train.yaml").read_text())
    plan["workload"]["epochs"] = math.inf
    (where / "epochs_inf.yaml").write_text(yaml.safe_dump(plan))
    plan["workload"]["epochs"] = 1.0
    plan["hardware"]["inter_node_bytes_per_s"] = math.nan
    (where / "network_nan.yaml").write_text(yaml.safe_dump(plan))
    return where


@pytest.mark.parametrize(("args", "fragments"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_the_value_and_what_is_valid(workdir, args, fragments):
    before = sorted(p.name for p in workdir.iterdir())
    result = run_cli(*args, cwd=workdir, env={"COLUMNS": "200", "HF_HUB_OFFLINE": "1"})
    assert_refused(result, *fragments)
    assert sorted(p.name for p in workdir.iterdir()) == before


def test_token_counts_still_parse():
    from swiftplan.units import parse_token_count

    assert [parse_token_count(t) for t in ("50M", "1.5B", "200k", "12_345", "2t")] == [
        50_000_000,
        1_500_000_000,
        200_000,
        12_345,
        2 * 10**12,
    ]
    for bad in ("inf", "nan", "1e400", "1e308k", "-infM"):
        with pytest.raises(ValueError, match="not a finite number"):
            parse_token_count(bad)


def test_well_formed_hub_ids_pass_the_check():
    from swiftplan.executors.model_source import check_hub_id

    for good in (M, "meta-llama/Llama-3.1-8B", "o/x_y.z", "mistralai/Mixtral-8x7B-v0.1"):
        check_hub_id(good)


def test_write_config_still_writes_into_a_new_directory(workdir, tmp_path):
    target = tmp_path / "new" / "configs"
    result = run_cli(*TRAIN, "--engine", "llamafactory", "--write-config", str(target), cwd=workdir)
    assert result.exit_code == 0, result.output
    assert (target / "run.sh").is_file() and (target / "dataset_info.json").is_file()


# 1.4 doctor reads a bounded tail of the log, so no log is too large for it


OOM_LINE = (
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 4.00 GiB. "
    "GPU 0 has a total capacity of 79.10 GiB of which 1.00 GiB is free."
)


def test_doctor_reads_the_end_of_a_large_log_and_keeps_its_line_numbers(tmp_path):
    from swiftplan.usecases.doctor import TAIL_BYTES

    log = tmp_path / "train.log"
    filler = "step 12345 loss 2.3 lr 1e-4 grad_norm 0.5 tokens/s 12345 elapsed 00:01:02\n"
    lines = TAIL_BYTES // len(filler) * 3 // 2  # half as much again as doctor reads
    log.write_text(filler * lines + OOM_LINE + "\n")
    result = run_cli("doctor", str(log), env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert f"line {lines + 1}: torch.OutOfMemoryError" in result.output  # the log's numbering, not the tail's
    assert "short by 3.00 GiB" in result.output
    assert "read only the log's end" in " ".join(result.output.split())


def test_doctor_on_an_endless_device_stops_with_a_note():
    result = run_cli_bounded("doctor", "/dev/zero", "--json")  # OOM-killed after 24 GB before
    assert result.exit_code == 0, result.output
    data = json.loads(result.output[result.output.index("{") :])
    assert not data["found"]
    assert any("stopped reading /dev/zero after 4.00 GiB" in note for note in data["notes"])


def test_doctor_stdin_is_read_in_bounded_memory(monkeypatch):
    from swiftplan.usecases import doctor

    monkeypatch.setattr(doctor, "TAIL_BYTES", 1024)
    monkeypatch.setattr(doctor, "STREAM_LIMIT_BYTES", 64 * 1024)
    endless = io.BytesIO(b"step 1 loss 2.3\n" * 10_000)  # 160 kB: more than the limit
    request = doctor.read_request("-", stdin=endless)
    assert not request.ended and len(request.text) <= 1024
    assert request.text.startswith("step 1") and request.first_line == request.skipped_bytes // 16 + 1
    outcome = doctor.diagnose(request)
    assert any("stopped reading stdin" in note for note in outcome.notes)


def test_size_still_takes_the_largest_max_nodes():
    from swiftplan.usecases.size import MAX_NODES_LIMIT, SizeRequest

    assert SizeRequest(model=M, max_nodes=MAX_NODES_LIMIT).max_nodes == 256


def test_serve_overrides_within_the_plan_still_render(workdir, tmp_path):
    from bad_input_support import FIXTURES

    checkpoint = tmp_path / "checkpoint"  # a fine-tune of the plan's model: its config, its architecture
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text((FIXTURES / "serve_tiny_config.json").read_text())
    # the same tokens at once (64 × 2 = 128 × 1)
    result = run_cli(*SERVE, "--engine", "vllm", "--context", "64", "--concurrency", "2",
                     "--model", str(checkpoint), "--api-key", "k", cwd=workdir)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"vllm serve {checkpoint}" in result.output
    # its config.json names the directory, a catalog alias the hub id: what vLLM loads
    by_config = run_cli(*SERVE, "--engine", "vllm", "--model", str(checkpoint / "config.json"), cwd=workdir)
    assert by_config.exit_code == 0 and f"vllm serve {checkpoint} " in by_config.output, by_config.output
    assert "--max-model-len 64 --max-num-seqs 2" in result.output and "VLLM_API_KEY" in result.output
    assert run_cli("serve", str(FIXTURES / "serve_tiny_config.json"), "--dry-run", cwd=workdir).exit_code == 0


def test_serve_concurrency_up_to_what_the_plan_found_fits_is_accepted(workdir):
    """The plan sized one sequence of 128 tokens but found millions fit its KV cache (max_concurrency): 64 at once
    hold far less than that, so they render."""
    result = run_cli(*SERVE, "--engine", "vllm", "--concurrency", "64", "--api-key", "k", cwd=workdir)
    assert result.exit_code == 0, result.output
    assert "--max-num-seqs 64" in result.output


def test_the_table_ids_are_unique():
    assert len({c[0] for c in CASES}) == len(CASES)


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def test_json_output_is_strict_when_a_time_overflows(capsys):
    """fit's CLI now refuses --epochs above 10,000 (tests/test_bad_input_bounds.py), so the overflow is reached
    through the use case: finite input, infinite time and cost, printed as fit --json prints it."""
    from swiftplan.cli._fit_render import fit_json
    from swiftplan.cli._output import print_json
    from swiftplan.usecases.fit import FitRequest, plan_fit

    outcome = plan_fit(FitRequest(model=M, gpus="a100", epochs=1e308))
    print_json(fit_json(outcome, output=None, measured=None, elapsed_s=0.0))
    data = json.loads(capsys.readouterr().out, parse_constant=_refuse_constant)
    assert data["best"]["time_s"] is None and data["best"]["tokens_per_s"] > 0


def test_a_blank_api_key_from_the_environment_names_the_variable(workdir):
    result = run_cli(*SERVE, "--engine", "vllm", cwd=workdir, env={"SWIFTPLAN_API_KEY": " "})
    assert_refused(result, "SWIFTPLAN_API_KEY is blank", "without authentication")
    assert "--api-key" not in result.output.split("hint:")[0]
