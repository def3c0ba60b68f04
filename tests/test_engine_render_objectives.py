"""Preference, reward-modelling and RL plans through the external engines (issue 16): every plan rendered
for every engine (snapshots: the commands and configs, or the one-sentence refusal naming the setting and
the engines that can), the objective's decisions carried into each engine's own terms, each framework's own
parser accepting what was rendered (pytest -m engines), and real CPU runs of DPO and KTO through TRL and of
DPO and ORPO through ms-swift from a swiftplan plan, with their run reports.

Snapshots: tests/snapshots/engines/objective_<plan>.txt; SWIFTPLAN_UPDATE_SNAPSHOTS=1 rewrites them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from engine_envs import env_python, run_in_env
from test_engine_render_train import _MAKE_TINY_MODEL, _MEGATRON_FIELDS

from swiftplan.errors import SwiftplanError
from swiftplan.executors.train_engines.common import RunOptions
from swiftplan.executors.train_engines.registry import RENDERERS, format_render, render_for, write_files
from swiftplan.planner.hardware import parse_cluster
from swiftplan.planner.objective import ObjectiveSetup, RolloutSetup
from swiftplan.planner.setup import LoraSetup, Parallelism, TrainSetup
from swiftplan.usecases.estimate import plan_for_setup

SNAPSHOTS = Path(__file__).parent / "snapshots" / "engines"
LORA = LoraSetup(rank=16, targets=("all-linear",))


def _lora(kind: str, **objective) -> TrainSetup:
    return TrainSetup(method="lora", lora=LORA, micro_batch=2, grad_accum=8, seq_len=2048,
                      objective=ObjectiveSetup(kind=kind, prompt_len=512, **objective))  # fmt: skip


def _grpo(placement: str, **rollout) -> TrainSetup:
    return TrainSetup(method="lora", lora=LORA, micro_batch=4, grad_accum=4 if placement == "colocate" else 2,
                      seq_len=1536, objective=ObjectiveSetup(kind="grpo", kl=placement == "colocate", rollout=RolloutSetup(
                          prompt_len=512, completion_len=1024, placement=placement, **rollout)))  # fmt: skip


# Qwen2.5-7B LoRA on one A100 for the paired and unpaired methods, a full DPO with precomputed reference
# log-probs under ZeRO-3, PPO with generate(), and GRPO with a colocated vLLM under sleep mode or a vLLM
# server on one of four H100s.
PLANS = {
    "dpo_lora": ("Qwen/Qwen2.5-7B", "a100-80gb-sxm", _lora("dpo")),
    "dpo_lora_reference_model": ("Qwen/Qwen2.5-7B", "a100-80gb-sxm", _lora("dpo", reference="model")),
    "dpo_full_precomputed_zero3": ("meta-llama/Llama-3.1-8B", "8xh100-sxm", TrainSetup(
        method="full", precision="amp-bf16", micro_batch=1, grad_accum=4, seq_len=4096, parallel=Parallelism(zero=3),
        objective=ObjectiveSetup(kind="dpo", reference="precomputed"))),
    "kto_lora": ("Qwen/Qwen2.5-7B", "a100-80gb-sxm", _lora("kto")),
    "orpo_lora": ("Qwen/Qwen2.5-7B", "a100-80gb-sxm", _lora("orpo")),
    "simpo_lora": ("Qwen/Qwen2.5-7B", "a100-80gb-sxm", _lora("simpo")),
    "cpo_lora": ("Qwen/Qwen2.5-7B", "a100-80gb-sxm", _lora("cpo")),
    "rm_lora": ("Qwen/Qwen2.5-7B", "a100-80gb-sxm", _lora("rm")),
    "ppo_lora": ("Qwen/Qwen2.5-7B", "2xa100-80gb-sxm", TrainSetup(
        method="lora", lora=LORA, micro_batch=2, grad_accum=4, seq_len=1536,
        objective=ObjectiveSetup(kind="ppo", rollout=RolloutSetup(engine="hf", prompt_len=512, completion_len=1024)))),
    "grpo_colocate_sleep_4xh100": ("Qwen/Qwen2.5-7B", "4xh100-sxm", _grpo("colocate", sleep=True)),
    "grpo_server_4xh100": ("Qwen/Qwen2.5-7B", "4xh100-sxm", _grpo("server", num_generations=4, gpus=1,
                                                                 memory_fraction=0.9)),
}  # fmt: skip
OPTIONS = RunOptions(data="/data/train.jsonl", output_dir="/runs/out", max_steps=100, save_steps=50)
PPO_OPTIONS = RunOptions(data="/data/train.jsonl", output_dir="/runs/out", max_steps=100, save_steps=50,
                         extra=(("reward_model", "/models/reward"),))  # fmt: skip
"""PPO needs a reward model the plan does not name: given as an engine option."""


def _plan(case: str):
    model, gpus, setup = PLANS[case]
    return plan_for_setup(model, parse_cluster(gpus), setup, engine="ms-swift")


def _options(case: str) -> RunOptions:
    return PPO_OPTIONS if case.startswith("ppo") else OPTIONS


def _text(case: str) -> str:
    out = []
    for engine in RENDERERS:
        out.append(f"### {engine}")
        try:
            out.append(format_render(render_for(engine, _plan(case), _options(case))).rstrip("\n"))
        except SwiftplanError as error:
            out.append(f"refused: {error.message}\nhint: {error.hint}")
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("case", sorted(PLANS))
def test_objective_plan_renders_to_the_snapshot(case):
    path = SNAPSHOTS / f"objective_{case}.txt"
    text = _text(case)
    if os.environ.get("SWIFTPLAN_UPDATE_SNAPSHOTS"):
        path.write_text(text)
    assert text == path.read_text()


def _flags(argv) -> dict:
    """--flag value(s) of an argv, as the ms-swift parser groups them."""
    out: dict = {}
    for i, arg in enumerate(argv):
        if arg.startswith("--"):
            values = []
            for value in argv[i + 1 :]:
                if value.startswith("--"):
                    break
                values.append(value)
            out[arg[2:]] = values if len(values) != 1 else values[0]
    return out


def _yaml(render) -> dict:
    return yaml.safe_load(render.files[next(n for n in render.files if n.endswith(".yaml"))])


def test_dpo_is_spelled_in_each_engines_own_terms():
    plan = _plan("dpo_lora")
    swift = _flags(render_for("ms-swift", plan, OPTIONS).commands[0])
    assert (
        swift["rlhf_type"] == "dpo" and swift["beta"] == "0.1" and "ref_model" not in swift
    )  # LoRA: adapters off
    assert json.loads(swift["columns"]) == {"chosen": "response", "rejected": "rejected_response"}
    trl = render_for("trl", plan, OPTIONS)
    assert trl.commands[0][:2] == ("trl", "dpo") and _yaml(trl)["beta"] == 0.1 and "packing" not in _yaml(trl)
    factory = render_for("llamafactory", plan, OPTIONS)
    config = _yaml(factory)
    assert (config["stage"], config["pref_loss"], config["pref_beta"]) == ("dpo", "sigmoid", 0.1)
    assert json.loads(factory.files["dataset_info.json"])["swiftplan_data"]["ranking"] is True
    axolotl = _yaml(render_for("axolotl", plan, OPTIONS))
    assert axolotl["rl"] == "dpo" and axolotl["rl_beta"] == 0.1
    assert axolotl["datasets"][0]["type"]["field_chosen"] == "chosen"
    megatron = _flags(render_for("megatron-swift", plan, OPTIONS).commands[0])
    assert megatron["rlhf_type"] == "dpo" and megatron["beta"] == "0.1"


def test_reference_free_and_unpaired_methods_carry_their_loss():
    orpo, simpo = _yaml(render_for("llamafactory", _plan("orpo_lora"), OPTIONS)), _plan("simpo_lora")
    assert (orpo["stage"], orpo["pref_loss"]) == ("dpo", "orpo")
    assert (
        _yaml(render_for("llamafactory", simpo, OPTIONS))["pref_beta"] == 2.0
    )  # SimPO's beta, as ms-swift's
    assert _flags(render_for("ms-swift", simpo, OPTIONS).commands[0])["beta"] == "2"
    assert _yaml(render_for("axolotl", _plan("orpo_lora"), OPTIONS))["orpo_alpha"] == 0.1
    kto = _plan("kto_lora")
    assert render_for("trl", kto, OPTIONS).commands[0][1] == "kto"
    assert _yaml(render_for("axolotl", kto, OPTIONS))["remove_unused_columns"] is False
    columns = json.loads(render_for("llamafactory", kto, OPTIONS).files["dataset_info.json"])[
        "swiftplan_data"
    ]
    assert columns["columns"]["kto_tag"] == "label"
    reward = render_for("trl", _plan("rm_lora"), OPTIONS)
    assert reward.commands[0][1] == "reward" and _yaml(reward)["lora_task_type"] == "SEQ_CLS"


def test_the_reference_the_plan_counted_is_the_one_each_engine_loads():
    precomputed = _plan("dpo_full_precomputed_zero3")
    assert _yaml(render_for("trl", precomputed, OPTIONS))["precompute_ref_log_probs"] is True
    assert _yaml(render_for("axolotl", precomputed, OPTIONS))["precompute_ref_log_probs"] is True
    with pytest.raises(SwiftplanError) as refused:
        render_for("ms-swift", precomputed, OPTIONS)
    assert "--reference precomputed" in refused.value.message and "trl" in (refused.value.hint or "")
    frozen = _plan("dpo_lora_reference_model")  # LoRA with a frozen copy as the reference
    assert _yaml(render_for("llamafactory", frozen, OPTIONS))["ref_model"] == "Qwen/Qwen2.5-7B"
    for engine in ("ms-swift", "trl", "axolotl", "megatron-swift"):
        with pytest.raises(SwiftplanError, match="--reference model"):
            render_for(engine, frozen, OPTIONS)
    full = plan_for_setup("Qwen/Qwen2.5-7B", parse_cluster("8xh100-sxm"), TrainSetup(
        method="full", parallel=Parallelism(zero=3), objective=ObjectiveSetup(kind="kto")), engine="ms-swift")  # fmt: skip
    assert _flags(render_for("ms-swift", full, OPTIONS).commands[0])["ref_model"] == "Qwen/Qwen2.5-7B"


def test_grpo_colocated_vllm_settings_reach_ms_swift_and_trl():
    plan = _plan("grpo_colocate_sleep_4xh100")
    swift = _flags(render_for("ms-swift", plan, OPTIONS).commands[0])
    assert {k: swift[k] for k in ("use_vllm", "vllm_mode", "vllm_gpu_memory_utilization", "sleep_level",
                                  "num_generations", "max_completion_length", "beta", "max_length")} == {
        "use_vllm": "true", "vllm_mode": "colocate", "vllm_gpu_memory_utilization": "0.3", "sleep_level": "2",
        "num_generations": "8", "max_completion_length": "1024", "beta": "0.04", "max_length": "512"}  # fmt: skip
    trl = render_for("trl", plan, OPTIONS)
    config = _yaml(trl)
    assert trl.commands[0] == ("trl", "grpo", "--config", "trl_grpo.yaml", "--num_processes", "4")
    assert (config["use_vllm"], config["vllm_mode"], config["vllm_enable_sleep_mode"]) == (
        True,
        "colocate",
        True,
    )
    assert (config["vllm_gpu_memory_utilization"], config["beta"], config["num_generations"]) == (
        0.3,
        0.04,
        8,
    )
    assert "max_length" not in config and trl.rollout is None


def test_grpo_rollout_server_takes_its_own_devices(tmp_path):
    plan = _plan("grpo_server_4xh100")
    swift = render_for("ms-swift", plan, OPTIONS)
    assert swift.env == {"NPROC_PER_NODE": "3", "CUDA_VISIBLE_DEVICES": "0,1,2"}
    assert swift.rollout is not None and swift.rollout.argv[:2] == ("swift", "rollout")
    assert swift.rollout.env == {"CUDA_VISIBLE_DEVICES": "3"}
    flags = _flags(swift.commands[0])
    assert (flags["vllm_mode"], flags["vllm_server_port"], flags["beta"]) == ("server", "8000", "0")
    trl = render_for("trl", plan, OPTIONS)
    assert trl.commands[0][-2:] == ("--num_processes", "3") and trl.env == {"CUDA_VISIBLE_DEVICES": "0,1,2"}
    assert trl.rollout is not None and trl.rollout.argv[:2] == ("trl", "vllm-serve")
    assert _flags(trl.rollout.argv)["gpu_memory_utilization"] == "0.9"
    written = {p.name for p in write_files(trl, tmp_path)}
    assert {"rollout.sh", "run.sh", "trl_grpo.yaml"} <= written
    assert "trl vllm-serve" in (tmp_path / "rollout.sh").read_text()
    assert format_render(trl).startswith("# rollout server: start it first")
    from train_support import cli

    from swiftplan.executors.train_engines.slurm import render_sbatch
    from swiftplan.plan_file import save_plan

    with pytest.raises(SwiftplanError, match="rollout server"):
        render_sbatch(plan, "trl", OPTIONS)
    save_plan(plan, tmp_path / "plan.yaml")
    shown = cli(
        "train", str(tmp_path / "plan.yaml"), "--engine", "trl", "--data", "d.jsonl", "--dry-run", "--json"
    )
    assert shown.exit_code == 0, shown.output
    printed = json.loads(shown.output)
    assert printed["rollout"]["argv"][:2] == ["trl", "vllm-serve"] and printed["rollout"]["port"] == 8000


def test_what_an_engine_cannot_run_is_refused_naming_it_and_the_engines_that_can():
    with pytest.raises(SwiftplanError) as error:
        render_for("trl", _plan("orpo_lora"), OPTIONS)
    assert "training task 'orpo'" in error.value.message
    assert error.value.hint and error.value.hint.startswith(
        "ms-swift, llamafactory, axolotl can run this plan"
    )
    uneven = replace_grpo(num_generations=3)
    for engine in ("ms-swift", "trl"):
        with pytest.raises(SwiftplanError, match="--num-generations 3"):
            render_for(engine, uneven, OPTIONS)
    packed = RunOptions(packing=True)
    with pytest.raises(SwiftplanError, match="--packing with --task dpo"):
        render_for("trl", _plan("dpo_lora"), packed)
    with pytest.raises(SwiftplanError, match="--packing with --task orpo"):
        render_for("ms-swift", _plan("orpo_lora"), packed)
    ppo = TrainSetup(method="lora", seq_len=1024, objective=ObjectiveSetup(kind="ppo", rollout=RolloutSetup(
        engine="vllm", prompt_len=512, completion_len=512)))  # fmt: skip
    ppo_plan = plan_for_setup("Qwen/Qwen2.5-7B", parse_cluster("a100-80gb-sxm"), ppo, engine="ms-swift")
    for engine in ("ms-swift", "llamafactory"):  # both generate PPO rollouts with the policy's generate()
        with pytest.raises(SwiftplanError, match="--task ppo with --rollout-engine vllm"):
            render_for(engine, ppo_plan, PPO_OPTIONS)


def replace_grpo(**rollout):
    """The colocated GRPO plan with other rollout settings."""
    setup = _grpo("colocate", sleep=True, **rollout)
    return plan_for_setup("Qwen/Qwen2.5-7B", parse_cluster("4xh100-sxm"), setup, engine="ms-swift")


def test_swiftplans_own_loop_refuses_a_preference_plan_naming_the_engines(tmp_path):
    from train_support import cli

    from swiftplan.plan_file import save_plan

    save_plan(_plan("kto_lora"), tmp_path / "plan.yaml")
    refused = cli(
        "train", str(tmp_path / "plan.yaml"), "--engine", "swiftplan", "--data", "d.jsonl", "--dry-run"
    )
    assert refused.exit_code != 0
    message = str(refused.exception)
    assert "trains SFT only, and this is a kto plan" in message
    assert "ms-swift, megatron-swift, llamafactory, trl, axolotl run it" in message
    shown = cli("train", str(tmp_path / "plan.yaml"), "--data", "d.jsonl", "--dry-run", "--json")
    assert shown.exit_code == 0, shown.output  # without --engine: the plan's own engine (ms-swift)
    assert json.loads(shown.output)["commands"][0][:2] == ["swift", "rlhf"]


# --- each framework's own parser (pytest -m engines; skipped without scripts/engine_envs.sh's envs) ---

_MS_SWIFT_RLHF = r"""
import json, sys
from swift.arguments import RLHFArguments, RolloutArguments
from swift.utils.utils import _patch_get_type_hints
from transformers import HfArgumentParser
with _patch_get_type_hints():
    parsers = {"rlhf": HfArgumentParser([RLHFArguments]), "rollout": HfArgumentParser([RolloutArguments])}
