"""Published rows as planner questions: the name, GPU and unit mappings, the assumptions a row needs,
and the parsing of the CSV's free-text columns (used by `published_accuracy.py`).

Every mapping and assumption carries its reason, which the report prints next to the row.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from swiftplan.planner.allocator import AllocatorSettings
from swiftplan.planner.architecture import total_params
from swiftplan.planner.hardware import Cluster, parse_cluster
from swiftplan.planner.model_catalog import catalog_spec, find_catalog_id, spec_from_hf_config
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.runtime import TRAIN_KNOB_OPTIONS, get_runtime, runtime_profiles
from swiftplan.planner.setup import (
    SERVE_RUNTIMES,
    LoraSetup,
    Parallelism,
    RuntimeKnobs,
    ServeRuntime,
    ServeSetup,
    TrainSetup,
)
from swiftplan.planner.speed import ServeSpeed

GiB, GB, MB = 2**30, 10**9, 10**6

# Published names → catalog ids, where find_catalog_id does not already know the name, with why the
# catalog model stands for it.
MODEL_NAMES: dict[str, tuple[str, str]] = {
    "Llama-2-7B": ("meta-llama/Llama-2-7b-hf", ""),
    "Llama-2-13B": ("meta-llama/Llama-2-13b-hf", ""),
    "Llama-2-70B": ("meta-llama/Llama-2-70b-hf", ""),
    "Llama-2-70B-chat": ("meta-llama/Llama-2-70b-hf", "chat fine-tune of Llama-2-70B (same shapes)"),
    "Meta-Llama-3-8B-Instruct": (
        "meta-llama/Meta-Llama-3-8B",
        "instruct fine-tune of Meta-Llama-3-8B (same shapes)",
    ),
    "Llama-3.1-8B-Instruct": ("meta-llama/Llama-3.1-8B", "instruct fine-tune of Llama-3.1-8B (same shapes)"),
    "Llama-3.3-70B-Instruct": ("meta-llama/Llama-3.1-70B", "Llama-3.3-70B has Llama-3.1-70B's architecture"),
    "LLaMA-7B (decapoda)": (
        "meta-llama/Llama-2-7b-hf",
        "LLaMA-1 7B has Llama-2-7B's shapes (32 x 4096, MLP 11008, vocab 32000)",
    ),
    "LLaMA-13B (decapoda)": (
        "meta-llama/Llama-2-13b-hf",
        "LLaMA-1 13B has Llama-2-13B's shapes (40 x 5120, MLP 13824, vocab 32000)",
    ),
    "Qwen-7B-Chat": ("Qwen/Qwen-7B", "chat fine-tune of Qwen-7B (same shapes)"),
    "Qwen-7B-Chat-Int4": ("Qwen/Qwen-7B", "GPTQ-int4 export of Qwen-7B-Chat (same shapes)"),
    "Qwen-72B-Chat-Int4": ("Qwen/Qwen-72B", "GPTQ-int4 export of Qwen-72B-Chat (same shapes)"),
    "Qwen2.5-7B-Instruct": ("Qwen/Qwen2.5-7B-Instruct", ""),
    "Qwen2.5-7B": ("Qwen/Qwen2.5-7B-Instruct", "base model of Qwen2.5-7B-Instruct (same shapes)"),
    "Qwen2.5-7B-Instruct-AWQ": (
        "Qwen/Qwen2.5-7B-Instruct",
        "AWQ export of Qwen2.5-7B-Instruct (same shapes)",
    ),
    "Qwen2.5-3B-Instruct": ("Qwen/Qwen2.5-3B", "instruct fine-tune of Qwen2.5-3B (same shapes)"),
    "Qwen2.5-3B": ("Qwen/Qwen2.5-3B", ""),
    "Llama 7B": ("meta-llama/Llama-2-7b-hf", "LLaMA-1 7B and Llama-2-7B have the same shapes"),
    "Llama 13B": ("meta-llama/Llama-2-13b-hf", "LLaMA-1 13B and Llama-2-13B have the same shapes"),
    "Llama 70B": (
        "meta-llama/Llama-2-70b-hf",
        "a 70B Llama in Dec 2023 is Llama-2-70B (LLaMA-1's largest is 65B)",
    ),
    "LLaMA-7B (hf conversion)": (
        "meta-llama/Llama-2-7b-hf",
        "LLaMA-1 7B has Llama-2-7B's shapes (32 x 4096, MLP 11008, vocab 32000)",
    ),
    "Mistral-7B-v0.2": (
        "mistralai/Mistral-7B-v0.1",
        "v0.2 base has v0.1's shapes (32 x 4096, MLP 14336, 8 KV heads, vocab 32000); v0.2 drops the sliding window",
    ),
    "OpenLLaMA-7B-v2": (
        "meta-llama/Llama-2-7b-hf",
        "OpenLLaMA 7B v2 has LLaMA-7B's shapes (32 x 4096, MLP 11008, vocab 32000)",
    ),
    "CodeLlama-7B": (
        "meta-llama/Llama-2-7b-hf",
        "CodeLlama-7B is trained from Llama-2-7B (32 x 4096, MLP 11008; vocab 32016 vs 32000)",
    ),
    "Qwen2-0.5B-Instruct": (
        "Qwen/Qwen2.5-0.5B",
        "Qwen2-0.5B has Qwen2.5-0.5B's shapes (its config: 24 x 896, MLP 4864, 14 heads / 2 KV heads, vocab 151936, tied)",
    ),
    "Qwen2-1.5B-Instruct": (
        "Qwen/Qwen2.5-1.5B",
        "Qwen2-1.5B-Instruct has Qwen2.5-1.5B's shapes (its config: 28 x 1536, MLP 8960, 12 heads / 2 KV heads, vocab 151936, tied)",
    ),
    "Qwen2-7B-Instruct": (
        "Qwen/Qwen2.5-7B-Instruct",
        "Qwen2-7B-Instruct has Qwen2.5-7B's shapes (its config: 28 x 3584, MLP 18944, 28 heads / 4 KV heads, vocab 152064)",
    ),
    "Qwen2-72B-Instruct": (
        "Qwen/Qwen2.5-72B-Instruct",
        "Qwen2-72B has Qwen2.5-72B's shapes (80 x 8192, 8 KV heads, MLP 29568)",
    ),
    "KempnerForge 7B (Llama-3-8B shapes)": (
        "meta-llama/Meta-Llama-3-8B",
        "KempnerForge's '7B' is dim 4096, 32 layers, 32 heads, 8 KV heads, ffn_dim_multiplier 1.3 (14336), "
        "vocab 128256, 8.03B params: Llama-3-8B's shapes",
    ),
    "DeepSeek-R1-0528-Qwen3-8B": (
        "Qwen/Qwen3-8B",
        "distilled fine-tune of Qwen3-8B (its config.json: Qwen3ForCausalLM, 36 x 4096, vocab 151936)",
    ),
}
CONFIG_OVERRIDES: dict[str, dict[str, Any]] = {
    "Mistral-7B-v0.2": {"sliding_window": None},  # its config.json: "sliding_window": null
    "Mistral-7B-Instruct-v0.2": {"sliding_window": None},
}
"""Where a measured model's config.json differs from its stand-in's in a key the planner reads."""
# Nominal sizes in rule-of-thumb rows: a catalog model of that class, its terms scaled to the nominal size.
GENERIC_MODELS: dict[str, str] = {
    "7B (generic)": "meta-llama/Llama-2-7b-hf",
    "7.5B (generic)": "meta-llama/Llama-2-7b-hf",
    "70B (generic)": "meta-llama/Llama-2-70b-hf",
}
UNSUPPORTED_MODELS: dict[str, str] = {
    "bigscience/T0_3B": "encoder-decoder (T5); the planner models decoder-only causal LMs",
    "bigscience/mt0-xxl": "encoder-decoder (mT5); the planner models decoder-only causal LMs",
    "t5-3b": "encoder-decoder (T5); the planner models decoder-only causal LMs",
    "bigcode/octocoder": "StarCoder (GPTBigCode, multi-query attention) is not in the catalog",
    "LLaMA-65B": "LLaMA-65B (80 x 8192, MLP 22016, no GQA) is not in the catalog",
    "Llama 33B": "LLaMA-33B (60 x 6656, MLP 17920) is not in the catalog",
}
GPU_NAMES: dict[str, str] = {
    "RTX 4090 24GB": "rtx4090",
    "RTX 3090 24GB": "rtx3090",
    "A100 80GB": "a100-80gb-sxm",
    "A100-SXM4-80GB": "a100-80gb-sxm",
    "A100-SXM 40GB": "a100-40gb-sxm",
    "T4 16GB": "t4",
    "AMD MI300X 192GB": "mi300x",
    "MI250X (one GCD)": "mi250x-gcd",
    "A100": "a100-80gb-sxm",  # capacity not stated: only speed is compared (same bf16 rate at 40/80 GB)
    "80GB GPU": "a100-80gb-sxm",
    "48GB GPU": "rtxa6000",
    "": "a100-80gb-sxm",  # rule-of-thumb rows name no GPU; their terms do not depend on it
    "GPU (unstated)": "a100-80gb-sxm",  # memory counters do not depend on the GPU; no verdict or speed compared
    "H100 80GB SXM": "h100-sxm",
    "RTX 6000 Ada 48GB (stated: 'A6000 Ada 48GB')": "rtx6000ada",  # Answer.AI's name for the RTX 6000 Ada Generation
    "40GB GPU (stated: '2X40GB GPUs')": "a100-40gb-sxm",  # GPU model unstated: memory counter only, no verdict
    # ms-swift headers naming the test machine without its capacity: memory counters only, no verdict.
    "A100 (stated: 'test env: 4 * A100')": "a100-80gb-sxm",
    "A100 (stated: 'Env: 4 * A100')": "a100-80gb-sxm",
    "H20 (stated: 'test_env: 4 * H20')": "a100-80gb-sxm",  # H20 not in the catalog; counters only
    # Decode-speed rows (published_decode.csv dec-25..): the names as each source writes them.
    "A100 (80 GB implied by the batch's KV cache)": "a100-80gb-sxm",  # > 40 GB of fp16 KV; form factor unstated
    "A100 (80 GB implied; PCIe, no NVLink)": "a100-80gb-pcie",  # fp16 Llama-2-70B on 2 cards needs 80 GB each
    "A10G 24GB (PCIe)": "a10g",
    "V100 (variant unstated)": "v100-sxm2-16gb",  # 900 GB/s on every V100 variant; decode speed only
    # Training-speed rows (published_train_speed.csv spd-50..): the names as each source writes them.
    "H100 80GB (SXM implied: README's 989 TFLOPS peak)": "h100-sxm",  # fms-fsdp's MFU uses the SXM peak
    "H200 141GB (form factor unstated)": "h200-sxm",  # KempnerForge's MFU divides by 989 TFLOPS, the SXM peak
    # torchao README's 'a single NVIDIA-H100 GPU': its 1904.75 GB/s achieved at batch 1 would be 95 % of an H100
    # PCIe's 2.0 TB/s, so the SXM card (3.35 TB/s) is assumed; decode speed only.
    "H100 (variant unstated)": "h100-sxm",
    # XiongjieDai/GPU-Benchmarks-on-LLM-Inference (dec-93..): the GPU cells as the README writes them (RunPod cards).
    "4080 16GB": "rtx4080",
    "3090 24GB": "rtx3090",
    "4090 24GB": "rtx4090",
    "RTX A6000 48GB": "rtxa6000",
    "RTX 6000 Ada 48GB": "rtx6000ada",
    "L40S 48GB": "l40s",
    "A100 PCIe 80GB": "a100-80gb-pcie",
    "A100 SXM 80GB": "a100-80gb-sxm",
    "H100 PCIe 80GB": "h100-pcie",
}
# What a row ran, by the start of its `method` cell, when the planner cannot express it (ms-swift example
# headers record every figure; these say why a figure is not compared).
METHOD_SKIPS: dict[str, str] = {
    "megatron": "Megatron-Core run (TP/PP/EP/CP layouts, distributed optimizer, Megatron's own buffers): the "
    "planner models transformers Trainer runs under DDP/DeepSpeed/FSDP",
    "rlhf": "RLHF/preference training: compared in objective_accuracy.md, whose published_objectives.csv "
    "states each objective's settings (reference, generations, rollout) that this schema lacks",
    "multimodal": "vision/audio-language model: compared in objective_accuracy.md, whose "
    "published_objectives.csv states the images per sample and their size that this schema lacks",
    "unmeasured": "the header names 80 GB cards (the hardware the example needs), not a measured peak",
    "embedding/reranker/classification": "embedding/reranker/classification head and loss (pairs/lists per "
    "sample): not a causal-LM step",
    "sequence parallel": "sequence parallelism (Ulysses/ring) splits activations over GPUs: not modelled",
    "inference (transformers)": "transformers generate() batches without a paged KV cache: the serving "
    "model is a paged-KV engine's",
    "quantization export": "a GPTQ calibration job, not training or serving",
    "padding-free": "padding-free batches: tokens per step are the sum of the batch's real lengths, which "
    "the header does not state",
    "lora, Muon optimizer": "Muon optimizer states are not modelled",
    "lora on HQQ": "HQQ 4-bit weights (group size, zero/scale layout) are not modelled",
    "device_map": "device_map splits the layers over GPUs (naive pipeline): not modelled",
    "full, GaLore": "GaLore's low-rank projected optimizer states are not modelled",
    "LISA": "LISA (a few layers trained at a time) is not modelled",
    "tuner": "this PEFT tuner (AdaLoRA, adapter, BOFT, Bone, LLaMA-Pro) is not modelled",
    "full, FlashAttention-3": "FlashAttention-3 is not a separate attention implementation in the planner "
    "(its twin row, fa2, is compared)",
}
UNIT_OVERRIDES: dict[str, tuple[int, str]] = {
    "iss-01": (GiB, "'13G' read off nvidia-smi, which counts MiB: taken as GiB"),
    "est-03": (GiB, "the blog writes GB but its arithmetic is GiB (320 KiB x 128,000 tokens = 39.06 GiB)"),
}

AA_WHY = (
    "fsdp_qlora train.py of 2024-03: pure bf16 (adapters and AdamW states bf16: --adapter-dtype model; FSDP1's "
    "FlatParameter needs one dtype per unit and peft of the time moved adapters to the base weight's dtype), LoRA "
    "dropout 0.1, sdpa, dummy data at full length, no prepare_model_for_kbit_training; torch AdamW (foreach); "
    "transformers 4.38/4.39 (the releases of 2024-02/03; train.py imports LLAMA_ATTENTION_CLASSES, 4.36+): full_legacy "
    "loss (fp32 logits and a shifted copy in Llama/Mistral forward, 4.31-4.45); train.py (@02586ac: `output = "
    "model(...)`, `loss.backward()`, then `output = None`) keeps the output's fp32 logits through backward: "
    "--keep-output"
)
"""Answer.AI's fsdp_qlora rows (published_more.csv pm-01..pm-25): what train.py did that the table leaves unsaid."""

