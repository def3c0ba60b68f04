"""Every memory figure in the header comments of ms-swift's example scripts, as rows of
benchmarks/data/published_2026.csv (issue 14).

Reads a local snapshot of modelscope/ms-swift at COMMIT (git show, no work tree). Each figure in a
script's leading comment block ('# 22GB', '# 2 * 62GiB, 5.10s/it', '# fa2: 4 * 43GiB; 35.5s/it') is one
row, its header line quoted in the notes. Rows the planner can express carry a hand-read configuration
(`EXPRESSED`, from the script's arguments and ms-swift's defaults at COMMIT); every other row records what
was run in its `method` cell, which `published_rows.METHOD_SKIPS` turns into the reason it is skipped.
Header lines that name the hardware rather than a measured peak (Ascend cards, 'test env', multi-node
layouts) are not rows. Figures already in the CSV (ms-01..ms-15) are not repeated.

Counter: ms-swift logs memory(GiB) = max over devices of torch max_memory_reserved / 1024**3
(swift/utils/torch_utils.py get_max_reserved_memory, line 413, read by swift/trainers/patcher.py line 27,
at COMMIT). A header in GiB is taken as that counter (reserved_gib, inferred); a header in GB/G is kept
as an unnamed counter in decimal GB (peak_mem_gb_unspecified), as rows ms-01..ms-15 do.

    python benchmarks/ms_swift_headers.py /work/.mirror/modelscope+ms-swift/repo > rows.csv
"""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from typing import Any

