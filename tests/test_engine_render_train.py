"""External training engines (ms-swift, LLaMA-Factory, TRL, axolotl): the issue's four plans rendered for
every engine (snapshots, refusals naming the setting), the plan's decisions carried into each config,
and (pytest -m engines) each framework's own parser / validator accepting what was rendered.

Snapshots: tests/snapshots/engines/train_<engine>_<plan>.txt; SWIFTPLAN_UPDATE_SNAPSHOTS=1 rewrites them."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from engine_envs import run_in_env

from swiftplan.errors import SwiftplanError
from swiftplan.executors.train_engines.common import RunOptions
from swiftplan.executors.train_engines.registry import RENDERERS, format_render, render_for, write_files
from swiftplan.planner.hardware import parse_cluster
from swiftplan.planner.setup import LoraSetup, Parallelism, RuntimeKnobs, TrainSetup
from swiftplan.usecases.estimate import plan_for_setup

SNAPSHOTS = Path(__file__).parent / "snapshots" / "engines"
ENGINES = tuple(RENDERERS)
HF_ENGINES = tuple(e for e in ENGINES if e != "megatron-swift")
"""The HF-Trainer-based engines (Megatron-SWIFT is checked on its own plan below)."""


def _multi_node_case(engine: str) -> str:
    """A multi-node plan the engine runs: Megatron-SWIFT gets the tp × pp one."""
    return "70b_full_4x8xh100_tp_pp" if engine == "megatron-swift" else "8b_full_zero2_offload_2x8xh100"


# The "done means" plans (set-ups as fit writes them for these clusters).
PLANS = {
    "7b_qlora_rtx4090": ("Qwen/Qwen2.5-7B", "rtx4090", TrainSetup(
        method="qlora", lora=LoraSetup(rank=16, targets=("all-linear",)), micro_batch=2, grad_accum=8,
        seq_len=2048, optimizer="paged-adamw-8bit")),
    "72b_lora_8xa100": ("Qwen/Qwen2.5-72B", "8xa100-80gb-sxm", TrainSetup(
        method="lora", lora=LoraSetup(rank=64, alpha=128, targets=("q_proj", "k_proj", "v_proj", "o_proj"),
                                      dropout=0.1), micro_batch=1, grad_accum=4, seq_len=4096,
        parallel=Parallelism(zero=3))),
    "70b_full_4x8xh100_tp_pp": ("meta-llama/Llama-3.1-70B", "4x8xh100-sxm", TrainSetup(
        method="full", micro_batch=1, grad_accum=16, seq_len=4096, parallel=Parallelism(tp=8, pp=2))),
    "8b_full_zero2_offload_2x8xh100": ("meta-llama/Llama-3.1-8B", "2x8xh100-sxm", TrainSetup(
        method="full", precision="amp-bf16", micro_batch=4, grad_accum=2, seq_len=8192, attention="flash",
        parallel=Parallelism(zero=2, offload="optimizer"))),
    # Runtime knobs a runtime profile sets (TrainSetup.runtime): foreach AdamW, Liger's fused loss,
    # embeddings and LM head trained next to the adapter, DeepSpeed bucket sizes as planned.
    "8b_lora_runtime_knobs_2xh100": ("meta-llama/Llama-3.1-8B", "2xh100-sxm", TrainSetup(
        method="lora", lora=LoraSetup(rank=32, targets=("all-linear",)), micro_batch=2, grad_accum=4,
        parallel=Parallelism(zero=3), runtime=RuntimeKnobs(
            name="hf", optimizer_impl="foreach", loss="fused_linear", modules_to_save=("embed_tokens", "lm_head"),
            ds_buckets=True))),
    # The feature knobs (issue 14): FSDP2 with CPU offload and activation offloading; QLoRA under FSDP1
    # hybrid sharding over two nodes (one shard group per node); FSDP2 with every 2nd block checkpointed and
    # torchao float8. Each engine renders them with its own keys or refuses them, naming the flag.
    "8b_full_fsdp2_cpu_offload_act_offload_2xh100": ("meta-llama/Llama-3.1-8B", "2xh100-sxm", TrainSetup(
        method="full", micro_batch=1, grad_accum=8, seq_len=4096,
        runtime=RuntimeKnobs(fsdp="fsdp2", fsdp_cpu_offload=True, activation_offload=True))),
    "8b_qlora_fsdp1_hybrid_2x8xh100": ("meta-llama/Llama-3.1-8B", "2x8xh100-sxm", TrainSetup(
        method="qlora", lora=LoraSetup(rank=16, targets=("all-linear",)), micro_batch=2, grad_accum=2,
        runtime=RuntimeKnobs(fsdp="fsdp1", fsdp_sharding="hybrid_shard", fsdp_shard_group=8))),
    "8b_full_fsdp2_ckpt_every2_float8_2xh100": ("meta-llama/Llama-3.1-8B", "2xh100-sxm", TrainSetup(
        method="full", micro_batch=1, grad_accum=8, seq_len=4096,
        runtime=RuntimeKnobs(fsdp="fsdp2", ckpt_every=2, float8=True))),
    # QLoRA under DeepSpeed ZeRO-3, which partitions the 4-bit base stored in bf16 (peft's deepspeed.md recipe).
    "70b_qlora_zero3_2xa100": ("meta-llama/Llama-3.1-70B", "2xa100-80gb-sxm", TrainSetup(
        method="qlora", lora=LoraSetup(rank=8, targets=("all-linear",)), micro_batch=2, grad_accum=2,
        parallel=Parallelism(zero=3))),
}  # fmt: skip
OPTIONS = RunOptions(data="/data/train.jsonl", output_dir="/runs/out", max_steps=100, save_steps=50,
                     save_total_limit=2, packing=True, master_addr="10.0.0.1")  # fmt: skip


def _plan(case: str, engine: str):
    """The plan for `engine`; the tp × pp plan is made for Megatron-SWIFT, the engine fit plans it for
    (no engine rendered here has tensor and pipeline parallelism, so each must refuse it)."""
    model, gpus, setup = PLANS[case]
    planned = "megatron-swift" if setup.parallel.pp > 1 else engine
    return plan_for_setup(model, parse_cluster(gpus), setup, engine=planned)


def _text(case: str, engine: str) -> str:
    try:
        return format_render(render_for(engine, _plan(case, engine), OPTIONS))
    except SwiftplanError as error:
        return f"refused: {error.message}\n"


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("case", sorted(PLANS))
def test_plan_renders_to_the_snapshot(case, engine):
    path = SNAPSHOTS / f"train_{engine}_{case}.txt"
    text = _text(case, engine)
    if os.environ.get("SWIFTPLAN_UPDATE_SNAPSHOTS"):
        path.write_text(text)
    assert text == path.read_text()


@pytest.mark.parametrize("engine", HF_ENGINES)
def test_tp_pp_plan_is_refused_by_every_engine_naming_the_setting(engine):
    with pytest.raises(SwiftplanError) as error:
        render_for(engine, _plan("70b_full_4x8xh100_tp_pp", engine), OPTIONS)
    assert "cannot run this plan" in error.value.message
    assert "pipeline parallelism" in error.value.message  # no engine here has pipeline parallelism


def test_rendering_is_pure_and_multi_node_plans_get_one_command_per_node():
    for engine in ENGINES:
        plan = _plan(_multi_node_case(engine), engine)
        first, again = render_for(engine, plan, OPTIONS), render_for(engine, plan, OPTIONS)
        assert first == again
        assert len(first.commands) == plan.nodes > 1


def _config(engine: str, case: str) -> dict:
    render = render_for(engine, _plan(case, engine), OPTIONS)
    if engine == "ms-swift":
        argv = list(render.commands[0])
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
    name = next(n for n in render.files if n.endswith(".yaml"))
    return yaml.safe_load(render.files[name])


# The plan's decisions as each engine spells them: (key, value) for the QLoRA and the ZeRO-3 plans.
CARRIED = {
    "ms-swift": {"7b_qlora_rtx4090": {"lora_rank": "16", "lora_alpha": "32", "target_modules": "all-linear",
                                      "quant_bits": "4", "bnb_4bit_quant_type": "nf4", "optim": "paged_adamw_8bit",
                                      "per_device_train_batch_size": "2", "gradient_accumulation_steps": "8",
                                      "max_length": "2048", "packing": "true", "save_steps": "50"},
                 "72b_lora_8xa100": {"lora_rank": "64", "lora_alpha": "128", "lora_dropout": "0.1",
                                     "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "deepspeed": "ds_config.json"}},
    "llamafactory": {"7b_qlora_rtx4090": {"lora_rank": 16, "lora_target": "all", "quantization_bit": 4,
                                          "optim": "paged_adamw_8bit", "per_device_train_batch_size": 2,
                                          "gradient_accumulation_steps": 8, "cutoff_len": 2048, "packing": True},
                     "72b_lora_8xa100": {"lora_rank": 64, "lora_alpha": 128, "lora_target": "q_proj,k_proj,v_proj,o_proj",
                                         "deepspeed": "ds_config.json"}},
    "trl": {"7b_qlora_rtx4090": {"lora_r": 16, "lora_target_modules": ["all-linear"], "load_in_4bit": True,
                                 "optim": "paged_adamw_8bit", "max_length": 2048, "packing": True},
            "72b_lora_8xa100": {"lora_r": 64, "lora_dropout": 0.1, "deepspeed": "ds_config.json"}},
    "axolotl": {"7b_qlora_rtx4090": {"adapter": "qlora", "lora_r": 16, "lora_target_linear": True, "load_in_4bit": True,
                                     "micro_batch_size": 2, "sequence_len": 2048, "sample_packing": True},
                "72b_lora_8xa100": {"adapter": "lora", "lora_r": 64, "deepspeed": "ds_config.json"}},
}  # fmt: skip


def test_megatron_swift_carries_tp_pp_and_the_global_batch():
    plan = _plan("70b_full_4x8xh100_tp_pp", "megatron-swift")
    render = render_for("megatron-swift", plan, OPTIONS)
    argv = render.commands[0]
    flags = {argv[i]: argv[i + 1] for i in range(2, len(argv) - 1) if argv[i].startswith("--")}
    assert flags["--tensor_model_parallel_size"] == "8" and flags["--pipeline_model_parallel_size"] == "2"
    assert flags["--sequence_parallel"] == "true" and flags["--micro_batch_size"] == "1"
    assert flags["--global_batch_size"] == str(1 * 16 * plan.layout.dp) == "32"  # micro × accum × dp (dp 2)
    assert flags["--recompute_granularity"] == "full" and flags["--train_iters"] == "100"
    assert len(render.commands) == 4 and [e["NODE_RANK"] for e in render.node_env] == ["0", "1", "2", "3"]


RUNTIME_CARRIED = {
    "ms-swift": {"optim": "adamw_torch", "use_liger_kernel": "true", "modules_to_save": ["embed_tokens", "lm_head"]},
    "llamafactory": {"optim": "adamw_torch", "enable_liger_kernel": True, "additional_target": "embed_tokens,lm_head"},
    "trl": {"optim": "adamw_torch", "lora_modules_to_save": ["embed_tokens", "lm_head"]},  # TRL's loss is its own
    "axolotl": {"optimizer": "adamw_torch", "liger_fused_linear_cross_entropy": True,
                "lora_modules_to_save": ["embed_tokens", "lm_head"]},
}  # fmt: skip


@pytest.mark.parametrize("engine", HF_ENGINES)
def test_runtime_knobs_are_carried_over_or_refused(engine):
    config = _config(engine, "8b_lora_runtime_knobs_2xh100")
    for key, value in RUNTIME_CARRIED[engine].items():
        assert config[key] == value, (engine, key)
    ds = json.loads(
        render_for(engine, _plan("8b_lora_runtime_knobs_2xh100", engine), OPTIONS).files["ds_config.json"]
    )
    # ZeRO-3's sizes stay "auto", filled by the HF Trainer from the model (hidden², 0.9·hidden²), as planned
    assert ds["zero_optimization"]["reduce_bucket_size"] == "auto"
    assert ds["zero_optimization"]["stage3_prefetch_bucket_size"] == "auto"
    assert ds["zero_optimization"]["stage3_max_live_parameters"] == 1_000_000_000
    plan = _plan("8b_lora_runtime_knobs_2xh100", engine)
    for knobs, named in ((RuntimeKnobs(loss="chunked"), "chunked"),
                         (RuntimeKnobs(optimizer_in_backward=True), "in.backward")):  # fmt: skip
        # Refused by the capability table (engines.json) or, failing that, by the renderer: either names it.
        bad = replace(plan, setup=replace(plan.setup, runtime=knobs, grad_accum=1))
        if engine == "trl" and named == "chunked":  # TRL always runs its own fused head: noted, not refused
            assert any("its fused LM head" in n for n in render_for(engine, bad, OPTIONS).notes)
            continue
        with pytest.raises(SwiftplanError, match=named):
            render_for(engine, bad, OPTIONS)


# The feature knobs (issue 14) as each engine spells them, read back from the rendered config / command.
FEATURES_CARRIED = {
    "8b_full_fsdp2_cpu_offload_act_offload_2xh100": {
        "trl": {"fsdp": "full_shard auto_wrap offload", "fsdp_config": {"version": 2}, "activation_offloading": True},
        "llamafactory": {"fsdp": "full_shard auto_wrap offload", "fsdp_config": {"version": 2},
                         "use_reentrant_gc": False, "use_unsloth_gc": True},
        "axolotl": {"fsdp_version": 2, "fsdp_config": {"offload_params": True, "reshard_after_forward": True,
                                                       "auto_wrap_policy": "TRANSFORMER_BASED_WRAP"},
                    "activation_offloading": True},
        "ms-swift": {"fsdp": "fsdp_config.json", "gradient_checkpointing": "false"},
    },
    "8b_qlora_fsdp1_hybrid_2x8xh100": {
        "trl": {"fsdp": "hybrid_shard auto_wrap", "fsdp_config": {"version": 1}, "bnb_4bit_quant_storage": "bfloat16"},
        "llamafactory": {"fsdp": "hybrid_shard auto_wrap", "fsdp_config": {"version": 1}, "quantization_bit": 4},
        "ms-swift": {"fsdp": "fsdp_config.json", "bnb_4bit_quant_storage": "bfloat16"},
    },
    "8b_full_fsdp2_ckpt_every2_float8_2xh100": {
        "axolotl": {"fp8": True, "fp8_enable_fsdp_float8_all_gather": True,
                    "gradient_checkpointing_kwargs": {"every_n_layers": 2}},
    },
    # LLaMA-Factory and axolotl store a 4-bit base in the compute dtype themselves (quantization.py, model.py)
    "70b_qlora_zero3_2xa100": {
        "trl": {"deepspeed": "ds_config.json", "load_in_4bit": True, "bnb_4bit_quant_storage": "bfloat16"},
        "ms-swift": {"deepspeed": "ds_config.json", "quant_bits": "4", "bnb_4bit_quant_storage": "bfloat16"},
        "llamafactory": {"deepspeed": "ds_config.json", "quantization_bit": 4},
        "axolotl": {"deepspeed": "ds_config.json", "load_in_4bit": True, "adapter": "qlora"},
    },
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(FEATURES_CARRIED))
def test_feature_knobs_are_rendered_with_each_engines_own_keys(case):
    for engine, expected in FEATURES_CARRIED[case].items():
        config = _config(engine, case)
        for key, value in expected.items():
            assert config[key] == value, (engine, case, key)
    swift = render_for("ms-swift", _plan("8b_full_fsdp2_cpu_offload_act_offload_2xh100", "ms-swift"), OPTIONS)
    assert json.loads(swift.files["fsdp_config.json"]) == {
        "fsdp": "full_shard auto_wrap offload",
        "fsdp_config": {"fsdp_version": 2, "activation_cpu_offload": True, "activation_checkpointing": True},
    }


def _with_knobs(engine: str, **changes):
    """A full bf16 fine-tune of an 8B model on two H100s, planned for `engine` without the knobs, then with
    its set-up changed: rendering it meets engines.json's refusal or, past it, the renderer's own."""
    setup = TrainSetup(method="full", micro_batch=1, grad_accum=8, seq_len=4096)
    planned = "megatron-swift" if engine == "megatron-swift" else "trl"
    plan = plan_for_setup("meta-llama/Llama-3.1-8B", parse_cluster("2xh100-sxm"), setup, engine=planned)
    return replace(plan, engine=engine, setup=replace(plan.setup, **changes))


# Knob values an engine cannot express, and the refusal naming the flag: engines.json's words for what the
# engine never runs, the renderer's for what depends on the rest of the plan.
REFUSALS = [
    ("trl", {"runtime": RuntimeKnobs(float8=True)}, "trl does not run float8 training true"),  # engines.json
    ("trl", {"runtime": RuntimeKnobs(activation_offload=True), "objective": None, "seq_len": 1024},
     "trl cannot express --activation-offload with --task grpo"),
    ("trl", {"runtime": RuntimeKnobs(ckpt_every=2, ckpt_position="last")},
     "cannot express --ckpt-every 2 --ckpt-position last: transformers' every_n_layers checkpoints the first"),
    ("trl", {"runtime": RuntimeKnobs(fsdp="fsdp2", fsdp_sharding="hybrid_shard")},
     "cannot express --fsdp fsdp2 --fsdp-sharding hybrid_shard"),
    ("trl", {"runtime": RuntimeKnobs(fsdp="fsdp1", fsdp_sharding="hybrid_shard", fsdp_shard_group=1)},
     "cannot express --fsdp-shard-group 1: FSDP1's hybrid_shard shards within one node (2 GPUs here)"),
    ("ms-swift", {"runtime": RuntimeKnobs(ckpt_every=2)}, "ms-swift does not run checkpointing every k-th block, k = 2"),
    ("ms-swift", {"runtime": RuntimeKnobs(activation_offload=True)},
     "ms-swift cannot express --activation-offload without --fsdp"),
    ("ms-swift", {"runtime": RuntimeKnobs(float8=True)}, "ms-swift does not run float8 training true"),
    ("llamafactory", {"runtime": RuntimeKnobs(ckpt_every=3)}, "llamafactory does not run checkpointing every k-th block, k = 3"),
    ("llamafactory", {"runtime": RuntimeKnobs(activation_offload=True), "grad_ckpt": False},
     "llamafactory cannot express --activation-offload without --grad-ckpt"),
    ("axolotl", {"runtime": RuntimeKnobs(ckpt_every=2), "method": "lora"},
     "axolotl cannot express --ckpt-every 2 with --method lora"),
    ("axolotl", {"runtime": RuntimeKnobs(fsdp="fsdp1", fsdp_sharding="hybrid_shard")},
     "axolotl cannot express --fsdp-sharding hybrid_shard"),
    ("megatron-swift", {"runtime": RuntimeKnobs(activation_offload=True, float8=True)},
     "megatron-swift does not run activation offloading true, float8 training true"),
    ("megatron-swift", {"runtime": RuntimeKnobs(reduce_bucket_elements=200_000_000), "parallel": Parallelism(zero=1)},
     "megatron-swift cannot express DeepSpeed bucket sizes"),
]  # fmt: skip


@pytest.mark.parametrize(
    "engine, changes, message", REFUSALS, ids=[f"{e}-{m.split(': ')[0][-40:]}" for e, _, m in REFUSALS]
)
def test_a_knob_an_engine_cannot_express_is_refused_naming_it(engine, changes, message):
    from swiftplan.planner.objective import ObjectiveSetup, RolloutSetup

    if "objective" in changes:  # GRPO with colocated rollouts
        changes = {**changes, "objective": ObjectiveSetup(kind="grpo", rollout=RolloutSetup())}
    plan = _with_knobs(engine, **changes)
    if plan.setup.method != "full" and plan.setup.lora is None:
        plan = replace(plan, setup=replace(plan.setup, lora=LoraSetup(rank=8)))
    with pytest.raises(SwiftplanError) as error:
        render_for(engine, plan, OPTIONS)
    assert message in error.value.message


def test_estimate_refuses_a_knob_the_engine_never_runs_up_front():
    """engines.json names the knobs each engine never runs: planning for it refuses them before rendering."""
    model, gpus, setup = PLANS["8b_full_fsdp2_ckpt_every2_float8_2xh100"]
    for engine, named in (("trl", "float8 training true"), ("ms-swift", "checkpointing every k-th block, k = 2"),
                          ("llamafactory", "checkpointing every k-th block, k = 2"), ("megatron-swift", "FSDP 'fsdp2'")):  # fmt: skip
        with pytest.raises(SwiftplanError, match=named):
            plan_for_setup(model, parse_cluster(gpus), setup, engine=engine)
    assert plan_for_setup(model, parse_cluster(gpus), setup, engine="axolotl").engine == "axolotl"


@pytest.mark.parametrize("engine", HF_ENGINES)
def test_every_plan_decision_is_carried_over(engine):
    for case, expected in CARRIED[engine].items():
        config = _config(engine, case)
        for key, value in expected.items():
            assert config[key] == value, (engine, case, key)
    zero3 = render_for(engine, _plan("72b_lora_8xa100", engine), OPTIONS)
    ds = json.loads(zero3.files["ds_config.json"])
    assert ds["zero_optimization"]["stage"] == 3
    offload = render_for(engine, _plan("8b_full_zero2_offload_2x8xh100", engine), OPTIONS)
    ds = json.loads(offload.files["ds_config.json"])
    assert (
        ds["zero_optimization"]["stage"] == 2
        and ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    )


def test_write_config_writes_the_files_and_a_run_script(tmp_path):
    render = render_for("llamafactory", _plan("72b_lora_8xa100", "llamafactory"), OPTIONS)
    written = write_files(render, tmp_path)
    assert {p.name for p in written} == {
        "dataset_info.json",
        "ds_config.json",
        "llamafactory_sft.yaml",
        "run.sh",
    }
    script = (tmp_path / "run.sh").read_text()
    assert "export FORCE_TORCHRUN=1" in script and script.rstrip().endswith(
        "llamafactory-cli train llamafactory_sft.yaml"
    )


def test_what_an_engine_cannot_express_is_refused_before_anything_runs():
    fp16 = plan_for_setup("Qwen/Qwen2.5-7B", parse_cluster("a100-80gb-sxm"), TrainSetup(method="full", precision="fp16"),
                          engine="llamafactory")  # fmt: skip
    with pytest.raises(SwiftplanError, match=r"cannot express --precision fp16"):
        render_for("llamafactory", fp16, OPTIONS)


# --- each framework's own parser (pytest -m engines; skipped without scripts/engine_envs.sh's envs) ---

_MS_SWIFT = r"""
import json, os, sys
from swift.arguments import SftArguments
from swift.utils.utils import _patch_get_type_hints
from transformers import HfArgumentParser
with _patch_get_type_hints():
    parser = HfArgumentParser([SftArguments])