out = []
for argv in json.load(sys.stdin):
    assert argv[0] == "swift", argv[:2]
    ns, unknown = parsers[argv[1]].parse_known_args(argv[2:])
    assert not unknown, unknown
    out.append({"command": argv[1], "rlhf_type": getattr(ns, "rlhf_type", None), "beta": getattr(ns, "beta", None),
                "vllm_mode": getattr(ns, "vllm_mode", None), "sleep_level": getattr(ns, "sleep_level", None)})
print(json.dumps(out))
"""

_TRL = r"""
import importlib, json, os, sys, yaml
from trl.scripts.vllm_serve import make_parser as serve_parser
out = []
for command, path, server in json.load(sys.stdin):
    os.chdir(os.path.dirname(path))
    cfg = yaml.safe_load(open(path))
    cfg["use_cpu"] = True  # TrainingArguments refuses bf16 without a GPU unless told to run on the CPU
    cpu = path + ".cpu.yaml"
    open(cpu, "w").write(yaml.safe_dump(cfg))
    parser = importlib.import_module("trl.scripts." + command).make_parser()
    *parsed, config_rest, cli_rest = parser.parse_args_and_config(
        ["--config", cpu], return_remaining_strings=True, separate_remaining_strings=True)
    assert not config_rest and not cli_rest, (config_rest, cli_rest)
    training = parsed[1]
    row = {"config": type(training).__name__, "beta": getattr(training, "beta", None),
           "precompute": getattr(training, "precompute_ref_log_probs", None), "vllm_mode": getattr(training, "vllm_mode", None)}
    if server:
        args, extra = serve_parser().parse_args_and_config(args=server[2:], return_remaining_strings=True)
        assert not extra, extra
        row["server_tp"] = args.tensor_parallel_size
    out.append(row)
