"""Trace a vision-language model's training step on fake tensors: images through the real vision tower.

`trace_vision_training` builds the real transformers model (`AutoModelForImageTextToText`, e.g.
Qwen2VLForConditionalGeneration) from a config dict on the meta device, makes it fake, applies LoRA the
way ms-swift does (a regex over the language model's Linears, and the tower's or aligner's when they
train: swift/utils/transformers_utils.py `get_multimodal_target_regex`), and runs real steps with
`pixel_values` + `image_grid_thw`, measuring live memory with the same tracker as text training.

The frozen tower runs as ms-swift runs it (`_frozen_tower_without_graph`). Three run-time patches make fake tensors take the real code path (all undone on exit):
- the image grid is a FakeTensor constant and FakeTensorMode propagates constants up to 4,096 elements
  (torch's default is 1), so `grid_thw.tolist()`, `cu_seqlens` and the split sizes stay known;
- Qwen2.5-VL's window index (`get_vision_window_index`, boolean indexing) is computed on the real grid;
- transformers' placeholder-count check (`torch_compilable_check`, data-dependent) is skipped with its
  own switch TRANSFORMERS_DISABLE_TORCH_CHECK=1.
The batch (input_ids, labels, pixel_values in fp32 as the image processor returns them) stays alive for
the whole step, as in the HF Trainer's loop.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from swiftplan.executors.trace import (
    Method,
    OptimizerName,
    Precision,
    TraceResult,
    _classify_optimizer_state,
    _enable_checkpointing,
    _make_optimizer,
    _numerics_notes,
    _result,
)
from swiftplan.executors.trace_memory import CUDA_BLOCK_BYTES
from swiftplan.executors.trace_model import DTYPES, apply_lora, load_config
from swiftplan.executors.trace_session import fake_session

Grid = tuple[int, int, int]
CONSTANT_ELEMENTS = 4096
"""Most elements a FakeTensor constant may have while the vision code computes with it (grids, cu_seqlens)."""

_VISION_BLOCK_LINEARS = r"attn\.(qkv|proj)|mlp\.(fc1|fc2|gate_proj|up_proj|down_proj)"
_ALIGNER_LINEARS = r"merger\.mlp\.(0|2)"


@contextlib.contextmanager
def vision_patches() -> Iterator[None]:
    """The three patches of the module docstring, and torch's own F.linear (see below)."""
    from torch._subclasses import fake_tensor
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl

    original_linear = torch.nn.functional.linear
    # DeepSpeed's ZeRO-3 Init replaces F.linear process-wide with an autograd function that keeps every input
    # ("This will persist unless manually reset": deepspeed/runtime/zero/partition_parameters.py); a run
    # without ZeRO-3 uses torch's own kernel, so the trace does too
    torch.nn.functional.linear = torch._C._nn.linear
    original_limit = fake_tensor.CONSTANT_NUMEL_LIMIT
    original_window = modeling_qwen2_5_vl.get_vision_window_index
    original_env = os.environ.get("TRANSFORMERS_DISABLE_TORCH_CHECK")
    fake_tensor.CONSTANT_NUMEL_LIMIT = CONSTANT_ELEMENTS
    modeling_qwen2_5_vl.get_vision_window_index = _on_real(original_window)
    os.environ["TRANSFORMERS_DISABLE_TORCH_CHECK"] = "1"
    try:
        yield
    finally:
        torch.nn.functional.linear = original_linear
        fake_tensor.CONSTANT_NUMEL_LIMIT = original_limit
        modeling_qwen2_5_vl.get_vision_window_index = original_window
        if original_env is None:
            os.environ.pop("TRANSFORMERS_DISABLE_TORCH_CHECK", None)
        else:
            os.environ["TRANSFORMERS_DISABLE_TORCH_CHECK"] = original_env


def _on_real(fn: Any) -> Any:
    """`fn` run on the real values of its FakeTensor constants, its tensors returned as FakeTensor constants."""
    from torch._subclasses.fake_tensor import FakeTensor, unset_fake_temporarily
    from torch.utils._pytree import tree_map_only

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        fakes = [a for a in args if isinstance(a, FakeTensor)]
        if not fakes or any(a.constant is None for a in fakes):
            return fn(*args, **kwargs)
        mode = fakes[0].fake_mode
        real = [a.constant if isinstance(a, FakeTensor) else a for a in args]
        with unset_fake_temporarily():
            out = fn(*real, **kwargs)
        convert = mode.fake_tensor_converter
        return tree_map_only(
            torch.Tensor, lambda t: convert.from_real_tensor(mode, t, make_constant=True), out
        )

    return wrapper