out = []
for argv, fsdp_text in json.load(sys.stdin):
    assert argv[:2] == ["swift", "sft"]
    ns, unknown = parser.parse_known_args(argv[2:])
    assert not unknown, unknown
    fsdp = None
    if ns.fsdp:  # what sft_args.py _init_fsdp does with the --fsdp file, then transformers' own FSDP checks
        import tempfile
        from swift.utils import json_parse_to_dict
        from transformers import TrainingArguments
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, ns.fsdp)
            open(path, "w").write(fsdp_text)
            loaded = json_parse_to_dict(path)
            args = TrainingArguments(output_dir=tmp, fsdp=loaded["fsdp"], fsdp_config=loaded["fsdp_config"],
                                     use_cpu=True)
        fsdp = {"version": args.fsdp_plugin_args["fsdp_version"], "cpu_offload": args.fsdp_plugin_args.get("cpu_offload", False),
                "reshard": args.fsdp_plugin_args["reshard_after_forward"],
                "activation_cpu_offload": args.fsdp_config.get("activation_cpu_offload", False)}
    out.append({"tuner_type": ns.tuner_type, "lora_rank": ns.lora_rank, "quant_bits": ns.quant_bits,
                "deepspeed": ns.deepspeed, "max_length": ns.max_length, "fsdp": fsdp,
                "quant_storage": ns.bnb_4bit_quant_storage})