print(json.dumps(out))
"""

_LLAMAFACTORY = r"""
import json, os, sys, yaml
from llamafactory.hparams.parser import _parse_train_args
out = []
for path in json.load(sys.stdin):
    os.chdir(os.path.dirname(path))
    cfg = yaml.safe_load(open(path))
    cfg["use_cpu"] = True  # as above
    model, data, training, finetuning, generating = _parse_train_args(cfg)
    out.append({"stage": finetuning.stage, "pref_loss": finetuning.pref_loss, "use_ref_model": finetuning.use_ref_model,
                "ref_model": finetuning.ref_model, "max_new_tokens": generating.max_new_tokens})
print(json.dumps(out))
"""

_AXOLOTL = r"""
import json, os, sys, yaml
from axolotl.utils.config import validate_config
from axolotl.utils.dict import DictDefault
out = []
for path, gpus in json.load(sys.stdin):
    os.chdir(os.path.dirname(path))
    cfg = yaml.safe_load(open(path))
    caps = {"bf16": True, "n_gpu": gpus, "n_node": 1, "compute_capability": "sm_90"}
    checked = validate_config(DictDefault(cfg), capabilities=caps, env_capabilities={"torch_version": "2.13.0"})
    out.append({"rl": str(checked.rl.value), "beta": checked.rl_beta, "orpo_alpha": checked.orpo_alpha,
                "trl_beta": checked.trl.beta if checked.trl else None,
                "vllm_mode": checked.trl.vllm_mode if checked.trl else None})
