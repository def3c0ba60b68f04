"""Memory and speed figures of ms-swift's preference/RL and vision-language examples, as rows of
benchmarks/data/published_objectives.csv (ids ``mso-NNN``).

Reads a local snapshot of modelscope/ms-swift with its history (``git show``, no work tree). Each entry of
`SPECS` names one figure: a comment line of an example script or of a documentation code block ('# 4 * 50GiB',
'# with padding_free: 4 * 47GiB, 1.90s/it', '# 2*45GB GPU memory'), the file and the commit it is read at.
The command that follows the comment (`swift sft|rlhf`, `megatron sft|rlhf`) is parsed into the CSV's
columns; what the command leaves out is filled with ms-swift's defaults at that commit (`DEFAULTS_3X`,
`DEFAULTS_2X`, each with the file it was read from), and the notes say which cells came from a default.

Which commit: a figure still present at `COMMIT` (the snapshot's HEAD, the one published_2026.csv's ms-*
rows use) is read there; a figure that was later edited or removed is read at the newest commit that still
had it (found with `git log -- PATH`), so the command is the one the figure was written for.

Counter: ms-swift logs memory(GiB) = max over devices of torch.cuda.max_memory_reserved / 2**30
(swift/trainers/mixin.py get_max_cuda_memory since 8a794ff07, 2024-05-21; swift/utils/torch_utils.py
get_max_reserved_memory at COMMIT). A figure in GiB is taken as that counter (`reserved_gib`, inferred, not
stated); a figure in GB/G, or with no unit, is kept as an unnamed counter in decimal GB
(`peak_mem_gb_unspecified`), as published_2026.csv does. A header naming the card size ('8*80G', 'GPU
memory: 80GiB' on an 80 GiB card) is read as a verdict (`fits_in_gpu` = 1 on that card), not a peak. A
speed ('1.90s/it') is its own row (`s_per_it`: seconds per optimizer step, gradient accumulation included).

    python benchmarks/ms_swift_objective_headers.py /work/.mirror/modelscope+ms-swift/repo          # prints mso rows
    python benchmarks/ms_swift_objective_headers.py /work/.mirror/modelscope+ms-swift/repo --write  # updates the CSV
"""

from __future__ import annotations

import csv
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

COMMIT = "3602360a562313afbf2ef6065fdf61f271a2c5b9"
LAST_2X = "d2b45ec8c6"
"""The last ms-swift 2.x commit (2024-11-29; b40f31df7 replaced swift/llm/utils/argument.py with 3.x): the 2.x
documentation's figures are read there, with the 2.x code their commands ran on."""
sys.path.insert(0, str(Path(__file__).parent))
from published_objective_rows import COLUMNS  # noqa: E402

# ms-swift 3.x/4.x defaults (identical at 054ae1aa 2024-12-31, 06c433ae 2025-03-25, d0c71e48 2026-01-17 and
# COMMIT): swift/trainers/arguments.py (per_device_train_batch_size 1, gradient_checkpointing True,
# vit_gradient_checkpointing follows it), swift/arguments/tuner_args.py (lora_rank 8, lora_dropout 0.05,
# target_modules all-linear, freeze_vit True, freeze_aligner True), swift/arguments/base_args/template_args.py
# (max_length None), swift/arguments/rlhf_args.py (beta: simpo 2.0, grpo 0.04, others 0.1;
# max_completion_length 512; num_generations 8), swift/rlhf_trainers/args_mixin.py
# (vllm_gpu_memory_utilization 0.9, vllm_tensor_parallel_size 1, sleep_level 0).
DEFAULTS_3X: dict[str, str] = {
    "per_device_train_batch_size": "1",
    "gradient_checkpointing": "true",
    "lora_rank": "8",
    "target_modules": "all-linear",
    "freeze_vit": "true",
    "freeze_aligner": "true",
    "max_completion_length": "512",
    "num_generations": "8",
    "vllm_gpu_memory_utilization": "0.9",
    "vllm_tensor_parallel_size": "1",
    "sleep_level": "0",
}
DEFAULTS_3X_SOURCE = (
    "ms-swift 3.x/4.x defaults (swift/trainers/arguments.py, swift/arguments/tuner_args.py, "
    "swift/arguments/rlhf_args.py, swift/rlhf_trainers/args_mixin.py; the same at 054ae1aa, 06c433ae, d0c71e48 "
    "and 3602360a)"
)
# ms-swift 2.x (swift/llm/utils/argument.py SftArguments at 86d1d7f3c, 2024-09-03): batch_size 1,
# max_length 2048, lora_rank 8, lora_target_modules ['DEFAULT'] (the model type's LoRATM entry in
# swift/llm/utils/model.py), gradient_checkpointing None -> the model's support flag (True for these models).
DEFAULTS_2X: dict[str, str] = {
    "batch_size": "1",
    "max_length": "2048",
    "lora_rank": "8",
    "lora_target_modules": "DEFAULT",
    "gradient_checkpointing": "true",
}
DEFAULTS_2X_SOURCE = (
    "ms-swift 2.x defaults as read at its last 2.x commit (older scripts may predate them): "
    "swift/llm/utils/argument.py SftArguments at d2b45ec8c6: batch_size 1, max_length 2048, lora_rank 8, "
    "lora_target_modules DEFAULT = the model type's LoRATM entry, gradient_checkpointing on where the model "
    "supports it; RLHFArguments._set_default: beta 0.1, SimPO 2.0"
)
# Images per sample of the datasets the examples use (one image or one video per sample).
DATASETS: dict[str, tuple[str, str]] = {
    "RLAIF-V-Dataset": ("image", "1"),
    "coco_2014_caption": ("image", "1"),
    "coco-en-mini": ("image", "1"),
    "coco-en-2-mini": ("image", "1"),
    "coco-en-2": ("image", "1"),
    "LaTeX_OCR": ("image", "1"),
    "latex-ocr-print": ("image", "1"),
    "refcoco": ("image", "1"),
    "multimodal-open-r1-8k-verified": ("image", "1"),
    "clevr_cogen_a_train": ("image", "1"),
    "GEOQA_R1V_Train_8K": ("image", "1"),
    "VideoChatGPT": ("video", ""),
    "video-chatgpt": ("video", ""),
}
MULTIMODAL_MODEL = re.compile(
    r"VL|vl-|llava|internvl|glm4v|glm-4v|cogvlm|minicpm-v|MiniCPM-V|phi3-vision|deepseek-vl|yi-vl|florence|"
    r"xcomposer|Omni|omni|qwen-vl|qwen_vl|Ovis|Keye",
    re.I,
)
FIGURE = re.compile(
    r"(?:(\d+)\s*[*×]\s*)?(\d+(?:\.\d+)?)\s*(GiB|GB|G)?\b(?:\s*[*×]\s*(\d+))?\s*(?:GPU memory|VRAM)?",
)
SPEED = re.compile(r"(\d+(?:\.\d+)?)\s*s/it")
COMMAND = re.compile(
    r"\b(swift\s+(?:sft|rlhf|dpo|pt)|megatron\s+(?:sft|rlhf|pt)|python\s+llm_(?:sft|dpo|rlhf)\.py|"
    r"accelerate launch llm_(?:sft|dpo)\.py)\b|^\s*torchrun\b"
)
ANY_COMMAND = re.compile(
    r"\b(?:swift|megatron)\s+[a-z]+\b|\bpython\s+llm_\w+\.py\b|^\s*torchrun\b|accelerate launch"
)
PROGRAM = re.compile(r"(?:swift|megatron)$|llm_\w+\.py$")