def build_meta_vlm(config: Any, *, dtype: torch.dtype, attn_implementation: str) -> nn.Module:
    """The real image-text-to-text model for `config` on the meta device (call outside any fake mode)."""
    from transformers import AutoModelForImageTextToText

    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        return AutoModelForImageTextToText.from_config(
            config, dtype=dtype, attn_implementation=attn_implementation
        )


def target_regex(targets: Sequence[str], *, train_vit: bool, train_aligner: bool) -> str:
    """LoRA targets as ms-swift builds them for a multimodal model: the language model's named Linears,
    plus every Linear of the vision blocks (--train-vit) and of the aligner (--train-aligner)."""
    names = "|".join(re.escape(t) for t in targets)
    parts = [rf"model\.language_model\..*\.({names})"]
    if train_vit:
        parts.append(rf"model\.visual\.blocks\.\d+\.({_VISION_BLOCK_LINEARS})")
    if train_aligner:
        parts.append(rf"model\.visual\.{_ALIGNER_LINEARS}")
    return "|".join(f"({p})" for p in parts)


def _freeze_for_full(model: nn.Module, *, train_vit: bool, train_aligner: bool) -> None:
    """Full fine-tuning as ms-swift sets it up: the language model trains, the tower and aligner as asked
    (swift/arguments/tuner_args.py `_init_multimodal_full`)."""
    for name, p in model.named_parameters():
        in_aligner = ".visual.merger." in f".{name}"
        in_tower = ".visual." in f".{name}" and not in_aligner
        p.requires_grad_((not in_tower or train_vit) and (not in_aligner or train_aligner))