_QWEN_LENGTHS = (1, 6144, 14336, 30720, 63488, 129024)
QWEN_SPEED_PROMPTS = _QWEN_LENGTHS[:4] + _QWEN_LENGTHS * 3 + (1,) + _QWEN_LENGTHS
"""Input lengths of published_decode.csv dec-25..dec-53 (Qwen2.5 speed benchmark: 3B, 7B, 14B, 32B, 72B rows)."""
QWEN2_SPEED_PROMPTS = _QWEN_LENGTHS[:4] * 2 + _QWEN_LENGTHS + (1,) + _QWEN_LENGTHS
"""Input lengths of published_decode.csv dec-69..dec-89 (Qwen2 speed benchmark: 0.5B, 1.5B, 7B, 72B rows)."""

# What a row leaves unsaid and we must assume, per row id, with the reason shown in the report. Keys are
# TrainSetup/LoraSetup/ServeSetup fields, plus `tokens` (kv_cache_gb rows).
ASSUMPTIONS: dict[str, tuple[dict[str, Any], str]] = {
    "tt2-02": ({"lora_dropout": 0.0}, "torchtune LoRA has no dropout by default; seq 2048 taken as filled"),
    "tt2-04": (
        {"lora_dropout": 0.0},
        "torchtune LoRA has no dropout; CSV seq 4096 used (its note says 2048)",
    ),
    "ttlora-01": (
        {"lora_dropout": 0.0},
        "seq 512 is a truncation cap (alpaca samples are shorter): upper bound",
    ),
    "ttlora-02": (
        {"lora_dropout": 0.0},
        "seq 512 is a cap; the LM-head adapter is r64 × (4096 + 32000) = 2.3M params, ~37 MB with its states",
    ),
    "tt-readme-01": ({"lora_dropout": 0.0}, "seq 512 is a truncation cap: upper bound"),
    "hf4-01": (
        {"lora_rank": 8, "lora_dropout": 0.0, "double_quant": False, "attention": "eager"},
        "LoRA unstated: peft defaults (r 8 on q_proj,v_proj); bitsandbytes default (no double quant); eager attention (transformers 4.30)",
    ),
    "hf4-02": (
        {"lora_rank": 8, "lora_dropout": 0.0, "double_quant": False, "attention": "eager"},
        "LoRA unstated: peft defaults (r 8 on q_proj,v_proj); no double quant; eager attention (transformers 4.30)",
    ),
    "hf4-03": (
        {"lora_rank": 8, "lora_dropout": 0.0, "double_quant": False, "attention": "eager"},
        "LoRA unstated: peft defaults (r 8 on q_proj,v_proj); no double quant (the row's point); eager attention",
    ),
    "lf-01": (
        {"lora_dropout": 0.1, "attention": "eager"},
        "LLaMA-Factory defaults then (dropout 0.1); HF eager attention; seq 1024 a cap",
    ),
    "lf-02": ({"lora_dropout": 0.1, "attention": "eager"}, "LLaMA-Factory defaults then; HF eager attention"),
    "lf-03": (
        {"lora_dropout": 0.1, "attention": "eager", "double_quant": True},
        "LLaMA-Factory defaults then (double quantization on, dropout 0.1); eager attention; seq 1024 a cap",
    ),
    "us-01": (
        {
            "lora_dropout": 0.0,
            "grad_ckpt": True,
            "attention": "flash",
            "double_quant": False,
            "kbit_upcast": True,
        },
        "HF + FA2 baseline: checkpointing on (no 28k context fits 80 GB without it), dropout 0, no double quant",
    ),
    "us-02": (
        {
            "lora_dropout": 0.0,
            "grad_ckpt": True,
            "attention": "flash",
            "double_quant": False,
            "kbit_upcast": True,
        },
        "HF + FA2 baseline: checkpointing on, dropout 0, no double quant",
    ),
    "iss-01": ({}, "seq 1024 is a cutoff (demo data mostly shorter): upper bound"),
    "iss-02": ({"prefill_chunk": 384}, "Meta reference code: KV for 8 x 384 pre-allocated, short prompts"),
    "iss-03": ({"context": 512, "prefill_chunk": 512}, "chat prompt length not stated: 512 tokens assumed"),
    "iss-04": ({"context": 512, "prefill_chunk": 512}, "chat prompt length not stated: 512 tokens assumed"),
    "vllm-01": (
        {"context": 8192, "prefill_chunk": 8192},
        "vLLM profiles max_num_batched_tokens = max_model_len = 8192 tokens (no chunked prefill)",
    ),
    **{
        f"dec-{i}": (
            {"prompt": 256},
            "benchmark_latency: the batch's 256-token prompts are prefilled, then 256 decode steps",
        )
        for i in (21, 22, 23, 24)
    },
    **{
        f"dec-{i}": (
            {"prompt": prompt},
            f"Qwen2.5 speed benchmark: one {prompt}-token prompt prefilled, then 2048 generated (2048 / generate() time)",
        )
        for i, prompt in zip(range(25, 54), QWEN_SPEED_PROMPTS, strict=True)
    },
    **{
        f"dec-{i}": (
            {"prompt": prompt},
            f"gptSessionBenchmark static batch: the batch's {prompt}-token prompts are prefilled, then the output length",
        )
        for i, prompt in {54: 128, 55: 128, 56: 2048}.items()
    },
    **{
        f"dec-{i}": (
            {"prompt": 7},
            "llm-perf-bench vLLM: benchmark_latency --input-len 7 --output-len 256 --batch-size 1, Speed = 256 / latency",
        )
        for i in (58, 60, 62, 64)
    },
    **{
        f"dec-{i}": (
            {"prompt": prompt},
            f"Qwen2 speed benchmark (vLLM 0.4.2): one {prompt}-token prompt prefilled, then 2048 generated "
            "(taken as 2048 / generate() time, as the doc's Qwen2.5 version times it)",
        )
        for i, prompt in zip(range(69, 90), QWEN2_SPEED_PROMPTS, strict=True)
    },
    **{
        f"dec-{i}": (
            {"prompt": 6},
            "torchao generate.py: prompt 'Hello, my name is' (about 6 tokens with BOS) prefilled, then 200 generated; "
            "tokens/s = 200 / generate() time",
        )
        for i in (90, 91, 92)
    },
    "vllm-02": (
        {"context": 8192, "prefill_chunk": 8192},
        "vLLM profiles max_num_batched_tokens = max_model_len = 8192 tokens (no chunked prefill)",
    ),
    "est-02": (
        {"double_quant": True},
        "4-bit taken as NF4 with double quantization (LLaMA-Factory's QLoRA default)",
    ),
    "est-03": ({"tokens": 128_000}, "the blog's '128k' is 128,000 tokens (its 39.06 figure), not 131,072"),
    "ms-10": (
        {"attention": "flash", "variable_lengths": False},
        "packing: every step one filled 2048-token pack (one tensor shape)",
    ),
    "ms-15": (
        {"attention": "flash", "variable_lengths": False},
        "packing to 8192 tokens (one tensor shape); ZeRO-3 on 4 GPUs",
    ),
    "ms-08": ({"double_quant": False}, "ms-swift leaves bnb double quantization off unless asked"),
    "ms-105": (
        {"loss": "fused_linear", "modules_to_save": ("embed_tokens", "lm_head")},
        "--use_liger_kernel true: Liger fused linear cross-entropy; --modules_to_save embed_tokens lm_head",
    ),
    "ms-106": (
        {"loss": "fused_linear", "attention": "flash", "variable_lengths": False},
        "packing to 8192 (one tensor shape), Liger fused linear cross-entropy, flash_attn",
    ),
    "ms-114": (
        {"loss": "fused_linear", "attention": "flash", "variable_lengths": False},
        "packing to 16384 (one tensor shape), Liger, FlashAttention-2; ZeRO-3 on 4 GPUs",
    ),
    "ms-129": (
        {"loss": "fused_linear", "attention": "flash", "variable_lengths": False},
        "packing to 8192 (one tensor shape), Liger, flash_attn; ZeRO-3 on 4 GPUs",
    ),
    "ms-130": ({"attention": "flash"}, "no packing, no Liger: batch 1 padded, 8192 a cap; ZeRO-3 on 4 GPUs"),
    "ms-153": (
        {"loss": "fused_linear", "attention": "flash", "variable_lengths": False},
        "packing to 16384 (one tensor shape), Liger, flash_attn; ZeRO-3 on 4 GPUs",
    ),
    "ms-159": (
        {"loss": "fused_linear", "attention": "flash"},
        "batch 8 padded to its longest sample, 8192 a cap (upper bound); Liger, flash_attn; ZeRO-3 on 4 GPUs",
    ),
    "ms-183": ({}, "self-cognition only, no max_length: 512 tokens taken as the longest sample"),
    "ms-184": ({"loss": "fused_linear"}, "--use_liger_kernel true: Liger fused linear cross-entropy"),
    "ms-189": (
        {"dora": True},
        "--use_dora true; self-cognition only: 512 tokens taken as the longest; DoRA modelled as peft 0.21 runs it "
        "(planner/dora.py); the header dates from ms-swift 3.0 (b40f31df7, 2024-12-05, peft >=0.11,<0.14), whose "
        "peft 0.13 DoRA always multiplies by a kept copy of the base weight again, which would count more, not less",
    ),
    "ms-194": (
        {},
        "--tuner_backend unsloth: Unsloth's profile (fused loss); its checkpoint offload is not modelled; "
        "self-cognition only: 512 tokens taken as the longest",
    ),
    # published_more.csv (pm-*): what each source leaves unsaid, as its notes column records.
    **{
        f"pm-{i:02d}": (
            {
                "lora_dropout": 0.1,
                "attention": "sdpa",
                "kbit_upcast": False,
                "loss": "full_legacy",
                "optimizer_impl": "foreach",
                "adapter_dtype": "model",
                "keep_output": True,
            }
            | ({"fsdp_cpu_offload": True} if i in (14, 15, 16, 17, 18, 19, 20) else {}),
            AA_WHY + ("; FSDP CPUOffload(offload_params=True)" if i in (14, 15, 16, 17, 18, 19, 20) else ""),
        )
        for i in range(1, 26)
    },
    **{
        f"pm-{i}": (
            {
                "lora_dropout": 0.1,
                "attention": "flash",
                "kbit_upcast": False,
                "loss": "full_legacy",
                "optimizer_impl": "foreach",
                "adapter_dtype": "fp32",
            }
            | ({"fsdp_cpu_offload": True} if i == 26 else {}),
            "peft examples/sft on TRL 0.8 (2024-03): packed 2048-token sequences, FlashAttention-2, LoRA dropout 0.1, TRL skips "
            "prepare_model_for_kbit_training and its bf16 cast of the LoRA layers (peft_module_casting_to_bf16) for "
            "sharded QLoRA, so the adapters stay peft's fp32; adamw_torch (foreach); transformers > 4.38.2 as the doc "
            "requires, so 4.39 in 2024-03: full_legacy loss (Llama forward's fp32 logits and shifted copy, 4.31-4.45)"
            + ("; FSDP offload_params" if i == 26 else ""),
        )
        for i in (26, 27, 28, 29)
    },
    "pm-30": (
        {"attention": "eager", "loss": "full", "optimizer_impl": "foreach", "variable_lengths": True},
        "stanford_alpaca train.py of 2023-03: fp32 model under FSDP with bf16 autocast, eager attention, adamw_torch; "
        "512 is a truncation cap (batch 1, no padding beyond the sample)",
    ),
    "pm-31": (
        {"loss": "full_legacy"},
        "llama-recipes defaults: fp32 model and AdamW, packed 4096-token samples, batch 4, no checkpointing; "
        "transformers of 2024-03 (4.38/4.39): full_legacy loss (Llama forward's fp32 logits and shifted copy, 4.31-4.45)",
    ),
    "pm-32": (
        {"lora_dropout": 0.0, "loss": "full", "optimizer_impl": "foreach", "variable_lengths": True},
        "torchtune of 2024-04 (full CE, AdamW foreach, no LoRA dropout); seq 512 is alpaca's truncation cap: upper bound",
    ),
    **{
        f"qwen-0{i}": (
            {},
            "DeepSpeed fp16: module and adapters in fp16 with an fp32 master and fp32 moments (as measured with DeepSpeed 0.19.8)",
        )
        for i in (4, 5, 6, 7)
    },
    **{
        f"spd-{i}": (
            {"fsdp_sharding": "hybrid_shard", "fsdp_shard_group": 8},
            "fms-fsdp HSDP (README 'Sharding Strategy: HSDP'; sharding_strategy=hsdp): sharded within each 8-GPU node, "
            "replicated across nodes",
        )
        for i in (50, 51, 54, 55)
    },
}
_FMS_FSDP_NETWORK = (
    "fms-fsdp README throughput header: 'A100 80G 128 GPUs with 400Gbps' and 'H100 96 GPUs with 800 Gbps', read as "
    "each node's network (IBM's Vela A100 nodes are on standard Ethernet with 100G links, "
    "research.ibm.com/blog/AI-supercomputer-Vela-GPU-cluster; 400 Gb/s per GPU would be 3.2 Tb/s per node)"
)
NETWORKS: dict[str, tuple[float, str]] = {
    **{f"spd-{i}": (400.0, _FMS_FSDP_NETWORK) for i in (50, 52, 54)},
    **{f"spd-{i}": (800.0, _FMS_FSDP_NETWORK) for i in (51, 53, 55)},
}
"""Network between nodes a row's source states, Gb/s per node, with the quote; other multi-node rows are
planned at hardware.DEFAULT_INTER_NODE_BYTES_PER_S."""
NODE_SIZES: dict[str, tuple[int, str]] = {
    "spd-60": (
        4,
        "KempnerForge header 'Hardware: 8 nodes, 4x NVIDIA H200 (141 GB) per node': 32 GPUs as 8 nodes of 4",
    ),
    **{
        f"spd-{i}": (
            2,
            "Qwen README 'we experiment using two servers, each containing two A100-SXM4-80G GPUs' (row '7B | LoRA "
            "(multinode) | 2 | 2': nodes, GPUs per node): 4 GPUs as 2 nodes of 2",
        )
        for i in range(29, 35)
    },
}
"""GPUs per node where a source states a layout other than the planner's nodes of 8."""
# What a whole source states (not assumed), by id prefix; a row's own ASSUMPTIONS win.
SOURCE_SETTINGS: dict[str, dict[str, Any]] = {
    # ms-swift: lora_dropout 0.05 (swift/arguments/tuner_args.py); unpacked data padded per batch, so the
    # lengths vary step to step (the allocator sees many tensor sizes), except the packing rows below.
    "ms-": {"lora_dropout": 0.05, "variable_lengths": True},
    # alpaca-style data, unpacked and truncated at the cap: lengths vary step to step.
    "ttlora-": {"variable_lengths": True},
    "tt-readme-": {"variable_lengths": True},
    "tt2-": {"variable_lengths": True},
    "lf-": {"variable_lengths": True},
    "iss-01": {"variable_lengths": True},
    "qwen-": {
        "attention": "flash",
        "lora_dropout": 0.05,
    },  # README: flash-attention 2; finetune.py: dropout 0.05
    "hfq-": {"attention": "eager"},  # transformers of Aug 2023 had no SDPA path for Llama
}

