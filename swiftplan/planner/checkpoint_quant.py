"""The quantization a checkpoint was exported with: config.json's `quantization_config`.

Only the fp8 exports vLLM loads as fp8 are read: `quant_method: "fp8"` (vLLM's Fp8Config) and
`quant_method: "compressed-tensors"` with one 8-bit float weight scheme (llm-compressor's FP8 exports).
Other methods (gptq, awq, bitsandbytes…) are left to `--quant` as before. Source of each rule:
`FP8_CONFIG_SOURCE`, `COMPRESSED_TENSORS_SOURCE`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from swiftplan.errors import SwiftplanError
from swiftplan.planner.values import is_whole_number

FP8_CONFIG_SOURCE = (
    "vllm 0.32.0 model_executor/layers/quantization/fp8.py: Fp8Config.from_config reads activation_scheme, "
    "ignored_layers (else modules_to_not_convert) and weight_block_size; get_quant_method gives an ignored "
    "LinearBase or RoutedExperts the unquantized method (is_layer_skipped, match_mode 'exact'); "
    "Fp8LinearMethod.create_weights: fp8 weight + one fp32 weight_scale per tensor, or per "
    "weight_block_size block (weight_scale_inv), + an fp32 input_scale when activation_scheme is 'static'; "
    "Fp8MoEMethod.create_weights: fp8 w13/w2 with fp32 scales per expert (w13: one per gate/up shard) or "
    "per block"
)
COMPRESSED_TENSORS_SOURCE = (
    "vllm 0.32.0 model_executor/layers/quantization/compressed_tensors/compressed_tensors.py "
    "(CompressedTensorsConfig.from_config: config_groups, ignore; attention-only groups skipped) and "
    "schemes/compressed_tensors_w8a8_fp8.py (weights strategy tensor | channel | block with block_structure, "
    "fp32 scales); ignore entries are module names or 're:' regular expressions (utils.py "
    "_is_equal_or_regex_match)"
)

Fp8Scales = Literal["tensor", "channel", "block"]
"""How an fp8 weight carries its fp32 scales: one per tensor, one per output channel, or one per block."""


@dataclass(frozen=True, kw_only=True, slots=True)
class CheckpointQuant:
    """An fp8 checkpoint's own quantization, as its config.json declares it."""

    method: Literal["fp8", "compressed-tensors"]
    """quantization_config.quant_method."""
    scales: Fp8Scales = "tensor"
    """Granularity of the fp32 weight scales."""
    weight_block: tuple[int, int] | None = None
    """(output rows, input columns) per scale when `scales` is "block" (DeepSeek-V3: 128 × 128)."""
    static_activations: bool = False
    """activation_scheme "static": each quantized module also keeps an fp32 input scale."""
    ignored: tuple[str, ...] = ()
    """Module names (or 're:' patterns) left in the compute dtype (ignored_layers / modules_to_not_convert / ignore)."""
    source: str = FP8_CONFIG_SOURCE
    """Where the parsing rule comes from."""

    def __post_init__(self) -> None:
        if (self.scales == "block") != (self.weight_block is not None):
            raise ValueError("weight_block is given exactly when scales is 'block'")

    def ignores(self, module: str) -> bool:
        """Whether vLLM leaves `module` (a full name such as model.layers.0.self_attn.q_proj) unquantized:
        an exact name in the list, or a match of one of its 're:' patterns."""
        return any(
            re.match(entry[3:], module) if entry.startswith("re:") else entry == module
            for entry in self.ignored
        )


_HINT = "Check the checkpoint's config.json (quantization_config), or pass the unquantized model."


def _names(config: Mapping[str, Any], name: str, key: str) -> tuple[str, ...]:
    value = config.get(key)
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
        raise SwiftplanError(
            f"The config for {name!r} has quantization_config.{key}={value!r}; it must be a list of module "
            'names such as ["lm_head", "model.layers.0.mlp.down_proj"].',
            hint=_HINT,
        )
    return tuple(value)


