"""Plan files: `fit -o` writes them, `estimate` reads them back, and bad files get a one-paragraph error."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from swiftplan.errors import SwiftplanError
from swiftplan.plan_file import estimate_plan, load_plan, make_plan, save_plan
from swiftplan.planner.estimate import estimate_serving, estimate_training
from swiftplan.planner.hardware import parse_cluster
from swiftplan.planner.setup import LoraSetup, Parallelism, ServeSetup, TrainSetup


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from swiftplan.cli import main; main()", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={"SWIFTPLAN_OFFLINE": "1", "PATH": "/usr/bin:/bin", "COLUMNS": "150"},
    )


def _write(qwen7b, path, setup, gpus="2xrtx4090", gpus_used=2):
    cluster = parse_cluster(gpus)
    if isinstance(setup, ServeSetup):
        estimate = estimate_serving(qwen7b, setup, cluster)
    else:
        estimate = estimate_training(qwen7b, setup, parse_cluster(f"{gpus_used}xrtx4090"))
    plan = make_plan(
        model="Qwen/Qwen2.5-7B",
        model_source=qwen7b.source,
        cluster="2xrtx4090",
        gpus_used=gpus_used,
        usable_memory_bytes=None,
        objective="time",
        workload={"seq_len": 1024},
        setup=setup,
        estimate_json=estimate.to_json(),
        host_bytes_per_node=estimate.host_bytes,
    )
    save_plan(plan, path)
    return estimate


@pytest.mark.parametrize(
    "setup",
    [
        TrainSetup(
            method="lora",
            lora=LoraSetup(rank=64, targets=("q_proj", "v_proj")),
            micro_batch=2,
            seq_len=1024,
            grad_accum=4,
            parallel=Parallelism(zero=3, offload="optimizer"),
        ),
        TrainSetup(
            method="qlora",
            double_quant=False,
            optimizer="paged-adamw-8bit",
            grad_ckpt=False,
            parallel=Parallelism(pp=2),
        ),
        TrainSetup(method="qlora", kbit_upcast=True),
        TrainSetup(
            method="full", precision="amp-bf16", optimizer="adamw-8bit", parallel=Parallelism(tp=2, zero=0)
        ),
        ServeSetup(quant="fp8", kv_dtype="fp8", context=8192, concurrency=8, tp=2),
    ],
)
def test_plan_files_round_trip(qwen7b, tmp_path, setup):
    path = tmp_path / "plan.yaml"
    estimate = _write(qwen7b, path, setup)
    plan, loaded = load_plan(path)
    assert loaded == setup
    assert (
        plan.schema_version == 1
        and plan.prediction.per_device["device_total"] == estimate.memory.device_total
    )
    assert estimate_plan(path).memory.device_total == estimate.memory.device_total


def test_fit_output_is_accepted_by_estimate(tmp_path):
    fit = run_cli("fit", "Qwen/Qwen2.5-7B", "--gpus", "rtx3060", "-o", "plan.yaml", "--json", cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr
    predicted = json.loads(fit.stdout)["plan"]["prediction"]["per_device"]["device_total"]
    data = yaml.safe_load((tmp_path / "plan.yaml").read_text())
    assert data["schema_version"] == 1 and data["task"] == "train" and data["swiftplan_version"]
    assert (
        data["train"]["method"] == "qlora" and data["prediction"]["per_device"]["device_total"] == predicted
    )
    estimate = run_cli("estimate", "plan.yaml", "--json", cwd=tmp_path)
    assert estimate.returncode == 0, estimate.stderr
    assert json.loads(estimate.stdout)["per_device"]["device_total"] == predicted


EDITS = [
    ("unknown key", lambda d: d["train"].update(batch_size=4), "unknown field 'train.batch_size'"),
    ("bad literal", lambda d: d["train"]["parallel"].update(zero=5), "field 'train.parallel.zero'"),
    ("wrong type", lambda d: d["train"].update(micro_batch="two"), "field 'train.micro_batch'"),
    ("missing", lambda d: d["train"].pop("seq_len"), "missing field 'train.seq_len'"),
    ("version", lambda d: d.update(schema_version=2), "schema_version 2"),
    (
        "cross-field",
        lambda d: d["train"].update(method="qlora", quant="none", precision="fp32"),
        "QLoRA computes in bf16 or fp16",
    ),
    ("task mismatch", lambda d: d.update(task="serve"), "needs exactly the 'serve' section"),
    ("unknown gpu", lambda d: d.update(cluster="rtx9090"), "field 'cluster': Unknown GPU"),
]


@pytest.mark.parametrize("name, edit, message", EDITS, ids=[e[0] for e in EDITS])
def test_hand_edited_plan_files_get_a_clear_error(qwen7b, tmp_path, name, edit, message):
    path = tmp_path / "plan.yaml"
    _write(qwen7b, path, TrainSetup(method="lora"))
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SwiftplanError) as error:
        estimate_plan(path)
    assert message in error.value.message and str(path) in error.value.message


@pytest.mark.parametrize(
    "text, message",
    [
        ("train: [unclosed\n", "is not valid YAML (line"),
        ("- just\n- a list\n", "is not a swiftplan plan file"),
        ("", "is not a swiftplan plan file"),
    ],
)
def test_corrupt_plan_files_get_a_clear_error_on_the_command_line(tmp_path, text, message):
    (tmp_path / "plan.yaml").write_text(text)
    result = run_cli("estimate", "plan.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and "plan.yaml" in result.stderr and "Traceback" not in result.stderr


def test_missing_plan_file(tmp_path):
    result = run_cli("estimate", "nowhere.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "Cannot read plan file nowhere.yaml" in result.stderr