print(json.dumps(out))
"""


def _renders(engine: str) -> list:
    """(case, render) for every objective plan this engine runs."""
    out = []
    for case in sorted(PLANS):
        try:
            out.append((case, render_for(engine, _plan(case), _options(case))))
        except SwiftplanError:
            continue
    return out


def _written(engine: str, tmp_path: Path) -> list:
    """(case, render, path of its YAML) with the files written under tmp_path/case."""
    out = []
    for case, render in _renders(engine):
        write_files(render, tmp_path / case)
        out.append(
            (case, render, str(tmp_path / case / next(n for n in render.files if n.endswith(".yaml"))))
        )
    return out


@pytest.mark.integration
@pytest.mark.engines
def test_ms_swift_parsers_accept_every_rlhf_command_and_rollout_server():
    renders = _renders("ms-swift")
    argvs = [list(r.commands[0]) for _, r in renders] + [
        list(r.rollout.argv) for _, r in renders if r.rollout
    ]
    parsed = run_in_env("ms-swift", _MS_SWIFT_RLHF, argvs)
    assert sorted(p["rlhf_type"] for p in parsed if p["command"] == "rlhf") == [
        "cpo", "dpo", "grpo", "grpo", "kto", "orpo", "ppo", "rm", "simpo"]  # fmt: skip
    assert {(p["vllm_mode"], p["sleep_level"]) for p in parsed if p["rlhf_type"] == "grpo"} == {
        ("colocate", 2), ("server", 0)}  # fmt: skip
    assert [p["command"] for p in parsed].count("rollout") == 1


@pytest.mark.integration
@pytest.mark.engines
def test_megatron_rlhf_flags_are_megatron_arguments_fields():
    renders = _renders("megatron-swift")
    assert sorted(case for case, _ in renders) == ["dpo_lora", "grpo_colocate_sleep_4xh100", "grpo_server_4xh100",
                                                    "kto_lora", "rm_lora"]  # fmt: skip
    checked = run_in_env("ms-swift", _MEGATRON_FIELDS, [list(r.commands[0]) for _, r in renders])
    for (case, _), result in zip(renders, checked, strict=True):
        assert not result["unknown"] and not result["bad"], (case, result)


@pytest.mark.integration
@pytest.mark.engines
def test_trl_parsers_accept_every_objective_config_and_the_vllm_server(tmp_path):
    written = _written("trl", tmp_path)
    payload = [
        [r.commands[0][1], path, list(r.rollout.argv) if r.rollout else None] for _, r, path in written
    ]
    parsed = run_in_env("trl", _TRL, payload)
    assert [p["config"] for p in parsed] == ["DPOConfig", "DPOConfig", "GRPOConfig", "GRPOConfig", "KTOConfig",
                                             "RewardConfig"]  # fmt: skip
    assert parsed[0]["precompute"] is True and parsed[1]["beta"] == 0.1
    assert [p.get("server_tp") for p in parsed if p["vllm_mode"] == "server"] == [1]


@pytest.mark.integration
@pytest.mark.engines
def test_llamafactory_parses_every_objective_config(tmp_path):
    written = _written("llamafactory", tmp_path)
    parsed = run_in_env("llamafactory", _LLAMAFACTORY, [path for _, _, path in written])
    by_case = dict(zip((case for case, _, _ in written), parsed, strict=True))
    assert by_case["dpo_lora"]["use_ref_model"] is True and by_case["orpo_lora"]["use_ref_model"] is False
    assert by_case["dpo_lora_reference_model"]["ref_model"] == "Qwen/Qwen2.5-7B"
    assert by_case["ppo_lora"]["stage"] == "ppo" and by_case["ppo_lora"]["max_new_tokens"] == 1024
    assert by_case["simpo_lora"]["pref_loss"] == "simpo" and by_case["kto_lora"]["stage"] == "kto"


@pytest.mark.integration
@pytest.mark.engines
def test_axolotl_validates_every_objective_config(tmp_path):
    written = _written("axolotl", tmp_path)
    payload = [[path, _plan(case).layout.gpus] for case, _, path in written]  # the trainer's ranks
    parsed = run_in_env("axolotl", _AXOLOTL, payload)
    assert sorted(p["rl"] for p in parsed) == ["dpo", "dpo", "grpo", "grpo", "kto", "orpo", "simpo"]
    assert {p["vllm_mode"] for p in parsed if p["rl"] == "grpo"} == {"colocate", "server"}


# --- real runs on CPU: a tiny random Llama, preference data made here, swiftplan train --engine ... ---


def _tiny_model(engine: str, out: Path) -> Path:
    python = env_python(engine)
    fixtures = Path(__file__).parent / "fixtures" / "train"
    subprocess.run([str(python), "-c", _MAKE_TINY_MODEL, str(fixtures / "tiny_llama"), str(fixtures / "tiny_tokenizer"),
                    str(out)], check=True, capture_output=True, timeout=300)  # fmt: skip
    return python


def _preference_data(path: Path, kind: str) -> None:
    """One counting prompt, 32 times: the chosen answer counts, the rejected one says "no" (KTO: one or the
    other, labelled). Every batch is alike, so six steps show the loss falling, not the batch changing."""
    good, bad = "1 2 3 4 5", "no no no no no"
    if kind == "kto":
        rows = [
            {"prompt": "count to 5", "completion": good if k % 2 == 0 else bad, "label": k % 2 == 0}
            for k in range(32)
        ]
    else:
        rows = [{"prompt": "count to 5", "chosen": good, "rejected": bad} for _ in range(32)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


RUNS = [("trl", "dpo", ()), ("trl", "kto", ()),
        ("ms-swift", "dpo", ("model_type=llama", "template=chatml")),
        ("ms-swift", "orpo", ("model_type=llama", "template=chatml"))]  # fmt: skip
"""(engine, objective, engine options): ms-swift cannot guess model_type/template for a local directory."""


@pytest.mark.integration
@pytest.mark.engines
@pytest.mark.slow
@pytest.mark.parametrize("engine, kind, extra", RUNS, ids=[f"{e}-{k}" for e, k, _ in RUNS])
def test_a_preference_plan_trains_on_cpu_through_the_engine(tmp_path, engine, kind, extra):
    """The tiny Llama trained 6 steps by `swiftplan train PLAN --engine ENGINE` from a LoRA plan for the
    objective: the loss falls, the preference metrics move the right way, and run_report.json says so."""
    from swiftplan.plan_file import save_plan

    python = _tiny_model(engine, tmp_path / "model")
    data = tmp_path / "data.jsonl"
    _preference_data(data, kind)
    setup = TrainSetup(method="lora", precision="fp32", micro_batch=2, seq_len=48, grad_ckpt=False,
                       lora=LoraSetup(rank=8, alpha=16, targets=("q_proj", "v_proj"), dropout=0.0),
                       objective=ObjectiveSetup(kind=kind))  # fmt: skip
    plan_path = tmp_path / "plan.yaml"
    save_plan(
        plan_for_setup(str(tmp_path / "model"), parse_cluster("rtx4090"), setup, engine=engine), plan_path
    )
    out = tmp_path / "out"
    env = {**os.environ, "PATH": f"{python.parent}:{os.environ['PATH']}", "SWIFTPLAN_DEBUG": "1"}
    options = [arg for option in ("logging_steps=1", *extra) for arg in ("--engine-option", option)]
    result = subprocess.run(
        [sys.executable, "-m", "swiftplan", "train", str(plan_path), "--data", str(data), "--output-dir", str(out),
         "--max-steps", "6", "--save-steps", "6", "--lr", "1e-3", *options],
        capture_output=True, text=True, timeout=900, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "run_report.json").read_text())
    assert (report["engine"], report["objective"], report["exit_code"], report["steps"]) == (
        engine,
        kind,
        0,
        6,
    )
    loss = report["loss"]
    values = loss["values"]
    assert loss["logged_steps"] == 6 and all(values[i + 1] < values[i] for i in range(5)), loss  # every step
    margins = report["metrics"]["rewards/margins"]
    assert margins["last"] > margins["first"], report["metrics"]  # chosen pulled above rejected
    assert report["measured"]["step_time_s"] > 0 and report["adapter"]["matches"], report