@dataclass
class Spec:
    """One published figure: the comment line that holds it and where to read it."""

    path: str
    line: str
    """A fragment of the comment line (unique in the file)."""
    commit: str = COMMIT
    set_args: dict[str, str] = field(default_factory=dict)
    """Arguments the line's variant changes against the command ('without padding_free' -> padding_free false)."""
    cells: dict[str, str] = field(default_factory=dict)
    """CSV cells the command does not determine (a GPU type stated elsewhere, a dataset fact)."""
    note: str = ""
    verdict: bool = False
    """The figure names the card size: a fits verdict on that card, not a measured peak."""
    same_as: str = ""
    """The published_2026.csv row with the same figure, if any."""


# fmt: off
SPECS: list[Spec] = [
    # --- DPO / SimPO / PPO (text) ---------------------------------------------------------------------------
    Spec("examples/train/rlhf/dpo/lora.sh", "# 24GiB", same_as="ms-172"),
    Spec("examples/train/rlhf/dpo/full.sh", "with padding_free", same_as="ms-170"),
    Spec("examples/train/rlhf/dpo/full.sh", "without padding_free", set_args={"padding_free": "false"},
         same_as="ms-171"),
    Spec("examples/train/rlhf/dpo/full.sh", "# 4 * 50GiB", commit="5df8180fdb"),
    Spec("examples/train/packing/dpo.sh", "# 4 * 50GiB", same_as="ms-151"),
    Spec("examples/train/rlhf/simpo.sh", "# 2*50GB", same_as="ms-177"),
    Spec("examples/train/rlhf/ppo/full.sh", "# 8 * 65 GiB", same_as="ms-175"),
    Spec("examples/train/rlhf/ppo/lora.sh", "# 4 * 50GiB", same_as="ms-176"),
    Spec("examples/train/sequence_parallel/sequence_parallel_dpo.sh", "# GPU Memory: 4 * 25GiB",
         cells={"gpu": "A100 (stated: 'Env: 4 * A100')"}, same_as="ms-181"),
    Spec("examples/train/sequence_parallel/ring_attention/sequence_parallel_dpo.sh", "# GPU Memory: 4 * 52GiB",
         commit="8ae0ade71a"),
    # --- DPO (vision-language) ------------------------------------------------------------------------------
    Spec("examples/train/multimodal/rlhf/dpo/full.sh", "# 4 * 50GiB", same_as="ms-141"),
    Spec("examples/train/multimodal/rlhf/dpo/lora.sh", "# 4 * 50GiB", same_as="ms-142",
         note="The header says 4 GPUs; the script runs 2 processes on CUDA_VISIBLE_DEVICES=0,1 (so since the "
              "file's first version, examples/train/multimodal/rlhf/dpo.sh at 109fcb6974); num_gpus is the "
              "script's."),
    Spec("examples/train/multimodal/dpo.sh", "# 4*32GiB", commit="054ae1aac8"),
    Spec("examples/train/packing/dpo_vlm.sh", "# 50GiB", same_as="ms-152",
         note="The header gives one figure and no GPU count; the script runs 4 processes (figure taken per GPU)."),
    Spec("examples/train/padding_free/dpo_vlm.sh", "with padding_free", same_as="ms-157"),
    Spec("examples/train/padding_free/dpo_vlm.sh", "without padding_free", set_args={"padding_free": "false"},
         same_as="ms-158"),
    # --- GRPO ---------------------------------------------------------------------------------------------------
    Spec("examples/train/grpo/qwen2_5_omni/grpo.sh", "# 4 * 50GiB", same_as="ms-128"),
    Spec("examples/train/grpo/full_vllm_qwenvl.sh", "# GPU memory: 8 * 60GiB", commit="06c433aedb"),
    Spec("examples/train/grpo/grpo.sh", "# GPU memory: 80GiB", commit="06c433aedb", verdict=True),
    Spec("examples/train/grpo/run_external_rm.sh", "# GPU memory: 80GiB", commit="7fb10e8fa1", verdict=True),
    Spec("examples/train/grpo/lora_vllm.sh", "# GPU memory: 2 * 80GiB", commit="06c433aedb", verdict=True),
    Spec("examples/train/grpo/full_vllm.sh", "# GPU memory: 8 * 80GiB", commit="06c433aedb", verdict=True),
    Spec("examples/train/grpo/grpo_zero2.sh", "# GPU memory: 8 * 80GiB", commit="9a2448a056", verdict=True),
    Spec("examples/train/grpo/lora_qwenvl72b.sh", "# GPU memory: 8 * 80GiB", commit="d36edc9d9f", verdict=True),
    Spec("examples/train/grpo/train_72b_4gpu.sh", "# 4*80G GPU", commit="d36edc9d9f", verdict=True),
    Spec("examples/train/grpo/internal/transformers.sh", "# GPU memory: 80GiB", verdict=True),
    Spec("examples/train/grpo/internal/vllm_72b_4gpu.sh", "# 4*80G GPU", verdict=True),
    Spec("examples/train/grpo/internal/vllm_lora_qwenvl72b.sh", "# GPU memory: 8 * 80GiB", verdict=True),
    Spec("examples/train/grpo/internal/moe_full.sh", "# 8*80G", verdict=True),
    Spec("examples/train/grpo/internal/moe_lora.sh", "# 8*80G", verdict=True),
    Spec("examples/train/grpo/internal/gspo.sh", "# 8*80G GPU", verdict=True),
    Spec("examples/train/grpo/internal/chord.sh", "# 8*80G GPU", verdict=True),
    Spec("examples/train/grpo/internal/pt.sh", "# GPU memory: 80GiB", commit="67ae6076ae", verdict=True),
    Spec("examples/train/grpo/external/grpo_7b.sh", "# 8 * 80 G", verdict=True, cells={"rollout_gpus": "2"},
         note="Header: 6 GPUs train, 2 serve rollouts (swift rollout --data_parallel_size 2 on GPUs 6,7, in the "
              "header's commented-out command)."),
    Spec("examples/train/grpo/plugin/deepeyes/deepeyes.sh", "# 8 * 80G", verdict=True, cells={"rollout_gpus": "1"},
         note="8 GPUs in all: training on 3 (0,1,2), swift rollout of the 7B policy on GPU 3 "
              "(vllm_gpu_memory_utilization 0.8), a Qwen2.5-VL-72B judge served on GPUs 4-7 (swift deploy, tp 4); "
              "multi-turn tool-calling rollouts, images cropped by the tool per turn."),
    # --- Vision-language SFT ------------------------------------------------------------------------------------
    Spec("examples/train/multimodal/caption.sh", "# 22GiB", same_as="ms-134"),
    Spec("examples/train/multimodal/grounding.sh", "# 20GiB", same_as="ms-135"),
    Spec("examples/train/multimodal/ocr.sh", "# 20GB", same_as="ms-139"),
    Spec("examples/train/multimodal/ocr.sh", "# 2*75GB", commit="6488cba105"),
    Spec("examples/train/multimodal/vqa.sh", "# 22GiB", commit="6488cba105"),
    Spec("examples/train/multimodal/train.sh", "# 22GiB", commit="dc0141f8e0"),
    Spec("examples/train/multimodal/video.sh", "# 2*24GB", same_as="ms-144"),
    Spec("examples/train/multimodal/video.sh", "# 4*80GB", commit="109fcb6974", verdict=True),
    Spec("examples/train/multimodal/lora_llm_full_vit/sft.sh", "# 4 * 22GiB", same_as="ms-138"),
    Spec("examples/train/multimodal/custom_tuner/lora_llm_full_vit.sh", "# 4 * 22GiB", commit="a3db5c8fd8"),
    Spec("examples/train/multimodal/vit_gradient_checkpointing.sh", "gc true, vgc true", same_as="ms-145"),
    Spec("examples/train/multimodal/vit_gradient_checkpointing.sh", "gc true, vgc false",
         set_args={"vit_gradient_checkpointing": "false"}, same_as="ms-146"),
    Spec("examples/train/multimodal/vit_gradient_checkpointing.sh", "gc false, vgc true",
         set_args={"gradient_checkpointing": "false", "vit_gradient_checkpointing": "true"}, same_as="ms-147"),
    Spec("examples/train/multimodal/vit_gradient_checkpointing.sh", "gc false, vgc false",
         set_args={"gradient_checkpointing": "false", "vit_gradient_checkpointing": "false"}, same_as="ms-148"),
    Spec("examples/train/packing/qwen2_5_vl.sh", "# 4 * 36GB", same_as="ms-155"),
    Spec("examples/train/packing/streaming.sh", "# 4 * 36GB", same_as="ms-156"),
    Spec("examples/train/predict_with_generate/train.sh", "# 20GiB", same_as="ms-161"),
    Spec("examples/train/qlora/gptq.sh", "# 2 * 30GiB", same_as="ms-162"),
    Spec("examples/train/multi-gpu/device_map/train.sh", "# 2 * 76GiB", same_as="ms-132"),
    Spec("examples/train/cached_dataset/vlm.sh", "# 4 * 70GiB"),
    Spec("examples/models/internvl3/train.sh", "# 24GiB", same_as="ms-82"),
    Spec("examples/models/deepseek_vl2/train.sh", "# 9GiB", same_as="ms-73"),
    Spec("examples/models/keye/train.sh", "# 24GiB", same_as="ms-83"),
    Spec("examples/models/minicpmv/train.sh", "# 10.5GiB", same_as="ms-85"),
    Spec("examples/models/ovis2/train.sh", "# 17GiB", same_as="ms-88"),
    Spec("examples/models/ovis2/train.sh", "# 28GiB", commit="9876a0e566"),
    Spec("examples/models/qwen3_vl/mixed.sh", "# 2 * 21GiB", same_as="ms-101"),
    Spec("examples/models/qwen3_vl/zero3.sh", "# 2 * 42GiB", same_as="ms-103"),
    Spec("examples/models/qwen3_vl/zero2.sh", "zero2: 70GiB", commit="fec436b07f"),
    Spec("examples/models/qwen3_vl/transformers.sh", "# 8 * 70GiB", same_as="ms-102"),
    Spec("examples/train/multimodal/omni/sft.sh", "# 4*35GB", same_as="ms-140"),
    Spec("examples/train/packing/qwen2_5_omni.sh", "# 4 * 32GB", same_as="ms-154"),
    Spec("examples/models/qwen3_omni/transformers.sh", "# 2 * 48GiB", same_as="ms-96"),
    Spec("examples/models/qwen3_omni/zero3.sh", "# 2 * 60GiB", same_as="ms-97"),
    # --- Megatron-SWIFT: preference training and vision-language SFT --------------------------------------------
    Spec("examples/megatron/rlhf/dpo/dense.sh", "# 4 * 45GiB"),
    Spec("examples/megatron/rlhf/dpo/dense.sh", "# 4 * 55GiB", commit="b32e9f349b"),
    Spec("examples/megatron/rlhf/dpo/group_by_length.sh", "# 4 * 56GiB"),
    Spec("examples/megatron/rlhf/dpo/moe.sh", "# 8 * 46GiB"),
    Spec("examples/megatron/rlhf/dpo/packing.sh", "# 4 * 28GiB"),
    Spec("examples/megatron/rlhf/kto/dense.sh", "# 4 * 43GiB"),
    Spec("examples/megatron/rlhf/kto/moe.sh", "# 2 * 48GiB"),
    Spec("examples/megatron/rlhf/rm/dense.sh", "# 2 * 70GiB"),
    Spec("examples/megatron/rlhf/rm/moe.sh", "# 2 * 45GiB"),
    Spec("examples/megatron/lora/dpo.sh", "# 2 * 65GiB"),
    Spec("examples/megatron/multimodal/dense/dpo.sh", "# 4 * 50GiB"),
    Spec("examples/megatron/multimodal/moe/full_dpo_offload.sh", "8 * 65GiB"),
    Spec("examples/train/cached_dataset/dpo.sh", "8 * 65GiB"),
    Spec("examples/megatron/multimodal/dense/full.sh", "# 2 * 72GiB"),
    Spec("examples/megatron/multimodal/dense/lora.sh", "# 2 * 23GiB"),
    Spec("examples/megatron/multimodal/moe/lora.sh", "# 2 * 43GiB"),
    # --- ms-swift 2.x documentation (docs/source_en/Multi-Modal, LLM) -----------------------------------------
    Spec("docs/source_en/Multi-Modal/qwen2-vl-best-practice.md", "# GPU Memory: 20GB", commit=LAST_2X),
    Spec("docs/source_en/Multi-Modal/qwen2-vl-best-practice.md", "# GPU Memory: 4 * 60GB", commit=LAST_2X),
    Spec("docs/source_en/Multi-Modal/qwen2-vl-best-practice.md", "# GPU Memory: 10GB", commit=LAST_2X),
    Spec("docs/source_en/Multi-Modal/llava-best-practice.md", "# 21GB GPU memory", commit=LAST_2X),
    Spec("docs/source_en/Multi-Modal/llava-best-practice.md", "# 2*45GB GPU memory", commit=LAST_2X),
    Spec("docs/source_en/Multi-Modal/llava-best-practice.md", "# 4 * 70 GPU memory", commit=LAST_2X),
    Spec("docs/source_en/Multi-Modal/llava-best-practice.md", "# 8 * 50 GPU memory", commit=LAST_2X),
    Spec("docs/source_en/Multi-Modal/internvl-best-practice.md", "# 80GB GPU memory", commit=LAST_2X,
         verdict=True),
    Spec("docs/source_en/Multi-Modal/internvl-best-practice.md", "# 2*43GB GPU memory", commit=LAST_2X),
    Spec("docs/source_en/Multi-Modal/internvl-best-practice.md", "# 2*80GB GPU memory", commit=LAST_2X,
         verdict=True),
    Spec("docs/source_en/Multi-Modal/internvl-best-practice.md", "# 4 * 72 GPU memory", commit=LAST_2X),
    Spec("docs/source_en/Multi-Modal/glm4v-best-practice.md", "# 40GB GPU memory", commit=LAST_2X),
    Spec("docs/source_en/Multi-Modal/minicpm-v-best-practice.md", "# 10GB GPU memory", commit=LAST_2X),
    Spec("docs/source_en/Multi-Modal/cogvlm2-best-practice.md", "# 70GB GPU memory", commit=LAST_2X),
    Spec("docs/source_en/Multi-Modal/cogvlm-best-practice.md", "# 50GB GPU memory", commit=LAST_2X),
    Spec("docs/source_en/Multi-Modal/phi3-vision-best-practice.md", "# 16GB GPU memory", commit=LAST_2X),
    Spec("docs/source_en/Multi-Modal/phi3-vision-best-practice.md", "# 2 * 50GB GPU memory", commit=LAST_2X),
    Spec("docs/source_en/Multi-Modal/deepseek-vl-best-practice.md", "# 20GB GPU memory", commit=LAST_2X),
    Spec("docs/source_en/Multi-Modal/deepseek-vl-best-practice.md", "# 4 * 70GB GPU memory", commit=LAST_2X),
    Spec("docs/source_en/Multi-Modal/yi-vl-best-practice.md", "# 19GB GPU memory", commit=LAST_2X),
    Spec("docs/source_en/Multi-Modal/internlm-xcomposer2-best-practice.md", "# 21GB GPU memory",
         commit=LAST_2X),
    Spec("docs/source_en/Multi-Modal/llava-video-best-practice.md", "# 21GB GPU memory", commit=LAST_2X),
    Spec("docs/source_en/Multi-Modal/florence-best-pratice.md", "# 6.6GB GPU memory", commit=LAST_2X),
    Spec("docs/source_en/Multi-Modal/qwen-vl-best-practice.md", "# 23GB GPU memory", commit=LAST_2X),
    Spec("docs/source_en/Multi-Modal/qwen-vl-best-practice.md", "# 2 * 55 GPU memory", commit=LAST_2X),
    Spec("examples/pytorch/llm/scripts/qwen_vl_chat/lora/sft.sh", "# 21GB GPU memory", commit="8a794ff07e"),
    Spec("examples/pytorch/llm/scripts/qwen_vl_chat/lora_ddp_ds/sft.sh", "# 2 * 21GB GPU memory",
         commit="8a794ff07e"),
    Spec("examples/pytorch/llm/scripts/qwen_vl_chat/qlora/sft.sh", "# 10GB GPU memory", commit="8a794ff07e"),
    Spec("examples/pytorch/llm/scripts/qwen_vl_chat_int4/qlora/sft.sh", "# 11GB GPU memory", commit="8a794ff07e"),
    Spec("examples/pytorch/llm/scripts/qwen_vl_chat_int4/qlora_ddp_ds/sft.sh", "# 2 * 13GB GPU memory",
         commit="8a794ff07e"),
    Spec("examples/pytorch/llm/scripts/qwen_vl_chat/full_mp/sft.sh", "# 2 * 55GB GPU memory", commit="8a794ff07e"),
    Spec("examples/pytorch/llm/scripts/qwen_vl_chat/full_mp_ddp/sft.sh", "# 4 * 55GB GPU memory",
         commit="8a794ff07e"),
    Spec("examples/pytorch/llm/scripts/yi_vl_6b_chat/lora/sft.sh", "# 18GB GPU memory", commit="8a794ff07e"),
    Spec("docs/source_en/LLM/DPO.md", "# Memory usage: 4 * 20G", commit=LAST_2X),
    Spec("docs/source_en/LLM/Human-Preference-Alignment-Training-Documentation.md", "# Memory usage: 40G",
         commit=LAST_2X),
    Spec("docs/source_en/LLM/Human-Preference-Alignment-Training-Documentation.md", "# Memory usage: 2*24G",
         commit=LAST_2X),
    Spec("docs/source_en/LLM/Human-Preference-Alignment-Training-Documentation.md", "# Memory usage: 4*24G",
         commit=LAST_2X),
    Spec("docs/source_en/LLM/SimPO.md", "# Memory usage: 4*56G", commit=LAST_2X),
    Spec("docs/source_en/LLM/ORPO.md", "# Memory usage: 4*24G", commit=LAST_2X),
    Spec("docs/source_en/LLM/ORPO.md", "# Memory usage: 2*24G", commit=LAST_2X),
    Spec("docs/source_en/LLM/ORPO.md", "# Memory usage: 40G", commit=LAST_2X),
    Spec("examples/pytorch/llm/scripts/dpo/lora/dpo.sh", "# Memory usage: 8 * 50G", commit="48bfa46130"),
    Spec("examples/pytorch/llm/scripts/dpo/lora/dpo.sh", "# Memory usage: 2 * 20G", commit="6d7f7ad707"),
    Spec("examples/pytorch/llm/scripts/dpo/lora/dpo.sh", "# Memory usage: 20G", commit="7a41e044cb"),
    # --- ms-swift 3.x/4.x documentation ---------------------------------------------------------------------
    Spec("docs/source_en/BestPractices/Qwen3-Best-Practice.md", "# 70G*8",
         note="The documented command gives no --vllm_mode (required at 3602360a: rlhf_args.py _init_rollout); "
              "all 8 GPUs train and generate, so colocate is read."),
]
# fmt: on


