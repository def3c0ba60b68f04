"""How plans and search outcomes read, in words: the one module every view takes its sentences from.

Plain strings only (no markup), so the CLI and the dashboard print the same thing.
"""

from __future__ import annotations

import shlex
from typing import Any

from swiftplan.planner.search.candidate import Candidate, ServeCandidate
from swiftplan.planner.search.evaluate import Evaluation
from swiftplan.planner.search.optimize import FamilyOutcome, SearchResult
from swiftplan.planner.setup import TrainSetup
from swiftplan.units import GiB, format_duration, format_gib, format_usd

_SIMPLER = (
    "fewer GPUs",
    "less tensor parallelism",
    "fewer pipeline stages",
    "a lower ZeRO stage",
    "no offload",
    "no quantization",
    "double quantization",
    "plain AdamW",
    "no paged optimizer",
    "pure precision",
    "checkpointing",
    "a higher rank",
    "a smaller micro-batch",
)


def cost_text(evaluation: Evaluation) -> str:
    """Dollars where the catalog has a price, else GPU-hours (training: to train; serving: per 1M tokens)."""
    if evaluation.cost_usd is not None:
        return format_usd(evaluation.cost_usd)
    hours = evaluation.gpu_hours
    return f"{hours:,.{1 if hours >= 10 else 2}f} GPU-h"


def quant_label(candidate: Candidate) -> str:
    """'nf4+dq' for NF4 with double quantization, else the quantization name."""
    return {"nf4-dq": "nf4+dq"}.get(candidate.quant, candidate.quant)


def sharding_label(candidate: Candidate) -> str:
    """'0', '3', '2+opt', '3+opt+params'."""
    offload = {"none": "", "optimizer": "+opt", "optimizer+params": "+opt+params"}[candidate.offload]
    return f"{candidate.zero}{offload}"


