"""Build a real transformers model (and peft LoRA) from a config dict over fake tensors.

The model is constructed on the meta device (no weight init, no memory), then every parameter and
buffer is converted to a `FakeTensor` on the trace device; peft runs inside the `FakeTensorMode`, so
the LoRA weights it creates are fake too. Nothing here allocates real memory proportional to the model.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from swiftplan.errors import SwiftplanError
from swiftplan.executors.trace_patches import patched

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

_IGNORED_CONFIG_KEYS = ("torch_dtype", "dtype", "transformers_version", "auto_map", "_name_or_path")


def load_config(hf_config: dict[str, Any], *, notes: list[str]) -> Any:
    """A transformers `PretrainedConfig` from a config.json dict (quantization settings dropped)."""
    from transformers import AutoConfig

    raw = dict(hf_config)
    model_type = raw.pop("model_type", None)
    if not model_type:
        raise ValueError("hf_config has no 'model_type'; pass the model's config.json as a dict")
    for key in _IGNORED_CONFIG_KEYS:
        raw.pop(key, None)
    if raw.pop("quantization_config", None) is not None:
        notes.append(
            "quantization_config ignored: NF4/int8/FP8 weights are not traceable; traced unquantized"
        )
    try:
        return AutoConfig.for_model(model_type, **raw)
    except Exception as error:  # transformers' own check of a key swiftplan's planner does not read
        raise _unbuildable(model_type, error) from error


def _unbuildable(model_type: str, error: Exception) -> SwiftplanError:
    """transformers refused the config.json (a malformed key, a vision_config of the wrong shape): one message
    naming it, not transformers' traceback."""
    detail = " ".join(str(error).split())[:400]
    return SwiftplanError(
        f"transformers cannot build a {model_type!r} model from this config.json: {type(error).__name__}: {detail}",
        hint="Pass the model's own config.json (the one next to its weights); the key transformers names is "
        "missing or of the wrong type. SWIFTPLAN_DEBUG=1 shows transformers' traceback.",
    )


def build_meta_causal_lm(
    config: Any, *, dtype: torch.dtype, attn_implementation: str, notes: list[str]
) -> nn.Module:
    """The real `AutoModelForCausalLM` for `config` on the meta device (call outside any fake mode).

    A model that does not support the requested attention (Gemma 2 has no SDPA path in transformers 5:
    its logit softcapping needs the scores) is built with "eager", as transformers itself would need.
    """
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        try:
            return AutoModelForCausalLM.from_config(
                config, dtype=dtype, attn_implementation=attn_implementation
            )
        except Exception as e:
            if attn_implementation == "eager" or "attention implementation" not in str(e):
                raise _unbuildable(str(getattr(config, "model_type", "?")), e) from e
            notes.append(
                f"attention: {type(config).__name__.removesuffix('Config')} does not support "
                f"{attn_implementation!r} in this transformers; traced with 'eager' (the B x heads x S x S "
                "scores and softmax are materialised and saved)"
            )
            return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="eager")


def to_fake(model: nn.Module, mode: FakeTensorMode, device: torch.device) -> None:
    """Replace meta parameters and buffers by fake tensors on `device`, keeping tied ones tied."""
    converter = mode.fake_tensor_converter
    params: dict[int, nn.Parameter] = {}
    buffers: dict[int, torch.Tensor] = {}

    def fake(t: torch.Tensor) -> torch.Tensor:
        if isinstance(t, FakeTensor):
            return t
        if t.device.type != "meta":
            t = t.to("meta")
        return converter.from_meta_and_device(mode, t, device)

    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is None or isinstance(p, FakeTensor):  # already fake: a quantized weight (trace_quant)
                continue
            if id(p) not in params:
                params[id(p)] = nn.Parameter(fake(p.data), requires_grad=p.requires_grad)
            module._parameters[name] = params[id(p)]
        for name, b in list(module._buffers.items()):
            if b is None:
                continue
            if id(b) not in buffers:
                buffers[id(b)] = fake(b)
            module._buffers[name] = buffers[id(b)]


def lora_options(
    *, rank: int, alpha: int | None, dropout: float, targets: Sequence[str] | str, dora: bool
) -> dict[str, Any]:
    """`apply_lora`'s adapter arguments as the tracers pass them along (the training rig, the FSDP tracer)."""
    return {"rank": rank, "alpha": alpha, "dropout": dropout, "targets": targets, "dora": dora}


