"""Activation bytes of a vision tower and aligner: what a trained tower saves per block, and the working set
a frozen one needs for its largest block. N = vision tokens (patches, CLS tokens) on the device, w = ViT
width, I = MLP width, cb = compute-dtype bytes; every function returns bytes.

The tensors follow the transformers 5.25 modelling code (planner/vision.py names the files) under PyTorch
autograd's rules (planner/activations.py's docstring): a Linear saves its input only when its weight
trains; peft's LoRA wrapper saves an fp32 copy of the input (plus the dropout mask and dropped copy) and
lora_A's output; LayerNorm saves its input and an fp32 mean and rstd per token; HF RMSNorm an fp32 copy
and rsqrt; Qwen's vision rotary embedding runs in fp32 and hands SDPA the cast-back q and k; SDPA
(flash / memory-efficient) saves q, k, v, its output and an fp32 logsumexp per head and token.
Checked against the fake-tensor trace of the real model (tests/test_vision_trace.py).
"""

from __future__ import annotations

from swiftplan.planner.architecture import Linear
from swiftplan.planner.dtypes import activation_dtype_bytes
from swiftplan.planner.setup import TrainSetup
from swiftplan.planner.vision import VisionTower

FP32 = 4
BOOL = 1


def _norm_saved(tower: VisionTower, tokens: int, cb: int, *, weight_trains: bool) -> int:
    """One norm's saved tensors for `tokens` rows of `tower.width`."""
    w = tower.width
    if tower.norm == "layer_norm":
        return tokens * (w * cb + 2 * FP32)
    return tokens * (FP32 * w + FP32 + (cb * w if weight_trains else 0))


def _linear_saved(linear: Linear, setup: TrainSetup, tokens: int, cb: int, *, trains: bool) -> int:
    """What a Linear keeps for backward: its input when its weight trains (full), peft's copies under LoRA."""
    if not trains:
        return 0
    if not setup.trains_adapters:
        return tokens * linear.in_features * cb
    assert setup.lora is not None
    mask = BOOL * linear.in_features if setup.lora.dropout > 0 else 0
    return tokens * (FP32 * linear.in_features + mask + FP32 * setup.lora.rank)


def _attention_saved(tower: VisionTower, tokens: int, cb: int) -> int:
    """q, k, v as SDPA keeps them, its output and logsumexp. Qwen: v is a view of the fused qkv output, which
    stays whole, and q/k are the rotary outputs cast back to cb; the others hand SDPA the projections."""
    w = tower.width
    lse = tokens * tower.heads * FP32
    if tower.family in ("qwen2_vl", "qwen2_5_vl"):
        return tokens * cb * (3 * w + 2 * w + w) + lse
    return tokens * cb * (3 * w + w) + lse


def _mlp_saved(tower: VisionTower, tokens: int, cb: int) -> int:
    """The activation's saved tensors: SwiGLU's gate, SiLU and up outputs (Qwen2.5-VL); quick_gelu's input
    and sigmoid output (Qwen2-VL, CLIP); GELU's input (InternViT)."""
    width = tower.intermediate
    if tower.gated_mlp:
        return 3 * tokens * width * cb
    if tower.family in ("qwen2_vl", "llava"):
        return 2 * tokens * width * cb
    return tokens * width * cb