def candidate_summary(evaluation: Evaluation) -> str:
    """A plan in one line: 'LoRA r16 · nf4 · bf16 adamw · 4×4 ckpt · 1 GPU'."""
    c = evaluation.candidate
    if isinstance(c, ServeCandidate):
        replicas = max(1, evaluation.gpus // c.tp)
        weights = c.dtype if c.quant == "none" else c.quant
        return f"{weights} weights · KV {c.kv_dtype} · TP{c.tp}×{replicas} · {c.concurrency} seqs"
    accum = evaluation.estimate.setup.grad_accum if evaluation.estimate else 1  # type: ignore[union-attr]
    setup = evaluation.estimate.setup if evaluation.estimate else None
    dora = " DoRA" if isinstance(setup, TrainSetup) and setup.lora is not None and setup.lora.dora else ""
    parts = [c.family + dora + (f" r{c.rank}" if c.method != "full" else "")]
    if c.quant != "none":
        parts.append(quant_label(c))
    parts.append(f"{c.precision} {c.optimizer}")
    parts.append(f"{c.micro_batch}×{accum}" + (" ckpt" if c.grad_ckpt else ""))
    if c.zero or c.offload != "none":
        parts.append(f"ZeRO-{c.zero}" + ("" if c.offload == "none" else f" +{c.offload}"))
    gpus = f"{c.layout.gpus} GPU" + ("s" if c.layout.gpus > 1 else "")
    if c.layout.tp > 1 or c.layout.pp > 1:
        gpus += f" tp{c.layout.tp} pp{c.layout.pp}"
    parts.append(gpus)
    return " · ".join(parts)


def _simpler(winner: Any, other: Any) -> str:
    """Which tie-break (Candidate.simplicity order) preferred the winner."""
    for reason, a, b in zip(_SIMPLER, winner.simplicity(), other.simplicity(), strict=False):
        if a != b:
            return reason if isinstance(winner, Candidate) else "simpler numerics"
    return "same plan"


def _comparison(a: Evaluation, b: Evaluation, objective: str) -> tuple[float, str, str]:
    """(how many times worse a is than b, the word for worse, a's figure)."""
    if objective == "throughput":
        return b.tokens_per_s / a.tokens_per_s, "lower throughput", f"{a.tokens_per_s:,.0f} tokens/s"
    if objective == "cost":
        return a.cost / b.cost, "more expensive", cost_text(a)
    return a.time_s / b.time_s, "slower", format_duration(a.time_s)


def _amount(ratio: float) -> str:
    return f"{ratio:.1f}× " if ratio >= 2 else f"{ratio - 1:.0%} "


def _unfit_line(label: str, closest: Evaluation | None) -> str:
    if closest is None or closest.estimate is None:
        return f"{label}: no valid plan."
    if closest.memory_over_bytes > 0:
        return (
            f"{label}: doesn't fit; the closest plan needs {format_gib(closest.device_total_bytes, 1)} per device, "
            f"{format_gib(closest.memory_over_bytes, 1)} over the {format_gib(closest.limit_bytes, 1)} limit."
        )
    if closest.host_over_bytes > 0:
        return (
            f"{label}: fits the GPU only by offloading {format_gib(closest.host_bytes_per_node, 0)} per node to host RAM, "
            f"{format_gib(closest.host_over_bytes, 0)} more than --host-ram allows."
        )
    return f"{label}: misses the latency targets."


def family_line(outcome: FamilyOutcome, best: Evaluation | None, objective: str) -> str:
    """One sentence on how a family did against the winner."""
    if not outcome.searched:
        return f"{outcome.label}: not searched (excluded by the options, the engine or the GPU)."
    if outcome.best is not None and best is not None:
        if outcome.best.candidate == best.candidate:
            return f"{outcome.label}: the winner."
        ratio, worse, what = _comparison(outcome.best, best, objective)
        if ratio < 1.005:
            return f"{outcome.label}: about as good ({what}); the winner is simpler ({_simpler(best.candidate, outcome.best.candidate)})."
        return f"{outcome.label}: best plan is {_amount(ratio)}{worse} ({what})."
    if outcome.best is not None:
        return f"{outcome.label}: fits ({outcome.best.device_total_bytes / GiB:.1f} GiB per device)."
    return _unfit_line(outcome.label, outcome.closest)


def variant_line(label: str, variant_best: Evaluation | None, best: Evaluation | None, objective: str, *,
                 winner: bool) -> str:  # fmt: skip
    """One sentence on how a variant of the objective (reference handling, rollout placement) did."""
    if winner:
        return f"{label}: the winner."
    if variant_best is None:
        return f"{label}: no plan fits."
    if best is None:
        return f"{label}: fits ({variant_best.device_total_bytes / GiB:.1f} GiB per device)."
    ratio, worse, what = _comparison(variant_best, best, objective)
    if ratio < 1.005:
        return f"{label}: about as good ({what})."
    return f"{label}: best plan is {_amount(ratio)}{worse} ({what})."


def engine_line(alternative: Any, planned_for: str, objective: str) -> str:
    """The sentence for a better plan another engine could run (a `fit.EngineAlternative`)."""
    other = alternative.evaluation
    names = ", ".join(
        e.name + ("" if e.runnable else " (not launched by swiftplan yet)") for e in alternative.engines
    )
    _, _, figure = _comparison(other, other, objective)
    if alternative.ratio == float("inf"):
        gain = f"fits where no {planned_for} plan does"
    else:
        better = {"throughput": "more throughput", "cost": "cheaper"}.get(objective, "faster")
        gain = f"{_amount(alternative.ratio).strip()} {better}"
    return f"{candidate_summary(other)} ({figure}) is {gain} on another engine: {names}."


def search_line(result: SearchResult, seed: int, elapsed_s: float | None = None) -> str:
    """How the search went: structures, how they were covered, estimates, time, seed."""
    how = (
        f"{len(result.evaluations):,} estimated, {result.pruned:,} pruned by a speed bound"
        if result.sampler == "exhaustive"
        else f"TPE, {len(result.evaluations):,} distinct in {result.trials} trials"
    )
    took = "" if elapsed_s is None else f" in {elapsed_s:.2f} s"
    return f"searched {result.space_size:,} structures ({how}; {result.estimates:,} estimates){took}, seed {seed}"


def next_command(plan: Any, path: str) -> str:
    """The command that carries out a saved plan (a `Plan`) on the engine it was planned for: that engine's
    command in profiles/engines.json (`swiftplan train PLAN --engine trl`, `swiftplan serve PLAN --engine
    sglang`, or the framework's own command where swiftplan cannot launch it). Serving plans for vLLM or the
    built-in server need no --engine: serve's `auto` picks the plan's."""
    from swiftplan.planner.engines import DEFAULT_TRAIN_ENGINE, get_engine

    quoted = shlex.quote(path)
    engine = get_engine(plan.engine, plan.task) if plan.engine else None
    if plan.task == "serve":
        if engine is None or engine.name in ("vllm", "builtin"):  # serve's --engine auto picks these itself
            return f"swiftplan serve {quoted}"
        return engine.command.replace("PLAN", quoted)
    if engine is None or engine.name == DEFAULT_TRAIN_ENGINE:
        return f"swiftplan train {quoted} --data train.jsonl"
    if not engine.runnable:
        return engine.command
    return engine.command.replace("PLAN", quoted) + " --data train.jsonl"


from typing import TYPE_CHECKING  # noqa: E402 (appended after the first imports, which stay as they were)

if TYPE_CHECKING:  # the fit use case's request, named in the signatures below
    from collections.abc import Mapping

    from swiftplan.planner.search.pins import Pins
    from swiftplan.planner.vision import VisionInputs
    from swiftplan.usecases.fit_request import FitRequest

_FIT_HEAD_FLAGS = {"gpus": "--gpus", "task": "--task", "engine": "--engine", "runtime": "--runtime",
                   "objective": "--objective"}  # fmt: skip
"""`FitRequest` fields that say what is planned where, shown before the pins."""
_FIT_FLAGS = {
    "dataset_tokens": "--dataset-tokens", "data": "--data", "epochs": "--epochs", "global_batch": "--global-batch",
    "seq_len": "--seq", "attention": "--attention", "context": "--context", "concurrency": "--concurrency",
    "ttft_s": "--ttft", "decode_tps": "--decode-tps", "gpu_memory_utilization": "--gpu-memory-utilization",
    "headroom": "--headroom", "seed": "--seed", "trials": "--trials", "storage": "--storage",
    "study_name": "--study-name",
}  # fmt: skip
"""The other `FitRequest` fields that `swiftplan fit` takes as one option each, shown after the pins."""
_PIN_FLAGS = {
    "precisions": "--precision", "optimizers": "--optimizer", "zero": "--zero",
    "max_offload": "--max-offload", "tp": "--tp", "pp": "--pp", "dp": "--dp", "micro_batch": "--batch",
    "targets": "--targets", "kv_dtypes": "--kv-dtype",
}  # fmt: skip
"""`Pins` fields that `swiftplan fit` takes as one comma-separated option each (besides methods, ranks
and quantizations, which come first)."""
_VISION_FLAGS = {
    "images_per_sample": "--images-per-sample", "image_size": "--image-size", "image_tokens": "--image-tokens",
    "video_frames": "--video-frames", "train_vit": "--train-vit/--freeze-vit",
    "train_aligner": "--train-aligner/--freeze-aligner",
}  # fmt: skip
"""The vision-language options (their parameter names, usecases/vision_inputs.VISION_OPTIONS) and their flags: fit,
estimate and size take them alike."""


def _number_text(value: float) -> str:
    """A number as fit's options parse it back exactly: '2', '0.1', '1.5e-07'."""
    if isinstance(value, int):
        return str(value)
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def _tokens_text(tokens: int) -> str:
    """A token count as fit's --dataset-tokens reads it back exactly: '50M', '1.5B', '123457'."""
    from swiftplan.units import parse_token_count

    for suffix, scale in (("B", 10**9), ("M", 10**6), ("k", 10**3)):
        text = f"{tokens / scale:g}{suffix}"
        if tokens >= scale and parse_token_count(text) == tokens:
            return text
    return str(tokens)


def _gib_text(num_bytes: int) -> str:
    """Bytes as fit's --host-ram GiB, chosen so that fit gets the same byte count back."""
    gib = num_bytes / GiB
    for text in (f"{gib:g}", repr(gib)):
        if int(float(text) * GiB) == num_bytes:
            return text
    return repr(gib)


def _option_value(field: str, value: Any) -> str:
    """One `FitRequest` value as its fit option reads it."""
    if field == "dataset_tokens":
        return _tokens_text(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _number_text(value)
    return str(value)


def _field_args(request: FitRequest, default: FitRequest, flags: dict[str, str]) -> list[str]:
    """Fit options for the fields in `flags` whose values differ from the default request's."""
    args: list[str] = []
    for name, flag in flags.items():
        value = getattr(request, name)
        if value != getattr(default, name):
            args += [flag, _option_value(name, value)]
    return args


def _pin_args(pins: Pins) -> list[str]:
    """Fit options for the pins that differ from none."""
    from swiftplan.planner.search.space_choices import RANKS

    args: list[str] = [] if pins.methods is None else ["--method", ",".join(pins.methods)]
    if pins.ranks is not None:
        args += ["--rank", "auto" if tuple(pins.ranks) == RANKS else ",".join(map(str, pins.ranks))]
    if pins.quants == ("none",):
        args.append("--no-quant")
    elif pins.quants is not None:
        args += ["--quant", ",".join(pins.quants)]
    if pins.grad_ckpt is not None and len(pins.grad_ckpt) == 1:
        args.append("--grad-ckpt" if pins.grad_ckpt[0] else "--no-grad-ckpt")
    for name, flag in _PIN_FLAGS.items():
        value = getattr(pins, name)
        if value is not None:
            args += [flag, value if isinstance(value, str) else ",".join(map(str, value))]
    return args


def fit_command_line(request: FitRequest) -> str:
    """The `swiftplan fit` command that makes this request: options only where a value differs from
    FitRequest's default, each shell-quoted."""
    default = type(request)(model=request.model)
    args = [request.model, *_field_args(request, default, _FIT_HEAD_FLAGS)]
    if request.pareto:
        args.append("--pareto")
    args += _pin_args(request.pins) + _field_args(request, default, _FIT_FLAGS)
    if request.eager:
        args.append("--enforce-eager")
    if request.dora:
        args.append("--dora")
    if request.host_ram_bytes is not None:
        args += ["--host-ram", _gib_text(request.host_ram_bytes)]
    args += _runtime_args(request.runtime_options) + vision_args(vision_options(request.vision))
    args += objective_args(request.training)
    return "swiftplan fit " + shlex.join(args)


def vision_args(options: Mapping[str, Any]) -> list[str]:
    """The vision options given in `options` (parameter names to values; None = not given) as command-line
    arguments, to restate a job as another command: estimate's fit pointer, size's next fit."""
    args: list[str] = []
    for name, flag in _VISION_FLAGS.items():
        value = options.get(name)
        if value is None:
            continue
        if isinstance(value, bool):
            on, off = flag.split("/")
            args.append(on if value else off)
        else:
            args += [flag, str(value)]
    return args


def vision_options(vision: VisionInputs | None) -> dict[str, Any]:
    """The vision options' values that fit parses back into `vision` (usecases/vision_inputs.build_vision_inputs),
    leaving out what it fills in by itself (one image a sample, or none beside a video; the tower and aligner
    frozen); empty for a text-only job."""
    if vision is None:
        return {}
    options: dict[str, Any] = {}
    if vision.image_width:
        options["image_size"] = f"{vision.image_width}x{vision.image_height}"
    if vision.image_tokens:
        options["image_tokens"] = vision.image_tokens
    if vision.video_frames:
        options["video_frames"] = vision.video_frames
    only_video = vision.video_frames and not (vision.image_width or vision.image_tokens)
    if not options or vision.images_per_sample != (0 if only_video else 1):
        options["images_per_sample"] = vision.images_per_sample
    if not vision.freeze_vit:
        options["train_vit"] = True
    if not vision.freeze_aligner:
        options["train_aligner"] = True
    return options


def objective_args(objective: Any) -> list[str]:
    """The fit options that restate an objective's job (task, generations, lengths, reference, KL); the
    placement choices are left for fit to search."""
    if objective.kind == "sft":
        return []
    args = ["--task", objective.kind]
    if objective.reference != "auto":
        args += ["--reference", objective.reference]
    rollout = objective.rollout
    if rollout is None:
        return args + (["--prompt-len", str(objective.prompt_len)] if objective.prompt_len else [])
    args += ["--num-generations", str(rollout.num_generations), "--completion-len", str(rollout.completion_len),
             "--prompt-len", str(rollout.prompt_len)]  # fmt: skip
    if objective.kind == "grpo":
        args.append("--kl" if objective.kl else "--no-kl")
    return args


def _runtime_args(options: dict[str, Any]) -> list[str]:
    """Fit options for what the user set over the runtime profile (knob flags, --gpu-memory-utilization is
    a field of its own)."""
    from swiftplan.planner.runtime import KNOB_FLAGS

    args: list[str] = []
    for name, value in options.items():
        flag = KNOB_FLAGS.get(name)
        if flag is None:
            continue
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag.removeprefix("--"))
        elif isinstance(value, tuple):
            args += [flag, ",".join(value) or "none"]
        else:
            args += [flag, _option_value(name, value)]
    return args
