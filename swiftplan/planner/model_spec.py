"""`ModelSpec`: the architecture facts of a causal LM that memory and speed depend on.

A spec is built from a Hugging Face `config.json` dict (`spec_from_hf_config`), whichever
family spelled the keys (Llama/Qwen/Mistral/Gemma/Phi-3 use `hidden_size`; ChatGLM uses
`ffn_hidden_size`, `multi_query_group_num`, `padded_vocab_size`; DeepSeek adds MLA and
routed experts). Shapes of the individual modules live in `architecture.py`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from swiftplan.errors import SwiftplanError
from swiftplan.planner.checkpoint_quant import CheckpointQuant, checkpoint_quant
from swiftplan.planner.values import is_positive_number, is_whole_number

# model_type values whose module layout architecture.py knows. Families that need
# trust_remote_code (internlm2, chatglm) are laid out from their published modelling code.
SUPPORTED_MODEL_TYPES = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma2",
    "phi3",
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "deepseek_v2",
    "deepseek_v3",
    "internlm2",
    "chatglm",
    "glm",
    "qwen",
    "qwen2_vl",
    "qwen2_5_vl",
    "qwen2_vl_text",
    "qwen2_5_vl_text",
)

_TEXT_LAYOUT = {
    "qwen2_vl": "qwen2",
    "qwen2_5_vl": "qwen2",
    "qwen2_vl_text": "qwen2",
    "qwen2_5_vl_text": "qwen2",
}
"""Vision-language model types whose language model is laid out as another type (Qwen2-VL's and
Qwen2.5-VL's decoders are Qwen2's: transformers 5.25 models/qwen2_vl/modeling_qwen2_vl.py); the vision
tower is planner/vision.py's."""

MAX_LAYERS = 1000
"""Most decoder blocks a config may declare: DeepNet (Wang et al. 2022, arXiv:2203.00555, "Scaling
Transformers to 1,000 Layers") is the deepest transformer reported trained; the planner walks every
block, so a config claiming far more (a typo such as 1e9) would run for hours instead of answering."""


@dataclass(frozen=True, kw_only=True, slots=True)
class MlaShape:
    """Multi-head latent attention (DeepSeek-V2/V3) dimensions."""

    q_lora_rank: int | None
    """Rank of the query down-projection; None means a plain q_proj."""
    kv_lora_rank: int
    """Width of the compressed KV latent that is cached."""
    qk_nope_head_dim: int
    """Per-head query/key width without rotary embedding."""
    qk_rope_head_dim: int
    """Per-head (and shared-key) rotary width."""
    v_head_dim: int
    """Per-head value width."""