print(json.dumps(out))
"""

_LLAMAFACTORY = r"""
import json, os, sys, yaml
from llamafactory.hparams.parser import _parse_train_args
out = []
for path in json.load(sys.stdin):
    os.chdir(os.path.dirname(path))  # run.sh runs there: ds_config.json is relative to it
    cfg = yaml.safe_load(open(path))
    cfg["use_cpu"] = True  # TrainingArguments refuses bf16 without a GPU unless told to run on the CPU
    model, data, training, finetuning, _ = _parse_train_args(cfg)
    out.append({"lora_rank": finetuning.lora_rank, "quantization_bit": model.quantization_bit,
                "cutoff_len": data.cutoff_len, "deepspeed": bool(training.deepspeed),
                "fsdp": bool(training.fsdp), "fsdp_version": (training.fsdp_config or {}).get("version"),
                "cpu_offload": "offload" in str(training.fsdp), "use_unsloth_gc": model.use_unsloth_gc,
                "fp8": training.fp8})
print(json.dumps(out))
"""

_TRL = r"""
import json, os, sys, yaml
from trl.scripts.sft import make_parser
out = []
for path in json.load(sys.stdin):
    os.chdir(os.path.dirname(path))  # as above
    cfg = yaml.safe_load(open(path))
    cfg["use_cpu"] = True  # as above
    cpu = path + ".cpu.yaml"
    open(cpu, "w").write(yaml.safe_dump(cfg))
    parser = make_parser()
    script, training, model, mixture, config_rest, cli_rest = parser.parse_args_and_config(
        ["--config", cpu], return_remaining_strings=True, separate_remaining_strings=True)
    assert not config_rest and not cli_rest, (config_rest, cli_rest)
    out.append({"lora_r": model.lora_r, "load_in_4bit": model.load_in_4bit, "max_length": training.max_length,
                "fsdp": bool(training.fsdp), "fsdp_version": (training.fsdp_config or {}).get("version"),
                "cpu_offload": bool((training.fsdp_config or {}).get("cpu_offload")),
                "activation_offloading": training.activation_offloading,
                "every_n_layers": (training.gradient_checkpointing_kwargs or {}).get("every_n_layers"),
                "quant_storage": model.bnb_4bit_quant_storage})