# Each row is estimated under the runtime profile of the framework that measured it (the CSV's `runtime`
# column, profiles/runtimes/NAME.yaml). A profile holds that framework's defaults as read at one recent
# commit; where the version a source measured with had another default, the source's era wins, by id prefix,
# with the evidence. Keys are RuntimeKnobs fields.
RUNTIME_ERAS: dict[str, tuple[dict[str, Any], str]] = {
    "ms-": (
        {"optimizer_impl": "foreach"},
        "ms-swift 3.x header (written 2024-12 and after, e.g. examples/train/full/train.sh from b40f31df7 "
        "2024-12-05) on transformers 4.4x (4.46+ by 2024-12: the loss in loss_function, not full_legacy): default optim adamw_torch = torch.optim.AdamW, foreach on CUDA; "
        "adamw_torch_fused became the default only with torch >= 2.8 (huggingface/transformers PR #37358, 2025-07)",
    ),
    "tt": (
        {"loss": "full", "optimizer_impl": "foreach"},
        "torchtune of 2024-04/05: full cross-entropy (chunked CE arrived in pytorch/torchtune PR #1390, "
        "2024-08-22); configs' torch.optim.AdamW without fused=True, foreach on CUDA",
    ),
    "qwen-": (
        {
            "loss": "full",
            "optimizer_impl": "fused",
            "reduce_bucket_elements": 200_000_000,
            "ds_overlap_comm": True,
        },
        "transformers 4.32 (2023): full cross-entropy (TRL chunked_nll is PR #5575, 2026-04); DeepSpeed's "
        "FusedAdam from finetune.py's ds_config (in place); QwenLM/Qwen@2df8e8a finetune/ds_config_zero2.json: "
        "reduce_bucket_size 2e8 with overlap_comm (two buckets)",
    ),
    "lf-": (
        {"loss": "full_legacy", "optimizer_impl": "foreach"},
        "LLaMA-Factory of 2023-12 on transformers 4.3x: Llama forward's fp32 logits and shifted copy (full_legacy: "
        "4.31-4.45, transformers 4.38.2 modeling_llama.py), adamw_torch (foreach; default "
        "since huggingface/transformers PR #25109, 2023-07)",
    ),
    "iss-01": (
        {"loss": "full", "optimizer_impl": "fused"},
        "DeepSpeed ZeRO-3 offload: DeepSpeedCPUAdam on host",
    ),
    "us-": (
        {"loss": "full", "optimizer_impl": "foreach", "adapter_dtype": "fp32"},
        "HF + FA2 baseline of 2024-12 (transformers 4.4x): full cross-entropy (4.46+ by then, so not full_legacy), "
        "adamw_torch (foreach); the baseline's script is not published, Unsloth's benchmarks train through TRL's "
        "SFTTrainer, which in 2024-12 (TRL 0.12/0.13) prepared a non-sharded 4-bit base with peft's "
        "prepare_model_for_kbit_training (huggingface/trl v0.12.2 trl/trainer/sft_trainer.py:245-260: fp32 norms, "
        "embeddings and LM head, so an fp32 residual stream) and left the LoRA layers in peft's fp32 (its bf16 cast "
        "of them, f100ca34c 2023-12-19, was removed by 99f2c94b2 2024-05-15); its peft_module_casting_to_bf16 "
        "(v0.12.2 trl/trainer/utils.py:842-849) then casts the embeddings and LM head back to bf16, which is not "
        "modelled: they are counted in fp32, 2 x vocab x hidden x 2 B more than the run held (2.0 GiB for 8B, "
        "3.9 GiB for 70B)",
    ),
    "hf4-": (
        {"loss": "full", "optimizer_impl": "for_loop", "adapter_dtype": "fp32"},
        "transformers 4.30 (2023-05): full cross-entropy (not full_legacy: the fp32 upcast in Llama's forward came in "
        "4.31.0), default optim adamw_hf (transformers' own AdamW, "
        "one parameter at a time; huggingface/transformers PR #25109 switched to adamw_torch in 2023-07); TRL of "
        "2023-05 left peft's fp32 adapters (its bf16 cast came in huggingface/trl f100ca34c, 2023-12-19)",
    ),
    "peft-": (
        {"loss": "full", "optimizer_impl": "foreach"},
        "peft README of 2023 (transformers 4.2x/4.3x): full cross-entropy",
    ),
}


