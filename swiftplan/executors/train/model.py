"""Load the tokenizer and model exactly as the plan says, wrap LoRA, and build the planned optimizer.

Precision follows `swiftplan.planner.dtypes`: bf16/fp16/fp32 load the model in that dtype and train
without autocast; amp-bf16/amp-fp16 load it in fp32 and the loop autocasts. QLoRA/int8 load through
`BitsAndBytesConfig`; LoRA through peft (a k-bit base is prepared without peft's fp32 upcast, see
`prepare_kbit_base`; adapters in fp32, or in the model dtype with `runtime.adapter_dtype` "model"); gradient
checkpointing is non-reentrant. Nothing here decides a setting the plan already fixed.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

from swiftplan.errors import SwiftplanError
from swiftplan.executors.trl_cast import cast_trainable_to_bf16
from swiftplan.planner.dtypes import compute_dtype, kbit_cast, param_dtype
from swiftplan.planner.setup import TrainSetup

ATTENTION = {"sdpa": "sdpa", "flash": "flash_attention_2", "eager": "eager"}


def torch_dtype(name: str) -> Any:
    """torch dtype for 'bf16' / 'fp16' / 'fp32'."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def _config_dict(model: str) -> dict[str, Any]:
    from swiftplan.executors.model_source import resolve_model

    return dict(resolve_model(model).hf_config)


def load_tokenizer(source: str) -> Any:
    """AutoTokenizer from a directory or hub id, with a clear error when it cannot be found."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source)
    except Exception as error:  # missing files, offline hub, bad repo id
        raise SwiftplanError(
            f"Cannot load a tokenizer from {source!r} ({type(error).__name__}: {str(error).splitlines()[0][:200]}).",
            hint="Pass --tokenizer DIR (a directory with tokenizer.json), or a model directory that has one.",
        ) from error


def tokenizer_source(model: str, tokenizer: str | None) -> str:
    """Where the tokenizer comes from: --tokenizer, else the model (directory or hub id)."""
    if tokenizer:
        return tokenizer
    path = Path(model)
    if path.is_file():
        path = path.parent
    if (
        path.exists()
        and not (path / "tokenizer.json").is_file()
        and not (path / "tokenizer_config.json").is_file()
    ):
        raise SwiftplanError(f"No tokenizer next to {model}.", hint="Pass --tokenizer DIR.")
    return str(path) if path.exists() else model


def _quantization_config(setup: TrainSetup) -> Any:
    if setup.quant not in ("nf4", "fp4", "int8"):
        return None
    from transformers import BitsAndBytesConfig

    if setup.quant == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=setup.quant,
        bnb_4bit_use_double_quant=setup.double_quant,
        bnb_4bit_compute_dtype=torch_dtype(compute_dtype(setup.precision)),
    )


def load_model(
    model: str,
    setup: TrainSetup,
    *,
    device: Any,
    random_init: bool,
    seed: int,
    vocab_size: int,
    config_overrides: dict[str, Any] | None = None,
) -> Any:
    """The causal LM on `device`, in the plan's dtype, with LoRA and gradient checkpointing as planned.

    `config_overrides` (random init only) replaces config.json keys, e.g. fewer layers for `fit --measure`."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch_dtype(param_dtype(setup.precision))
    attn = ATTENTION[setup.attention]
    quant_config = _quantization_config(setup)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if random_init:
            from swiftplan.executors.trace_model import load_config

            config = load_config(_config_dict(model) | (config_overrides or {}), notes=[])
            torch.manual_seed(seed)
            net = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
            if net.get_input_embeddings().num_embeddings < vocab_size:
                net.resize_token_embeddings(vocab_size)
        else:
            if Path(model).is_file():
                raise SwiftplanError(
                    f"{model} is a config file without weights.",
                    hint="Add --random-init to train a randomly initialised model (tests, dry runs), or use the model directory.",
                )
            kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": attn}
            if quant_config is not None:
                kwargs |= {"quantization_config": quant_config, "device_map": {"": device}}
            try:
                net = AutoModelForCausalLM.from_pretrained(model, **kwargs)
            except OSError as error:
                raise SwiftplanError(
                    f"Cannot load the weights of {model!r} ({str(error).splitlines()[0][:200]}).",
                    hint="Use a local model directory (or be online for a hub id), or --random-init for a dry run.",
                ) from error
    if quant_config is None:
        net.to(device)
    net.config.use_cache = False
    if setup.trains_adapters:
        net = _wrap_lora(net, setup, kbit=quant_config is not None)
    elif setup.grad_ckpt:
        enable_checkpointing(net)
    return net