print(json.dumps(out))
"""

_AXOLOTL = r"""
import json, os, sys, yaml
from axolotl.utils.config import validate_config
from axolotl.utils.dict import DictDefault
out = []
for path, gpus, fp8 in json.load(sys.stdin):
    os.chdir(os.path.dirname(path))  # as above
    cfg = yaml.safe_load(open(path))
    caps = {"bf16": True, "fp8": fp8, "n_gpu": gpus, "n_node": 1, "compute_capability": "sm_90"}
    checked = validate_config(DictDefault(cfg), capabilities=caps, env_capabilities={"torch_version": "2.13.0"})
    out.append({"adapter": checked.adapter, "lora_r": checked.lora_r, "sequence_len": checked.sequence_len,
                "fsdp_version": checked.fsdp_version, "fp8": checked.fp8,
                "offload_params": (checked.fsdp_config or {}).get("offload_params"),
                "activation_offloading": checked.activation_offloading,
                "every_n_layers": (checked.gradient_checkpointing_kwargs or {}).get("every_n_layers")})
print(json.dumps(out))
"""


def _runnable(engine: str):
    """(case, render) for every plan this engine can run."""
    out = []
    for case in sorted(PLANS):
        try:
            out.append((case, render_for(engine, _plan(case, engine), OPTIONS)))
        except SwiftplanError:
            continue
    return out


@pytest.mark.integration
@pytest.mark.engines
def test_ms_swift_parser_accepts_every_rendered_command():
    renders = _runnable("ms-swift")
    payload = [[list(r.commands[0]), r.files.get("fsdp_config.json")] for _, r in renders]
    parsed = dict(zip([case for case, _ in renders], run_in_env("ms-swift", _MS_SWIFT, payload), strict=True))
    assert len(parsed) == len(renders) >= 3
    assert parsed["7b_qlora_rtx4090"]["quant_bits"] == 4 and all(p["max_length"] for p in parsed.values())
    # The FSDP plans, as transformers' TrainingArguments read ms-swift's --fsdp file.
    assert parsed["8b_full_fsdp2_cpu_offload_act_offload_2xh100"]["fsdp"] == {
        "version": 2,
        "cpu_offload": True,
        "reshard": True,
        "activation_cpu_offload": True,
    }
    hybrid = parsed["8b_qlora_fsdp1_hybrid_2x8xh100"]
    assert hybrid["fsdp"]["version"] == 1 and hybrid["fsdp"]["reshard"] == "hybrid_shard"
    assert hybrid["quant_storage"] == "bfloat16"
    zero3 = parsed["70b_qlora_zero3_2xa100"]
    assert zero3["quant_storage"] == "bfloat16" and zero3["deepspeed"] and zero3["quant_bits"] == 4


@pytest.mark.integration
@pytest.mark.engines
@pytest.mark.parametrize(
    "engine, script", [("llamafactory", _LLAMAFACTORY), ("trl", _TRL)], ids=["llamafactory", "trl"]
)
def test_yaml_engines_parse_every_rendered_config(engine, script):
    renders = _runnable(engine)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for case, render in renders:
            directory = Path(tmp) / case
            write_files(render, directory)
            paths.append(str(directory / next(n for n in render.files if n.endswith(".yaml"))))
        parsed = dict(zip([case for case, _ in renders], run_in_env(engine, script, paths), strict=True))
    assert len(parsed) == len(renders) >= 3
    # The feature knobs, as the framework's own parser read them.
    offload = parsed["8b_full_fsdp2_cpu_offload_act_offload_2xh100"]
    assert offload["fsdp"] and offload["fsdp_version"] == 2 and offload["cpu_offload"]
    assert offload["use_unsloth_gc" if engine == "llamafactory" else "activation_offloading"] is True
    assert parsed["8b_qlora_fsdp1_hybrid_2x8xh100"]["fsdp_version"] == 1
    if engine == "trl":
        assert parsed["8b_qlora_fsdp1_hybrid_2x8xh100"]["quant_storage"] == "bfloat16"
        assert parsed["70b_qlora_zero3_2xa100"]["quant_storage"] == "bfloat16"
    else:
        assert parsed["70b_qlora_zero3_2xa100"]["quantization_bit"] == 4
        assert parsed["70b_qlora_zero3_2xa100"]["deepspeed"]


@pytest.mark.integration
@pytest.mark.engines
def test_axolotl_validates_every_rendered_config():
    renders = _runnable("axolotl")
    with tempfile.TemporaryDirectory() as tmp:
        payload = []
        for case, render in renders:
            directory = Path(tmp) / case
            write_files(render, directory)
            fp8 = "h100" in PLANS[case][1]  # Hopper has fp8 tensor cores; the A100 and RTX 4090 plans do not
            payload.append([str(directory / "axolotl_sft.yaml"), _plan(case, "axolotl").gpus_per_node, fp8])
        parsed = run_in_env("axolotl", _AXOLOTL, payload)
    assert [p["adapter"] for p in parsed] == [
        "qlora" if "qlora" in case else "lora" if "lora" in case else None for case, _ in renders
    ]
    by_case = dict(zip([case for case, _ in renders], parsed, strict=True))
    offload = by_case["8b_full_fsdp2_cpu_offload_act_offload_2xh100"]
    assert (
        offload["fsdp_version"] == 2
        and offload["offload_params"]
        and offload["activation_offloading"] is True
    )
    float8 = by_case["8b_full_fsdp2_ckpt_every2_float8_2xh100"]
    assert float8["fp8"] is True and float8["every_n_layers"] == 2


_MAKE_TINY_MODEL = r"""
import sys, torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
config_dir, tokenizer_dir, out = sys.argv[1:4]
torch.manual_seed(0)
AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config_dir)).save_pretrained(out)
AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
"""


@pytest.mark.integration
@pytest.mark.engines
@pytest.mark.slow
def test_a_swiftplan_plan_trains_on_cpu_through_ms_swift(tmp_path):
    """The tiny Llama (random weights from tests/fixtures/train/tiny_llama) trained 3 steps through ms-swift
    from a swiftplan plan, with the run report: the adapter ms-swift saved has the plan's shape."""
    import subprocess
    import sys

    from engine_envs import env_python

    from swiftplan.plan_file import save_plan

    python = env_python("ms-swift")
    fixtures = Path(__file__).parent / "fixtures" / "train"
    model = tmp_path / "model"
    subprocess.run([str(python), "-c", _MAKE_TINY_MODEL, str(fixtures / "tiny_llama"), str(fixtures / "tiny_tokenizer"),
                    str(model)], check=True, capture_output=True, timeout=300)  # fmt: skip
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"count to {n}", "input": "", "output": " ".join(map(str, range(1, n + 1)))}) + "\n"
                            for n in range(1, 6) for _ in range(6)))  # fmt: skip
    setup = TrainSetup(method="lora", precision="fp32", micro_batch=2, seq_len=48, grad_ckpt=False,
                       lora=LoraSetup(rank=8, alpha=16, targets=("q_proj", "v_proj"), dropout=0.0))  # fmt: skip
    plan_path = tmp_path / "plan.yaml"
    save_plan(plan_for_setup(str(model), parse_cluster("rtx4090"), setup, engine="ms-swift"), plan_path)
    out = tmp_path / "out"
    env = {**os.environ, "PATH": f"{python.parent}:{os.environ['PATH']}", "SWIFTPLAN_DEBUG": "1"}
    # model_type/template: ms-swift cannot guess them for a local directory of an unnamed Llama.
    result = subprocess.run(
        [sys.executable, "-m", "swiftplan", "train", str(plan_path), "--engine", "ms-swift", "--data", str(data),
         "--output-dir", str(out), "--max-steps", "3", "--save-steps", "3",
         "--engine-option", "model_type=llama", "--engine-option", "template=chatml"],
        capture_output=True, text=True, timeout=900, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "run_report.json").read_text())
    assert report["exit_code"] == 0 and report["steps"] == 3
    assert report["loss"]["first"] > 0 and report["measured"]["step_time_s"] > 0
    assert report["adapter"]["matches"], report["adapter"]
    assert report["adapter"]["targets"][1] == ["q_proj", "v_proj"]