class Skip(Exception):
    """A row the planner cannot express; the message says why."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Expressed:
    """A published row turned into a planner question."""

    model_id: str
    """Catalog id of the model estimated."""
    setup: TrainSetup | ServeSetup
    """The configuration."""
    cluster: Cluster
    """The hardware."""
    scale: float = 1.0
    """Rule-of-thumb rows: nominal params / catalog model params (terms are scaled by it)."""
    notes: tuple[str, ...] = field(default=())
    """Mappings and assumptions made to express the row."""
    allocator: AllocatorSettings = AllocatorSettings()
    """How the run drove the caching allocator (variable sequence lengths, expandable segments)."""
    config_overrides: tuple[tuple[str, Any], ...] = ()
    """config.json keys where the measured model differs from the catalog model standing in for it."""

    @property
    def spec(self) -> ModelSpec:
        """The catalog model's spec, with the measured model's differences (`config_overrides`)."""
        if not self.config_overrides:
            return catalog_spec(self.model_id)
        stand_in = catalog_spec(self.model_id)
        config = dict(stand_in.hf_config) | dict(self.config_overrides)
        return spec_from_hf_config(config, name=self.model_id, source=stand_in.source)


# --- parsing the free-text columns --------------------------------------------------------------------


def parse_int(text: str, default: int | None = None) -> int:
    text = text.strip()
    if not text:
        if default is None:
            raise Skip("a required number is blank")
        return default
    return int(float(text))


def _model(row: dict[str, str]) -> tuple[str, float, list[str]]:
    name = row["model"].strip()
    if name in UNSUPPORTED_MODELS:
        raise Skip(UNSUPPORTED_MODELS[name])
    if name in GENERIC_MODELS:
        model_id = GENERIC_MODELS[name]
        scale = float(row["params_b"]) * 1e9 / total_params(catalog_spec(model_id))
        return model_id, scale, [f"'{name}': terms of {model_id} scaled to {row['params_b']}B params"]
    if name in MODEL_NAMES:
        model_id, why = MODEL_NAMES[name]
        return model_id, 1.0, [f"{name} → {model_id}" + (f" ({why})" if why else "")]
    model_id = find_catalog_id(name)
    if model_id is None:
        raise Skip(f"{name} is not in the catalog")
    return model_id, 1.0, []


def _quant(text: str) -> tuple[str, bool]:
    """(planner quant, double_quant) for a quant cell."""
    t = text.lower()
    if "torchao" in t:
        return "nf4-torchao", False  # torchao NF4Tensor: double-quantized scalers by construction
    if t in ("", "none") or "kv cache" in t:
        return "none", False
    if "gptq" in t:
        return "gptq", False
    if "int8" in t:
        return "int8", False
    if "nf4" in t or "4-bit" in t or "4bit" in t:
        return "nf4", "double" in t
    raise Skip(f"quantization {text!r} is not one the planner models")


def _targets(text: str) -> tuple[tuple[str, ...], list[str]]:
    t = text.split("(")[0].strip().lower()
    if not t:
        return ("q_proj", "v_proj"), ["LoRA targets unstated: q_proj,v_proj (peft's default for Llama)"]
    if t in ("all linear", "all-linear"):
        return ("all-linear",), []
    short = {
        "q": "q_proj",
        "k": "k_proj",
        "v": "v_proj",
        "o": "o_proj",
        "gate": "gate_proj",
        "up": "up_proj",
        "down": "down_proj",
    }
    names = [short.get(p.strip(), p.strip()) for p in t.split(",") if p.strip()]
    notes = []
    if "lm_head" in names:
        names.remove("lm_head")
        notes.append("lm_head adapter not modelled (dropped)")
    return tuple(names), notes


def _optimizer(text: str) -> tuple[str, list[str]]:
    t = text.lower()
    if "paged" in t:
        if "8bit" in t or "8-bit" in t:
            return "paged-adamw-8bit", []
        raise Skip(
            "bitsandbytes paged AdamW keeps fp32 states in unified memory that the driver evicts to host under "
            "pressure, so device usage is not a function of the set-up"
        )
    if t == "" or "adam" in t:
        return "adamw", []
    raise Skip(f"optimizer {text!r} is not modelled")


def _precision(text: str, method: str) -> str:
    t = text.lower()
    if "amp" in t:
        if method == "full":
            return "amp-fp16" if "fp16" in t else "amp-bf16"
        return "fp16" if "fp16" in t else "bf16"  # LoRA: a 16-bit base with fp32 adapters either way
    if t.startswith("fp32"):
        return "fp32"
    if t.startswith("fp16"):
        return "fp16"
    return "bf16"


def _parallel(text: str) -> tuple[Parallelism, int]:
    """(Parallelism, serving tp) for a parallel cell."""
    t = text.lower()
    offload = "optimizer+params" if "offload" in t and ("param" in t or "offload_config" in t) else "none"
    if t in ("", "single", "ddp"):
        return Parallelism(), 1
    if t.startswith("fsdp") or "zero3" in t:
        return Parallelism(zero=3, offload=offload), 1  # type: ignore[arg-type]
    if "zero2" in t:
        return Parallelism(zero=2), 1
    if "zero1" in t:
        return Parallelism(zero=1), 1
    if t.startswith("tp"):
        return Parallelism(), 0  # serving: tp = the GPU count
    raise Skip(f"parallel layout {text!r} is not modelled")


def _cluster(row: dict[str, str]) -> Cluster:
    """The row's GPUs as nodes of 8 (or its source's `NODE_SIZES`), over its `NETWORKS` speed where stated."""
    gpu = row["gpu"].strip()
    if gpu not in GPU_NAMES:
        raise Skip(f"GPU {gpu!r} has no catalog mapping")
    n = parse_int(row["num_gpus"], 1)
    network = f"@{NETWORKS[row['id']][0]:g}gbps" if row["id"] in NETWORKS else ""
    per_node = NODE_SIZES.get(row["id"], (8, ""))[0]
    if n > per_node and n % per_node == 0:
        return parse_cluster(f"{n // per_node}x{per_node}x{GPU_NAMES[gpu]}{network}")
    return parse_cluster(f"{n}x{GPU_NAMES[gpu]}{network}")


def runtime_knobs(row: dict[str, str], assumed: dict[str, Any]) -> tuple[RuntimeKnobs, list[str]]:
    """The RuntimeKnobs a training row ran with: its runtime's profile defaults, then the source's era
    (`RUNTIME_ERAS`), then what the row itself states (`ASSUMPTIONS` / `SOURCE_SETTINGS` knob keys)."""
    name = row.get("runtime", "").strip()
    profiles = runtime_profiles()
    if name not in profiles or profiles[name].task != "train":  # e.g. the ZeRO paper's model-state formulas
        return RuntimeKnobs(ds_buckets=False), [
            "no framework profile: model states only (no DeepSpeed buffers)"
        ]
    profile = get_runtime(name, "train")
    knobs = {d.option: profile.value(d.option) for d in profile.defaults if d.option in TRAIN_KNOB_OPTIONS}
    notes = []
    era, why = next(
        ((v, w) for prefix, (v, w) in RUNTIME_ERAS.items() if row["id"].startswith(prefix)), ({}, "")
    )
    if era:
        knobs |= era
        notes.append(f"runtime {name} as of the measurement: {why}")
    knobs |= {k: v for k, v in assumed.items() if k in TRAIN_KNOB_OPTIONS}
    return RuntimeKnobs(name=name, **knobs), notes


VLLM_V0_SOURCES = (
    "vllm-project/vllm pull request #2192",  # 2023-12, vLLM 0.2.x
    "QwenLM/Qwen2.5 docs/source/benchmark/speed_benchmark.rst",  # vLLM 0.4.2 (Qwen2) and 0.6.3 (Qwen2.5)
    "mlc-ai/llm-perf-bench",  # 2023-11
    "ROCm blog 'Enhancing vLLM Inference on AMD GPUs'",  # 2024-10, vLLM 0.6.x
)
"""Sources that measured vLLM's V0 engine (the default before 0.8.0)."""
VLLM_V0_GRAPH_MAX_CONTEXT = 8192
VLLM_V0_GRAPH_NOTE = (
    "vLLM V0 engine: decode CUDA graphs cover contexts up to max_context_len_to_capture (max_seq_len_to_capture "
    "from 0.5), default 8192; 'When a sequence has context length larger than this, we fall back to eager mode' "
    "(vllm/engine/arg_utils.py --max-context-len-to-capture help, v0.4; worker/model_runner.py use_captured_graph)"
)


