"""DoRA (weight-decomposed LoRA) on top of LoRA: what peft's `DoraLinearLayer` saves and allocates in training.

Every forward of a DoRA-wrapped Linear (peft 0.21.2 tuners/lora/dora.py `DoraLinearLayer.forward`, called from
variants.py `DoraLinearVariant.forward`) rebuilds the adapter's full weight and the column norm of the adapted
weight before it multiplies anything:

- `get_lora_weight`: `lora_B(lora_A(eye(in)))` — an in × in identity matrix in the adapters' dtype, its rank-wide
  product and the out × in LoRA weight, all alive until the layer returns (the graph of the LoRA weight holds the
  identity; it is detached before use, so nothing of it reaches backward);
- `weight.to(x.dtype)`: the base weight in the dtype of the layer's input, which peft has cast to the adapters'
  dtype: a copy unless the base is an unquantized weight already in that dtype (a bitsandbytes base is
  dequantized first, `dequantize_module_weight`);
- `get_weight_norm`: `scaling * lora_weight` and `weight + that`, two more out × in tensors, then the norm.

So each DoRA Linear's forward peaks at in² + in·r + 4·out·in elements (3 without the weight copy) in the
adapters' dtype, whatever the token count: for Llama-3.1-8B's down_proj (14,336 → 4,096, fp32 adapters) 1.64 GiB.
The result `(m/‖W‖ − 1) · base_result + m/‖W‖ · lora_result · scaling` keeps both products for the magnitude's
gradient: the base layer's output (T × out in the stream's dtype, no tensor any other op keeps) and lora_B's output
(T × out in the adapters' dtype), per wrapped Linear, beside what LoRA saves. Traced on fake tensors with peft's
own DoRA (executors/trace.py, `use_dora`).
"""

from __future__ import annotations

from collections.abc import Iterator

from swiftplan.errors import SwiftplanError
from swiftplan.planner.adapters import is_targeted
from swiftplan.planner.architecture import Linear, layer_linears
from swiftplan.planner.dtypes import activation_dtype_bytes, adapter_dtype, dtype_bytes, module_dtype
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.setup import LoraSetup, TrainSetup


def _trains_dora(setup: TrainSetup) -> bool:
    """The set-up trains DoRA adapters."""
    return setup.lora is not None and setup.lora.dora and setup.trains_adapters


def dora_linears(spec: ModelSpec, setup: TrainSetup, layer: int) -> tuple[Linear, ...]:
    """The nn.Linears of block `layer` that peft wraps with DoRA (none unless the set-up trains DoRA adapters)."""
    if not _trains_dora(setup):
        return ()
    assert setup.lora is not None
    return tuple(
        linear
        for linear in layer_linears(spec, layer)
        if linear.kind == "linear" and is_targeted(linear, setup.lora, spec.model_type)
    )


def _every_dora_linear(spec: ModelSpec, setup: TrainSetup) -> Iterator[Linear]:
    """Every block's DoRA Linears (nothing, without walking the blocks, when the set-up trains no DoRA)."""
    if not _trains_dora(setup):
        return
    for layer in range(spec.num_layers):
        yield from dora_linears(spec, setup, layer)


def check_dora(spec: ModelSpec, lora: LoraSetup, flag: str = "--dora") -> None:
    """DoRA wraps nn.Linears only: peft's ParamWrapper, which takes LoRA onto fused MoE experts and routers, raises
    "lora.ParamWrapper does not work with use_dora=True" (peft 0.21.2 tuners/lora/layer.py:2371-2372), so a DoRA set-up
    whose targets reach them is refused with what would run."""
    if not lora.dora:
        return
    layers = range(spec.num_layers)
    fused = sorted({lin.name for i in layers for lin in layer_linears(spec, i)
                    if lin.kind != "linear" and is_targeted(lin, lora, spec.model_type)})  # fmt: skip
    if fused:
        raise SwiftplanError(
            f"{flag}: peft cannot put DoRA on {spec.name}'s fused MoE parameters ({', '.join(fused)}), which "
            f"{'all-linear' if lora.all_linear else 'these targets'} reach: its ParamWrapper raises 'does not work "
            "with use_dora=True' (peft 0.21.2 tuners/lora/layer.py).",
            hint="Adapt the attention projections only (--targets attention on fit, estimate and verify) with --dora, "
            "or leave --dora out.",
        )


def dora_methods(methods: tuple[str, ...] | None) -> tuple[str, ...]:
    """The methods a search with DoRA adapters keeps (fit and size --dora): LoRA and QLoRA, or the pinned ones; a pin
    that includes full fine-tuning, which trains no adapters, is refused."""
    if methods is not None and "full" in methods:
        raise SwiftplanError(
            f"--dora decomposes LoRA adapters, and --method {','.join(methods)} includes full fine-tuning, which "
            "trains no adapters.",
            hint="Pin --method lora or qlora (or leave --method out) with --dora.",
        )
    return methods or ("lora", "qlora")