COMMIT = "3602360a562313afbf2ef6065fdf61f271a2c5b9"
FIGURE = re.compile(r"(?:(\d+)\s*\*\s*)?(\d+(?:\.\d+)?)\s*(GiB|GB|G)\b(?:\s*\*\s*(\d+))?")
NOT_MEASURED = ("ascend", "assume", "test env", "env:", "6 for training")
COLUMNS = [
    "id",
    "source",
    "source_kind",
    "runtime",
    "model",
    "params_b",
    "method",
    "quant",
    "lora_rank",
    "lora_targets",
    "optimizer",
    "precision",
    "grad_ckpt",
    "batch",
    "seq_len",
    "parallel",
    "num_gpus",
    "gpu",
    "metric",
    "value",
    "notes",
]
# Figures already in the CSV as ms-01..ms-15: (path, figure index in the header).
DONE = {
    ("examples/train/lora_sft.sh", 0),
    ("examples/notebook/qwen2_5-self-cognition/sft.sh", 0),
    ("examples/train/full/train.sh", 0),
    ("examples/train/multi-gpu/ddp/train.sh", 0),
    ("examples/train/multi-gpu/deepspeed/train_zero2.sh", 0),
    ("examples/train/multi-gpu/deepspeed/train_zero3.sh", 0),
    ("examples/train/multi-gpu/fsdp2_lora/train.sh", 0),
    ("examples/train/qlora/bnb/train.sh", 0),
    ("examples/train/qlora/awq/train.sh", 0),
    ("examples/train/packing/llm.sh", 0),
    ("examples/train/tuners/lora/train.sh", 0),
    ("examples/train/tuners/olora/train.sh", 0),
    ("examples/train/tuners/pissa/train.sh", 0),
    ("examples/train/tuners/neftune/train.sh", 0),
    ("examples/train/liger/sft.sh", 1),
}
SELF_COG = (
    "self-cognition #1000 only, no max_length: samples are short Q/A pairs; 512 tokens taken as the longest"
)
LORA7B = {"model": "Qwen2.5-7B-Instruct", "params_b": "7.62", "method": "lora", "lora_rank": "8"}
FULL7B_Z3 = {
    "model": "Qwen2.5-7B",
    "params_b": "7.62",
    "method": "full",
    "parallel": "deepspeed zero3",
    "num_gpus": "4",
}
# Hand-read configurations of the figures the planner can express: (path, figure index) -> cells + note.
EXPRESSED: dict[tuple[str, int], dict[str, Any]] = {
    ("examples/train/early_stop/lora_sft.sh", 0): {
        **LORA7B,
        "seq_len": "2048",
        "note": "Same run as lora_sft.sh plus early stopping: alpaca-gpt4 zh/en #500 + self-cognition #500, "
        "lora r8 all-linear, max_length 2048 cap.",
    },
    ("examples/train/agent/loss_scale/train.sh", 0): {
        "model": "Qwen2.5-3B",
        "params_b": "3.09",
        "method": "lora",
        "lora_rank": "8",
        "seq_len": "2048",
        "note": "lora r8 all-linear, --modules_to_save embed_tokens lm_head, --use_liger_kernel true, "
        "function-calling-chatml #10000, max_length 2048 cap, loss_scale hermes (a per-token weight).",
    },
    ("examples/train/agent/qwen2_5.sh", 0): {
        "model": "Qwen2.5-3B",
        "params_b": "3.09",
        "method": "full",
        "seq_len": "8192",
        "note": "full, --packing true to max_length 8192 (one shape), --use_liger_kernel true, "
        "--attn_impl flash_attn, one GPU, batch 1.",
    },
    ("examples/train/liger/sft.sh", 0): {
        **FULL7B_Z3,
        "seq_len": "8192",
        "gpu": "A100 (stated: 'test env: 4 * A100')",
        "note": "line 'Using use_liger_kernel and packing': full, ZeRO-3 on 4 GPUs, packing to 8192 (one shape), "
        "Liger fused linear cross-entropy, flash_attn.",
    },
    ("examples/train/liger/sft.sh", 2): {
        **FULL7B_Z3,
        "seq_len": "8192",
        "gpu": "A100 (stated: 'test env: 4 * A100')",
        "note": "line 'Not using use_liger_kernel and packing': full, ZeRO-3 on 4 GPUs, batch 1 padded, "
        "max_length 8192 cap (R1-distill samples, lengths vary), full cross-entropy, flash_attn.",
    },
    ("examples/train/packing/liger_kernel.sh", 0): {
        **FULL7B_Z3,
        "seq_len": "16384",
        "gpu": "A100 (stated: 'Env: 4 * A100')",
        "note": "full, ZeRO-3 on 4 GPUs, packing to 16384 (one shape), Liger, flash_attn, LongAlpaca-12k.",
    },
    ("examples/train/padding_free/sft.sh", 0): {
        **FULL7B_Z3,
        "batch": "8",
        "seq_len": "8192",
        "note": "line 'without padding_free': full, ZeRO-3 on 4 GPUs, batch 8 padded to its longest sample, "
        "max_length 8192 cap (R1-distill samples, lengths vary), Liger, flash_attn.",
    },
    ("examples/train/flash_attention_3/transformers.sh", 0): {
        **FULL7B_Z3,
        "seq_len": "16384",
        "gpu": "H20 (stated: 'test_env: 4 * H20')",
        "note": "line 'fa2': full, ZeRO-3 on 4 GPUs, packing to 16384 (one shape), Liger, FlashAttention-2.",
    },
    ("examples/train/streaming/lazy_tokenize.sh", 0): {**LORA7B, "seq_len": "512", "note": SELF_COG + "."},
    ("examples/train/tuners/dora/train.sh", 0): {
        **LORA7B,
        "seq_len": "512",
        "note": "--use_dora true (lora r8, default all-linear targets); " + SELF_COG + ".",
    },
    ("examples/train/tuners/unsloth/train.sh", 0): {
        **LORA7B,
        "runtime": "unsloth",
        "seq_len": "512",
        "note": "--tuner_backend unsloth (Unsloth's patched model: its checkpointing, loss and LoRA kernels); "
        + SELF_COG
        + ".",
    },
    ("examples/train/think_model/deepseek_r1.sh", 0): {
        "model": "DeepSeek-R1-0528-Qwen3-8B",
        "params_b": "8.19",
        "method": "lora",
        "lora_rank": "8",
        "seq_len": "2048",
        "note": "lora r8 all-linear, --use_liger_kernel true, R1-distill #1800 + self-cognition #600, "
        "max_length 2048 cap.",
    },
}


MULTIMODAL = re.compile(
    r"VL|Omni|OCR|InternVL|MiniCPM|Ovis|Keye|Emu3|MOSS|GLM-4\.6V|deepseek-vl|diffusion", re.I
)
SPECIAL = {("examples/train/flash_attention_3/transformers.sh", 1): "full, FlashAttention-3"}