def block_saved_bytes(
    tower: VisionTower, setup: TrainSetup, tokens: int, *, weights_train: bool, first_norm: bool = True
) -> int:
    """Saved tensors of one ViT block that gradients pass through: its Linears' inputs when they train (full
    fine-tuning of the tower, or LoRA on its Linears), and what its norms, attention and MLP activation keep
    either way. `first_norm` False: the block's input needs no gradient (block 0 behind a frozen patch
    embedding), so its first norm keeps nothing."""
    cb = activation_dtype_bytes(setup)
    full = weights_train and not setup.trains_adapters
    saved = (2 if first_norm else 1) * _norm_saved(tower, tokens, cb, weight_trains=full)
    linears = tower.block_linears()
    saved += sum(_linear_saved(lin, setup, tokens, cb, trains=weights_train) for lin in linears)
    if full and not tower.fused_qkv:  # q, k and v read one norm output: kept once, not three times
        saved -= 2 * tokens * tower.width * cb
    if full and tower.gated_mlp:  # gate and up read one norm output
        saved -= tokens * tower.width * cb
    saved += _attention_saved(tower, tokens, cb) + _mlp_saved(tower, tokens, cb)
    if full and tower.layer_scale:  # lambda × x keeps x for lambda's gradient
        saved += 2 * tokens * tower.width * cb
    return saved


def aligner_saved_bytes(
    tower: VisionTower, setup: TrainSetup, tokens: int, *, trains: bool, tower_graph: bool
) -> int:
    """Saved tensors of the aligner when gradients pass through it (it trains, or the tower behind it does):
    its norm, the GELU input, and the Linears' inputs when they train. Its rows are the merged tokens, each
    w·m² wide, so every per-row tensor is N·w elements."""
    cb = activation_dtype_bytes(setup)
    rows = tokens // (tower.merge * tower.merge)
    first, second = tower.aligner_linears()
    # the norm keeps nothing when neither its input (a frozen tower's output) nor its weight needs a gradient
    norm_keeps = tower_graph or (trains and not setup.trains_adapters)
    norm = (
        _norm_saved(tower, tokens, cb, weight_trains=trains and not setup.trains_adapters)
        if norm_keeps
        else 0
    )
    if tower.family == "llava":
        norm = 0  # the projector has no norm
    gelu = rows * tower.aligner_hidden * cb
    linears = _linear_saved(first, setup, rows, cb, trains=trains) + _linear_saved(
        second, setup, rows, cb, trains=trains
    )
    return norm + gelu + linears


def shared_bytes(tower: VisionTower, tokens: int) -> int:
    """Saved once for all blocks: Qwen's vision rotary cos and sin (fp32, N × head_dim each)."""
    if tower.family in ("qwen2_vl", "qwen2_5_vl"):
        return 2 * tokens * tower.head_dim * FP32
    return 0


def block_input_bytes(tower: VisionTower, setup: TrainSetup, tokens: int) -> int:
    """What checkpointing keeps per ViT block: its input hidden states."""
    return tokens * tower.width * activation_dtype_bytes(setup)


def pixel_bytes(tower: VisionTower, tokens: int) -> int:
    """pixel_values as the image processor returns them: fp32, one row of 3 × t × p × p values per patch
    (CLS rows excluded: the processors give tiles of image_size², the tower adds the CLS)."""
    channels = 3 * tower.temporal_patch * tower.patch_size * tower.patch_size
    return tokens * channels * FP32


def forward_working_bytes(tower: VisionTower, setup: TrainSetup, tokens: int, *, lora: bool = False) -> int:
    """The largest block's temporaries while it runs, beyond what it saves: Qwen's fp32 rotary (q and k
    upcast, k·cos, rotate_half(k), its product with sin and q's result: 6 × N·w fp32) with the block's input,
    norm output and qkv output alive; the MLP's intermediates (3 × N·I); with LoRA on the tower, fc1's
    base output beside peft's fp32 input copy and its fp32 lora_B·scaling and sum (2 × N·I fp32)."""
    cb = activation_dtype_bytes(setup)
    w, i = tower.width, tower.intermediate
    rotary = tokens * w * (6 * FP32 + cb * 5) if tower.family in ("qwen2_vl", "qwen2_5_vl") else 0
    mlp = tokens * (2 * w + 3 * i + (i if tower.gated_mlp else 0)) * cb
    peft = tokens * (w * (cb + FP32) + i * (cb + 2 * FP32)) if lora else 0
    return max(rotary, mlp, peft)
