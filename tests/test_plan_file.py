"""Plan files: `fit -o` writes them, `estimate` reads them back to the byte, version 1 files still load,
and bad files get a one-paragraph error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from swiftplan.errors import SwiftplanError
from swiftplan.plan_file import load_plan, plan_yaml, save_plan
from swiftplan.planner.hardware import parse_cluster
from swiftplan.planner.objective import ObjectiveSetup, RolloutSetup
from swiftplan.planner.setup import LoraSetup, Parallelism, ServeSetup, TrainSetup
from swiftplan.usecases.estimate import estimate_plan_file, plan_for_setup

FIXTURES = Path(__file__).parent / "fixtures"


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from swiftplan.cli import main; main()", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={"SWIFTPLAN_OFFLINE": "1", "PATH": os.environ["PATH"], "COLUMNS": "150"},
    )


SETUPS = [
    TrainSetup(method="lora", lora=LoraSetup(rank=64, targets=("q_proj", "v_proj")), micro_batch=2, seq_len=1024,
               grad_accum=4, parallel=Parallelism(zero=3, offload="optimizer")),
    TrainSetup(method="qlora", double_quant=False, optimizer="paged-adamw-8bit", grad_ckpt=False),
    TrainSetup(method="qlora", kbit_upcast=True),
    TrainSetup(method="full", precision="amp-bf16", optimizer="adamw-8bit", parallel=Parallelism(zero=2)),
    ServeSetup(quant="fp8", kv_dtype="fp8", context=8192, concurrency=8, tp=2),
    # preference and RL objectives (issue 16): the objective, its reference and rollout settings
    TrainSetup(method="lora", seq_len=1024, objective=ObjectiveSetup(kind="dpo", prompt_len=256)),
    TrainSetup(method="full", seq_len=512, objective=ObjectiveSetup(kind="kto", reference="precomputed")),
    TrainSetup(method="lora", seq_len=768, objective=ObjectiveSetup(kind="grpo", kl=True, rollout=RolloutSetup(
        num_generations=4, prompt_len=256, completion_len=512, placement="server", gpus=1, memory_fraction=0.8))),
    TrainSetup(method="lora", seq_len=1024, objective=ObjectiveSetup(kind="grpo", rollout=RolloutSetup(
        prompt_len=512, sleep=True, memory_fraction=0.4))),
    ServeSetup(context=4096, concurrency=4, eager=True),  # decode without CUDA graphs
]  # fmt: skip


@pytest.mark.parametrize("setup", SETUPS)
def test_plan_files_round_trip_exactly(tmp_path, setup):
    sft = isinstance(setup, ServeSetup) or setup.objective.kind == "sft"
    engine = None if sft else "ms-swift"  # swiftplan's own loop trains SFT only
    plan = plan_for_setup("Qwen/Qwen2.5-7B", parse_cluster("2xrtx4090"), setup, engine=engine)
    path = tmp_path / "plan.yaml"
    save_plan(plan, path)
    loaded = load_plan(path)
    assert loaded == plan
    assert plan_yaml(loaded) == path.read_text()
    check = estimate_plan_file(path)
    assert check.changed == () and check.prediction == plan.prediction


def test_the_objective_is_written_and_files_without_one_train_sft(tmp_path):
    dpo = plan_for_setup("Qwen/Qwen2.5-7B", parse_cluster("rtx4090"), SETUPS[5], engine="trl")
    save_plan(dpo, tmp_path / "dpo.yaml")
    written = yaml.safe_load((tmp_path / "dpo.yaml").read_text())["train"]["objective"]
    assert written == {"kind": "dpo", "reference": "auto", "prompt_len": 256, "rollout": None, "kl": False}
    sft = plan_for_setup("Qwen/Qwen2.5-7B", parse_cluster("rtx4090"), TrainSetup(method="qlora"))
    save_plan(sft, tmp_path / "sft.yaml")
    data = yaml.safe_load((tmp_path / "sft.yaml").read_text())
    assert data["train"].pop("objective")["kind"] == "sft"  # an older file: no objective at all
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(data))
    assert load_plan(tmp_path / "old.yaml") == sft


def test_the_plan_carries_its_hardware_so_a_catalog_change_cannot_move_it(tmp_path):
    plan = plan_for_setup("Qwen/Qwen2.5-7B", parse_cluster("2xrtx4090"), TrainSetup(method="qlora"))
    path = tmp_path / "plan.yaml"
    save_plan(plan, path)
    data = yaml.safe_load(path.read_text())
    data["hardware"]["accelerator"]["id"] = "a-card-no-catalog-has"
    data["hardware"]["offered"] = (
        "2xa-card-no-catalog-has"  # offered names the same card (checked, without the catalog)
    )
    data["hardware"]["accelerator"]["memory_bytes"] = 20 * 2**30
    data["hardware"]["accelerator"]["driver_memory_bytes"] = 19 * 2**30
    path.write_text(yaml.safe_dump(data))
    loaded = load_plan(path)
    assert loaded.hardware.accelerator.memory_bytes == 20 * 2**30
    check = estimate_plan_file(path)  # no catalog lookup: it re-estimates on the snapshot
    assert check.estimate.device_memory_bytes == 19 * 2**30  # the budget is what the driver reports
    assert check.changed == ("device_memory_bytes",)
    del data["hardware"]["accelerator"]["driver_memory_bytes"]  # a plan written before the driver figures
    path.write_text(yaml.safe_dump(data))
    assert estimate_plan_file(path).estimate.device_memory_bytes == 20 * 2**30


def test_fit_output_is_reproduced_by_estimate_to_the_byte(tmp_path):
    fit = run_cli(
        "fit",
        "Qwen/Qwen2.5-7B",
        "--gpus",
        "rtx3060",
        "--seq",
        "1024",
        "-o",
        "plan.yaml",
        "--json",
        cwd=tmp_path,
    )
    assert fit.returncode == 0, fit.stderr
    written = json.loads(fit.stdout)["plan"]
    data = yaml.safe_load((tmp_path / "plan.yaml").read_text())
    assert data == written
    assert data["schema_version"] == 2 and data["task"] == "train" and data["engine"] == "swiftplan"
    assert data["train"]["method"] == "qlora" and data["layout"] == {"gpus": 1, "tp": 1, "pp": 1, "dp": 1}
    estimate = run_cli("estimate", "plan.yaml", "--json", cwd=tmp_path)
    assert estimate.returncode == 0, estimate.stderr
    again = json.loads(estimate.stdout)
    assert json.dumps(again["prediction"], sort_keys=True) == json.dumps(data["prediction"], sort_keys=True)
    assert again["prediction_matches_plan"] is True and again["engine"]["runs"] is True


def test_version_1_plan_files_still_load_and_estimate():
    plan = load_plan(FIXTURES / "plan_v1.yaml")
    assert plan.engine == "swiftplan" and plan.layout.gpus == 2 and plan.hardware.world_size == 2
    assert plan.hardware.accelerator.id == "rtx4090" and isinstance(plan.setup, TrainSetup)
    assert plan.prediction.tokens_per_s and plan.workload.seq_len == 1024
    check = estimate_plan_file(FIXTURES / "plan_v1.yaml")  # re-estimated under today's model and constants
    assert check.estimate.memory.peak_allocated > 0 and check.estimate.speed is not None


def test_a_local_model_path_is_stored_absolute_and_works_from_another_directory(tmp_path):
    model_dir = tmp_path / "models" / "tiny"
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text((FIXTURES / "train" / "tiny_llama" / "config.json").read_text())
    work = tmp_path / "work"
    work.mkdir()
    fit = run_cli("fit", "../models/tiny", "--gpus", "rtx4090", "-o", "plan.yaml", cwd=work)
    assert fit.returncode == 0, fit.stderr
    assert yaml.safe_load((work / "plan.yaml").read_text())["model"] == str(model_dir.resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    again = run_cli("estimate", str(work / "plan.yaml"), "--json", cwd=elsewhere)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["prediction_matches_plan"] is True


def test_options_next_to_a_plan_file_are_refused_not_ignored(tmp_path):
    save_plan(
        plan_for_setup("Qwen/Qwen2.5-7B", parse_cluster("rtx4090"), TrainSetup(method="qlora")),
        tmp_path / "p.yaml",
    )
    result = run_cli("estimate", "p.yaml", "--batch", "8", "--gpus", "h100", cwd=tmp_path)
    assert result.returncode == 2 and "--batch, --gpus cannot apply" in result.stderr


EDITS = [
    ("unknown key", lambda d: d["train"].update(batch_size=4), "unknown field 'train.batch_size'"),
    ("bad literal", lambda d: d["train"]["parallel"].update(zero=5), "field 'train.parallel.zero'"),
    ("wrong type", lambda d: d["train"].update(micro_batch="two"), "field 'train.micro_batch'"),
    ("missing", lambda d: d["train"].pop("seq_len"), "missing field 'train.seq_len'"),
    ("version", lambda d: d.update(schema_version=3), "schema_version 3"),
    ("cross-field", lambda d: d["train"].update(method="qlora", quant="none", precision="fp32"),
     "QLoRA computes in bf16 or fp16"),
    ("task mismatch", lambda d: d.update(task="serve"), "needs exactly the 'serve' section"),
    ("layout", lambda d: d["layout"].update(dp=3), "must equal layout.gpus"),
    ("hardware", lambda d: d["hardware"]["accelerator"].update(colour="green"), "hardware.accelerator.colour"),
    ("memory", lambda d: d["hardware"]["accelerator"].update(memory_bytes=-1), "memory_bytes must be positive"),
    ("workload", lambda d: d["workload"].update(global_batch=0), "field 'workload.global_batch'"),
    ("batch", lambda d: d["workload"].update(global_batch=d["workload"]["global_batch"] + 1),
     "sequences a step, but workload.global_batch is"),
    ("objective kind", lambda d: d["train"].update(objective={"kind": "rlhf"}), "field 'train.objective.kind'"),
    ("objective key", lambda d: d["train"].update(objective={"kind": "dpo", "beta": 0.1}),
     "unknown field 'train.objective.beta'"),
    ("objective cross-field", lambda d: d["train"].update(objective={"kind": "orpo", "reference": "model"}),
     "--task orpo has no reference model"),
    ("rollout on dpo", lambda d: d["train"].update(objective={"kind": "dpo", "rollout": {
        "num_generations": 4, "prompt_len": 8, "completion_len": 8, "engine": "vllm", "placement": "colocate",
        "gpus": 0, "memory_fraction": 0.3, "sleep": False, "tp": 1}}), "apply to grpo and ppo"),
]  # fmt: skip


@pytest.mark.parametrize("name, edit, message", EDITS, ids=[e[0] for e in EDITS])
def test_hand_edited_plan_files_get_a_clear_error(tmp_path, name, edit, message):
    path = tmp_path / "plan.yaml"
    save_plan(plan_for_setup("Qwen/Qwen2.5-7B", parse_cluster("rtx4090"), TrainSetup(method="qlora")), path)
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SwiftplanError) as error:
        load_plan(path)
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
