"""LoRA/DoRA adapter shapes: which modules peft wraps and how many parameters that adds."""

from __future__ import annotations

from swiftplan.errors import SwiftplanError
from swiftplan.planner.architecture import Linear, layer_linears
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.setup import LoraSetup

ADAPTER_DTYPE_BYTES = 4
"""peft >= 0.12 upcasts adapter weights to fp32 when the base is bf16/fp16
(`get_peft_model(..., autocast_adapter_dtype=True)` is the default), so A, B and the DoRA
magnitude are fp32 whatever the base dtype."""


def is_targeted(linear: Linear, lora: LoraSetup) -> bool:
    """peft's matching: nn.Linear modules whose name (last component) is in the target list;
    "all-linear" takes every nn.Linear in the blocks (the LM head is excluded by peft)."""
    if linear.kind != "linear":
        return False
    if lora.all_linear:
        return True
    leaf = linear.name.rsplit(".", 1)[-1]
    return leaf in lora.targets or linear.name in lora.targets


def targeted_linears(spec: ModelSpec, lora: LoraSetup, layer: int) -> list[Linear]:
    """The modules of block `layer` that get an adapter."""
    return [lin for lin in layer_linears(spec, layer) if is_targeted(lin, lora)]


def lora_params_for(linear: Linear, lora: LoraSetup) -> int:
    """A (r × in) + B (out × r), plus the DoRA magnitude (out)."""
    params = lora.rank * (linear.in_features + linear.out_features)
    if lora.dora:
        params += linear.out_features
    return params


def adapter_params(spec: ModelSpec, lora: LoraSetup) -> int:
    """Trainable adapter parameters in the whole model."""
    return sum(lora_params_for(lin, lora) for i in range(spec.num_layers) for lin in targeted_linears(spec, lora, i))


def validate_targets(spec: ModelSpec, lora: LoraSetup) -> None:
    """Raise when a target name matches no module of this model (peft would raise too, later)."""
    if lora.all_linear:
        return
    linears = [lin for i in {0, spec.num_layers - 1} for lin in layer_linears(spec, i) if lin.kind == "linear"]
    names = {lin.name.rsplit(".", 1)[-1] for lin in linears} | {lin.name for lin in linears}
    unknown = [t for t in lora.targets if t not in names]
    if unknown:
        raise SwiftplanError(
            f"LoRA target(s) {', '.join(unknown)} match no module of {spec.name} ({spec.model_type}).",
            hint=f"This model's linear modules are: {', '.join(sorted(names))}; or use all-linear.",
        )