def _graph_max_context(row: dict[str, str]) -> int:
    """vLLM V0's CUDA-graph context limit for rows that measured that engine (`VLLM_V0_SOURCES`); 0 otherwise."""
    v0 = row.get("runtime", "").strip().lower() == "vllm" and row["source"].startswith(VLLM_V0_SOURCES)
    return VLLM_V0_GRAPH_MAX_CONTEXT if v0 else 0


def _serve_runtime(row: dict[str, str]) -> ServeRuntime:
    """The serving engine a decode row measured (its runtime column); a decode row of an engine the speed
    model has no per-step cost for is skipped. Memory rows (hf, torch, ...) keep the default, vllm: the
    engine does not change the memory terms."""
    runtime = row.get("runtime", "").strip().lower()
    if runtime in SERVE_RUNTIMES:
        return runtime  # type: ignore[return-value]
    if row["metric"] in DECODE_METRICS:
        raise Skip(f"serving engine {runtime!r} has no decode step cost ({', '.join(SERVE_RUNTIMES)})")
    return "vllm"


def express(row: dict[str, str]) -> Expressed:
    """The planner question a published row asks; raises Skip with the reason when it cannot be asked."""
    method_cell = row["method"].strip()
    reason = next((why for start, why in METHOD_SKIPS.items() if method_cell.startswith(start)), None)
    if reason is not None:
        raise Skip(reason)
    model_id, scale, notes = _model(row)
    overrides = tuple(CONFIG_OVERRIDES.get(row["model"].strip(), {}).items())
    own, why = ASSUMPTIONS.get(row["id"], ({}, ""))
    stated = next((v for prefix, v in SOURCE_SETTINGS.items() if row["id"].startswith(prefix)), {})
    assumed = {**stated, **own}
    notes += [why] if why else []
    cluster = _cluster(row)
    notes += [why for table in (NETWORKS, NODE_SIZES) if (why := table.get(row["id"], (0, ""))[1])]
    quant, double_quant = _quant(row["quant"])
    double_quant = assumed.get("double_quant", double_quant)
    method = row["method"].strip().lower()
    parallel, serve_tp = _parallel(row["parallel"])
    if method.startswith("inference"):
        kv_fp8 = "fp8 kv" in (row["quant"] + " " + row["precision"]).lower()
        batch = parse_int(row["batch"], 1)
        context = assumed.get("context", parse_int(row["seq_len"], 2048))
        graph_max_context = _graph_max_context(row)
        if 0 < graph_max_context < context:
            notes.append(VLLM_V0_GRAPH_NOTE + f": this row's {context}-token context decodes eagerly")
        setup: TrainSetup | ServeSetup = ServeSetup(
            dtype="bf16" if row["precision"].lower().startswith("bf16") else "fp16",
            quant=quant,  # type: ignore[arg-type]
            kv_dtype="fp8" if kv_fp8 else "auto",
            context=context,
            concurrency=batch,
            prefill_chunk=assumed.get("prefill_chunk", batch * context),
            tp=serve_tp or cluster.world_size,
            runtime=_serve_runtime(row),
            graph_max_context=graph_max_context,
        )
        return Expressed(model_id=model_id, setup=setup, cluster=cluster, notes=tuple(dict.fromkeys(notes)),
                         config_overrides=overrides)  # fmt: skip
    if method not in ("full", "lora", "qlora"):
        raise Skip(f"method {row['method']!r} is not modelled")
    if method == "lora" and quant in ("nf4", "nf4-torchao"):
        method = "qlora"
    optimizer, opt_notes = _optimizer(row["optimizer"])
    lora = None
    if method != "full":
        targets, target_notes = _targets(row["lora_targets"])
        notes += target_notes + opt_notes
        if not row["lora_rank"].strip() and "lora_rank" not in assumed:
            notes.append("LoRA rank unstated: 16")
        lora = LoraSetup(
            rank=assumed.get("lora_rank", parse_int(row["lora_rank"], 16)),
            targets=targets,
            dropout=assumed.get("lora_dropout", 0.0),
            dora=assumed.get("dora", False),
        )
    attention = assumed.get("attention", "sdpa")
    grad_ckpt = row["grad_ckpt"].strip().lower()
    # A bitsandbytes base in TRL / LLaMA-Factory / HF-blog / QLoRA-paper scripts goes through peft's
    # prepare_model_for_kbit_training (fp32 upcast); Unsloth and torchtune prepare their own.
    source = row["source"].lower()
    own_preparation = "torchtune" in source or ("unsloth" in source and "llama-factory" not in source)
    kbit_upcast = assumed.get(
        "kbit_upcast", quant in ("nf4", "fp4", "int8") and method != "full" and not own_preparation
    )
    if kbit_upcast:
        notes.append("k-bit base prepared with peft's prepare_model_for_kbit_training (fp32 upcast)")
    knobs, knob_notes = runtime_knobs(row, assumed)
    notes += knob_notes
    if "optimizer_in_bwd" in row["optimizer"].lower():  # torchtune's optimizer_in_bwd: True
        knobs = replace(knobs, optimizer_in_backward=True)
        notes.append("optimizer step fused into backward (torchtune optimizer_in_bwd): one gradient alive")
    fsdp = row["parallel"].strip().lower()
    if fsdp.startswith("fsdp") and parallel.offload == "none":  # PyTorch FSDP, not DeepSpeed ZeRO-3
        parallel = Parallelism()
        knobs = replace(knobs, fsdp="fsdp2" if fsdp.startswith("fsdp2") else "fsdp1")
    setup = TrainSetup(
        method=method,  # type: ignore[arg-type]
        precision=_precision(row["precision"], method),  # type: ignore[arg-type]
        quant=quant,  # type: ignore[arg-type]
        double_quant=double_quant,
        lora=lora,
        optimizer=optimizer,  # type: ignore[arg-type]
        micro_batch=parse_int(row["batch"], 1),
        seq_len=parse_int(row["seq_len"], 2048),
        grad_ckpt=assumed.get("grad_ckpt", grad_ckpt != "false"),
        attention=attention,
        kbit_upcast=kbit_upcast,
        variable_lengths=assumed.get("variable_lengths", False),
        parallel=parallel,
        runtime=knobs,
    )
    return Expressed(
        model_id=model_id,
        setup=setup,
        cluster=cluster,
        scale=scale,
        notes=tuple(dict.fromkeys(notes)),
        allocator=AllocatorSettings(variable_lengths=assumed.get("variable_lengths", False)),
        config_overrides=overrides,
    )


