"""Rows of benchmarks/data/published_objectives.csv as planner questions: a TrainSetup with its
ObjectiveSetup (and VisionInputs), a cluster and the allocator settings, under the runtime that measured
the row (used by `objective_accuracy.py`).

A row the planner cannot express raises `RowSkip` with a group (the kind of reason, for the report's
grouping) and the row's own reason. Every mapping and assumption is returned as a note next to the row.
The command each ms-swift/TRL row ran is in its `notes` column; settings the CSV has no column for
(gradient accumulation, NPROC_PER_NODE, attention kernel, padding-free, the allocator) are read from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from published_rows import CONFIG_OVERRIDES, Expressed, Skip, _quant, parse_int

from swiftplan.planner.allocator import AllocatorSettings
from swiftplan.planner.hardware import Cluster, parse_cluster
from swiftplan.planner.model_catalog import catalog_spec, find_catalog_id
from swiftplan.planner.objective import SFT, ObjectiveSetup, RolloutSetup
from swiftplan.planner.runtime import TRAIN_KNOB_OPTIONS, get_runtime
from swiftplan.planner.setup import LoraSetup, Parallelism, RuntimeKnobs, TrainSetup
from swiftplan.planner.vision import VisionInputs, require_vision_tower
from swiftplan.planner.vision_tokens import visual_tokens

QWEN_PIXELS_PER_TOKEN = 28 * 28
"""Qwen2-VL/2.5-VL: one LLM token per 2 × 2 merged 14-pixel patches (transformers 5.25
models/qwen2_vl/image_processing_qwen2_vl.py, merge_size 2)."""
ASSUMED_PROMPT_TOKENS = 512
"""GRPO/PPO prompt length where the row states none: the planner's own RolloutSetup.prompt_len default
(TRL's max_prompt_length default was 512 before 1.x). The NuminaMath-TIR / alpaca prompts of these rows are
shorter, so the sequence is an upper bound."""


class RowSkip(Skip):
    """A row the planner cannot express: `group` is the kind of reason, the message the row's own."""

    def __init__(self, group: str, reason: str) -> None:
        super().__init__(reason)
        self.group = group


# --- names ---------------------------------------------------------------------------------------------

MODEL_NAMES: dict[str, tuple[str, str]] = {
    "Meta-Llama-3.1-8B-Instruct": (
        "meta-llama/Llama-3.1-8B",
        "instruct fine-tune of Llama-3.1-8B (same shapes)",
    ),
    "llama3-8b-instruct": (
        "meta-llama/Meta-Llama-3-8B",
        "ms-swift 2.x model type llama3-8b-instruct = Meta-Llama-3-8B-Instruct (same shapes as the base)",
    ),
    "Meta-Llama-3-8B-Instruct (user SFT checkpoint)": (
        "meta-llama/Meta-Llama-3-8B",
        "an SFT checkpoint of Meta-Llama-3-8B-Instruct (same shapes)",
    ),
    "Qwen2-7B-Instruct": (
        "Qwen/Qwen2.5-7B-Instruct",
        "Qwen2-7B has Qwen2.5-7B's shapes (28 × 3584, MLP 18944, 28/4 heads, vocab 152064)",
    ),
    "qwen3-14b-unsloth-bnb-4bit": (
        "Qwen/Qwen3-14B",
        "Unsloth's bitsandbytes 4-bit export of Qwen3-14B (same shapes)",
    ),
    "Qwen3-30B-A3B-Instruct-2507": (
        "Qwen/Qwen3-30B-A3B",
        "the 2507 instruct release of Qwen3-30B-A3B (same shapes)",
    ),
}
"""Published names → catalog ids, where find_catalog_id does not know the name, with why it stands for it."""

RUNTIME_PROFILES = {"ms-swift": "ms-swift", "trl": "hf", "llamafactory": "llamafactory", "hf": "hf",
                    "torchtune": "torchtune"}  # fmt: skip
"""The CSV's runtime → the runtime profile it is planned under (TRL's trainers run on the `hf` profile:
profiles/engines.json maps the trl engine to it)."""

RUNTIME_ERAS: dict[str, tuple[dict[str, Any], str]] = {
    "mso-": (
        {"optimizer_impl": "foreach"},
        "ms-swift 2.x/3.x headers on transformers 4.4x: default optim adamw_torch = torch AdamW, foreach on CUDA "
        "(adamw_torch_fused became the default with torch >= 2.8, huggingface/transformers PR #37358, 2025-07)",
    ),
    "isso-": (
        {"optimizer_impl": "foreach"},
        "ms-swift 3.x (2025) on transformers 4.4x/4.5x: adamw_torch (foreach)",
    ),
    "lfo-": (
        {"loss": "full", "optimizer_impl": "foreach"},
        "LLaMA-Factory of 2024-05 on transformers 4.40: full cross-entropy, adamw_torch (foreach)",
    ),
}
"""Runtime defaults of the measurement's era where they differ from the profile (the profile's version is
2026), by id prefix, with the evidence (the same as published_rows.RUNTIME_ERAS for these frameworks)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Card:
    """The accelerator a row names, as a catalog id."""

    gpu_id: str
    """Catalog id estimated on."""
    known: str
    """stated (the card is named), class (its family is named, not its memory), assumed (nothing named)."""
    note: str = ""
    """How the name was read."""


def _card(cell: str) -> Card:
    """The catalog accelerator for a `gpu` cell."""
    text = cell.lower()
    if text.startswith(("h20", "90gb-class")):
        raise RowSkip("card not in the catalog", f"GPU {cell!r} is not in the accelerator catalog")
    if "t4" in text:
        return Card(gpu_id="t4", known="stated")
    if text.startswith("a100") and "40gb" in text:
        return Card(gpu_id="a100-40gb-sxm", known="stated")
    if text.startswith(("a100-sxm4-80gb", "a100 80gb")):
        return Card(gpu_id="a100-80gb-sxm", known="stated")
    if text.startswith("a800"):
        return Card(
            gpu_id="a100-80gb-sxm", known="stated", note="A800 80GB: an A100 80GB with a slower NVLink"
        )
    if text.startswith("a10 "):
        return Card(gpu_id="a10", known="stated")
    if text.startswith("80gb gpu"):
        return Card(gpu_id="a100-80gb-sxm", known="stated",
                    note="'80GB GPU': capacity stated, taken as an A100 80GB (ms-swift's usual test card)")  # fmt: skip
    if "a100" in text:
        return Card(gpu_id="a100-80gb-sxm", known="class",
                    note="an A100 of unstated capacity: taken as 80 GB (memory counters do not depend on it)")  # fmt: skip
    for name, gpu_id in (("4090", "rtx4090"), ("3090", "rtx3090"), ("a10", "a10")):
        if name in text:
            return Card(gpu_id=gpu_id, known="class", note=f"{cell}: taken as the {gpu_id} it lists first")
    if text.startswith("gpu (unstated)"):
        return Card(gpu_id="a100-80gb-sxm", known="assumed",
                    note="card unstated: an A100 80GB assumed (the card ms-swift's examples name when they name one)")  # fmt: skip
    raise RowSkip("card not in the catalog", f"GPU {cell!r} has no catalog mapping")


# --- the command in the notes ---------------------------------------------------------------------------


def flag(notes: str, name: str) -> str | None:
    """The value of `--name VALUE` or `NAME=VALUE` in the row's command, or None."""
    match = re.search(rf"(?:--{name}[ =]|\b{name}=)([^\s,;)]+)", notes)
    return match.group(1).rstrip(".") if match else None


def _true(notes: str, name: str) -> bool:
    return (flag(notes, name) or "").lower() == "true"


def grad_accum(row: dict[str, str]) -> tuple[int, list[str]]:
    """Gradient accumulation from the command; 1 when it gives none."""
    match = re.search(r"gradient_accumulation_steps[ =](\d+)", row["notes"])
    value = match.group(1) if match else None
    if value is None:
        return 1, ["gradient accumulation not given: 1"]
    return int(value), []


def training_processes(row: dict[str, str]) -> tuple[int, list[str]]:
    """Training GPUs: NPROC_PER_NODE from the command when given (the CSV's num_gpus counts a ms-swift 3.2
    `--vllm_device auto` rollout GPU on some rows), else num_gpus."""
    n = parse_int(row["num_gpus"], 1)
    match = re.search(r"\bNPROC_PER_NODE=(\d+)", row["notes"])
    nproc = match.group(1) if match else None
    if nproc is not None and int(nproc) != n:
        return int(nproc), [
            f"NPROC_PER_NODE={nproc} training processes (the CSV's num_gpus {n} counts the rollout GPUs)"
        ]
    if nproc is None and row["rollout"] == "vllm-server" and "--vllm_device auto" in row["notes"]:
        return 1, [f"one training process (no NPROC_PER_NODE; the CSV's num_gpus {n} counts the vLLM GPU)"]
    return n, []


# --- cells ----------------------------------------------------------------------------------------------


def _model(row: dict[str, str]) -> tuple[str, list[str]]:
    name = row["model"].strip()
    if name in MODEL_NAMES:
        model_id, why = MODEL_NAMES[name]
        return model_id, [f"{name} → {model_id} ({why})"]
    model_id = find_catalog_id(name)
    if model_id is None:
        raise RowSkip("model not in the catalog", f"{name} is not in the model catalog")
    return model_id, []


def _parallel(row: dict[str, str]) -> Parallelism:
    text = row["parallel"].lower()
    if text.startswith("megatron"):
        raise RowSkip("Megatron-Core run", "Megatron-Core TP/PP/EP layout and buffers: not modelled")
    if "sequence parallel" in text:
        raise RowSkip(
            "layout not modelled", "sequence parallelism (Ulysses/ring) splits activations: not modelled"
        )
    if text.startswith("device_map") or "device_map" in text:
        raise RowSkip(
            "layout not modelled", "device_map splits the layers over GPUs (naive pipeline): not modelled"
        )
    if text in ("single", "ddp"):
        return Parallelism()
    if "zero3_offload" in text:
        return Parallelism(zero=3, offload="optimizer+params")  # ms-swift zero3_offload.json: both on CPU
    for stage in (3, 2, 1):
        if f"zero{stage}" in text:
            return Parallelism(zero=stage)  # type: ignore[arg-type]
    raise RowSkip("layout not modelled", f"parallel layout {row['parallel']!r} is not modelled")


def _optimizer(cell: str) -> str:
    text = cell.lower()
    if "optimizer_in_bwd" in text or ("paged" in text and "8bit" not in text):
        raise RowSkip("optimizer not modelled",
                      "bitsandbytes paged 32-bit AdamW (states evicted to host under pressure) with the step fused "
                      "into backward: not modelled")  # fmt: skip
    if "8bit" in text:
        return "paged-adamw-8bit" if "paged" in text else "adamw-8bit"
    return "adamw"


def _precision(row: dict[str, str], method: str, card: Card) -> tuple[str, bool]:
    """(precision, kbit_upcast) for a precision cell."""
    text = row["precision"].lower()
    fp16 = text.startswith("fp16") or card.gpu_id == "t4"  # no bf16 on a T4: fp16, the same bytes
    if text.startswith("fp32 non-quantized"):  # TRL dtype float32 with a bnb 4-bit base: peft's upcast state
        return ("fp16" if fp16 else "bf16"), True
    if text.startswith("bf16 autocast over fp32"):
        return "amp-bf16", False
    return ("fp16" if fp16 else "bf16"), False


def _lora(row: dict[str, str]) -> LoraSetup:
    targets = row["lora_targets"].split(" (")[0].strip().lower()
    if targets.startswith("default"):
        raise RowSkip("vision-language setting not expressible",
                      "ms-swift 2.x DEFAULT LoRA targets for a multimodal model are a regex over the language "
                      "model and the connector, not module names")  # fmt: skip
    names = (
        ("all-linear",)
        if targets in ("all linear", "all-linear")
        else tuple(t.strip() for t in targets.split(",") if t.strip())
    )
    dropout = 0.05 if row["runtime"] == "ms-swift" else 0.0  # ms-swift tuner_args lora_dropout 0.05
    return LoraSetup(rank=parse_int(row["lora_rank"], 8), targets=names, dropout=dropout)


def _vision(row: dict[str, str], notes: list[str]) -> VisionInputs | None:
    if row["modality"] == "text":
        return None
    if row["modality"] not in ("image", "video"):
        raise RowSkip("model not in the catalog", f"{row['modality']} inputs (audio) are not modelled")
    tuning = row["vision_tuning"].lower()
    if "vit_gradient_checkpointing" in tuning:
        vit_ckpt = "vit_gradient_checkpointing true" in tuning
        if vit_ckpt != (row["grad_ckpt"] == "true"):
            raise RowSkip("vision-language setting not expressible",
                          "vit_gradient_checkpointing differs from the language model's checkpointing: the "
                          "planner checkpoints both or neither")  # fmt: skip
    frozen = tuning.startswith("vit frozen")
    if not frozen and not tuning.startswith("vit trained, aligner trained"):
        raise RowSkip("vision-language setting not expressible", f"vision tuning {row['vision_tuning']!r}")
    size = row["image_size"]
    if row["modality"] == "video":
        pixels = int(flag(size, "VIDEO_MAX_PIXELS") or 0)
        frames = int(flag(size, "FPS_MAX_FRAMES") or 0)
        if not pixels or not frames:
            raise RowSkip("missing setting", "video frame size or frame count not stated")
        side = int(pixels**0.5)
        notes.append(
            f"video: {frames} frames of {side}×{side} (VIDEO_MAX_PIXELS={pixels}, FPS_MAX_FRAMES={frames} as caps)"
        )
        return VisionInputs(images_per_sample=0, video_frames=frames, image_width=side, image_height=side,
                            freeze_vit=frozen, freeze_aligner=frozen)  # fmt: skip
    images = parse_int(row["images_per_sample"], 1)
    if not row["images_per_sample"]:
        notes.append("images per sample not stated: 1")
    max_pixels = int(flag(size, "MAX_PIXELS") or 0)
    if max_pixels:
        tokens = max_pixels // QWEN_PIXELS_PER_TOKEN
        notes.append(f"each image at the MAX_PIXELS={max_pixels} cap: {tokens} tokens (upper bound)")
        return VisionInputs(
            images_per_sample=images, image_tokens=tokens, freeze_vit=frozen, freeze_aligner=frozen
        )
    notes.append("image size not stated: the processor's largest image (upper bound)")
    return VisionInputs(images_per_sample=images, freeze_vit=frozen, freeze_aligner=frozen)


def _text_tokens(model_id: str, vision: VisionInputs, seq_cap: int, notes: list[str]) -> int:
    """Text tokens of a capped vision-language sequence: ms-swift's max_length counts the image/video tokens
    the template expands, the planner's seq_len does not."""
    visual = visual_tokens(require_vision_tower(catalog_spec(model_id)), vision).llm_tokens
    if visual >= seq_cap:
        raise RowSkip(
            "missing setting", f"max_length {seq_cap} does not hold the {visual} capped visual tokens"
        )
    notes.append(f"max_length {seq_cap} counts the {visual} visual tokens: {seq_cap - visual} text tokens")
    return seq_cap - visual


def _objective(row: dict[str, str], seq_cap: int | None, notes: list[str]) -> tuple[ObjectiveSetup, int]:
    """The objective and the sequence length a step trains on."""
    kind = row["task"]
    if kind == "sft":
        if seq_cap is None:
            raise RowSkip("missing setting", "no max_length: the sequences are the dataset's own, not stated")
        return SFT, seq_cap
    reference = row["reference"] or "auto"
    if kind not in ("grpo", "ppo"):
        if seq_cap is None:
            raise RowSkip("missing setting", "no max_length: the sequences are the dataset's own, not stated")
        prompt = parse_int(row["prompt_len"], 0)
        if not prompt:
            notes.append(f"prompt length not stated: all {seq_cap} tokens scored (upper bound)")
        return ObjectiveSetup(kind=kind, reference=reference, prompt_len=prompt), seq_cap  # type: ignore[arg-type]
    completion = parse_int(row["completion_len"])
    prompt = parse_int(row["prompt_len"], 0)
    if not prompt:
        prompt = min(ASSUMED_PROMPT_TOKENS, seq_cap or ASSUMED_PROMPT_TOKENS)
        notes.append(f"prompt length not stated: {prompt} tokens assumed"
                     + (f" (max_length {seq_cap} caps the prompt)" if seq_cap else ""))  # fmt: skip
    kl = kind == "grpo" and float(row["beta"] or 0) > 0
    if kind == "grpo" and not kl:
        reference = "auto"
    generations = parse_int(row["num_generations"])
    if kind == "ppo" and generations < 2:
        generations = 2  # RolloutSetup refuses 1; the planner's PPO memory and time do not use it
        notes.append(
            "PPO's 1 completion per prompt given as 2 (RolloutSetup's minimum; unused by PPO's terms)"
        )
    how = row["rollout"]
    sleep = row["rollout_sleep"] == "1"
    if how == "vllm-server":
        rollout = RolloutSetup(num_generations=generations, prompt_len=prompt, completion_len=completion,
                               engine="vllm", placement="server", gpus=parse_int(row["rollout_gpus"], 1),
                               tp=parse_int(row["rollout_tp"], 1))  # fmt: skip
    elif how == "vllm-colocate":
        rollout = RolloutSetup(num_generations=generations, prompt_len=prompt, completion_len=completion,
                               engine="vllm", placement="colocate", tp=parse_int(row["rollout_tp"], 1),
                               memory_fraction=float(row["rollout_memory_fraction"]), sleep=sleep)  # fmt: skip
    else:
        rollout = RolloutSetup(num_generations=generations, prompt_len=prompt, completion_len=completion,
                               engine="hf", placement="colocate")  # fmt: skip
    if _true(row["notes"], "offload_model") or _true(row["notes"], "offload_optimizer"):
        notes.append("--offload_model/--offload_optimizer move the policy off the GPU while vLLM generates: not "
                     "modelled (the generation phase is an upper bound)")  # fmt: skip
    objective = ObjectiveSetup(kind=kind, reference=reference, rollout=rollout, kl=kl)  # type: ignore[arg-type]
    return objective, rollout.seq_len


def _knobs(row: dict[str, str], notes: list[str]) -> RuntimeKnobs:
    """RuntimeKnobs: the runtime profile's, then the measurement era's, then what the command sets."""
    name = RUNTIME_PROFILES.get(row["runtime"])
    if name is None:
        raise RowSkip(
            "Megatron-Core run", f"runtime {row['runtime']}: Megatron-Core layouts are not modelled"
        )
    profile = get_runtime(name, "train")
    knobs = {d.option: profile.value(d.option) for d in profile.defaults if d.option in TRAIN_KNOB_OPTIONS}
    era, why = next(((v, w) for p, (v, w) in RUNTIME_ERAS.items() if row["id"].startswith(p)), ({}, ""))
    if era:
        knobs |= era
        notes.append(f"runtime {name} as of the measurement: {why}")
    if row["runtime"] != name:
        notes.append(f"runtime {row['runtime']} planned under the {name} profile")
    if _true(row["notes"], "use_liger_kernel") and row["task"] == "sft":
        knobs["loss"] = "fused_linear"
        notes.append("--use_liger_kernel true: Liger fused linear cross-entropy")
    return RuntimeKnobs(name=name, **knobs)


def express_objective(row: dict[str, str]) -> Expressed:
    """The planner question an objective row asks; raises RowSkip with the reason when it cannot be asked."""
    notes: list[str] = []
    parallel = _parallel(row)  # the layout and the batch shape first: they rule a row out whatever its model
    if _true(row["notes"], "padding_free") or _true(row["notes"], "packing"):
        raise RowSkip("padding-free or packed batches",
                      "padding-free/packed batches: tokens per step are the sum of the batch's real lengths, not stated")  # fmt: skip
    method = row["method"].strip().lower()
    if method in ("lora_llm", "custom"):
        raise RowSkip("vision-language setting not expressible",
                      f"tuner_type {method}: vision tower and aligner trained in full beside an LLM LoRA")  # fmt: skip
    optimizer = _optimizer(row["optimizer"])
    model_id, model_notes = _model(row)
    notes += model_notes
    card = _card(row["gpu"])
    notes += [card.note] if card.note else []
    quant, double_quant = _quant(row["quant"].split(" (")[0] if "gptq" in row["quant"] else row["quant"])
    if method == "lora" and quant == "nf4":
        method = "qlora"
    precision, kbit_upcast = _precision(row, method, card)
    if kbit_upcast:
        notes.append("fp32 non-quantized weights under a bnb 4-bit base: modelled as peft's kbit upcast")
    seq_cap = parse_int(row["seq_len"], 0) or None
    vision = _vision(row, notes)
    objective, seq_len = _objective(row, seq_cap, notes)
    if vision is not None and objective.rollout is None:
        seq_len = _text_tokens(model_id, vision, seq_len, notes)
    knobs = _knobs(row, notes)
    attention = "flash" if (flag(row["notes"], "attn_impl") or "").startswith("flash") else "sdpa"
    accum, accum_notes = grad_accum(row)
    notes += accum_notes if row["metric"] == "s_per_it" or objective.rollout is not None else []
    procs, proc_notes = training_processes(row)
    notes += proc_notes
    setup = TrainSetup(
        method=method,  # type: ignore[arg-type]
        precision=precision,  # type: ignore[arg-type]
        quant=quant,  # type: ignore[arg-type]
        double_quant=double_quant,
        lora=_lora(row) if method != "full" else None,
        optimizer=optimizer,  # type: ignore[arg-type]
        micro_batch=parse_int(row["batch"], 1),
        seq_len=seq_len,
        grad_accum=accum,
        grad_ckpt=row["grad_ckpt"] != "false",
        attention=attention,  # type: ignore[arg-type]
        kbit_upcast=kbit_upcast,
        variable_lengths=True,  # the rows' data, unpacked: batches padded by the runtime's padding
        parallel=parallel,
        runtime=knobs,
        objective=objective,
        vision=vision,
    )
    rollout = objective.rollout
    server = rollout.gpus if rollout is not None and rollout.placement == "server" else 0
    cluster = _cluster(card, procs + server)
    expandable = "expandable_segments:True" in row["notes"]
    return Expressed(
        model_id=model_id,
        setup=setup,
        cluster=cluster,
        notes=tuple(dict.fromkeys(notes)),
        allocator=AllocatorSettings(expandable_segments=expandable, variable_lengths=True),
        config_overrides=tuple(CONFIG_OVERRIDES.get(row["model"].strip(), {}).items()),
    )


def _cluster(card: Card, gpus: int) -> Cluster:
    if gpus > 8 and gpus % 8 == 0:
        return parse_cluster(f"{gpus // 8}x8x{card.gpu_id}")
    return parse_cluster(f"{gpus}x{card.gpu_id}")


def card_of(row: dict[str, str]) -> Card:
    """How well the row names its card (speed rows on an assumed card are reported apart)."""
    return _card(row["gpu"])


def objective_summary(expressed: Expressed) -> str:
    """The objective part of a row's one-line configuration."""
    s = expressed.setup
    assert isinstance(s, TrainSetup)
    o = s.objective
    if o.kind == "sft":
        text = "sft"
    else:
        from swiftplan.planner.objective import resolve_reference

        text = f"{o.kind} ref {resolve_reference(o, trains_adapters=s.trains_adapters)}"
    r = o.rollout
    if r is not None:
        where = f"server {r.gpus} GPU" if r.placement == "server" else r.engine
        if r.engine == "vllm" and r.placement == "colocate":
            where = f"vllm {r.memory_fraction:g}" + (" sleep" if r.sleep else "")
        text += f" {r.num_generations}×({r.prompt_len}+{r.completion_len}) {where}"
    v = s.vision
    if v is not None:
        seen = f"{v.video_frames} frames" if v.video_frames else f"{v.images_per_sample} img"
        text += f" +{seen}" + ("" if v.image_tokens == 0 else f"×{v.image_tokens} tok")
        text += " vit frozen" if v.freeze_vit else " vit trained"
    return text


__all__ = ["RowSkip", "card_of", "express_objective", "flag", "objective_summary"]
