"""benchmarks/objective_accuracy.py: how published preference/RL and vision-language rows become planner
questions (objective_setups.express_objective) and which counter each is compared with. The accuracy
figures themselves are the report's, not asserted here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import objective_accuracy  # noqa: E402
import objective_setups  # noqa: E402
from published_objective_rows import load  # noqa: E402

from swiftplan.errors import SwiftplanError  # noqa: E402


@pytest.fixture(scope="module")
def rows() -> dict[str, dict[str, str]]:
    return {row["id"]: row for row in load()}


def test_lora_dpo_under_ms_swift(rows):
    # examples/train/rlhf/dpo/lora.sh: one GPU, LoRA r8 all-linear, 1 pair × max_length 2048, adapters-off reference
    expressed = objective_setups.express_objective(rows["mso-001"])
    setup = expressed.setup
    assert expressed.model_id == "Qwen/Qwen2.5-7B-Instruct"
    assert setup.method == "lora" and setup.lora.rank == 8 and setup.lora.all_linear
    assert setup.lora.dropout == 0.05  # ms-swift tuner_args
    assert (setup.micro_batch, setup.seq_len, setup.grad_ckpt) == (1, 2048, True)
    assert setup.objective.kind == "dpo" and setup.objective.reference == "adapters-off"
    assert setup.objective.prompt_len == 0  # not stated: every token scored
    assert setup.runtime.name == "ms-swift" and setup.runtime.optimizer_impl == "foreach"  # the 3.x era
    assert expressed.cluster.world_size == 1 and expressed.cluster.accelerator.id == "a100-80gb-sxm"
    assert expressed.allocator.variable_lengths and not expressed.allocator.expandable_segments
    assert objective_accuracy.counter_of(rows["mso-001"]["metric"]) == "reserved"


def test_grpo_with_a_rollout_gpu_counts_it_beside_the_trainer(rows):
    # lora_vllm.sh: CUDA_VISIBLE_DEVICES=0,1 without NPROC_PER_NODE = one trainer + vLLM on the other GPU
    expressed = objective_setups.express_objective(rows["mso-027"])
    objective = expressed.setup.objective
    assert objective.kind == "grpo" and objective.kl  # ms-swift beta 0.04
    rollout = objective.rollout
    assert (rollout.engine, rollout.placement, rollout.gpus) == ("vllm", "server", 1)
    assert (rollout.num_generations, rollout.completion_len) == (16, 1024)
    assert rollout.prompt_len == objective_setups.ASSUMED_PROMPT_TOKENS
    assert expressed.setup.seq_len == rollout.prompt_len + rollout.completion_len
    assert expressed.setup.micro_batch == 16 and expressed.setup.parallel.zero == 2
    assert expressed.cluster.world_size == 2  # 1 training process + 1 rollout GPU, not 2 + 1
    assert objective_accuracy.counter_of(rows["mso-027"]["metric"]) == "fits"


def test_colocated_sleeping_vllm_and_zero3(rows):
    expressed = objective_setups.express_objective(rows["mso-149"])
    setup = expressed.setup
    rollout = setup.objective.rollout
    assert (rollout.placement, rollout.memory_fraction, rollout.sleep) == ("colocate", 0.4, True)
    assert setup.method == "full" and setup.parallel.zero == 3
    assert setup.objective.reference == "model" and setup.objective.kl
    assert expressed.cluster.world_size == 8
    assert objective_accuracy.counter_of(rows["mso-149"]["metric"]) == "device_total"


def test_trl_qlora_grpo_notebook(rows):
    expressed = objective_setups.express_objective(rows["trl-01"])
    setup = expressed.setup
    assert expressed.model_id == "Qwen/Qwen2.5-7B-Instruct"  # Qwen2-7B has its shapes
    assert setup.method == "qlora" and setup.quant == "nf4" and setup.double_quant
    assert setup.kbit_upcast and setup.optimizer == "paged-adamw-8bit"
    assert setup.precision == "fp16"  # a T4 has no bf16
    assert setup.runtime.name == "hf"  # TRL runs on the hf profile
    assert setup.objective.reference == "auto" and not setup.objective.kl  # beta 0.0
    assert setup.objective.rollout.engine == "hf"
    assert expressed.cluster.accelerator.id == "t4"


def test_ppo_and_vision_rows(rows):
    ppo = objective_setups.express_objective(rows["mso-009"]).setup
    assert ppo.objective.kind == "ppo" and ppo.objective.reference == "model"
    assert ppo.objective.rollout.num_generations == 2  # RolloutSetup's minimum; PPO's terms do not read it
    assert ppo.parallel.zero == 3 and ppo.grad_accum == 2
    vlm = objective_setups.express_objective(rows["mso-015"])
    vision = vlm.setup.vision
    assert vision.image_tokens == 1003520 // (28 * 28) and vision.freeze_vit and vision.freeze_aligner
    assert vlm.setup.seq_len == 4096 - 1280  # max_length counts the image tokens
    assert vlm.allocator.expandable_segments
    video = objective_setups.express_objective(rows["mso-048"]).setup.vision
    assert (video.images_per_sample, video.video_frames, video.image_width) == (0, 12, 224)


@pytest.mark.parametrize(
    ("rid", "group"),
    [
        ("mso-080", "Megatron-Core run"),
        ("mso-002", "padding-free or packed batches"),  # '--padding_free true.' at the end of a sentence
        ("mso-013", "layout not modelled"),
        ("mso-140", "layout not modelled"),
        ("mso-066", "model not in the catalog"),
        ("mso-050", "vision-language setting not expressible"),
        ("mso-105", "vision-language setting not expressible"),  # 2.x DEFAULT targets
        ("isso-03", "card not in the catalog"),
        ("tto-01", "optimizer not modelled"),
        ("mso-046", "missing setting"),
    ],
)
def test_rows_the_planner_cannot_express_say_why(rows, rid, group):
    with pytest.raises(objective_setups.RowSkip) as raised:
        objective_setups.express_objective(rows[rid])
    assert raised.value.group == group


def test_vision_grpo_is_refused_by_the_planner_not_by_the_mapping(rows):
    expressed = objective_setups.express_objective(rows["mso-024"])
    assert expressed.setup.vision is not None and expressed.setup.objective.kind == "grpo"
    with pytest.raises(SwiftplanError):
        objective_accuracy.estimate_row(expressed)


def test_counters_and_the_colocated_engine(rows):
    assert [objective_accuracy.counter_of(m) for m in ("reserved_gib", "peak_mem_gb", "nvidia_smi_gib",
            "peak_mem_gb_unspecified", "fits_in_gpu", "s_per_it")] == [
        "reserved", "allocated", "device_total", "device_total", "fits", "s_per_it"]  # fmt: skip
    with pytest.raises(objective_setups.RowSkip):
        objective_accuracy.counter_of("tokens_per_s_per_gpu_ratio")
    expressed = objective_setups.express_objective(rows["trl-11"])
    estimate = objective_accuracy.estimate_row(expressed)
    pool = objective_accuracy.in_process_engine_bytes(expressed, estimate, "reserved")
    assert pool == int(0.15 * expressed.cluster.memory_bytes_per_device)  # vLLM's share, no sleep mode
    assert objective_accuracy.in_process_engine_bytes(expressed, estimate, "device_total") == 0


def test_flags_are_read_from_the_command():
    notes = "Command: NPROC_PER_NODE=4 swift rlhf --attn_impl flash_attn --gradient_accumulation_steps 16."
    assert objective_setups.flag(notes, "attn_impl") == "flash_attn"
    assert objective_setups.grad_accum({"notes": notes}) == (16, [])
    assert objective_setups.training_processes({"notes": notes, "num_gpus": "4", "rollout": "none"})[0] == 4