# --- comparing -----------------------------------------------------------------------------------------

DECODE_METRICS = ("decode_tokens_per_s", "per_user_decode_tokens_per_s", "generate_tokens_per_s")
"""Serving-speed metrics: generated tokens/s of all sequences during decode, of one sequence (1 / time per
output token), and of a whole batch run (batch x output tokens / latency, the batch's prefill included)."""


def decode_figure(row: dict[str, str], setup: ServeSetup, speed: ServeSpeed) -> float:
    """Our figure for a decode row's metric. generate_tokens_per_s: batch x output / (batch x prompt /
    prefill tokens/s + output / per-sequence decode tokens/s), prompt from ASSUMPTIONS, output = context - prompt."""
    metric = row["metric"]
    if metric == "decode_tokens_per_s":
        return speed.decode_tokens_per_s
    if metric == "per_user_decode_tokens_per_s":
        return speed.per_user_decode_tokens_per_s
    if metric != "generate_tokens_per_s":
        raise Skip(f"metric {metric!r} is not a decode metric ({', '.join(DECODE_METRICS)})")
    prompt = ASSUMPTIONS.get(row["id"], ({}, ""))[0].get("prompt")
    if prompt is None:
        raise Skip("generate_tokens_per_s needs the prompt length (an ASSUMPTIONS 'prompt' entry)")
    output = setup.context - prompt
    seconds = (
        setup.concurrency * prompt / speed.prefill_tokens_per_s + output / speed.per_user_decode_tokens_per_s
    )
    return setup.concurrency * output / seconds


