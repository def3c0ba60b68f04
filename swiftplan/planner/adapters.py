"""LoRA/DoRA adapter shapes: which modules peft wraps and how many parameters that adds."""

from __future__ import annotations

from functools import cache

from swiftplan.errors import SwiftplanError
from swiftplan.planner.architecture import Linear, layer_linears
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.setup import LoraSetup

# What peft (0.21) does with "all-linear" on transformers-v5 MoE models, as observed with
# get_peft_model on tiny configs (tests/test_model_spec.py pins it): for these model types it
# also wraps the router and the fused expert tensors (ParamWrapper) and, for DeepSeek, leaves the
# dense MLPs (first_k_dense layers and shared experts) alone; for others (qwen2_moe) only
# nn.Linear modules are wrapped.
_ALL_LINEAR_WRAPS_EXPERTS = frozenset({"mixtral", "qwen3_moe", "deepseek_v2", "deepseek_v3"})
_ALL_LINEAR_SKIPS_DENSE_MLP = frozenset({"deepseek_v2", "deepseek_v3"})


def all_linear_peft_note(spec: ModelSpec, lora: LoraSetup) -> str | None:
    """Where peft 0.22 adapts more of a MoE model under all-linear than the 0.21 rules above (observed with
    get_peft_model on the same tiny configs): it wraps Qwen2-MoE's fused experts and router too, and no longer
    leaves DeepSeek's dense MLPs and shared experts alone. None where both versions agree."""
    if spec.moe is None or not lora.all_linear:
        return None
    if spec.model_type in _ALL_LINEAR_WRAPS_EXPERTS and spec.model_type not in _ALL_LINEAR_SKIPS_DENSE_MLP:
        return None
    more = (
        "the dense MLPs and shared experts"
        if spec.model_type in _ALL_LINEAR_SKIPS_DENSE_MLP
        else "the routed experts' fused weights and the router"
    )
    return (
        f"all-linear on {spec.model_type} is planned as peft 0.21 adapts it; peft 0.22 also adapts {more}, "
        "which is not modelled: under peft 0.22 name the targets to plan what runs."
    )


ADAPTER_DTYPE_BYTES = 4
"""peft >= 0.12 upcasts adapter weights to fp32 when the base is bf16/fp16
(`get_peft_model(..., autocast_adapter_dtype=True)` is the default), so A, B and the DoRA
magnitude are fp32 whatever the base dtype."""


def is_targeted(linear: Linear, lora: LoraSetup, model_type: str = "") -> bool:
    """peft's matching: modules whose name (last component) is in the target list.

    "all-linear" takes every nn.Linear in the blocks (peft excludes the LM head) and, with
    transformers v5 MoE models, also the router and the fused expert tensors (peft >= 0.18
    wraps them with a ParamWrapper) for the model types listed above."""
    if lora.all_linear:
        if linear.kind != "linear":
            return model_type in _ALL_LINEAR_WRAPS_EXPERTS
        return not (model_type in _ALL_LINEAR_SKIPS_DENSE_MLP and linear.block == "mlp")
    if linear.kind != "linear":
        return False
    leaf = linear.name.rsplit(".", 1)[-1]
    return leaf in lora.targets or linear.name in lora.targets


def targeted_linears(spec: ModelSpec, lora: LoraSetup, layer: int) -> list[Linear]:
    """The modules of block `layer` that get an adapter."""
    return [lin for lin in layer_linears(spec, layer) if is_targeted(lin, lora, spec.model_type)]


def lora_params_for(linear: Linear, lora: LoraSetup) -> int:
    """A (r × in) + B (out × r), plus the DoRA magnitude (out).

    Fused experts get one rank-r adapter per expert, stacked (A: r·E × in, B: out × r·E);
    peft doubles the rank of a fused gate_up tensor so gate and up each get rank r."""
    rank = lora.rank * linear.count * (2 if linear.kind == "experts" and "gate_up" in linear.name else 1)
    params = rank * (linear.in_features + linear.out_features)
    if lora.dora:
        params += linear.out_features
    return params


@cache
def adapter_params(spec: ModelSpec, lora: LoraSetup) -> int:
    """Trainable adapter parameters in the whole model."""
    return sum(
        lora_params_for(lin, lora) for i in range(spec.num_layers) for lin in targeted_linears(spec, lora, i)
    )


def validate_targets(spec: ModelSpec, lora: LoraSetup) -> None:
    """Raise when a target name matches no module of this model (peft would raise too, later)."""
    if lora.all_linear:
        return
    linears = [
        lin for i in {0, spec.num_layers - 1} for lin in layer_linears(spec, i) if lin.kind == "linear"
    ]
    names = {lin.name.rsplit(".", 1)[-1] for lin in linears} | {lin.name for lin in linears}
    unknown = [t for t in lora.targets if t not in names]
    if unknown:
        raise SwiftplanError(
            f"LoRA target(s) {', '.join(unknown)} match no module of {spec.name} ({spec.model_type}).",
            hint=f"This model's linear modules are: {', '.join(sorted(names))}; or use all-linear.",
        )