def apply_lora(
    model: nn.Module,
    *,
    rank: int,
    alpha: int | None,
    dropout: float,
    targets: Sequence[str] | str,
    notes: list[str],
    task_type: str = "CAUSAL_LM",
    autocast_adapter_dtype: bool = True,
    modules_to_save: Sequence[str] = (),
    dora: bool = False,
) -> nn.Module:
    """Wrap the meta `model` with peft LoRA as `get_peft_model` does (call outside any fake mode).

    `low_cpu_mem_usage=True` makes peft create the adapters on meta instead of initialising them on the
    CPU; the resulting dtypes are the same as for a real model (checked with peft 0.21: fp32 adapters
    on a bf16 or fp32 base, from `autocast_adapter_dtype=True`). `task_type="SEQ_CLS"` (a reward model)
    also trains the classification head in full (peft's modules_to_save for that task).
    `autocast_adapter_dtype=False` is get_peft_model's own switch: the adapters stay in the base layer's
    dtype (--adapter-dtype model). peft picks that dtype when it moves fresh adapters to the base layer
    (`_move_adapter_to_device_of_base_layer`), which it skips for adapters created on meta, so this path
    builds them on the CPU (small: rank × width per module) and lets peft move them.
    `modules_to_save` (--modules-to-save): peft wraps each named module in a `ModulesToSaveWrapper` holding a
    trainable deep copy (LoraConfig(modules_to_save=...); with tied embeddings and peft's default
    ensure_weight_tying=False, embed_tokens and lm_head each get their own copy).
    `dora`: LoraConfig(use_dora=True), peft's weight-decomposed LoRA (a magnitude vector per wrapped Linear and
    the weight-norm computation in every forward, peft tuners/lora/dora.py `DoraLinearLayer`).
    """
    from peft import LoraConfig, get_peft_model

    target_modules: list[str] | str = targets if isinstance(targets, str) else list(targets)
    lora_config = LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else rank,
        lora_dropout=dropout,
        target_modules=target_modules,
        task_type=task_type,
        modules_to_save=list(modules_to_save) or None,
        use_dora=dora,
    )
    quantized = dora and any(type(m).__name__ in ("Linear4bit", "Linear8bitLt") for m in model.modules())
    with warnings.catch_warnings(), _meta_dora_magnitudes() if quantized else contextlib.nullcontext():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(
            model,
            lora_config,
            low_cpu_mem_usage=autocast_adapter_dtype,
            autocast_adapter_dtype=autocast_adapter_dtype,
        )
    if quantized:
        notes.append("DoRA over a bitsandbytes base: each magnitude made on meta in its dtype, not initialised from "
                     "the weight's norm (peft deep-copies a 4-bit layer for that, which a meta layer cannot do); its "
                     "forward is peft's own")  # fmt: skip
    lora_modules = [(n, m) for n, m in peft_model.named_modules() if hasattr(m, "lora_A")]
    wrapped = sorted({n.rsplit(".", 1)[-1] for n, _ in lora_modules if not n.endswith(".base_layer")})
    param_wrapped = sorted(
        {n.rsplit(".", 1)[-1] for n, m in lora_modules if type(m).__name__ == "ParamWrapper"} - {"base_layer"}
    )
    adapter_dtypes = sorted(
        {str(p.dtype).removeprefix("torch.") for n, p in peft_model.named_parameters() if "lora_" in n}
    )
    if not wrapped:
        raise ValueError(f"LoRA targets {targets!r} matched no module of this model")
    notes.append(
        f"LoRA wraps {', '.join(wrapped)}; adapter weights are {'/'.join(adapter_dtypes)}"
        + (
            " (peft upcasts bf16/fp16 adapters to fp32 by default)"
            if autocast_adapter_dtype
            else " (get_peft_model(..., autocast_adapter_dtype=False): the base layer's dtype)"
        )  # fmt: skip
    )
    if param_wrapped:
        notes.append(
            f"LoRA on 3-D/fused parameters through peft's ParamWrapper: {', '.join(param_wrapped)} "
            "(fused MoE experts get one adapter per expert)"
        )
    unmatched = [t for t in target_modules if t not in wrapped] if not isinstance(target_modules, str) else []
    if unmatched:
        notes.append(f"LoRA targets with no matching module in this model: {', '.join(unmatched)}")
    if modules_to_save:
        copies = {
            n: p for n, p in peft_model.named_parameters() if p.requires_grad and is_saved_module_param(n)
        }
        dtypes = "/".join(sorted({str(p.dtype).removeprefix("torch.") for p in copies.values()}))
        notes.append(
            f"modules_to_save {','.join(modules_to_save)}: peft ModulesToSaveWrapper, "
            f"{sum(p.numel() for p in copies.values()):,} trainable {dtypes} params in {len(copies)} copies"
        )
    return peft_model


@contextlib.contextmanager
def _meta_dora_magnitudes() -> Iterator[None]:
    """peft's DoRA initialises each magnitude from the norm of the base weight (tuners/lora/dora.py
    `DoraLinearLayer.update_layer`, deep-copying a bitsandbytes 4-bit layer to dequantize it), which a meta-device
    bitsandbytes layer cannot run; inside this block the magnitude is made on meta with the shape (out_features) and
    dtype peft gives it (the adapters' dtype promoted with the dequantized weight's), its values being irrelevant
    to memory."""
    from peft.tuners.lora.dora import DoraLinearLayer

    def update_layer(
        self: Any, *, base_layer: Any, lora_A: torch.Tensor, lora_B: torch.Tensor, **_: Any
    ) -> None:
        dtype = torch.promote_types(lora_A.dtype, getattr(base_layer, "compute_dtype", None) or lora_A.dtype)
        self.weight = nn.Parameter(
            torch.empty(lora_B.shape[0], dtype=dtype, device="meta"), requires_grad=True
        )

    with patched([(DoraLinearLayer, "update_layer", update_layer)]):
        yield


def is_saved_module_param(name: str) -> bool:
    """A parameter of peft's trainable copy of a `modules_to_save` module (`...lm_head.modules_to_save.default.weight`)."""
    return ".modules_to_save." in name


def is_adapter_param(name: str) -> bool:
    """What the planner counts as adapters: LoRA's A/B (and DoRA magnitudes) and peft's modules_to_save copies."""
    return "lora_" in name or is_saved_module_param(name)
