"""Published GPU figures for preference/RL training and vision-language fine-tuning:
benchmarks/data/published_objectives.csv, read and checked.

Each row is one figure someone measured (or, `source_kind` estimated, computed) and published, with its
source and the configuration it was measured on. The first 21 columns are published_2026.csv's, in the same
order and with the same meaning; the rest describe the objective, the rollouts and the images.

Columns shared with published_2026.csv:
    id              source family + number (mso-001: ms-swift; trl-, us-, tt-, lf-, iss-: see the file)
    source          repository, file or issue/page, commit or date where it applies
    source_kind     measured | estimated
    runtime         framework that ran it (ms-swift, megatron-swift, trl, unsloth, torchtune, llamafactory, ...)
    model           model as the source names it; params_b its parameter count in billions where the source or
                    the swiftplan catalog gives it (blank otherwise: vision-language models are not in the catalog)
    method          full | lora | qlora | (ms-swift tuners: lora_llm, custom)
    quant           none | nf4 (bitsandbytes) | gptq-int4 (model) | awq-int4 (model) | ...
    lora_rank, lora_targets
    optimizer, precision, grad_ckpt
    batch           per-device micro-batch: pairs for dpo/orpo/simpo/cpo/rm, examples for kto, completions for
                    grpo/ppo (TRL and ms-swift count per_device_train_batch_size in completions), samples for sft
    seq_len         the length cap (max_length) the run used; blank when none was set
    parallel        single | ddp | deepspeed zeroN | fsdp | device_map | megatron tpN ppN epN (+ notes)
    num_gpus        GPUs the training processes use (rollout server GPUs are counted in rollout_gpus)
    gpu             card, as stated; 'GPU (unstated)' when the source does not say
    metric          the counter, one of METRICS (below)
    value           the figure in the metric's unit; fits_in_gpu is 1 (ran) or 0 (out of memory)
    notes           the source's own words for the figure, the command or configuration, every default taken
                    from the framework (with the file it was read from), and what is uncertain
Objective columns:
    task            sft | dpo | kto | orpo | simpo | cpo | rm | ppo | grpo (swiftplan.planner.objective)
    reference       none | model (a frozen copy) | adapters-off (the LoRA policy with adapters disabled) |
                    precomputed; blank when unknown
    beta            the KL / preference temperature the run used (default of the framework where not set)
    num_generations grpo: completions per prompt; ppo: 1
    prompt_len      prompt tokens (cap) where the source states one
    completion_len  grpo/ppo: max completion tokens
    rollout         none | hf (the trainer's generate()) | vllm-colocate (vLLM inside each training process) |
                    vllm-server (vLLM on GPUs of its own: trl vllm-serve, swift rollout, ms-swift 3.2's
                    --vllm_device on a spare GPU)
    rollout_gpus    vllm-server: the GPUs it takes
    rollout_memory_fraction  vLLM gpu_memory_utilization
    rollout_tp      vLLM tensor-parallel size
    rollout_sleep   vLLM sleep level (0 none, 1 weights offloaded and KV freed, 2 weights discarded)
    modality        text | image | video | mixed (image/video/audio)
    images_per_sample  images per training sample where the dataset fixes it
    image_size      resolution limits as set (MAX_PIXELS=1003520, 448x448, ...)
    vision_tuning   what happens to the vision tower and aligner (frozen, trained, LoRA)

    python benchmarks/published_objective_rows.py        # checks the file, prints counts per task and metric
"""

from __future__ import annotations

import csv
import re
import sys
from collections import Counter
from pathlib import Path

from ms_swift_headers import COLUMNS as PUBLISHED_2026_COLUMNS

HERE = Path(__file__).parent
CSV_PATH = HERE / "data" / "published_objectives.csv"

BASE_COLUMNS = tuple(PUBLISHED_2026_COLUMNS)
"""published_2026.csv's columns, in its order."""
OBJECTIVE_COLUMNS = (
    "task",
    "reference",
    "beta",
    "num_generations",
    "prompt_len",
    "completion_len",
    "rollout",
    "rollout_gpus",
    "rollout_memory_fraction",
    "rollout_tp",
    "rollout_sleep",
    "modality",
    "images_per_sample",
    "image_size",
    "vision_tuning",
)
COLUMNS = BASE_COLUMNS + OBJECTIVE_COLUMNS

TASKS = ("sft", "dpo", "kto", "orpo", "simpo", "cpo", "rm", "ppo", "grpo")
"""The training objectives swiftplan plans (swiftplan.planner.objective.OBJECTIVES)."""
REFERENCE_FREE = frozenset({"sft", "orpo", "simpo", "cpo", "rm"})
WITH_ROLLOUTS = frozenset({"ppo", "grpo"})
REFERENCES = ("", "none", "model", "adapters-off", "precomputed")
ROLLOUTS = ("none", "hf", "vllm-colocate", "vllm-server")
MODALITIES = ("text", "image", "video", "mixed (image/video/audio)")
SOURCE_KINDS = ("measured", "estimated")

METRICS: dict[str, tuple[str, str]] = {
    "reserved_gib": ("memory", "torch.cuda.max_memory_reserved, GiB"),
    "reserved_gb": ("memory", "torch.cuda.max_memory_reserved, GB (1e9)"),
    "peak_mem_gib": ("memory", "torch.cuda.max_memory_allocated, GiB"),
    "peak_mem_gb": ("memory", "torch.cuda.max_memory_allocated, GB (1e9)"),
    "peak_mem_gib_unspecified": ("memory", "peak memory, counter not stated, GiB"),
    "peak_mem_gb_unspecified": ("memory", "peak memory, counter not stated, GB (1e9) as written"),
    "nvidia_smi_gib": ("memory", "nvidia-smi memory used (MiB-based), GiB"),
    "nvidia_smi_gb": ("memory", "nvidia-smi memory used, GB as written"),
    "fits_in_gpu": ("verdict", "1 = ran on the stated cards, 0 = out of memory"),
    "s_per_it": ("speed", "seconds per optimizer step (gradient accumulation included)"),
    "tokens_per_s_per_gpu": ("speed", "training tokens per second per GPU"),
}
"""Known counters: metric -> (kind, what it measures)."""

