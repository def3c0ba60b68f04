"""Module shapes of each decoder block, and the parameter counts derived from them.

The layout follows the transformers modelling code the model runs with (v5 layout: routed
experts are fused 3-D parameters, not `nn.Linear`, so LoRA "all-linear" and bitsandbytes
do not touch them). Module names are the ones peft matches in `target_modules`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache
from typing import Literal

from swiftplan.planner.model_spec import ModelSpec

ModuleKind = Literal["linear", "experts", "router"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Linear:
    """One weight matrix in a decoder block (or `count` stacked ones for fused experts)."""

    name: str
    """Module name as peft targets it (e.g. "q_proj")."""
    in_features: int
    """Input width."""
    out_features: int
    """Output width."""
    bias: bool = False
    """Carries a bias vector of out_features."""
    count: int = 1
    """Stacked copies (routed experts fused into one 3-D parameter)."""
    kind: ModuleKind = "linear"
    """linear: an nn.Linear (LoRA/bnb apply); experts: fused expert tensor; router: gate weight."""
    block: Literal["attention", "mlp"] = "attention"
    """Which half of the block it belongs to."""

    @property
    def params(self) -> int:
        """Weights plus bias, all copies."""
        return self.count * (self.in_features * self.out_features + (self.out_features if self.bias else 0))


def _attention_linears(spec: ModelSpec) -> list[Linear]:
    h = spec.hidden_size
    if spec.mla is not None:
        mla = spec.mla
        qk_head = mla.qk_nope_head_dim + mla.qk_rope_head_dim
        out: list[Linear] = []
        if mla.q_lora_rank:
            out.append(Linear(name="q_a_proj", in_features=h, out_features=mla.q_lora_rank))
            out.append(
                Linear(name="q_b_proj", in_features=mla.q_lora_rank, out_features=spec.num_heads * qk_head)
            )
        else:
            out.append(Linear(name="q_proj", in_features=h, out_features=spec.num_heads * qk_head))
        out.append(
            Linear(
                name="kv_a_proj_with_mqa", in_features=h, out_features=mla.kv_lora_rank + mla.qk_rope_head_dim
            )
        )
        out.append(
            Linear(
                name="kv_b_proj",
                in_features=mla.kv_lora_rank,
                out_features=spec.num_heads * (mla.qk_nope_head_dim + mla.v_head_dim),
            )
        )
        out.append(Linear(name="o_proj", in_features=spec.num_heads * mla.v_head_dim, out_features=h))
        return out
    q, kv = spec.q_dim, spec.kv_dim
    names = {
        "phi3": ("qkv_proj", "o_proj"),
        "internlm2": ("wqkv", "wo"),
        "chatglm": ("query_key_value", "dense"),
        "qwen": ("c_attn", "c_proj"),
    }
    if spec.fused_qkv:
        qkv_name, o_name = names[spec.model_type]
        return [
            Linear(name=qkv_name, in_features=h, out_features=q + 2 * kv, bias=spec.qkv_bias),
            Linear(name=o_name, in_features=q, out_features=h, bias=spec.o_bias),
        ]
    return [
        Linear(name="q_proj", in_features=h, out_features=q, bias=spec.qkv_bias),
        Linear(name="k_proj", in_features=h, out_features=kv, bias=spec.qkv_bias),
        Linear(name="v_proj", in_features=h, out_features=kv, bias=spec.qkv_bias),
        Linear(name="o_proj", in_features=q, out_features=h, bias=spec.o_bias),
    ]


def _dense_mlp(spec: ModelSpec, width: int, prefix: str = "") -> list[Linear]:
    h, bias = spec.hidden_size, spec.mlp_bias
    names = {
        "internlm2": ("w1", "w3", "w2"),
        "qwen": ("w1", "w2", "c_proj"),
    }
    if spec.fused_gate_up:
        up_name, down_name = (
            ("dense_h_to_4h", "dense_4h_to_h")
            if spec.model_type == "chatglm"
            else (
                "gate_up_proj",
                "down_proj",
            )
        )
        return [
            Linear(name=up_name, in_features=h, out_features=2 * width, bias=bias, block="mlp"),
            Linear(name=down_name, in_features=width, out_features=h, bias=bias, block="mlp"),
        ]
    gate, up, down = names.get(spec.model_type, ("gate_proj", "up_proj", "down_proj"))
    return [
        Linear(name=prefix + gate, in_features=h, out_features=width, bias=bias, block="mlp"),
        Linear(name=prefix + up, in_features=h, out_features=width, bias=bias, block="mlp"),
        Linear(name=prefix + down, in_features=width, out_features=h, bias=bias, block="mlp"),
    ]


def _moe_mlp(spec: ModelSpec) -> list[Linear]:
    moe = spec.moe
    assert moe is not None
    h, width, experts = spec.hidden_size, moe.expert_intermediate_size, moe.num_experts
    out = [
        Linear(name="gate", in_features=h, out_features=experts, kind="router", block="mlp"),
        Linear(
            name="experts.gate_up_proj",
            in_features=h,
            out_features=2 * width,
            count=experts,
            kind="experts",
            block="mlp",
        ),
        Linear(
            name="experts.down_proj",
            in_features=width,
            out_features=h,
            count=experts,
            kind="experts",
            block="mlp",
        ),
    ]
    if moe.shared_intermediate_size:
        prefix = "shared_expert." if spec.model_type == "qwen2_moe" else "shared_experts."
        shared = _dense_mlp(spec, moe.shared_intermediate_size)
        out += [replace(lin, name=prefix + lin.name) for lin in shared]
    if moe.shared_expert_gate:
        out.append(Linear(name="shared_expert_gate", in_features=h, out_features=1, block="mlp"))
    return out


@cache
def layer_linears(spec: ModelSpec, layer: int) -> tuple[Linear, ...]:
    """Weight matrices of decoder block `layer`, attention first."""
    mlp = _moe_mlp(spec) if spec.is_moe_layer(layer) else _dense_mlp(spec, spec.intermediate_size)
    return tuple(_attention_linears(spec) + mlp)


def layer_vector_params(spec: ModelSpec, layer: int) -> int:
    """Parameters of a block that are not matrices: norm weights, QK-norm, MLA latent norms."""
    count = spec.norms_per_layer * spec.hidden_size
    if spec.qk_norm:
        count += 2 * spec.head_dim
    if spec.mla is not None:
        count += spec.mla.kv_lora_rank + (spec.mla.q_lora_rank or 0)
    return count


def layer_buffer_elements(spec: ModelSpec, layer: int) -> int:
    """Persistent non-parameter tensors of a block that still take memory: DeepSeek-V3's
    e_score_correction_bias (num_experts per MoE layer) is a buffer in transformers."""
    if spec.moe is not None and spec.moe.router_bias and spec.is_moe_layer(layer):
        return spec.moe.num_experts
    return 0


def layer_params(spec: ModelSpec, layer: int) -> int:
    """All parameters of decoder block `layer`."""
    return sum(lin.params for lin in layer_linears(spec, layer)) + layer_vector_params(spec, layer)


def embedding_params(spec: ModelSpec) -> int:
    """Input embedding matrix (vocab × hidden)."""
    return spec.vocab_size * spec.hidden_size


def lm_head_params(spec: ModelSpec) -> int:
    """Output projection; zero when tied to the embedding."""
    return 0 if spec.tie_word_embeddings else spec.vocab_size * spec.hidden_size


def final_norm_params(spec: ModelSpec) -> int:
    """The norm after the last block (ChatGLM/InternLM2/Llama alike: one hidden-sized weight)."""
    return spec.hidden_size


@cache
def total_params(spec: ModelSpec) -> int:
    """Exact parameter count, as `sum(p.numel() for p in model.parameters())` reports it."""
    blocks = sum(layer_params(spec, i) for i in range(spec.num_layers))
    return blocks + embedding_params(spec) + lm_head_params(spec) + final_norm_params(spec)


@cache
def active_params_per_token(spec: ModelSpec) -> int:
    """Parameters a token passes through: all of them for dense models, top-k experts for MoE."""
    if spec.moe is None:
        return total_params(spec)
    inactive = 0
    for i in range(spec.num_layers):
        for lin in layer_linears(spec, i):
            if lin.kind == "experts":
                inactive += (lin.count - spec.moe.experts_per_token) * lin.params // lin.count
    return total_params(spec) - inactive


def matmul_params_per_token(spec: ModelSpec) -> int:
    """Weights multiplied per token in the blocks and the LM head (embedding lookups are free)."""
    head = spec.vocab_size * spec.hidden_size
    return active_params_per_token(spec) - embedding_params(spec) - lm_head_params(spec) + head


def linear_modules(spec: ModelSpec) -> list[tuple[int, Linear]]:
    """Every (layer, Linear) in the model, for adapters and quantization."""
    return [(i, lin) for i in range(spec.num_layers) for lin in layer_linears(spec, i)]


@cache
def largest_param_elements(spec: ModelSpec) -> int:
    """Elements of the largest single parameter tensor (embedding, LM head or a block matrix):
    per-parameter optimizer loops (Adafactor) peak on it."""
    blocks = max(lin.count * lin.in_features * lin.out_features for _, lin in linear_modules(spec))
    return max(blocks, embedding_params(spec))