def git_show(repo: str, commit: str, path: str) -> str:
    return subprocess.run(
        ["git", "-C", repo, "show", f"{commit}:{path}"], capture_output=True, text=True, check=True
    ).stdout


def full_commit(repo: str, commit: str) -> str:
    return subprocess.run(
        ["git", "-C", repo, "rev-parse", commit], capture_output=True, text=True, check=True
    ).stdout.strip()


def commit_date(repo: str, commit: str) -> str:
    return subprocess.run(
        ["git", "-C", repo, "log", "-1", "--format=%ad", "--date=short", commit],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def shell_vars(text: str) -> dict[str, str]:
    """Plain `name=value` assignments of a script (nproc_per_node=4)."""
    return dict(re.findall(r"^([A-Za-z_]\w*)=(\S+)\s*$", text, re.M))


def substitute(text: str, variables: dict[str, str]) -> str:
    """Shell variables of the script and `$(expr A / B)` replaced by their values."""
    text = re.sub(r"\$\{?([A-Za-z_]\w*)\}?", lambda m: variables.get(m.group(1), m.group(0)), text)
    return re.sub(r"\$\(expr (\d+) / (\d+)\)", lambda m: str(int(m.group(1)) // int(m.group(2))), text)


@dataclass
class Command:
    env: dict[str, str]
    program: str
    args: dict[str, list[str]]
    text: str


def command_after(text: str, line_no: int) -> Command:
    """The swift/megatron command that follows line `line_no` (its env prefix and --args)."""
    lines = text.splitlines()
    start = next(
        i
        for i in range(line_no + 1, len(lines))
        if ANY_COMMAND.search(lines[i]) and not lines[i].lstrip().startswith("#")
    )
    if not COMMAND.search(lines[start]):
        raise LookupError(f"the command after line {line_no + 1} is not a training command: {lines[start]!r}")
    # env assignments may sit on the lines just above the command (VAR=x \)
    first = start
    while first - 1 > line_no and lines[first - 1].rstrip().endswith("\\") and "=" in lines[first - 1]:
        first -= 1
    body: list[str] = []
    for i in range(first, len(lines)):
        raw = lines[i].strip()
        if raw.startswith("#"):
            continue
        if not raw or raw.startswith("```"):
            break
        body.append(raw.rstrip("\\").strip())
        if not lines[i].rstrip().endswith("\\"):
            break
    joined = substitute(" ".join(body), shell_vars(text))
    tokens = shlex.split(joined)
    env: dict[str, str] = {}
    i = 0
    while i < len(tokens) and re.fullmatch(r"[A-Za-z_]\w*=.*", tokens[i]):
        k, v = tokens[i].split("=", 1)
        env[k] = v
        i += 1
    # a launcher (python, torchrun --nproc_per_node=N ..., accelerate launch) before the program
    p = next(j for j in range(i, len(tokens)) if PROGRAM.search(tokens[j]))
    launcher = tokens[i:p]
    for j, t in enumerate(launcher):
        if t.startswith("--nproc_per_node"):
            env["NPROC_PER_NODE"] = t.split("=", 1)[1] if "=" in t else launcher[j + 1]
    if tokens[p].endswith(".py"):
        program, rest = (
            " ".join(launcher[:2] + [tokens[p]]) if launcher[:1] != ["torchrun"] else f"torchrun {tokens[p]}",
            tokens[p + 1 :],
        )
    else:
        program, rest = " ".join(tokens[p : p + 2]), tokens[p + 2 :]
    args: dict[str, list[str]] = {}
    key = None
    for t in rest:
        if t.startswith("--"):
            key = t[2:]
            args[key] = []
        elif key is not None:
            args[key].append(t)
    return Command(env, program, args, joined)


def arg(cmd: Command, *names: str) -> str | None:
    for n in names:
        if n in cmd.args:
            return " ".join(cmd.args[n])
    return None


def gpu_count(cmd: Command, figure_gpus: int) -> int:
    """GPUs the command sees; the figure's count when the command names none (accelerate's own config)."""
    if "CUDA_VISIBLE_DEVICES" in cmd.env:
        return len(cmd.env["CUDA_VISIBLE_DEVICES"].split(","))
    if "NPROC_PER_NODE" in cmd.env:
        return int(cmd.env["NPROC_PER_NODE"])
    return figure_gpus


def stated_gpu(text: str, line_no: int) -> str:
    """'Experimental environment: A100' / 'Env: 4 * A100' / 'test env' lines above the figure, in its block."""
    lines = text.splitlines()
    for i in range(line_no, max(-1, line_no - 6), -1):
        s = lines[i].strip()
        if s.startswith("```") and i != line_no:
            break
        m = re.search(r"(?:Experimental environment|Env|test[_ ]env)\s*:\s*(.+)", s, re.I)
        if m:
            return f"(stated: '{m.group(0)}')"
    return ""


def figure_of(line: str) -> tuple[int, float, str, float | None]:
    """GPU count, value, unit ('' when none) and s/it of a comment line."""
    body = re.sub(r"s/it|\d+h\b|\d+min\b", "", line)
    best = None
    for m in FIGURE.finditer(body):
        unit_or_label = m.group(3) or re.search(r"GPU memory|VRAM|Memory usage", line)
        if unit_or_label and m.group(2) and (m.group(3) or m.group(1)):
            best = m
            break
    if best is None:
        raise ValueError(f"no figure in {line!r}")
    gpus = int(best.group(1) or best.group(4) or 1)
    speed = SPEED.search(line)
    return gpus, float(best.group(2)), best.group(3) or "", float(speed.group(1)) if speed else None


def catalog_params(model: str) -> str:
    """Parameter count (billions) of a text model the swiftplan catalog knows, else ''."""
    from swiftplan.planner.architecture import total_params
    from swiftplan.planner.model_catalog import catalog_spec, find_catalog_id

    base = re.sub(r"^Meta-|-mcore$", "", model)
    found = find_catalog_id(base) or find_catalog_id(
        re.sub(r"-(Instruct|Chat)(-\d+)?$", "", base, flags=re.I)
    )
    return f"{total_params(catalog_spec(found)) / 1e9:.2f}" if found else ""


def precision(cmd: Command, era2: bool) -> str:
    dtype = arg(cmd, "torch_dtype", "dtype")
    if dtype in (None, "AUTO") and era2:
        return "auto (ms-swift 2.x dtype AUTO: bf16 where the GPU supports it, else fp16)"
    return {
        "bfloat16": "bf16_pure",
        "bf16": "bf16_pure",
        None: "bf16_pure",
        "float16": "fp16",
        "fp16": "fp16",
    }.get(dtype, dtype or "")


def short_model(cmd: Command) -> str:
    model = arg(cmd, "model", "model_id_or_path", "load") or arg(cmd, "model_type") or ""
    return model.strip("'\"").split("/")[-1]


def dataset_facts(cmd: Command) -> tuple[str, str, str]:
    """modality, images per sample, dataset names."""
    ds = arg(cmd, "dataset", "cached_dataset") or ""
    for key, (modality, per) in DATASETS.items():
        if key.lower() in ds.lower():
            return modality, per, ds
    return "", "", ds


def _trains(text: str, line_no: int) -> bool:
    try:
        command_after(text, line_no)
    except (LookupError, StopIteration):
        return False
    return True


def build(repo: str, spec: Spec) -> list[dict[str, str]]:
    text = git_show(repo, spec.commit, spec.path)
    lines = text.splitlines()
    matches = [i for i, ln in enumerate(lines) if spec.line in ln and _trains(text, i)]
    if len(matches) != 1:
        raise ValueError(f"{spec.path}@{spec.commit}: {spec.line!r} matches {len(matches)} lines")
    line_no = matches[0]
    line = lines[line_no].strip()
    cmd = command_after(text, line_no)
    for k, v in spec.set_args.items():
        cmd.args[k] = [v]
    era2 = (
        "model_type" in cmd.args
        or "sft_type" in cmd.args
        or "swift sft" in cmd.program
        and "model" not in cmd.args
    )
    megatron = cmd.program.startswith("megatron")
    defaults = DEFAULTS_2X if era2 else DEFAULTS_3X
    used_defaults: list[str] = []

    def get(*names: str, default_key: str | None = None) -> str:
        v = arg(cmd, *names)
        if v is None and default_key and default_key in defaults:
            used_defaults.append(f"{default_key} {defaults[default_key]}")
            return defaults[default_key]
        return v or ""

    gpus_fig, value, unit, speed = figure_of(line)
    n_gpus = gpu_count(cmd, gpus_fig)
    nproc = int(cmd.env.get("NPROC_PER_NODE", str(n_gpus) if "accelerate" in cmd.program else "1"))
    model = short_model(cmd)
    rlhf_type = arg(cmd, "rlhf_type") or ("dpo" if re.search("rlhf|dpo", cmd.program) else "sft")
    task = rlhf_type
    tuner = arg(cmd, "tuner_type", "train_type", "sft_type") or ("full" if megatron else "lora")
    if arg(cmd, "tuner_type", "train_type", "sft_type") is None and not megatron:
        used_defaults.append("tuner lora")
    quant_bits = arg(cmd, "quant_bits", "quantization_bit")
    quant = "none"
    method = tuner
    if quant_bits == "4":
        quant, method = "nf4 (bitsandbytes)", "qlora"
    elif re.search(r"gptq|int4", model, re.I):
        quant = "gptq-int4 (model)"
    elif re.search(r"awq", model, re.I):
        quant = "awq-int4 (model)"
    lora = method in ("lora", "qlora")
    lora_rank = get("lora_rank", default_key="lora_rank") if lora else ""
    targets = ""
    if lora:
        targets = get(
            "target_modules",
            "lora_target_modules",
            default_key="target_modules" if not era2 else "lora_target_modules",
        )
        targets = {"all-linear": "all linear", "ALL": "all linear"}.get(targets, targets)
    batch = get(
        "per_device_train_batch_size",
        "batch_size",
        "micro_batch_size",
        default_key="per_device_train_batch_size" if not era2 else "batch_size",
    )
    seq = arg(cmd, "max_length")
    if seq is None and era2:
        seq = DEFAULTS_2X["max_length"]
        used_defaults.append("max_length 2048")
    ckpt = arg(cmd, "gradient_checkpointing")
    if megatron:
        ckpt = "true" if arg(cmd, "recompute_granularity") else "false"
    elif ckpt is None:
        ckpt = "true"
        used_defaults.append("gradient_checkpointing true")
    ds = arg(cmd, "deepspeed")
    parallel = "single"
    if megatron:
        layout = []
        for a, short in (
            ("tensor_model_parallel_size", "tp"),
            ("pipeline_model_parallel_size", "pp"),
            ("expert_model_parallel_size", "ep"),
            ("context_parallel_size", "cp"),
        ):
            if arg(cmd, a):
                layout.append(f"{short}{arg(cmd, a)}")
        parallel = "megatron " + (" ".join(layout) or "dp only")
        if arg(cmd, "sequence_parallel") == "true":
            parallel += " +sequence_parallel"
    elif ds:
        ds = ds.replace("default-", "")
        parallel = f"deepspeed {ds}"
        if nproc == 1 and n_gpus > 1 and not era2:
            parallel += f" ({nproc} process)"
    elif arg(cmd, "fsdp"):
        parallel = "fsdp " + (arg(cmd, "fsdp") or "")
    elif nproc > 1:
        parallel = "ddp"
    elif n_gpus > 1:
        parallel = f"device_map (layers split over {n_gpus} GPUs, one process)"
    if nproc > 1 and n_gpus > nproc and not megatron and not arg(cmd, "use_vllm"):
        parallel += f" ({nproc} processes on {n_gpus} GPUs: device_map within each)"
    sp = arg(cmd, "sequence_parallel_size")
    if sp:
        parallel += f" + sequence parallel {sp}"
    # objective columns
    beta = arg(cmd, "beta")
    if beta is None and task != "sft":
        beta = {"simpo": "2.0", "grpo": "0.04"}.get(task, "0.1")
        if task == "ppo":
            beta = arg(cmd, "kl_coef") or "0.05"
        used_defaults.append(f"beta {beta}")
    reference = "none"
    if task in ("dpo", "kto", "ppo") or (task == "grpo" and beta not in ("0", "0.0")):
        reference = "adapters-off" if lora else "model"
        if arg(cmd, "ref_model", "ref_model_type"):
            reference = "model"
    num_gen = completion = rollout = rollout_gpus = mem_frac = rollout_tp = sleep = ""
    if task == "grpo":
        num_gen = get("num_generations", default_key="num_generations")
        completion = get("max_completion_length", default_key="max_completion_length")
        if arg(cmd, "use_vllm") == "true":
            mode = arg(cmd, "vllm_mode")
            if mode == "server" or arg(cmd, "vllm_server_host") or arg(cmd, "vllm_device"):
                rollout = "vllm-server"
                rollout_gpus = str(n_gpus - nproc) if n_gpus > nproc else ""
            elif mode == "colocate" or nproc == n_gpus:
                rollout = "vllm-colocate"
            else:
                rollout = "vllm-server"
                rollout_gpus = str(n_gpus - nproc)
            if rollout == "vllm-colocate" or arg(cmd, "vllm_device"):
                mem_frac = get("vllm_gpu_memory_utilization", default_key="vllm_gpu_memory_utilization")
            rollout_tp = arg(cmd, "vllm_tensor_parallel_size", "tensor_parallel_size") or get(
                "vllm_tensor_parallel_size", default_key="vllm_tensor_parallel_size"
            )
            sleep = arg(cmd, "sleep_level") or ("0" if rollout == "vllm-colocate" else "")
        else:
            rollout = "hf"
    elif task == "ppo":
        num_gen = "1"
        completion = arg(cmd, "response_length", "max_completion_length") or "512"
        rollout = "hf"
    modality, per_sample, dataset = dataset_facts(cmd)
    multimodal = bool(MULTIMODAL_MODEL.search(model)) or bool(modality)
    if not multimodal:
        modality, per_sample = "text", ""
    elif not modality:
        modality = "image"
    if re.search(r"omni", model, re.I):
        modality = "mixed (image/video/audio)" if not per_sample else modality
    image_size = ""
    for env_key in (
        "MAX_PIXELS",
        "VIDEO_MAX_PIXELS",
        "FPS_MAX_FRAMES",
        "NFRAMES",
        "SIZE_FACTOR",
        "IMAGE_MAX_TOKEN_NUM",
    ):
        if env_key in cmd.env:
            image_size += f"{env_key}={cmd.env[env_key]} "
    image_size = image_size.strip()
    vision = ""
    if multimodal and era2:
        if method == "full":
            fv = arg(cmd, "freeze_vit") or "false"
            vision = "vit frozen" if fv == "true" else "vit trained (ms-swift 2.x freeze_vit default false)"
        else:
            vision = "vit frozen (LoRA targets only)"
            if targets == "DEFAULT":
                targets = (
                    "DEFAULT (2.x: the model type's LoRATM entry; for a multimodal key a regex over the language "
                    "model and connector, swift/utils/module_mapping.py get_regex_for_mm_default_lora)"
                )
    elif multimodal:
        if arg(cmd, "freeze_vit") is not None or not era2:
            fv = arg(cmd, "freeze_vit") or DEFAULTS_3X["freeze_vit"]
            fa = arg(cmd, "freeze_aligner") or DEFAULTS_3X["freeze_aligner"]
            if arg(cmd, "freeze_vit") is None:
                used_defaults.append("freeze_vit true")
            vision = ("vit frozen" if fv == "true" else "vit trained") + (
                ", aligner frozen" if fa == "true" else ", aligner trained"
            )
            if arg(cmd, "vit_gradient_checkpointing"):
                vision += f", vit_gradient_checkpointing {arg(cmd, 'vit_gradient_checkpointing')}"
        if tuner == "lora_llm" or "lora_llm_full_vit" in spec.path:
            vision = "vit and aligner fully trained, LLM LoRA"
    # metric
    verdict = spec.verdict
    metric = "fits_in_gpu" if verdict else ("reserved_gib" if unit == "GiB" else "peak_mem_gb_unspecified")
    gpu = spec.cells.get("gpu") or ""
    if not gpu:
        stated = stated_gpu(text, line_no)
        gpu = f"GPU {stated}" if stated else "GPU (unstated)"
        if verdict:
            gpu = f"{int(value)}GB GPU" + (f" {stated}" if stated else "")
    num_gpus = str(n_gpus)
    counter = (
        "Verdict: the line names the card size, read as 'ran on these cards' (fits_in_gpu 1), not a peak."
        if verdict
        else "Counter inferred, not stated: ms-swift logs memory(GiB) = max over devices of "
        "torch.cuda.max_memory_reserved / 2**30, and the line uses that unit."
        if unit == "GiB"
        else "Line in GB/G: counter and unit not stated."
        if unit
        else "Line gives no unit: taken as GB, counter not stated."
    )
    if gpus_fig != n_gpus and not verdict and spec.path.endswith(".sh") and gpus_fig != 1:
        counter += f" The line counts {gpus_fig} GPUs, the command {n_gpus}."
    sha = full_commit(repo, spec.commit)
    where = "example script" if spec.path.endswith(".sh") else "documentation code block"
    source = f"modelscope/ms-swift {spec.path} {where} comment (commit {sha[:10]}, {commit_date(repo, sha)})"
    notes = [f"Line {line!r}."]
    if spec.note:
        notes.append(spec.note)
    if "notes" in spec.cells:
        notes.append(spec.cells["notes"])
    notes.append(counter)
    notes.append(f"Command: {abridge(cmd)}.")
    if spec.set_args:
        notes.append(
            "This line's variant: " + ", ".join(f"--{k} {v}" for k, v in spec.set_args.items()) + "."
        )
    if used_defaults:
        notes.append(
            "From defaults: "
            + ", ".join(dict.fromkeys(used_defaults))
            + f" ({DEFAULTS_2X_SOURCE if era2 else DEFAULTS_3X_SOURCE})."
        )
    if task == "simpo":
        notes.append(
            "ms-swift runs SimPO as CPO with loss_type simpo (rlhf_args.py _init_simpo): no reference."
        )
    if task == "ppo":
        notes.append(
            "PPO (TRL PPOTrainer via ms-swift): policy, reference, reward model and value model on each GPU; "
            "completions generated by the policy (no vLLM); --response_length is the completion cap."
        )
    if reference == "model" and era2:
        notes.append(
            "Reference: a separate frozen model (ms-swift 1.x/2.x loads one when --ref_model_type is given, for full "
            "training, or for PPO: swift/llm/sft.py prepare_model_template_train at d2b45ec8c6)."
        )
    elif reference == "model":
        notes.append(
            "Reference: a frozen copy of the model (rlhf_args.py: ref_model defaults to --model for full training)."
        )
    elif reference == "adapters-off":
        notes.append("Reference: the policy with its LoRA adapters disabled (no second model).")
    if dataset:
        notes.append(f"Dataset {dataset}.")
    if spec.same_as:
        notes.append(f"Same figure as published_2026.csv {spec.same_as} (SFT-only schema).")
    row = {
        "source": source,
        "source_kind": "measured",
        "runtime": "megatron-swift" if megatron else "ms-swift",
        "model": model,
        "params_b": "",
        "method": method,
        "quant": quant,
        "lora_rank": lora_rank,
        "lora_targets": targets,
        "optimizer": "AdamW",
        "precision": precision(cmd, era2),
        "grad_ckpt": ckpt,
        "batch": batch,
        "seq_len": seq or "",
        "parallel": parallel,
        "num_gpus": num_gpus,
        "gpu": gpu,
        "metric": metric,
        "value": "1" if verdict else f"{value:g}",
        "notes": " ".join(notes),
        "task": task,
        "reference": reference,
        "beta": beta or "",
        "num_generations": num_gen,
        "prompt_len": "",
        "completion_len": completion,
        "rollout": rollout or ("none" if task not in ("grpo", "ppo") else ""),
        "rollout_gpus": rollout_gpus,
        "rollout_memory_fraction": mem_frac,
        "rollout_tp": rollout_tp,
        "rollout_sleep": sleep,
        "modality": modality,
        "images_per_sample": per_sample,
        "image_size": image_size,
        "vision_tuning": vision,
    }
    if modality == "text":
        row["params_b"] = catalog_params(model)
        if row["params_b"]:
            row["notes"] += " params_b from the swiftplan catalog (same shapes)."
    row.update({k: v for k, v in spec.cells.items() if k != "notes"})
    rows = [row]
    if speed is not None and not verdict:
        rows.append({**row, "metric": "s_per_it", "value": f"{speed:g}"})
    return rows


KEEP = re.compile(
    r"^(rlhf_type|model|model_type|model_id_or_path|tuner_type|train_type|sft_type|dataset|cached_dataset|"
    r"per_device_train_batch_size|batch_size|micro_batch_size|global_batch_size|gradient_accumulation_steps|"
    r"max_length|max_completion_length|response_length|num_generations|lora_rank|target_modules|"
    r"lora_target_modules|deepspeed|freeze_\w+|gradient_checkpointing|vit_gradient_checkpointing|packing|"
    r"padding_free|attn_impl|use_liger_kernel|use_vllm|vllm_\w+|sleep_level|offload_\w+|beta|rpo_alpha|"
    r"loss_type|reward_model|ref_model|quant_bits|quantization_bit|torch_dtype|dtype|"
    r"tensor_model_parallel_size|pipeline_model_parallel_size|expert_model_parallel_size|"
    r"context_parallel_size|sequence_parallel|sequence_parallel_size|recompute_\w+|optimizer_\w+|"
    r"use_precision_aware_optimizer|async_generate|num_infer_workers|num_iterations|steps_per_generation|"
    r"device_map|fsdp|use_flash_attn|teacher_model)$"
)


def abridge(cmd: Command) -> str:
    env = " ".join(f"{k}={v}" for k, v in cmd.env.items())
    args = " ".join(f"--{k} {' '.join(v)}".strip() for k, v in cmd.args.items() if KEEP.match(k))
    return f"{env} {cmd.program} {args}".strip()


def main(argv: list[str]) -> int:
    """Print the mso-* rows as CSV; with --write, replace them in published_objectives.csv, keeping the rows
    of other sources (hand-read: TRL, torchtune, LLaMA-Factory, issues) as they are."""
    repo = argv[1]
    rows = []
    for spec in SPECS:
        for row in build(repo, spec):
            rows.append({"id": f"mso-{len(rows) + 1:03d}", **row})
    if "--write" in argv:
        from published_objective_rows import CSV_PATH, read_rows

        kept = [r for r in read_rows() if not r["id"].startswith("mso-")] if CSV_PATH.exists() else []
        with CSV_PATH.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows + kept)
        return 0
    writer = csv.DictWriter(sys.stdout, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
