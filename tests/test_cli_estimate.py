"""`swiftplan estimate` end to end through the real console script entry point."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from swiftplan.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"SWIFTPLAN_OFFLINE": "1", "PATH": "/usr/bin:/bin", "COLUMNS": "120"},
    )


def test_estimate_json_has_the_documented_fields():
    result = run_cli("estimate", "Qwen/Qwen2.5-72B", "--method", "qlora", "--gpus", "rtx4090", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    for key in (
        "params",
        "trainable_params",
        "per_device",
        "host_bytes",
        "device_memory_bytes",
        "fits",
        "speed",
    ):
        assert key in data
    per_device = data["per_device"]
    for key in (
        "weights",
        "adapters",
        "gradients",
        "optimizer",
        "master_weights",
        "activations",
        "logits",
        "kv_cache",
        "runtime_overhead",
        "peak_allocated",
        "device_total",
    ):
        assert isinstance(per_device[key], int)
    assert set(data["speed"]) >= {"tokens_per_s", "step_time_s", "bound"}
    # 72B in nf4 is ~38 GiB of weights alone: it cannot fit a 24 GiB card.
    assert data["fits"] is False
    assert per_device["device_total"] > data["device_memory_bytes"]


def test_estimate_serving_json_reports_limits():
    result = run_cli(
        "estimate",
        "qwen2.5-7b",
        "--task",
        "serve",
        "--context",
        "8192",
        "--concurrency",
        "8",
        "--gpus",
        "h100",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["max_concurrency"] >= 8 and data["max_context"] >= 8192
    assert data["per_device"]["kv_cache"] == 8 * 8192 * 57_344  # 8 seqs × 8192 tokens × 57,344 B/token


def test_estimate_human_output_shows_breakdown_and_speed():
    result = run_cli("estimate", "Qwen/Qwen2.5-7B", "--method", "lora", "--rank", "64", "--gpus", "a100")
    assert result.returncode == 0, result.stderr
    assert "peak allocated" in result.stdout and "tokens/s" in result.stdout and "fits" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["nosuchmodel"], "Unknown model 'nosuchmodel'"),
        (["Qwen/Qwen2.5-7B", "--gpus", "rtx9090"], "Unknown GPU 'rtx9090'"),
        (["Qwen/Qwen2.5-7B", "--rank", "0"], "--rank must be at least 1, got 0"),
        (["Qwen/Qwen2.5-7B", "--tp", "3", "--gpus", "3xa100"], "does not divide"),
        (["Qwen/Qwen2.5-7B", "--method", "qlora", "--precision", "fp32"], "QLoRA computes in bf16 or fp16"),
        (["Qwen/Qwen2.5-7B", "--batch", "-1"], "must be a positive integer, got -1"),
        (["Qwen/Qwen2.5-7B", "--precision", "bf16", "--gpus", "v100"], "bf16"),
        (["Qwen/Qwen2.5-7B", "--targets", "foo_proj"], "foo_proj match no module"),
        (["./missing/config.json"], "Unknown model"),
        (["someorg/not-in-catalog"], "Pass a local config.json"),
    ],
)
def test_bad_input_is_one_clear_error(args, message):
    result = run_cli("estimate", *args)
    assert result.returncode == 2
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr


def test_local_config_file(tmp_path):
    config = {
        "model_type": "llama",
        "hidden_size": 256,
        "intermediate_size": 688,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 1000,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = run_cli("estimate", str(tmp_path), "--method", "full", "--json")
    assert result.returncode == 0, result.stderr
    # embeddings 2 × 1000 × 256 (untied) + 4 blocks × (q 256² + k,v 2×256×128 + o 256² + 3 × 256 × 688 + 2 norms) + final norm
    per_block = 256 * 256 * 2 + 2 * 256 * 128 + 3 * 256 * 688 + 2 * 256
    assert json.loads(result.stdout)["params"] == 2 * 1000 * 256 + 4 * per_block + 256


def test_broken_config_file(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    result = run_cli("estimate", str(tmp_path / "config.json"))
    assert result.returncode == 2 and "not valid JSON" in result.stderr


def test_planning_never_imports_torch():
    code = (
        "import sys; from swiftplan.cli import main; sys.argv=['swiftplan','estimate','Qwen/Qwen2.5-72B','--method','qlora',"
        "'--gpus','rtx4090','--json']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch','transformers','peft','deepspeed','vllm','pynvml') if m in sys.modules]\n"
        "print('HEAVY', heavy, file=sys.stderr)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in result.stderr, result.stderr