@dataclass(frozen=True, kw_only=True, slots=True)
class MoeShape:
    """Mixture-of-experts layout."""

    num_experts: int
    """Routed experts per MoE layer."""
    experts_per_token: int
    """Experts each token is routed to (top-k)."""
    expert_intermediate_size: int
    """MLP width of one routed expert."""
    shared_intermediate_size: int = 0
    """Total MLP width of the always-on shared expert(s); 0 when there are none."""
    shared_expert_gate: bool = False
    """Qwen2-MoE: a sigmoid gate (hidden → 1) scales the shared expert."""
    first_dense_layers: int = 0
    """Leading layers that use a dense MLP instead of experts (DeepSeek first_k_dense_replace)."""
    dense_layers: tuple[int, ...] = ()
    """Other layer indices with a dense MLP (Qwen mlp_only_layers)."""
    router_bias: bool = False
    """DeepSeek-V3 keeps an e_score_correction_bias of num_experts per MoE layer."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelSpec:
    """Architecture of a decoder-only language model, as read from its config.json."""

    name: str
    """Hub id or path the spec came from (e.g. "Qwen/Qwen2.5-7B")."""
    model_type: str
    """Hugging Face model_type (e.g. "qwen2")."""
    hidden_size: int
    """Residual stream width."""
    num_layers: int
    """Decoder blocks."""
    num_heads: int
    """Query heads."""
    num_kv_heads: int
    """Key/value heads (GQA); equals num_heads for MHA."""
    head_dim: int
    """Per-head width of queries/keys/values."""
    intermediate_size: int
    """Dense MLP width of one SwiGLU branch."""
    vocab_size: int
    """Rows of the embedding and of the LM head."""
    tie_word_embeddings: bool
    """LM head shares the embedding matrix."""
    max_position_embeddings: int = 4096
    """Longest context the model was configured for (tokens)."""
    sliding_window: int | None = None
    """Attention window in tokens when the model uses sliding-window attention."""
    sliding_window_layers: int = 0
    """How many layers use the sliding window (Gemma 2: every other one)."""
    qkv_bias: bool = False
    """q/k/v projections carry a bias (Qwen2, ChatGLM)."""
    o_bias: bool = False
    """Output projection carries a bias (attention_bias=True in Llama-style configs)."""
    mlp_bias: bool = False
    """MLP projections carry biases."""
    qk_norm: bool = False
    """Per-head RMSNorm on queries and keys (Qwen3)."""
    norms_per_layer: int = 2
    """RMSNorm weight vectors of width hidden_size per block (Gemma 2 has 4)."""
    fused_qkv: bool = False
    """q/k/v are one Linear (Phi-3 qkv_proj, InternLM2 wqkv, ChatGLM query_key_value)."""
    fused_gate_up: bool = False
    """gate and up are one Linear (Phi-3 gate_up_proj, ChatGLM dense_h_to_4h)."""
    final_logit_softcapping: float | None = None
    """Gemma 2 applies tanh soft-capping to logits (one more vocab-sized temporary)."""
    attn_logit_softcapping: float | None = None
    """Gemma 2 soft-caps attention scores with tanh, which needs the scores materialised (eager)."""
    rope_concat: bool = False
    """RoPE output is built with torch.cat (Phi-3, GLM: rotary and pass-through halves), so q is
    laid out (batch, heads, seq, dim) and the attention output needs a copy before o_proj."""
    moe: MoeShape | None = None
    """Expert layout, None for dense models."""
    mla: MlaShape | None = None
    """Latent attention layout, None for GQA/MHA."""
    torch_dtype: str | None = None
    """dtype the checkpoint is stored in, when the config says."""
    checkpoint_quant: CheckpointQuant | None = None
    """fp8 quantization the checkpoint was exported with (config.json quantization_config), None when unquantized."""
    source: str = ""
    """Where the config came from (catalog citation, file path or hub id)."""
    hf_config: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)
    """The raw config.json dict (read-only), for the tracer and executors."""

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if item.type in ("int", "int | None") and value is not None:
                _check_whole(
                    self.name, item.name, value, minimum=0 if item.name == "sliding_window_layers" else 1
                )
        if self.num_layers > MAX_LAYERS:
            raise SwiftplanError(
                f"The config for {self.name!r} declares {self.num_layers:,} layers; swiftplan plans for at most "
                f"{MAX_LAYERS:,} (the deepest transformer reported, DeepNet, has 1,000).",
                hint=_CONFIG_HINT,
            )
        if self.num_heads % self.num_kv_heads:
            raise SwiftplanError(
                f"Model config for {self.name!r} has {self.num_heads} attention heads and "
                f"{self.num_kv_heads} key/value heads; heads must be a multiple of key/value heads.",
                hint=_CONFIG_HINT,
            )

    @property
    def is_moe(self) -> bool:
        """True when some layers route tokens to experts."""
        return self.moe is not None

    def is_moe_layer(self, layer: int) -> bool:
        """Whether decoder block `layer` (0-based) uses experts rather than a dense MLP."""
        if self.moe is None:
            return False
        return layer >= self.moe.first_dense_layers and layer not in self.moe.dense_layers

    @property
    def eager_attention_only(self) -> bool:
        """transformers (v5) runs Gemma 2's soft-capped attention only in eager mode: no SDPA/flash path."""
        return self.attn_logit_softcapping is not None

    @property
    def q_dim(self) -> int:
        """Width of the query projection output (heads × head_dim)."""
        if self.mla is not None:
            return self.num_heads * (self.mla.qk_nope_head_dim + self.mla.qk_rope_head_dim)
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of one of the key or value projection outputs (kv_heads × head_dim)."""
        return self.num_kv_heads * self.head_dim


_CONFIG_HINT = "Pass a complete config.json (the file next to the model weights)."


def _check_whole(name: str, key: str, value: Any, *, minimum: int = 1) -> int:
    """`value` as an int when it is a whole number of at least `minimum` (JSON may spell 4096 as
    4096.0 or 4.096e3); anything else is a SwiftplanError naming the key."""
    if not is_whole_number(value) or value < minimum:
        raise SwiftplanError(
            f"The config for {name!r} has {key}={value!r}; it must be a whole number of at least {minimum}.",
            hint=_CONFIG_HINT,
        )
    return int(value)


def _flag(config: Mapping[str, Any], name: str, key: str, default: bool) -> bool:
    """A true/false key; a string or a number there ("no", 0) is refused, not read by its truthiness
    (tie_word_embeddings "no" counted a tied head; transformers refuses the config)."""
    value = config.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise SwiftplanError(
            f"The config for {name!r} has {key}={value!r}; it must be true or false.", hint=_CONFIG_HINT
        )
    return value


def _first(config: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    return default


def _key(config: Mapping[str, Any], *keys: str) -> str:
    """The first of `keys` the config sets (for messages), else the first one."""
    return next((key for key in keys if config.get(key) is not None), keys[0])


def _whole(config: Mapping[str, Any], name: str, *keys: str, default: Any = None, minimum: int = 1) -> int:
    """The first of `keys` the config sets, as a whole number of at least `minimum`; `default` otherwise."""
    value = _first(config, *keys, default=default)
    return _check_whole(name, _key(config, *keys), value, minimum=minimum)


def _require(config: Mapping[str, Any], name: str, *keys: str) -> int:
    value = _first(config, *keys)
    if value is None:
        raise SwiftplanError(
            f"The config for {name!r} has none of the keys {', '.join(keys)}; "
            "swiftplan needs it to size the model.",
            hint=_CONFIG_HINT,
        )
    return _whole(config, name, *keys)


def _text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """Multimodal configs nest the language model under text_config (InternVL's remote code: llm_config);
    planning sizes the LM from it and keeps the rest (vision_config) for planner/vision.py."""
    text = config.get("text_config") or config.get("llm_config")
    if isinstance(text, Mapping) and text.get("hidden_size"):
        merged = dict(config)
        merged.update(text)
        return merged
    return config


def _moe_shape(config: Mapping[str, Any], name: str, model_type: str, num_layers: int) -> MoeShape | None:
    expert_keys = ("num_local_experts", "n_routed_experts", "num_experts")
    if not _first(config, *expert_keys):
        return None
    num_experts = _whole(config, name, *expert_keys)
    top_k = _whole(config, name, "num_experts_per_tok", "moe_topk", default=2)
    if top_k > num_experts:
        raise SwiftplanError(
            f"The config for {name!r} has {_key(config, 'num_experts_per_tok', 'moe_topk')}={top_k}, more than its "
            f"{num_experts} experts ({_key(config, *expert_keys)}): a token is routed to at most {num_experts}.",
            hint=_CONFIG_HINT,
        )
    expert_width = _require(config, name, "moe_intermediate_size", "intermediate_size")
    shared = 0
    if model_type == "qwen2_moe":
        shared = _whole(config, name, "shared_expert_intermediate_size", default=0, minimum=0)
    elif config.get("n_shared_experts"):
        shared = _whole(config, name, "n_shared_experts") * expert_width
    first_dense = _whole(config, name, "first_k_dense_replace", default=0, minimum=0)
    only = config.get("mlp_only_layers") or ()
    if not isinstance(only, (list, tuple)):
        raise SwiftplanError(
            f"The config for {name!r} has mlp_only_layers={only!r}; it must be a list of layer indices.",
            hint=_CONFIG_HINT,
        )
    dense_layers = tuple(_check_whole(name, "mlp_only_layers", i, minimum=0) for i in only)
    step = _whole(config, name, "decoder_sparse_step", "moe_layer_freq", default=1)
    if step > 1:
        dense_layers += tuple(i for i in range(num_layers) if (i + 1) % step != 0)
    return MoeShape(
        num_experts=num_experts,
        experts_per_token=top_k,
        expert_intermediate_size=expert_width,
        shared_intermediate_size=shared,
        shared_expert_gate=model_type == "qwen2_moe" and shared > 0,
        first_dense_layers=first_dense,
        dense_layers=tuple(sorted(set(dense_layers))),
        router_bias=model_type == "deepseek_v3" or config.get("topk_method") == "noaux_tc",
    )


def _mla_shape(config: Mapping[str, Any], name: str) -> MlaShape | None:
    if config.get("kv_lora_rank") is None:
        return None
    q_rank = config.get("q_lora_rank")
    return MlaShape(
        q_lora_rank=None if q_rank is None else _whole(config, name, "q_lora_rank"),
        kv_lora_rank=_whole(config, name, "kv_lora_rank"),
        qk_nope_head_dim=_require(config, name, "qk_nope_head_dim"),
        qk_rope_head_dim=_require(config, name, "qk_rope_head_dim"),
        v_head_dim=_require(config, name, "v_head_dim"),
    )


def _model_type(config: Mapping[str, Any], name: str) -> str:
    """The config's model_type, lower case; one swiftplan cannot lay out is an error listing those it can."""
    model_type = str(config.get("model_type", "")).lower()
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise SwiftplanError(
            f"Model {name!r} has model_type {model_type!r}, which swiftplan does not lay out yet.",
            hint=f"Supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}.",
        )
    return _TEXT_LAYOUT.get(model_type, model_type)


def _kv_heads(config: Mapping[str, Any], name: str, model_type: str, heads: int) -> int:
    """Key/value heads: grouped-query where the config says so (ChatGLM only with multi_query_attention)."""
    multi_query = config.get("multi_query_attention", True) if model_type == "chatglm" else True
    if not multi_query:
        return heads
    return _whole(config, name, "num_key_value_heads", "multi_query_group_num", default=heads)


def _intermediate_size(config: Mapping[str, Any], name: str, model_type: str, hidden: int) -> int:
    """Width of one MLP branch."""
    intermediate = _whole(config, name, "intermediate_size", "ffn_hidden_size", default=4 * hidden)
    if model_type == "qwen":  # Qwen v1 stores the combined width of both SwiGLU branches
        intermediate //= 2
    return intermediate


def _vocab_and_tie(config: Mapping[str, Any], name: str, model_type: str) -> tuple[int, bool]:
    """(vocabulary size as the embedding holds it, whether the LM head shares the embedding)."""
    vocab = _require(config, name, "vocab_size", "padded_vocab_size")
    if model_type == "chatglm":
        vocab = _whole(config, name, "padded_vocab_size", "vocab_size")
    tie = _flag(config, name, "tie_word_embeddings", model_type in ("gemma2",))
    if model_type == "chatglm":
        tie = False  # ChatGLM keeps a separate output_layer
    return vocab, tie


def _sliding_window(
    config: Mapping[str, Any], name: str, model_type: str, layers: int
) -> tuple[int | None, int]:
    """(sliding-window width or None, layers that use it: every other one on Gemma 2, else all)."""
    if config.get("sliding_window") is None or not _flag(config, name, "use_sliding_window", True):
        return None, 0
    return _whole(config, name, "sliding_window"), layers // 2 if model_type == "gemma2" else layers


def _biases(config: Mapping[str, Any], name: str, model_type: str) -> dict[str, bool]:
    """Which projections carry a bias: q/k/v, the attention output, the MLP."""
    attention_bias = _flag(config, name, "attention_bias", False)
    internlm_bias = bool(config.get("bias") and model_type == "internlm2")
    return {
        "qkv_bias": model_type in ("qwen2", "qwen2_moe", "qwen")
        or attention_bias
        or bool(config.get("add_qkv_bias"))
        or internlm_bias,
        "o_bias": (attention_bias and model_type != "glm") or internlm_bias,
        "mlp_bias": _flag(config, name, "mlp_bias", False),
    }


def _layout_flags(model_type: str) -> dict[str, Any]:
    """What the architecture's modules look like: QK norms, norms per layer, fused projections, RoPE."""
    return {
        "qk_norm": model_type in ("qwen3", "qwen3_moe"),
        "norms_per_layer": 4 if model_type == "gemma2" else 2,
        "fused_qkv": model_type in ("phi3", "internlm2", "chatglm", "qwen"),
        "fused_gate_up": model_type in ("phi3", "chatglm", "glm"),
        "rope_concat": model_type in ("phi3", "glm"),
    }


def _layers(config: Mapping[str, Any], name: str) -> int:
    """Decoder blocks, at most MAX_LAYERS (checked before anything walks them)."""
    layers = _require(config, name, "num_hidden_layers", "num_layers", "n_layer")
    if layers > MAX_LAYERS:
        key = _key(config, "num_hidden_layers", "num_layers", "n_layer")
        raise SwiftplanError(
            f"The config for {name!r} has {key}={layers:,}; swiftplan plans for at most {MAX_LAYERS:,} layers "
            "(the deepest transformer reported, DeepNet, has 1,000).",
            hint=_CONFIG_HINT,
        )
    return layers


def _head_dim(config: Mapping[str, Any], name: str, hidden: int, heads: int) -> int:
    """Per-head width: the config's head_dim, else hidden_size / heads, which must then divide evenly."""
    if _first(config, "head_dim", "kv_channels") is not None:
        return _whole(config, name, "head_dim", "kv_channels")
    if hidden % heads:
        raise SwiftplanError(
            f"The config for {name!r} has hidden_size={hidden} and {heads} attention heads, and no head_dim: "
            f"{hidden} is not divisible by {heads}, so the heads have no whole width.",
            hint="Use a number of heads that divides hidden_size, or give head_dim.",
        )
    return hidden // heads


def _max_positions(config: Mapping[str, Any], name: str) -> int:
    """Longest context: max_position_embeddings, or what a rope_scaling factor stretches the original
    context to when that is longer (YaRN/linear configs keep the original figure in the key)."""
    keys = ("max_position_embeddings", "seq_length", "max_sequence_length")
    positions = _whole(config, name, *keys, default=4096)
    scaling = config.get("rope_scaling")
    if scaling is not None and not isinstance(scaling, Mapping):
        raise SwiftplanError(
            f"The config for {name!r} has rope_scaling={scaling!r}; it must be an object such as "
            '{"rope_type": "linear", "factor": 4.0}, or null.',
            hint=_CONFIG_HINT,
        )
    if isinstance(scaling, Mapping):
        factor = scaling.get("factor")
        if factor is not None and not is_positive_number(factor):
            raise SwiftplanError(
                f"The config for {name!r} has rope_scaling.factor={factor!r}; it must be a positive number (the "
                "context stretch, e.g. 4.0).",
                hint=_CONFIG_HINT,
            )
        original = scaling.get("original_max_position_embeddings", positions)
        if (
            isinstance(factor, (int, float))
            and not isinstance(factor, bool)
            and math.isfinite(factor)
            and factor > 1
            and isinstance(original, int)
            and original > 0
        ):
            positions = max(positions, int(factor * original))
    return positions


def _optional_number(config: Mapping[str, Any], name: str, key: str) -> float | None:
    value = config.get(key)
    if value is None:
        return None
    if not is_positive_number(value):
        raise SwiftplanError(
            f"The config for {name!r} has {key}={value!r}; it must be a positive number or null.",
            hint=_CONFIG_HINT,
        )
    return float(value)


def _dtype(config: Mapping[str, Any], name: str) -> str | None:
    value = _first(config, "torch_dtype", "dtype")
    if value is not None and not isinstance(value, str):
        raise SwiftplanError(
            f'The config for {name!r} has torch_dtype={value!r}; it must be a dtype name such as "bfloat16".',
            hint=_CONFIG_HINT,
        )
    return value


MAX_WIDTH = 2**24
"""Widest a config's hidden size, heads, head width, MLP width or vocabulary may be: over 100 times the
largest published (hidden 25,600 in OPT-175B/GPT-3, vocabularies of 256,000 in Gemma); past it the config is
garbled (hidden_size 10^30 was planned as 2 × 10^33 parameters)."""


def _width(name: str, key: str, value: int) -> int:
    if value > MAX_WIDTH:
        raise SwiftplanError(
            f"The config for {name!r} has {key}={value:,}; swiftplan plans widths of at most {MAX_WIDTH:,} "
            "(the largest published models have a hidden size of 25,600 and vocabularies of about 256,000).",
            hint=_CONFIG_HINT,
        )
    return value


def spec_from_hf_config(config: Mapping[str, Any], *, name: str, source: str = "") -> ModelSpec:
    """Build a `ModelSpec` from a config.json dict; raises SwiftplanError for what it cannot size."""
    config = _text_config(config)
    model_type = _model_type(config, name)
    hidden = _width(
        name, _key(config, "hidden_size", "n_embd"), _require(config, name, "hidden_size", "n_embd")
    )
    heads = _width(name, _key(config, "num_attention_heads", "n_head"),
                   _require(config, name, "num_attention_heads", "n_head"))  # fmt: skip
    layers = _layers(config, name)
    vocab, tie = _vocab_and_tie(config, name, model_type)
    window, window_layers = _sliding_window(config, name, model_type, layers)
    intermediate = _intermediate_size(config, name, model_type, hidden)
    return ModelSpec(
        name=name,
        model_type=model_type,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=_kv_heads(config, name, model_type, heads),
        head_dim=_width(name, "head_dim", _head_dim(config, name, hidden, heads)),
        intermediate_size=_width(name, _key(config, "intermediate_size", "ffn_hidden_size"), intermediate),
        vocab_size=_width(name, _key(config, "vocab_size", "padded_vocab_size"), vocab),
        tie_word_embeddings=tie,
        max_position_embeddings=_max_positions(config, name),
        sliding_window=window,
        sliding_window_layers=window_layers,
        **_biases(config, name, model_type),
        **_layout_flags(model_type),
        final_logit_softcapping=_optional_number(config, name, "final_logit_softcapping"),
        attn_logit_softcapping=_optional_number(config, name, "attn_logit_softcapping"),
        moe=_moe_shape(config, name, model_type, layers),
        mla=_mla_shape(config, name),
        torch_dtype=_dtype(config, name),
        checkpoint_quant=checkpoint_quant(config, name),
        source=source,
        hf_config=MappingProxyType(dict(config)),
    )
