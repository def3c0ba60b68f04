"""The job form's values, checked and turned into what the search needs. Pure.

The form hands over its fields as text (`FORM_DEFAULTS` has every key); `parse_job` turns them into
a `JobRequest` or raises one `SwiftplanError` naming the field, which the dashboard shows next to the
form. The options mean what `swiftplan fit`'s flags of the same name mean.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from swiftplan.errors import SwiftplanError
from swiftplan.planner.vision import VisionInputs
from swiftplan.tui.measure import MEASURE_DEFAULTS
from swiftplan.units import parse_token_count

DEFAULT_HOST_RAM_BYTES = 64 * 2**30
"""Host RAM per node assumed for offload with a catalog cluster (as `swiftplan fit`'s --host-ram default)."""

FORM_DEFAULTS: dict[str, str] = {
    "model": "",
    "task": "train",
    "runtime": "swiftplan",
    "objective": "auto",
    "method": "any",
    "quant": "any",
    "rank": "",
    "seq": "2048",
    "global_batch": "16",
    "dora": "no",
    "dataset_tokens": "100M",
    "epochs": "1",
    "data": "",
    "lengths": "",
    "packing": "no",
    "variable_lengths": "no",
    "context": "4096",
    "concurrency": "auto",
    "ttft": "",
    "decode_tps": "",
    "images": "",
    "image_size": "",
    "image_tokens": "",
    "video_frames": "",
    "train_vit": "no",
    "train_aligner": "no",
    "eager": "no",
    "seed": "0",
    "trials": "auto",
    "storage": "",
    "study_name": "",
    "pareto": "no",
    "headroom": "0.05",
    "host_ram": "auto",
    **MEASURE_DEFAULTS,
}
"""Every form field and its initial text (the measure fields are read by `swiftplan.tui.measure`)."""
SERVE_ONLY = ("ttft", "decode_tps")
"""Fields only a serving search reads (fit's --ttft and --decode-tps): a training job ignores them."""
TRAIN_ONLY = (
    "dora",
    "data",
    "lengths",
    "packing",
    "variable_lengths",
    "train_vit",
    "train_aligner",
    "measure",
)
"""Fields only a training search reads (fit's --dora, --data, --lengths, --packing, --variable-lengths, --train-vit,
--train-aligner and --measure): a serving job ignores them."""

METHOD_CHOICES = ("any", "full", "lora", "qlora", "lora,qlora")
QUANT_CHOICES = ("any", "none", "nf4", "int8")
OBJECTIVES: tuple[Literal["time", "cost", "throughput"], ...] = ("time", "cost", "throughput")
OBJECTIVE_CHOICES = ("auto", *OBJECTIVES)
TASK_CHOICES = ("train", "dpo", "kto", "orpo", "simpo", "cpo", "rm", "ppo", "grpo", "serve")
"""train (SFT), the preference and RL objectives `swiftplan fit --task` takes, serve."""
KNOBS_FOR = "knobs_for"
"""The key, besides the fields, naming the training runtime whose values the knob fields hold (a serving
job refuses the knobs that differ from them, as the CLI refuses knob flags with --task serve)."""


def _runtimes_with_engines(task: Literal["train", "serve"], default: str) -> tuple[str, ...]:
    """The `task` runtimes the search can plan for (profiles/runtimes with an engine in engines.json, as
    `swiftplan fit --runtime` needs), `default` first."""
    from swiftplan.planner.engines import runtime_engine
    from swiftplan.planner.runtime import runtime_profiles

    names = [n for n, p in runtime_profiles().items() if p.task == task and runtime_engine(n, task)]
    return (default, *sorted(n for n in names if n != default))


def runtime_choices() -> tuple[str, ...]:
    """Training runtimes the search can plan for, swiftplan's own loop first."""
    from swiftplan.planner.runtime import DEFAULT_TRAIN_RUNTIME

    return _runtimes_with_engines("train", DEFAULT_TRAIN_RUNTIME)


@dataclass(frozen=True, kw_only=True, slots=True)
class JobRequest:
    """A checked job: what to plan and how to search."""

    model: str
    """Catalog name or alias, hub id, or local config path."""
    task: Literal["train", "serve"]
    """Fine-tune or serve."""
    objective: Literal["time", "cost", "throughput"]
    """What the search optimises."""
    pareto: bool
    """Return the Pareto front instead of one winner."""
    methods: tuple[str, ...] | None
    """Allowed methods (None: all)."""
    quants: tuple[str, ...] | None
    """Allowed base/weight quantizations (None: all)."""
    ranks: tuple[int, ...] | None
    """LoRA ranks (None: the default, 16; 'auto' gives the searched list)."""
    seq_len: int
    """Training tokens per sequence."""
    global_batch: int
    """Sequences per optimizer step."""
    dataset_tokens: int
    """Tokens in one epoch."""
    epochs: float
    """Passes over the data."""
    context: int
    """Serving tokens per sequence."""
    concurrency: int | None
    """Serving sequences at once (None: as many as fit)."""
    seed: int
    """Sampler seed."""
    trials: int | None
    """Distinct plans to evaluate (None: decided by the size of the space)."""
    runtime: str = "swiftplan"
    """Runtime planned for (profiles/runtimes; its engine runs the plan): a training runtime, or for serving a
    serving runtime (vllm, sglang, lmdeploy) or '' for the default engine."""
    training: str = "sft"
    """The training objective (sft, dpo, kto, orpo, simpo, cpo, rm, ppo, grpo), with fit's defaults."""
    runtime_options: dict[str, Any] = field(default_factory=dict)
    """RuntimeKnobs fields set over the runtime's defaults (fit's knob flags; training only)."""
    eager: bool = False
    """Serving: decode without CUDA graphs (fit's --enforce-eager)."""
    headroom: float = 0.05
    """Fraction of device memory kept free (fit's --headroom)."""
    host_ram_bytes: int | None = None
    """Host RAM per node for offload (fit's --host-ram); None: the probed figure, else 64 GiB."""
    ttft_s: float | None = None
    """Serving: largest acceptable time to first token, s (fit's --ttft); None: no target."""
    decode_tps: float | None = None
    """Serving: smallest acceptable decode tokens/s per user (fit's --decode-tps); None: no target."""
    dora: bool = False
    """Training: the adapters are DoRA (fit's --dora; LoRA and QLoRA only)."""
    data: str | None = None
    """Training: a data file to count tokens and per-sample lengths from (fit's --data); it replaces the
    dataset tokens typed."""
    lengths: str | None = None
    """Training: a file of per-sample token lengths, one per line (fit's --lengths)."""
    storage: str | None = None
    """Optuna storage URL the study is kept in and resumed from (fit's --storage); None: in memory."""
    study_name: str | None = None
    """The study's name in the storage (fit's --study-name); None: derived from the problem."""
    packing: bool = False
    """Training: samples are packed into full sequences (fit's --packing); it changes the plan only with a data or
    lengths file, whose samples are otherwise planned as padded batches."""
    variable_lengths: bool = False
    """Training: the samples vary in length with no data or lengths file to say how (fit's --variable-lengths):
    batches are padded by the runtime's padding, and the allocator's slack grows with the lengths it sees."""
    vision: VisionInputs | None = None
    """Vision-language models: each sample's (serving: request's) images and video (fit's --images-per-sample,
    --image-size, --image-tokens and --video-frames; training: --train-vit and --train-aligner too), parsed by the
    same use case; None: text only."""


def _positive_int(name: str, text: str) -> int:
    try:
        value = int(text.strip().replace("_", "").replace(",", ""))
    except ValueError:
        raise SwiftplanError(f"{name} must be a whole number, got {text!r}.") from None
    if value < 1:
        raise SwiftplanError(f"{name} must be at least 1, got {value}.")
    return value


def _optional_int(name: str, text: str) -> int | None:
    return None if text.strip().lower() in ("", "auto") else _positive_int(name, text)


def _finite(flag: str, text: str, example: str) -> float:
    """A typed number for `flag`, refused as the CLI refuses it when it is no number or not finite; its range is
    the fit use case's check, as for the flag."""
    try:
        value = float(text.strip())
    except ValueError:
        raise SwiftplanError(f"{flag} must be a number such as {example}, got {text!r}.") from None
    if not math.isfinite(value):
        raise SwiftplanError(f"{flag} must be a finite number, got {value}.")
    return value


def _optional_finite(flag: str, text: str, example: str) -> float | None:
    """An optional typed number for `flag` (empty or 'none': not given); its range is the fit use case's check."""
    return None if text.strip().lower() in ("", "none") else _finite(flag, text, example)


def _path(text: str) -> str | None:
    """A file path as typed (empty: not given); the fit use case reads it and names it when it cannot."""
    return text.strip() or None


def _host_ram_bytes(text: str) -> int | None:
    """fit's --host-ram in GiB as typed, or None for 'auto' (the probed figure)."""
    if text.strip().lower() in ("", "auto"):
        return None
    return int(_finite("--host-ram", text, "64 (GiB), or auto") * 2**30)


def _choices(text: str) -> tuple[str, ...] | None:
    items = tuple(part.strip() for part in text.split(",") if part.strip())
    return None if not items or items == ("any",) else items


def _ranks(text: str) -> tuple[int, ...] | None:
    if text.strip().lower() == "auto":
        from swiftplan.planner.search.space_choices import RANKS

        return RANKS
    items = _choices(text)
    return None if items is None else tuple(_positive_int("LoRA rank", item) for item in items)


def serve_runtime_choices() -> tuple[str, ...]:
    """Serving runtimes the search can plan for (`swiftplan fit --task serve --runtime`), fit's default
    engine's (vLLM) first."""
    from swiftplan.planner.runtime import DEFAULT_SERVE_RUNTIME

    return _runtimes_with_engines("serve", DEFAULT_SERVE_RUNTIME)


def task_runtimes(task: str) -> tuple[str, ...]:
    """The runtimes the form offers for a task field's value, its default first: the serving runtimes for
    serve, the training runtimes for every training task."""
    return serve_runtime_choices() if task == "serve" else runtime_choices()


def _serve_runtime(runtime: str) -> str:
    """The serving runtime field as fit takes it: a serving runtime, or '' (the default engine) for a
    training runtime left in the field."""
    if runtime in serve_runtime_choices():
        return runtime
    if runtime in runtime_choices():
        return ""
    raise SwiftplanError(
        f"Runtime for serving must be one of {', '.join(serve_runtime_choices())} (or a training runtime, which "
        f"serving ignores: the default engine), got {runtime!r}."
    )


def parse_job(fields: Mapping[str, str]) -> JobRequest:
    """Check the form's text fields; one SwiftplanError naming the first bad field."""
    raw = {**FORM_DEFAULTS, **fields}
    model = raw["model"].strip()
    if not model:
        raise SwiftplanError(
            "No model: type a catalog name (e.g. Qwen/Qwen2.5-7B), a hub id or a path to a config.json.",
            hint="Suggestions appear as you type; press → to accept one.",
        )
    chosen = raw["task"]
    if chosen not in TASK_CHOICES:
        raise SwiftplanError(f"Task must be one of {', '.join(TASK_CHOICES)}, got {chosen!r}.")
    task: Literal["train", "serve"] = "serve" if chosen == "serve" else "train"
    training = "sft" if chosen in ("train", "serve") else chosen
    objective = raw["objective"]
    if objective == "auto":
        objective = "throughput" if task == "serve" else "time"
    if objective not in OBJECTIVES:
        raise SwiftplanError(f"Objective must be time, cost or throughput, got {objective!r}.")
    try:
        dataset_tokens = parse_token_count(raw["dataset_tokens"])
    except ValueError:
        raise SwiftplanError(
            f"Dataset tokens must be a count such as 50M, 1.5B or 200k, got {raw['dataset_tokens']!r}."
        ) from None
    if dataset_tokens <= 0:
        raise SwiftplanError(f"Dataset tokens must be positive, got {raw['dataset_tokens']!r}.")
    try:
        epochs = float(raw["epochs"])
    except ValueError:
        raise SwiftplanError(f"Epochs must be a number, got {raw['epochs']!r}.") from None
    if epochs <= 0:
        raise SwiftplanError(f"Epochs must be positive, got {raw['epochs']!r}.")
    runtime = raw["runtime"].strip() or "swiftplan"
    shown = runtime  # the runtime whose values the knob fields were filled with
    if (
        training != "sft" and runtime == "swiftplan"
    ):  # swiftplan's loop trains SFT only; ms-swift runs them all
        runtime = "ms-swift"
    if task == "train" and runtime not in runtime_choices():
        raise SwiftplanError(f"Runtime must be one of {', '.join(runtime_choices())}, got {runtime!r}.")
    from swiftplan.tui.knobs import runtime_overrides

    overrides: dict[str, Any] = {}
    if task == "serve":
        from swiftplan.planner.runtime import refuse_knobs_for_serving

        runtime = _serve_runtime(runtime)
        filled = raw.get(KNOBS_FOR, "")  # the knob fields hold this training runtime's values
        refuse_knobs_for_serving(
            runtime_overrides(fields, filled if filled in runtime_choices() else "swiftplan")
        )
    else:
        overrides = runtime_overrides(fields, shown if shown in runtime_choices() else runtime)
    eager = raw.get("eager", "no") == "yes"
    if eager and task != "serve":
        from swiftplan.planner.runtime import refuse_eager_for_training

        refuse_eager_for_training(eager)
    try:
        seed = int(raw["seed"])
    except ValueError:
        raise SwiftplanError(f"Seed must be a whole number, got {raw['seed']!r}.") from None
    return JobRequest(
        model=model,
        task=task,
        objective=objective,
        pareto=raw["pareto"] == "yes",
        methods=_choices(raw["method"]),
        quants=_choices(raw["quant"]),
        ranks=_ranks(raw["rank"]),
        seq_len=_positive_int("Sequence length", raw["seq"]),
        global_batch=_positive_int("Global batch", raw["global_batch"]),
        dataset_tokens=dataset_tokens,
        epochs=epochs,
        context=_positive_int("Context", raw["context"]),
        concurrency=_optional_int("Concurrency", raw["concurrency"]),
        seed=seed,
        trials=_optional_int("Trials", raw["trials"]),
        runtime=runtime,
        training=training,
        runtime_options=overrides,
        eager=eager,
        headroom=_finite("--headroom", raw["headroom"], "0.05"),
        host_ram_bytes=_host_ram_bytes(raw["host_ram"]),
        storage=_path(raw["storage"]),
        study_name=_path(raw["study_name"]),
        vision=_vision(raw, serving=task == "serve"),
        **_task_fields(raw, task),
    )


def _count(flag: str, text: str) -> int | None:
    """A typed count for a vision flag (empty: not given); its range is the shared parser's check."""
    text = text.strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise SwiftplanError(f"{flag} must be a whole number, got {text!r}.") from None


def _vision(raw: Mapping[str, str], *, serving: bool) -> VisionInputs | None:
    """The image and video fields as fit's --images-per-sample, --image-size, --image-tokens and --video-frames
    (empty: not given), and for training the vision tower and aligner switches as --train-vit and --train-aligner
    ('no': not given, frozen as ms-swift's default; serving disables them, since the parser refuses them there),
    read by the parser every view shares."""
    from swiftplan.usecases.vision_inputs import build_vision_inputs

    options = {
        "images_per_sample": _count("--images-per-sample", raw["images"]),
        "image_size": raw["image_size"].strip() or None,
        "image_tokens": _count("--image-tokens", raw["image_tokens"]),
        "video_frames": _count("--video-frames", raw["video_frames"]),
    }
    if not serving:
        options |= {name: True for name in ("train_vit", "train_aligner") if raw[name] == "yes"}
    return build_vision_inputs(options, serving=serving)


def _task_fields(raw: Mapping[str, str], task: Literal["train", "serve"]) -> dict[str, Any]:
    """The JobRequest fields of one task only (`SERVE_ONLY`, `TRAIN_ONLY`), from their text; the other task's
    are left at their defaults, as the form disables them."""
    if task == "serve":
        return {
            "ttft_s": _optional_finite("--ttft", raw["ttft"], "0.5 (s), or none"),
            "decode_tps": _optional_finite("--decode-tps", raw["decode_tps"], "20 (tokens/s), or none"),
        }
    return {
        "dora": raw["dora"] == "yes",
        "data": _path(raw["data"]),
        "lengths": _path(raw["lengths"]),
        "packing": raw["packing"] == "yes",
        "variable_lengths": raw["variable_lengths"] == "yes",
    }