def config_summary(expressed: Expressed) -> str:
    """One-line description of what was estimated."""
    s, c = expressed.setup, expressed.cluster
    gpus = f"{c.world_size}×{c.accelerator.id}"
    if isinstance(s, ServeSetup):
        kv = " kv-fp8" if s.kv_dtype == "fp8" else ""
        quant = f" {s.quant}" if s.quant != "none" else ""
        return f"serve {s.dtype}{quant}{kv} {s.concurrency}×{s.context} tp{s.tp} on {gpus}"
    lora = ""
    if s.lora is not None and s.trains_adapters:
        t = "all-linear" if s.lora.all_linear else ",".join(x.removesuffix("_proj") for x in s.lora.targets)
        lora = f" r{s.lora.rank} {t}" + (f" drop{s.lora.dropout:g}" if s.lora.dropout else "")
        lora += " DoRA" if s.lora.dora else ""
    quant = (
        f" {s.quant}" + ("+dq" if s.double_quant and s.quant in ("nf4", "fp4") else "")
        if s.quant != "none"
        else ""
    )
    par = s.parallel
    zero = (
        f" zero{par.zero}" + (f" offload {par.offload}" if par.offload != "none" else "") if par.zero else ""
    )
    ckpt = " ckpt" if s.grad_ckpt else ""
    k = s.runtime
    knobs = (
        f" [{k.name}: loss {k.loss}, {k.optimizer_impl}"
        + (f", {k.fsdp} {k.fsdp_sharding}" if k.fsdp != "none" else "")
        + (", ds buckets" if k.ds_buckets and par.zero else "")
        + "]"
    )
    return f"{s.method} {s.precision}{quant}{lora} {s.optimizer} b{s.micro_batch}×{s.seq_len}{ckpt} {s.attention}{zero} on {gpus}{knobs}"