@pytest.mark.parametrize("engine", ENGINES)
def test_slurm_script_runs_each_nodes_own_command_and_is_valid_bash(engine, tmp_path):
    import subprocess

    from swiftplan.executors.train_engines.slurm import SCRIPT, render_sbatch

    case = _multi_node_case(engine)
    plan = _plan(case, engine)
    render = render_sbatch(plan, engine, OPTIONS)
    script = render.files[SCRIPT]
    path = SNAPSHOTS / f"slurm_{engine}_{case}.txt"
    if os.environ.get("SWIFTPLAN_UPDATE_SNAPSHOTS"):
        path.write_text(script)
    assert script == path.read_text()
    assert f"#SBATCH --nodes={plan.nodes}" in script and "#SBATCH --gpus-per-node=8" in script
    assert "  0) " in script and "  1) " in script and "10.0.0.1" not in script  # address from the allocation
    (tmp_path / SCRIPT).write_text(script)
    assert subprocess.run(["bash", "-n", str(tmp_path / SCRIPT)], capture_output=True).returncode == 0
    inner = render_for(engine, plan, OPTIONS)
    assert set(render.files) == {*inner.files, SCRIPT}


_MEGATRON_FIELDS = r"""
import ast, importlib.util, json, pathlib, sys
# MegatronSftArguments' fields as ms-swift declares them, read from its source: importing it needs
# Megatron-Core (and CUDA). Every dataclass field of the classes it is built from, with Literal choices.
root = pathlib.Path(importlib.util.find_spec("swift").submodule_search_locations[0])
files = [*(root / "megatron" / "arguments").glob("*.py"), *(root / "arguments" / "base_args").glob("*.py")]
fields = {}
for path in files:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    choices = None
                    ann = item.annotation
                    if isinstance(ann, ast.Subscript) and getattr(ann.value, "id", "") == "Literal":
                        elts = ann.slice.elts if isinstance(ann.slice, ast.Tuple) else [ann.slice]
                        choices = [e.value for e in elts if isinstance(e, ast.Constant)]
                    fields.setdefault(item.target.id, choices)
out = []
for argv in json.load(sys.stdin):
    assert argv[0] == "megatron" and argv[1] in ("sft", "rlhf"), argv[:2]
    unknown, bad = [], []
    for i, arg in enumerate(argv):
        if arg.startswith("--"):
            name = arg[2:]
            if name not in fields:
                unknown.append(name)
            elif fields[name] and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value = argv[i + 1]
                if value not in [str(c) for c in fields[name]] and value not in ("true", "false"):
                    bad.append(f"{name}={value} not in {fields[name]}")
    out.append({"unknown": unknown, "bad": bad, "fields": len(fields)})
print(json.dumps(out))
"""