def _batch(
    grids: Sequence[Grid], *, batch: int, text_tokens: int, merge: int, channels: int
) -> dict[str, Any]:
    """input_ids/labels/position_ids for text + image tokens and pixel_values/image_grid_thw, made inside the
    fake mode (the grid becomes a FakeTensor constant)."""
    per_sample = [t * h * w for t, h, w in grids]
    seq = text_tokens + sum(p // (merge * merge) for p in per_sample)
    input_ids = torch.zeros((batch, seq), dtype=torch.long)
    return {
        "input_ids": input_ids,
        "labels": input_ids,
        "position_ids": torch.arange(seq).view(1, 1, seq).expand(3, batch, seq),  # M-RoPE's (3, B, S)
        "pixel_values": torch.zeros((batch * sum(per_sample), channels), dtype=torch.float32),
        "image_grid_thw": torch.tensor(list(grids) * batch),
    }


def _prepare(
    hf_config: dict[str, Any], *, method: Method, precision: Precision, lora: dict[str, Any], grad_ckpt: bool,
    train_vit: bool, train_aligner: bool, notes: list[str],
) -> nn.Module:  # fmt: skip
    """The meta model with checkpointing and LoRA (or full fine-tuning's trainable set) applied."""
    config = load_config(hf_config, notes=notes)
    config.use_cache = False
    amp = precision.startswith("amp-")
    model = build_meta_vlm(
        config, dtype=torch.float32 if amp else DTYPES[precision], attn_implementation="sdpa"
    )
    if grad_ckpt:
        _enable_checkpointing(model, notes)
    if method == "lora":
        regex = target_regex(lora["targets"], train_vit=train_vit, train_aligner=train_aligner)
        return apply_lora(
            model, rank=lora["rank"], alpha=None, dropout=lora["dropout"], targets=regex, notes=notes
        )
    _freeze_for_full(model, train_vit=train_vit, train_aligner=train_aligner)
    return model


def trace_vision_training(
    hf_config: dict[str, Any],
    *,
    grids: Sequence[Grid],
    text_tokens: int,
    method: Method = "lora",
    precision: Precision = "bf16",
    lora_rank: int = 16,
    lora_dropout: float = 0.0,
    lora_targets: Sequence[str] = ("q_proj", "v_proj"),
    train_vit: bool = False,
    train_aligner: bool = False,
    optimizer: OptimizerName = "adamw-fused",
    batch: int = 1,
    grad_ckpt: bool = False,
    steps: int = 2,
    round_bytes: int = CUDA_BLOCK_BYTES,
) -> TraceResult:
    """Trace `steps` training steps of a Qwen2-VL/Qwen2.5-VL model whose every sample has images with the
    patch `grids` ((t, h, w) each, as image_grid_thw) and `text_tokens` text tokens; measure the last step.
    Phases: "vision forward" (the tower and aligner), "forward" (the language model and loss), "backward",
    "vision backward" (from the moment the gradient reaches the image features), "optimizer"."""
    started = time.perf_counter()
    notes: list[str] = []
    lora = {"rank": lora_rank, "dropout": lora_dropout, "targets": tuple(lora_targets)}
    model = _prepare(hf_config, method=method, precision=precision, lora=lora, grad_ckpt=grad_ckpt,
                     train_vit=train_vit, train_aligner=train_aligner, notes=notes)  # fmt: skip
    notes += _numerics_notes(precision, optimizer)
    vision_config = hf_config["vision_config"]
    merge = int(vision_config.get("spatial_merge_size", 2))
    channels = (
        3 * int(vision_config.get("temporal_patch_size", 2)) * int(vision_config.get("patch_size", 14)) ** 2
    )
    calls: Counter[str] = Counter()
    with vision_patches(), fake_session(model, round_bytes, calls) as tracker:
        model.train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        for p in trainable:
            p.register_post_accumulate_grad_hook(lambda p: tracker.classify([p.grad], "gradients"))
        _hook_vision_phases(model, tracker)
        _frozen_tower_without_graph(model)
        opt = _make_optimizer(optimizer, trainable)
        autocast = DTYPES[precision.removeprefix("amp-")] if precision.startswith("amp-") else None
        for step in range(steps):
            if step == steps - 1:
                tracker.start_measuring()
            inputs = _batch(grids, batch=batch, text_tokens=text_tokens, merge=merge, channels=channels)
            _train_step(model, tracker, opt, inputs, autocast)
            del inputs
        tracker.stop_measuring()
    notes.append(
        f"vision-language step: {len(grids)} image(s) per sample with patch grids {list(grids)}, "
        f"{text_tokens} text tokens; tower {'trained' if train_vit else 'frozen'}, aligner "
        f"{'trained' if train_aligner else 'frozen'}; fp32 pixel_values kept for the step (HF Trainer)"
    )
    result = _result(tracker, model, started, notes, calls, training=True)
    order = ("vision forward", "forward", "backward", "vision backward", "optimizer")
    return replace(result, phase_peaks={k: tracker.phase_peaks[k] for k in order if k in tracker.phase_peaks})


def _train_step(
    model: nn.Module, tracker: Any, opt: torch.optim.Optimizer, inputs: dict[str, Any], autocast: Any
) -> None:
    """Forward with labels, backward, optimizer step, each in its phase."""
    amp = torch.autocast("cpu", dtype=autocast) if autocast is not None else contextlib.nullcontext()
    with tracker.in_phase("forward"), amp:
        loss = model(**inputs).loss
    with tracker.in_phase("backward"), tracker.category("logits"):
        loss.backward()
    del loss
    with tracker.in_phase("optimizer"):
        opt.step()
        _classify_optimizer_state(tracker, opt)
        opt.zero_grad(set_to_none=True)


def _frozen_tower_without_graph(model: nn.Module) -> None:
    """ms-swift's `patch_frozen_module` on the vision tower (swift/model/patcher.py, applied by
    swift/trainers/mixin.py `_prepare_gradient_checkpointing`): when none of its parameters trains and no
    input needs a gradient, it runs without autograd, so the input-grad hook gradient checkpointing puts
    on the patch embedding (transformers `enable_input_require_grads`) records no graph through it."""
    visual = next(m for n, m in model.named_modules() if n.endswith("visual"))
    forward = visual.forward

    def frozen_forward(*args: Any, **kwargs: Any) -> Any:
        needs = torch.is_grad_enabled() and (
            any(p.requires_grad for p in visual.parameters())
            or any(isinstance(v, torch.Tensor) and v.requires_grad for v in (*args, *kwargs.values()))
        )
        with torch.set_grad_enabled(needs):
            return forward(*args, **kwargs)

    visual.forward = frozen_forward


def _hook_vision_phases(model: nn.Module, tracker: Any) -> None:
    """Attribute the tower's forward to "vision forward" and the backward from the image features on to
    "vision backward" (tracker phases; each phase's peak starts at what is alive when it begins)."""
    visual = next(m for n, m in model.named_modules() if n.endswith("visual"))

    def enter(phase: str) -> None:
        tracker.phase = phase
        if tracker._measuring:
            tracker.phase_peaks[phase] = max(tracker.phase_peaks.get(phase, 0), tracker.live_bytes)

    def before(_module: nn.Module, _args: Any) -> None:
        enter("vision forward")

    def after(_module: nn.Module, _args: Any, output: Any) -> None:
        enter("forward")
        features = getattr(output, "pooler_output", None)
        if isinstance(features, torch.Tensor) and features.requires_grad:
            features.register_hook(lambda grad: enter("vision backward"))

    visual.register_forward_pre_hook(before)
    visual.register_forward_hook(after)