def dora_saved_bytes(spec: ModelSpec, setup: TrainSetup, layer: int, tokens: int) -> int:
    """What block `layer`'s DoRA Linears keep for backward beyond LoRA's saved tensors (`dora_saved_bytes_of`)."""
    return sum(dora_saved_bytes_of(linear, setup, tokens) for linear in dora_linears(spec, setup, layer))


def dora_saved_bytes_of(linear: Linear, setup: TrainSetup, tokens: int) -> int:
    """What one DoRA Linear keeps for backward beyond LoRA's saved tensors: lora_B's output (T × out, adapters' dtype)
    and the base output (T × out): without dropout the base layer's own (stream dtype); with dropout DoRA multiplies
    the dropped input by the base weight again (`F.linear(x, weight)`), which keeps that weight in the adapters' dtype
    (`_weight_copy_bytes`) and makes the output in it."""
    assert setup.lora is not None
    ab = dtype_bytes(adapter_dtype(setup))
    dropout = setup.lora.dropout > 0
    base = ab if dropout else activation_dtype_bytes(setup)
    return tokens * linear.out_features * (ab + base) + (_weight_copy_bytes(linear, setup) if dropout else 0)


def _weight_copy_bytes(linear: Linear, setup: TrainSetup) -> int:
    """The base weight in the adapters' dtype (`weight.to(x.dtype)`, x being cast to the adapters' dtype): a copy
    unless the base is an unquantized weight in that dtype already (a bitsandbytes base is dequantized first)."""
    ab = dtype_bytes(adapter_dtype(setup))
    if setup.quant == "none" and dtype_bytes(module_dtype(setup)) == ab:
        return 0
    return linear.out_features * linear.in_features * ab


def dora_first_block_unsaved_bytes(
    spec: ModelSpec, setup: TrainSetup, layer: int, reading_the_stream: list[Linear]
) -> int:
    """With dropout, what DoRA's second base matmul does not keep in a block whose input needs no gradient (the first,
    behind a frozen embedding, block `layer`): the base weight's copy of each of its DoRA Linears in
    `reading_the_stream` (F.linear keeps it only for its input's gradient)."""
    if setup.lora is None or setup.lora.dropout == 0:
        return 0
    wrapped = dora_linears(spec, setup, layer)
    return sum(_weight_copy_bytes(linear, setup) for linear in reading_the_stream if linear in wrapped)


def dora_forward_bytes(linear: Linear, setup: TrainSetup, tokens: int, *, recomputed: bool = False) -> int:
    """The most one DoRA Linear's forward holds beyond its saved tensors (module docstring), at whichever of its two
    moments is larger. Both hold the identity, its rank-wide product, the LoRA weight (alive until the layer returns:
    its graph keeps the identity) and the base weight's copy in the adapters' dtype (unless dropout makes that a saved
    tensor, `dora_saved_bytes`). Taking the norm adds the scaled LoRA weight and the sum (two out × in), before
    lora_B's output (and with dropout DoRA's base output) exist; combining, `(m/‖W‖ − 1) · base + m/‖W‖ · lora ·
    scaling` holds three T × out products beside them, two in a checkpointed block's recompute (which stops once
    `m/‖W‖ · lora`, the last product saving a tensor, exists). Traced (tests/test_dora.py)."""
    assert setup.lora is not None
    ab = dtype_bytes(adapter_dtype(setup))
    inputs, outputs = linear.in_features, linear.out_features
    dropout = setup.lora.dropout > 0
    copy = 0 if dropout else _weight_copy_bytes(linear, setup)
    held = ab * (inputs * inputs + inputs * setup.lora.rank + outputs * inputs) + copy
    not_yet = tokens * outputs * ab * (2 if dropout else 1)
    norm = held + 2 * outputs * inputs * ab - not_yet
    combine = held + (2 if recomputed else 3) * tokens * outputs * ab
    return max(norm, combine)


def dora_base_params(spec: ModelSpec, setup: TrainSetup) -> int:
    """Base weights of the DoRA-wrapped Linears per token path (all blocks): with dropout DoRA multiplies the dropped
    input by each of them again (`F.linear(x, weight)`) and backward takes that product's input gradient, so a token
    costs 2 × this many more FLOPs forward and again backward; 0 without dropout (DoRA reuses the base output)."""
    if setup.lora is None or setup.lora.dropout == 0:
        return 0
    return sum(linear.in_features * linear.out_features for linear in _every_dora_linear(spec, setup))


def dora_rebuild_traffic_bytes(spec: ModelSpec, setup: TrainSetup) -> int:
    """Memory traffic of rebuilding every DoRA Linear's adapted weight once (each forward, and each recompute with
    checkpointing), whatever the tokens: the identity written and read (in² each), and over out × in elements the LoRA
    weight written, the base weight read and written in the adapters' dtype, the scale read and written, the sum's two
    reads and one write and the norm's read (eight adapters-dtype passes and one read of the stored weight)."""
    ab = dtype_bytes(adapter_dtype(setup))
    stored = dtype_bytes(module_dtype(setup))
    return sum(
        2 * linear.in_features**2 * ab + linear.out_features * linear.in_features * (8 * ab + stored)
        for linear in _every_dora_linear(spec, setup)
    )