@pytest.mark.integration
@pytest.mark.engines
def test_megatron_swift_flags_are_megatron_sft_arguments_fields():
    """Every flag rendered for megatron sft is a field of ms-swift 4.6.0's MegatronSftArguments (or the
    classes it is built from) and every Literal-typed value one of its choices. Read from the installed
    source: importing the dataclass needs Megatron-Core and a GPU."""
    renders = _runnable("megatron-swift")
    assert len(renders) >= 2  # the tp × pp plan and the 72B LoRA plan
    checked = run_in_env("ms-swift", _MEGATRON_FIELDS, [list(r.commands[0]) for _, r in renders])
    for (case, _), result in zip(renders, checked, strict=True):
        assert result["fields"] > 200
        assert not result["unknown"] and not result["bad"], (case, result)


def test_cli_runs_the_plans_engine_by_default_and_writes_configs(tmp_path):
    from train_support import cli

    from swiftplan.plan_file import save_plan

    plan_path = tmp_path / "plan.yaml"
    save_plan(_plan("72b_lora_8xa100", "llamafactory"), plan_path)
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "hi", "input": "", "output": "hello"}\n')
    shown = cli("train", str(plan_path), "--data", str(data), "--dry-run", "--json")
    assert shown.exit_code == 0, shown.output
    printed = json.loads(shown.output)
    assert printed["engine"] == "llamafactory" and printed["commands"] == [
        ["llamafactory-cli", "train", "llamafactory_sft.yaml"]
    ]
    out = tmp_path / "cfg"
    written = cli(
        "train",
        str(plan_path),
        "--data",
        str(data),
        "--write-config",
        str(out),
        "--engine-option",
        "template=qwen",
    )
    assert written.exit_code == 0, written.output
    assert yaml.safe_load((out / "llamafactory_sft.yaml").read_text())["template"] == "qwen"
    assert (out / "ds_config.json").is_file() and (out / "run.sh").is_file()
    refused = cli(
        "train", str(plan_path), "--engine", "swiftplan", "--data", str(data), "--write-config", str(out)
    )
    assert refused.exit_code != 0 and "--write-config is for external engines" in str(refused.exception)
    sbatch = cli("train", str(plan_path), "--data", str(data), "--launcher", "slurm", "--dry-run")
    assert sbatch.exit_code == 0 and "#SBATCH --nodes=1" in sbatch.output