def enable_checkpointing(net: Any) -> None:
    """Non-reentrant activation checkpointing of every block (transformers 5 name, or the 4.x one)."""
    kwargs = {"use_reentrant": False}
    if hasattr(net, "activation_checkpointing_enable"):
        net.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def prepare_kbit_base(net: Any, *, grad_ckpt: bool) -> Any:
    """What peft's `prepare_model_for_kbit_training` does for a k-bit base, minus its fp32 upcast.

    peft casts every non-quantized parameter (embeddings, LM head, norms, and with transformers 5
    the fused MoE experts) to fp32, which costs 2 extra bytes per such parameter and makes the
    residual stream fp32. swiftplan's memory model (and torchtune/Unsloth) keep them in the compute
    dtype, so the plan's prediction holds: freeze the base, let inputs carry gradients for
    checkpointing, and enable checkpointing as planned.
    """
    for param in net.parameters():
        param.requires_grad_(False)
    if grad_ckpt:
        net.enable_input_require_grads()
        enable_checkpointing(net)
    return net


def _wrap_lora(net: Any, setup: TrainSetup, *, kbit: bool) -> Any:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    lora = setup.lora
    assert lora is not None
    if kbit and setup.kbit_upcast:  # the plan asked for peft's own preparation, fp32 upcast included
        net = prepare_model_for_kbit_training(
            net,
            use_gradient_checkpointing=setup.grad_ckpt,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif kbit:
        net = prepare_kbit_base(net, grad_ckpt=setup.grad_ckpt)
    elif setup.grad_ckpt:
        enable_checkpointing(net)
    config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha if lora.alpha is not None else 2 * lora.rank,
        lora_dropout=lora.dropout,
        target_modules="all-linear" if lora.all_linear else list(lora.targets),
        use_dora=lora.dora,
        task_type="CAUSAL_LM",
    )
    try:  # --adapter-dtype model: peft's own switch, adapters in the base layer's dtype (dtypes.adapter_dtype)
        wrapped = get_peft_model(net, config, autocast_adapter_dtype=setup.runtime.adapter_dtype != "model")
    except ValueError as error:
        raise SwiftplanError(
            f"LoRA targets {', '.join(lora.targets)} do not fit this model: {error}."
        ) from error
    if kbit_cast(setup):  # --adapter-dtype kbit-bf16 on a bitsandbytes base: TRL's cast of what trains
        cast_trainable_to_bf16(wrapped)
    return wrapped


def trainable_parameters(net: Any) -> list[Any]:
    """Parameters that receive gradients."""
    return [p for p in net.parameters() if p.requires_grad]


def build_optimizer(
    setup: TrainSetup, params: list[Any], *, lr: float, weight_decay: float, device_type: str
) -> Any:
    """The plan's optimizer over `params`: torch AdamW (fused where supported), bitsandbytes 8-bit, SGD, Adafactor."""
    import torch

    name = setup.optimizer
    if name == "adamw":
        if device_type in ("cuda", "cpu", "mps"):
            try:
                return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
            except (RuntimeError, ValueError):
                pass  # a dtype or device the fused kernel does not cover: the foreach implementation
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=lr, weight_decay=weight_decay, scale_parameter=False, relative_step=False,
                         warmup_init=False)  # fmt: skip
    import bitsandbytes as bnb

    if name == "adamw-8bit":
        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay)
    return bnb.optim.PagedAdamW8bit(params, lr=lr, weight_decay=weight_decay)


def lr_lambda(kind: str, *, warmup_steps: int, total_steps: int) -> Any:
    """Multiplier of the peak LR at each step: linear warm-up, then cosine, linear or constant."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 1.0 - progress if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