def classify(path: str, text: str, line: str, figure: re.Match[str], key: tuple[str, int]) -> str:
    """What a row the planner cannot express ran (its `method` cell)."""
    if key in SPECIAL:
        return SPECIAL[key]
    low = path.lower()
    tuner = re.search(r"--(?:tuner_type|train_type)\s+(\w+)", text)
    rlhf = re.search(r"--rlhf_type\s+(\w+)", text)
    model = re.search(r"--model\s+(\S+)", text)
    if float(figure.group(2)) >= 80 and figure.group(3) in ("GiB", "G", "GB") and "--" in text:
        return "unmeasured (80 GB cards named)"
    if re.search(r"^\s*(?:\S+=\S+\s+)*megatron\s+(?:sft|pt|rlhf|export)", text, re.M) or "mindspeed" in low:
        return "megatron " + (rlhf.group(1) if rlhf else tuner.group(1) if tuner else "full")
    kind = tuner.group(1) if tuner else "lora"
    if rlhf or "/rlhf/" in low or "/grpo/" in low or "swift rlhf" in text:
        return "rlhf " + (rlhf.group(1) if rlhf else "grpo")
    if model and MULTIMODAL.search(model.group(1)) or "/multimodal/" in low:
        return "multimodal " + kind
    if "sequence_parallel" in low:
        return "sequence parallel " + kind
    if "/infer/" in low or "swift infer" in text:
        return "inference (transformers)"
    if "/export/" in low:
        return "quantization export"
    if any(w in low for w in ("embedding", "reranker", "seq_cls")) or "--task_type" in text:
        return "embedding/reranker/classification " + kind
    if "--padding_free true" in text and "without" not in line:
        return "padding-free " + kind
    if "muon" in low:
        return "lora, Muon optimizer"
    if "hqq" in low:
        return "lora on HQQ 4-bit"
    if "device_map" in low:
        return "device_map (layers split over GPUs) " + kind
    if "galore" in low:
        return "full, GaLore optimizer"
    if "lisa" in low:
        return "LISA (2 active layers)"
    if kind in ("adalora", "adapter", "boft", "bone", "llamapro"):
        return f"tuner {kind}"
    return kind


def figures(repo: str) -> list[dict[str, str]]:
    files = subprocess.run(
        ["git", "-C", repo, "ls-tree", "-r", "--name-only", COMMIT, "examples"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    rows = []
    for path in (f for f in files if f.endswith(".sh")):
        text = subprocess.run(
            ["git", "-C", repo, "show", f"{COMMIT}:{path}"], capture_output=True, text=True, check=True
        ).stdout
        header = []
        for line in text.splitlines():
            if not line.startswith("#"):
                break
            header.append(line.strip())
        index = 0
        for line in header:
            if any(w in line.lower() for w in NOT_MEASURED):
                continue
            for m in FIGURE.finditer(line):
                key, index = (path, index), index + 1
                if key in DONE:
                    continue
                model = re.search(r"--model\s+(\S+)", text)
                gpus = m.group(1) or m.group(4) or "1"
                unit = m.group(3)
                own = dict(EXPRESSED.get(key, {}))
                note = own.pop("note", "")
                method = own.get("method") or classify(path, text, line, m, key)
                counter = (
                    "Counter inferred, not stated: ms-swift logs memory(GiB) = max over devices of "
                    "max_memory_reserved / 1024**3 (swift/utils/torch_utils.py get_max_reserved_memory @ 3602360a) "
                    "and the header uses that unit."
                    if unit == "GiB"
                    else "Header in GB/G: counter and unit not stated."
                )
                row = {
                    "source": f"modelscope/ms-swift {path} header comment (commit 3602360a56)",
                    "source_kind": "measured",
                    "runtime": "ms-swift",
                    "model": model.group(1).strip("'\"").split("/")[-1] if model else "",
                    "params_b": "",
                    "method": method,
                    "quant": "none",
                    "lora_rank": "",
                    "lora_targets": "all linear" if "lora" in method or method == "dora" else "",
                    "optimizer": "AdamW",
                    "precision": "bf16_pure",
                    "grad_ckpt": "true",
                    "batch": "1",
                    "seq_len": "",
                    "parallel": "single" if gpus == "1" else "ddp",
                    "num_gpus": gpus,
                    "gpu": "GPU (unstated)",
                    "metric": "reserved_gib" if unit == "GiB" else "peak_mem_gb_unspecified",
                    "value": m.group(2),
                    "notes": f"Header line {line!r} ({'expressed' if key in EXPRESSED else 'not expressed'}). "
                    + counter
                    + (" " + note if note else ""),
                }
                row.update(own)
                rows.append(row)
    return rows


def main(argv: list[str]) -> int:
    rows = figures(argv[1])
    writer = csv.DictWriter(sys.stdout, fieldnames=COLUMNS, lineterminator="\n")
    for i, row in enumerate(rows, start=16):
        writer.writerow({"id": f"ms-{i:02d}", **row})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
