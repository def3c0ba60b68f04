"""Real training runs on CPU: a tiny Llama (random init) with LoRA on the shipped chat data.

Covers: the loss falls; resume after an interruption continues at the right step and data position
(losses and samples equal an uninterrupted run); the merged export gives the adapter model's logits;
--record appends a calibration record; full fine-tuning with amp-bf16 autocast; 2-process DDP (gloo)
through torchrun, the launch path a GPU cluster uses.
"""

from __future__ import annotations

import json

import pytest
from train_support import FIXTURES, cli, train_args, write_plan

from swiftplan.executors.train import run_dir as rd

DATA = FIXTURES / "chat.jsonl"
COMMON = ("--lr", "5e-3", "--lr-scheduler", "constant", "--seed", "7")


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """12 LoRA steps, recorded into a temporary SWIFTPLAN_HOME."""
    tmp = tmp_path_factory.mktemp("lora")
    plan = write_plan(tmp / "plan.yaml")
    result = cli(*train_args(plan, DATA, tmp / "run"), "--max-steps", "12", *COMMON, "--record", "--json",
                 env={"SWIFTPLAN_HOME": str(tmp / "home")})  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    report = json.loads(result.output[result.output.index("{") :])
    return {"plan": plan, "run": tmp / "run", "home": tmp / "home", "report": report}


def test_loss_falls_and_outputs_are_written(lora_run):
    report = lora_run["report"]
    losses = report["loss"]["by_step"]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.25, losses
    run = lora_run["run"]
    assert (run / "final" / "adapter_model.safetensors").is_file() and (
        run / "final" / "adapter_config.json"
    ).is_file()
    for name in (
        "plan.yaml",
        "train_args.json",
        "launch.json",
        "dataset.pt",
        "metrics.jsonl",
        "run_report.json",
    ):
        assert (run / name).is_file(), name
    assert report["measured"]["peak_allocated_bytes"] > 0 and report["measured"]["tokens_per_s"] > 0
    assert report["predicted"]["peak_allocated_bytes"] > 0
    assert [row["what"].split()[0] for row in report["comparison"]] == [
        "peak",
        "reserved",
        "tokens/s",
        "step",
    ]


def test_record_is_appended_in_the_calibration_format(lora_run):
    from swiftplan.executors.train.report import RECORD_SCHEMA, read_measurements

    (record,) = read_measurements(lora_run["home"])
    assert record["schema"] == RECORD_SCHEMA
    assert record["train"]["method"] == "lora" and record["train"]["seq_len"] == 48
    assert record["measured"]["tokens_per_s"] == lora_run["report"]["measured"]["tokens_per_s"]
    assert record["device"]["torch_device"] == "cpu"


def test_resume_continues_at_the_right_step_and_data_position(lora_run, tmp_path):
    run = tmp_path / "run"
    first = cli(*train_args(lora_run["plan"], DATA, run), "--max-steps", "4", "--save-steps", "2", *COMMON)
    assert first.exit_code == 0, (first.output, first.exception)
    assert rd.latest_checkpoint(run).name == "step-000004"
    resumed = cli(*train_args(lora_run["plan"], DATA, run), "--resume", "--max-steps", "8", *COMMON)
    assert resumed.exit_code == 0, (resumed.output, resumed.exception)
    steps = rd.read_jsonl(run / "metrics.jsonl")
    assert [s["step"] for s in steps] == list(range(1, 9))  # nothing lost, nothing repeated
    reference = rd.read_jsonl(lora_run["run"] / "metrics.jsonl")[:8]
    assert [s["samples_rank0"] for s in steps] == [s["samples_rank0"] for s in reference]
    assert [s["loss"] for s in steps] == pytest.approx([s["loss"] for s in reference], rel=1e-4)
    state = rd.read_state(rd.latest_checkpoint(run))
    assert state["step"] == 8 and state["samples_seen"] == 8 * 2


def test_merged_export_has_the_adapter_models_logits(lora_run, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from swiftplan.executors.train.export import export_run, load_trained

    out = export_run(lora_run["run"], tmp_path / "merged", merge=True)
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    adapter = load_trained(lora_run["run"])
    ids = torch.tensor([[1, 5, 17, 42, 99, 250, 3]])
    with torch.no_grad():
        expected = adapter(input_ids=ids).logits
        got = merged(input_ids=ids).logits
    with torch.no_grad(), adapter.disable_adapter():
        base = adapter(input_ids=ids).logits
    assert not torch.allclose(expected, base, atol=1e-3)  # the adapter changed something
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_full_fine_tuning_with_amp_bf16_and_checkpointing(tmp_path):
    plan = write_plan(tmp_path / "plan.yaml", method="full", precision="amp-bf16", grad_ckpt=True, optimizer="sgd",
                      lora=None)  # fmt: skip
    result = cli(*train_args(plan, FIXTURES / "text.jsonl", tmp_path / "run"), "--max-steps", "2", "--json")
    assert result.exit_code == 0, (result.output, result.exception)
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    report = json.loads(result.output[result.output.index("{") :])
    assert report["steps"]["end"] == 2 and all(loss == loss for loss in report["loss"]["by_step"])


@pytest.mark.integration
def test_two_process_ddp_with_gloo_through_torchrun(tmp_path):
    plan = write_plan(tmp_path / "plan.yaml", cluster="2xrtx4090", gpus=2)
    result = cli(
        *train_args(plan, DATA, tmp_path / "run"), "--nproc-per-node", "2", "--max-steps", "3", *COMMON
    )
    assert result.exit_code == 0, (result.output, result.exception)
    launch = json.loads((tmp_path / "run" / "launch.json").read_text())
    assert launch["mode"] == "torchrun" and "torch.distributed.run" in launch["argv"]
    report = json.loads((tmp_path / "run" / "run_report.json").read_text())
    assert report["world_size"] == 2 and report["steps"]["end"] == 3
    assert (tmp_path / "run" / "final" / "adapter_model.safetensors").is_file()
    state = rd.read_state(rd.latest_checkpoint(tmp_path / "run"))
    assert state["world_size"] == 2 and state["samples_seen"] == 3 * 2 * 2