def _block(value: Any, name: str, key: str) -> tuple[int, int]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(is_whole_number(v) and v >= 1 for v in value)
    ):
        raise SwiftplanError(
            f"The config for {name!r} has quantization_config.{key}={value!r}; it must be two whole numbers "
            "(rows, columns) per scale, such as [128, 128].",
            hint=_HINT,
        )
    return int(value[0]), int(value[1])


def _fp8(config: Mapping[str, Any], name: str) -> CheckpointQuant:
    scheme = config.get("activation_scheme", "dynamic")
    if scheme not in ("dynamic", "static"):
        raise SwiftplanError(
            f"The config for {name!r} has quantization_config.activation_scheme={scheme!r}; vLLM's fp8 "
            "loader accepts 'dynamic' or 'static'.",
            hint=_HINT,
        )
    ignored = _names(config, name, "ignored_layers") or _names(config, name, "modules_to_not_convert")
    block = config.get("weight_block_size")
    weight_block = None if block is None else _block(block, name, "weight_block_size")
    return CheckpointQuant(
        method="fp8",
        scales="tensor" if weight_block is None else "block",
        weight_block=weight_block,
        static_activations=scheme == "static",
        ignored=ignored,
        source=FP8_CONFIG_SOURCE,
    )


def _compressed_tensors(config: Mapping[str, Any], name: str) -> CheckpointQuant | None:
    """One fp8 weight scheme over the Linear layers; None when the checkpoint is not fp8 (int4/int8 schemes
    stay with --quant)."""
    groups = config.get("config_groups")
    if not isinstance(groups, Mapping):
        return None
    schemes = [
        group
        for group in groups.values()
        if isinstance(group, Mapping) and not str((group.get("targets") or [""])[0]).endswith("Attention")
    ]
    weights = [group.get("weights") for group in schemes]
    if not weights or not all(
        isinstance(w, Mapping) and w.get("type") == "float" and w.get("num_bits") == 8 for w in weights
    ):
        return None
    if len(weights) > 1:
        raise SwiftplanError(
            f"The config for {name!r} has {len(weights)} compressed-tensors quantization groups; swiftplan "
            "reads fp8 checkpoints with one weight scheme for every quantized layer.",
            hint="Plan with --quant fp8 for an estimate that takes every Linear layer as fp8.",
        )
    weight = weights[0]
    assert isinstance(weight, Mapping)
    strategy = weight.get("strategy", "tensor")
    if strategy not in ("tensor", "channel", "block"):
        raise SwiftplanError(
            f"The config for {name!r} has an fp8 weight strategy {strategy!r}; swiftplan knows 'tensor', "
            "'channel' and 'block' (compressed-tensors QuantizationStrategy).",
            hint=_HINT,
        )
    inputs = schemes[0].get("input_activations")
    return CheckpointQuant(
        method="compressed-tensors",
        scales=strategy,
        weight_block=_block(weight.get("block_structure"), name, "block_structure")
        if strategy == "block"
        else None,
        static_activations=isinstance(inputs, Mapping) and inputs.get("dynamic") is False,
        ignored=_names(config, name, "ignore"),
        source=COMPRESSED_TENSORS_SOURCE,
    )


def checkpoint_quant(config: Mapping[str, Any], name: str) -> CheckpointQuant | None:
    """The fp8 quantization config.json's `quantization_config` declares, None when there is none (or it
    is a method swiftplan leaves to --quant); a malformed fp8 config is a SwiftplanError naming the key."""
    quant = config.get("quantization_config")
    if quant is None:
        return None
    if not isinstance(quant, Mapping):
        raise SwiftplanError(
            f"The config for {name!r} has quantization_config={quant!r}; it must be an object.", hint=_HINT
        )
    method = quant.get("quant_method")
    if method == "fp8":
        return _fp8(quant, name)
    if method == "compressed-tensors":
        return _compressed_tensors(quant, name)
    return None
