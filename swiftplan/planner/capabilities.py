"""What a device can run (bf16, FP8, FlashAttention-2, bitsandbytes, DeepSpeed, vLLM), as data.

The rules live in `swiftplan/profiles/capabilities.json`, each with the source it was read from. For
every feature the first matching rule gives a status:

- "yes": works with released packages;
- "experimental": source builds, preview branches, community plugins or slow fallbacks; allowed, with
  an advisory;
- "no": impossible; `check` returns the rule's reason;
- "unknown": no rule covers the device; allowed, with an advisory.

Pure: reads packaged data only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from types import MappingProxyType
from typing import Any, Literal, get_args

from swiftplan.planner.hardware import Accelerator, Backend

SupportStatus = Literal["yes", "experimental", "no", "unknown"]
Feature = Literal[
    "bf16",
    "fp8",
    "fp8_weight_only",
    "flash_attention_2",
    "bnb_4bit",
    "bnb_int8",
    "bnb_8bit_optimizers",
    "deepspeed",
    "vllm",
]
FEATURES: tuple[Feature, ...] = get_args(Feature)

_RULE_KEYS = frozenset(
    {
        "backend",
        "min_compute_capability",
        "max_compute_capability",
        "name_contains",
        "status",
        "reason",
        "note",
        "source",
    }
)
_QUANT_4BIT = {"nf4", "fp4", "4bit", "int4", "bnb4bit", "bnb_4bit", "qlora"}
_QUANT_8BIT = {"int8", "8bit", "bnb8bit", "bnb_8bit", "llm.int8", "llmint8"}
_FLASH_ATTENTION = {"flash", "flash_attention_2", "flash_attn", "flash-attn", "fa2", "flash_attention"}


@dataclass(frozen=True, kw_only=True, slots=True)
class FeatureSupport:
    """One feature's verdict for one device."""

    status: SupportStatus
    """See the module docstring."""
    detail: str
    """Reason (for 'no'), note, or empty."""
    source: str
    """Where the rule comes from; empty for 'unknown'."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Capabilities:
    """What one accelerator can run. Each bool is True only for status 'yes' (released software)."""

    accelerator_id: str
    """Catalog id (or probe id) of the device."""
    backend: Backend
    """Torch device family."""
    bf16: bool
    """bf16 compute."""
    fp8: bool
    """FP8 tensor math."""
    fp8_weight_only: bool
    """fp8 weights served by vLLM, with 16-bit math where the device has no FP8 math (W8A16)."""
    flash_attention_2: bool
    """attn_implementation='flash_attention_2'."""
    bnb_4bit: bool
    """bitsandbytes NF4/FP4 (QLoRA)."""
    bnb_int8: bool
    """bitsandbytes LLM.int8() 8-bit weights."""
    bnb_8bit_optimizers: bool
    """bitsandbytes 8-bit and paged optimizers."""
    deepspeed: bool
    """DeepSpeed ZeRO stages 1-3."""
    vllm: bool
    """Serving with vLLM."""
    support: Mapping[str, FeatureSupport]
    """Per-feature verdict with its reason/note and source."""

    def allows(self, feature: Feature) -> bool:
        """True unless the feature is impossible ('yes', 'experimental' and 'unknown' all allow it)."""
        return self.support[feature].status != "no"

    def notes(self) -> dict[str, str]:
        """Feature → note for every feature that is not plainly 'yes' or carries a note."""
        return {name: verdict.detail for name, verdict in self.support.items() if verdict.detail}


@lru_cache(maxsize=1)
def _rules() -> dict[str, dict[str, Any]]:
    text = resources.files("swiftplan.profiles").joinpath("capabilities.json").read_text(encoding="utf-8")
    features = json.loads(text)["features"]
    if set(features) != set(FEATURES):
        raise ValueError(f"capabilities.json features {sorted(features)} != {sorted(FEATURES)}")
    for name, feature in features.items():
        for rule in feature["rules"]:
            unknown = set(rule) - _RULE_KEYS
            if unknown or rule["status"] not in get_args(SupportStatus) or not rule.get("source"):
                raise ValueError(f"capabilities.json {name}: bad rule {rule}")
    return features


def _cc(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor or 0)


def _matches(rule: dict[str, Any], backend: str, compute_capability: str | None, haystack: str) -> bool:
    if rule["backend"] != backend:
        return False
    cc = _cc(compute_capability) if compute_capability else None
    if "min_compute_capability" in rule and (cc is None or cc < _cc(rule["min_compute_capability"])):
        return False
    if "max_compute_capability" in rule and (cc is None or cc > _cc(rule["max_compute_capability"])):
        return False
    if "name_contains" in rule:
        return any(needle.lower() in haystack for needle in rule["name_contains"])
    return True


def feature_support(
    feature: Feature, *, backend: Backend, compute_capability: str | None = None, text: str = ""
) -> FeatureSupport:
    """Verdict for a feature from raw device facts (the probe uses this for devices not in the catalog).

    `text` is searched by the rules' `name_contains` (pass id, name and architecture/gfx target).
    """
    haystack = text.lower()
    for rule in _rules()[feature]["rules"]:
        if _matches(rule, backend, compute_capability, haystack):
            detail = rule.get("reason") or rule.get("note") or ""
            return FeatureSupport(status=rule["status"], detail=detail, source=rule["source"])
    return FeatureSupport(status="unknown", detail="not covered by swiftplan's capability data", source="")


def capabilities_for(accelerator: Accelerator) -> Capabilities:
    """Evaluate every feature for one accelerator."""
    text = f"{accelerator.id} {accelerator.name} {accelerator.architecture}"
    support: dict[str, FeatureSupport] = {
        feature: feature_support(
            feature, backend=accelerator.backend, compute_capability=accelerator.compute_capability, text=text
        )
        for feature in FEATURES
    }
    flags = {feature: support[feature].status == "yes" for feature in FEATURES}
    return Capabilities(
        accelerator_id=accelerator.id,
        backend=accelerator.backend,
        support=MappingProxyType(support),
        **flags,
    )


def feature_label(feature: Feature) -> str:
    """Human name of a feature, e.g. 'bitsandbytes 4-bit (NF4/FP4, QLoRA)'."""
    return _rules()[feature]["label"]


def _required_features(
    *,
    precision: str | None,
    quant: str | None,
    optimizer: str | None,
    zero_stage: int | None,
    attention: str | None,
    serving_engine: str | None,
    serve_runtime: str | None = None,
) -> list[tuple[Feature, str]]:
    """(feature, which option asked for it) for the options given."""
    needs: list[tuple[Feature, str]] = []
    if precision:
        tokens = set(re.split(r"[-_\s]+", precision.lower()))  # 'bf16', 'amp-bf16', 'bf16_mixed'
        for dtype in ("bf16", "fp8"):
            if dtype in tokens:
                needs.append((dtype, f"precision {precision}"))
    if quant:
        key = quant.lower().replace("-", "_")
        if key in _QUANT_4BIT:
            needs.append(("bnb_4bit", f"quantization {quant}"))
        elif key in _QUANT_8BIT:
            needs.append(("bnb_int8", f"quantization {quant}"))
        elif key == "fp8":  # vLLM serves fp8 weights without FP8 math, through its FP8 Marlin kernel
            needs.append(("fp8_weight_only" if serve_runtime == "vllm" else "fp8", f"quantization {quant}"))
    if optimizer:
        key = optimizer.lower()
        if "8bit" in key or key.startswith("paged"):
            needs.append(("bnb_8bit_optimizers", f"optimizer {optimizer}"))
    if zero_stage:
        needs.append(("deepspeed", f"ZeRO stage {zero_stage}"))
    if attention and attention.lower() in _FLASH_ATTENTION:
        needs.append(("flash_attention_2", f"attention {attention}"))
    if serving_engine and serving_engine.lower() == "vllm":
        needs.append(("vllm", "serving with vLLM"))
    return needs


def _verdicts(accelerator: Accelerator, options: dict[str, Any]) -> list[tuple[str, Feature, FeatureSupport]]:
    caps = capabilities_for(accelerator)
    return [(asked_by, feature, caps.support[feature]) for feature, asked_by in _required_features(**options)]


def _device_label(accelerator: Accelerator) -> str:
    if accelerator.compute_capability:
        return f"{accelerator.display_name} (compute capability {accelerator.compute_capability})"
    return accelerator.display_name


def check(
    accelerator: Accelerator,
    *,
    precision: str | None = None,
    quant: str | None = None,
    optimizer: str | None = None,
    zero_stage: int | None = None,
    attention: str | None = None,
    serving_engine: str | None = None,
    serve_runtime: str | None = None,
) -> list[str]:
    """Reasons the requested options cannot run on `accelerator`; empty when they can.

    precision: 'bf16', 'amp-bf16', 'fp16', 'fp32', 'fp8'; quant: 'none', 'nf4', 'fp4', 'int8', 'fp8'
    ('gptq'/'awq' need nothing checked here); optimizer: e.g. 'adamw', 'adamw-8bit', 'paged-adamw-8bit';
    zero_stage: 0-3 (DeepSpeed for 1-3); attention: 'flash' or 'flash_attention_2' (others need nothing);
    serving_engine: 'vllm'; serve_runtime: the serving runtime that loads the quantized weights ('vllm' runs fp8
    weights with 16-bit math where the device has no FP8 math). Each reason is one sentence ending in a full stop.
    """
    reasons: list[str] = []
    if zero_stage is not None and zero_stage not in (0, 1, 2, 3):
        reasons.append(f"ZeRO stage must be 0, 1, 2 or 3, got {zero_stage}.")
        zero_stage = None
    options = dict(precision=precision, quant=quant, optimizer=optimizer, zero_stage=zero_stage,
                   attention=attention, serving_engine=serving_engine, serve_runtime=serve_runtime)  # fmt: skip
    for asked_by, _feature, verdict in _verdicts(accelerator, options):
        if verdict.status == "no":
            reasons.append(f"{asked_by} is not possible on {_device_label(accelerator)}: {verdict.detail}.")
    return reasons


def advisories(
    accelerator: Accelerator,
    *,
    precision: str | None = None,
    quant: str | None = None,
    optimizer: str | None = None,
    zero_stage: int | None = None,
    attention: str | None = None,
    serving_engine: str | None = None,
    serve_runtime: str | None = None,
) -> list[str]:
    """Warnings for requested options that are allowed but 'experimental' or 'unknown' on this device."""
    options = dict(precision=precision, quant=quant, optimizer=optimizer,
                   zero_stage=zero_stage if zero_stage in (1, 2, 3) else None,
                   attention=attention, serving_engine=serving_engine, serve_runtime=serve_runtime)  # fmt: skip
    notes: list[str] = []
    for asked_by, feature, verdict in _verdicts(accelerator, options):
        label = feature_label(feature)
        if verdict.status == "experimental":
            notes.append(
                f"{asked_by}: {label} is experimental on {accelerator.display_name} ({verdict.detail})."
            )
        elif verdict.status == "unknown":
            notes.append(f"{asked_by}: swiftplan has no data on {label} for {accelerator.display_name}.")
    return notes