ID = re.compile(r"^[a-z][a-z0-9]*-\d{2,3}$")


def read_rows(path: Path = CSV_PATH) -> list[dict[str, str]]:
    """The CSV's rows as dicts (strings, as written)."""
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise ValueError(f"{path}: columns {reader.fieldnames} are not {list(COLUMNS)}")
        return list(reader)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _positive_int(text: str) -> bool:
    return text.isdigit() and int(text) > 0


def problems(rows: list[dict[str, str]]) -> list[str]:
    """Every integrity problem of the rows, one line each (empty when the file is sound)."""
    out: list[str] = []
    seen: set[str] = set()
    for n, row in enumerate(rows, start=2):
        rid = row["id"]
        where = f"line {n} ({rid or 'no id'})"

        def bad(msg: str, where: str = where) -> None:
            out.append(f"{where}: {msg}")

        if not ID.match(rid):
            bad("id must look like 'mso-001'")
        if rid in seen:
            bad("duplicate id")
        seen.add(rid)
        if not row["source"].strip():
            bad("no source")
        if row["source_kind"] not in SOURCE_KINDS:
            bad(f"source_kind {row['source_kind']!r} not in {SOURCE_KINDS}")
        if not row["model"].strip():
            bad("no model")
        if not row["notes"].strip():
            bad("no notes")
        metric = row["metric"]
        if metric not in METRICS:
            bad(f"unknown counter {metric!r}")
        value = _number(row["value"])
        kind = METRICS.get(metric, ("", ""))[0]
        if value is None:
            bad(f"value {row['value']!r} is not a number")
        elif kind == "verdict" and value not in (0.0, 1.0):
            bad(f"fits_in_gpu must be 0 or 1, got {row['value']}")
        elif kind in ("memory", "speed") and not value > 0:
            bad(f"value must be positive, got {row['value']}")
        if not _positive_int(row["num_gpus"]):
            bad(f"num_gpus {row['num_gpus']!r} is not a positive integer")
        if row["batch"] and not _positive_int(row["batch"]):
            bad(f"batch {row['batch']!r} is not a positive integer")
        if row["seq_len"] and not _positive_int(row["seq_len"]):
            bad(f"seq_len {row['seq_len']!r} is not a positive integer")
        task = row["task"]
        if task not in TASKS:
            bad(f"task {task!r} not in {TASKS}")
        if row["reference"] not in REFERENCES:
            bad(f"reference {row['reference']!r} not in {REFERENCES}")
        if task in REFERENCE_FREE and row["reference"] not in ("", "none"):
            bad(f"{task} has no reference model, got {row['reference']!r}")
        if task in ("dpo", "kto", "ppo") and row["reference"] == "none":
            bad(f"{task} needs a reference")
        if row["rollout"] not in ROLLOUTS and row["rollout"] != "":
            bad(f"rollout {row['rollout']!r} not in {ROLLOUTS}")
        if task in WITH_ROLLOUTS:
            if row["rollout"] in ("", "none"):
                bad(f"{task} generates completions: rollout must be hf, vllm-colocate or vllm-server")
            if not _positive_int(row["num_generations"]):
                bad(f"{task} needs num_generations")
            if not _positive_int(row["completion_len"]):
                bad(f"{task} needs completion_len")
        else:
            if row["rollout"] not in ("", "none"):
                bad(f"{task} has no rollouts, got {row['rollout']!r}")
            for col in ("num_generations", "completion_len", "rollout_gpus", "rollout_memory_fraction"):
                if row[col]:
                    bad(f"{col} applies to grpo/ppo only")
        if row["rollout"] == "vllm-server" and row["rollout_gpus"] and not _positive_int(row["rollout_gpus"]):
            bad(f"rollout_gpus {row['rollout_gpus']!r} is not a positive integer")
        if row["rollout_memory_fraction"]:
            frac = _number(row["rollout_memory_fraction"])
            if frac is None or not 0 < frac <= 1:
                bad(f"rollout_memory_fraction {row['rollout_memory_fraction']!r} is not in (0, 1]")
        for col in ("prompt_len", "rollout_tp", "images_per_sample"):
            if row[col] and not _positive_int(row[col]):
                bad(f"{col} {row[col]!r} is not a positive integer")
        if row["modality"] not in MODALITIES:
            bad(f"modality {row['modality']!r} not in {MODALITIES}")
        if row["modality"] == "text" and (
            row["images_per_sample"] or row["image_size"] or row["vision_tuning"]
        ):
            bad("a text row has image columns")
    return out


def load(path: Path = CSV_PATH) -> list[dict[str, str]]:
    """The rows, after checking them; ValueError listing every problem otherwise."""
    rows = read_rows(path)
    found = problems(rows)
    if found:
        raise ValueError(f"{path}: {len(found)} problem(s):\n" + "\n".join(found))
    return rows


def main() -> int:
    rows = load()
    print(f"{CSV_PATH.name}: {len(rows)} rows, no problems")
    for name, counter in (
        ("task", Counter(r["task"] for r in rows)),
        ("metric", Counter(r["metric"] for r in rows)),
        ("runtime", Counter(r["runtime"] for r in rows)),
        ("modality", Counter(r["modality"] for r in rows)),
    ):
        print(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in counter.most_common()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
