"""Parameter counts: exact against the reference catalog and against transformers itself."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from swiftplan.errors import SwiftplanError
from swiftplan.planner.adapters import adapter_params, all_linear_peft_note
from swiftplan.planner.architecture import active_params_per_token, layer_buffer_elements, total_params
from swiftplan.planner.model_catalog import catalog, catalog_spec, find_catalog_id
from swiftplan.planner.model_spec import spec_from_hf_config
from swiftplan.planner.setup import LoraSetup
from swiftplan.planner.vision import vision_tower

CATALOG = json.loads(resources.files("swiftplan.profiles").joinpath("models.json").read_text())["models"]


def test_catalog_has_every_reference_model():
    # shared/reference/models.json lists 36 models; scripts/catalog_curated.json adds 3 vision-language models.
    assert len(CATALOG) == 39
    assert sum(bool(entry.get("curated")) for entry in CATALOG.values()) == 3
    assert all(entry["source"] for entry in CATALOG.values())


@pytest.mark.parametrize("model_id", sorted(CATALOG))
def test_param_count_matches_reference(model_id):
    """params_reference was computed by the reference compilers from the config and matches
    published exact counts where they exist (e.g. Llama-2-7B 6,738,415,616; Qwen2.5-7B 7,615,616,512).
    The reference also counts DeepSeek-V3's e_score_correction_bias, which transformers keeps as a buffer."""
    spec = catalog_spec(model_id)
    buffers = sum(layer_buffer_elements(spec, i) for i in range(spec.num_layers))
    tower = vision_tower(spec)  # vision-language models: the tower and aligner count too
    vision = tower.params() if tower is not None else 0
    assert total_params(spec) + buffers + vision == CATALOG[model_id]["params_reference"]


def test_published_exact_counts():
    # Exact counts from the model cards / HF listings quoted in shared/reference/README.md.
    assert total_params(catalog_spec("Qwen/Qwen2.5-7B-Instruct")) == 7_615_616_512
    assert total_params(catalog_spec("Qwen/Qwen2.5-3B")) == 3_085_938_688
    assert total_params(catalog_spec("meta-llama/Llama-2-7b-hf")) == 6_738_415_616


def test_moe_active_params():
    # Mixtral 8x7B: 46.70B total, 12.88B active (README of the reference data).
    mixtral = catalog_spec("mistralai/Mixtral-8x7B-v0.1")
    assert round(total_params(mixtral) / 1e9, 2) == 46.70
    assert round(active_params_per_token(mixtral) / 1e9, 2) == 12.88


@pytest.mark.parametrize(
    "name, expected",
    [
        ("Qwen-72B", "Qwen/Qwen-72B"),
        ("qwen2.5-7b", "Qwen/Qwen2.5-7B-Instruct"),
        ("Qwen/Qwen2.5-72B", "Qwen/Qwen2.5-72B-Instruct"),
        ("LLAMA-2-7B", "meta-llama/Llama-2-7b-hf"),
        ("mixtral-8x7b", "mistralai/Mixtral-8x7B-v0.1"),
        ("no-such-model", None),
    ],
)
def test_aliases(name, expected):
    assert find_catalog_id(name) == expected


def test_catalog_loads_all_entries():
    assert len(catalog()) == len(CATALOG)


def test_bad_config_is_a_clear_error():
    with pytest.raises(SwiftplanError, match="model_type 'bert'"):
        spec_from_hf_config({"model_type": "bert", "hidden_size": 8}, name="x")
    with pytest.raises(SwiftplanError, match="multiple of key/value heads"):
        spec_from_hf_config(
            {
                "model_type": "llama",
                "hidden_size": 64,
                "num_attention_heads": 4,
                "num_key_value_heads": 3,
                "num_hidden_layers": 1,
                "vocab_size": 10,
                "intermediate_size": 8,
            },
            name="x",
        )


# --- exactness against transformers itself (meta device: no memory) ------------------------------

TINY = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    vocab_size=128,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
TINY_CONFIGS = {
    "llama": dict(num_key_value_heads=2),
    "llama_untied_bias": dict(
        num_key_value_heads=2, attention_bias=True, mlp_bias=True, tie_word_embeddings=False
    ),
    "mistral": dict(num_key_value_heads=2, sliding_window=32),
    "qwen2": dict(num_key_value_heads=2, tie_word_embeddings=True),
    "qwen3": dict(num_key_value_heads=2, head_dim=24),
    "gemma2": dict(num_key_value_heads=2, head_dim=32),
    "phi3": dict(num_key_value_heads=4),
    "mixtral": dict(num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": dict(
        num_key_value_heads=2, num_experts=4, moe_intermediate_size=32, shared_expert_intermediate_size=48
    ),
    "qwen3_moe": dict(
        num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, head_dim=16
    ),
    "deepseek_v2": dict(
        num_key_value_heads=4,
        n_routed_experts=4,
        n_shared_experts=1,
        moe_intermediate_size=32,
        first_k_dense_replace=1,
        q_lora_rank=None,
        kv_lora_rank=16,
        qk_nope_head_dim=8,
        qk_rope_head_dim=4,
        v_head_dim=8,
        num_experts_per_tok=2,
    ),
    "deepseek_v3": dict(
        num_key_value_heads=4,
        n_routed_experts=4,
        n_shared_experts=1,
        moe_intermediate_size=32,
        first_k_dense_replace=1,
        q_lora_rank=24,
        kv_lora_rank=16,
        qk_nope_head_dim=8,
        qk_rope_head_dim=4,
        v_head_dim=8,
        num_experts_per_tok=2,
        n_group=1,
        topk_group=1,
    ),
}


def _meta_model(model_type: str, overrides: dict):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.AutoConfig.for_model(model_type.split("_untied")[0], **{**TINY, **overrides})
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    return config, model


@pytest.mark.parametrize("case", sorted(TINY_CONFIGS))
def test_param_count_equals_transformers(case):
    config, model = _meta_model(case, TINY_CONFIGS[case])
    spec = spec_from_hf_config(config.to_dict(), name=case)
    assert total_params(spec) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "case, targets",
    [
        ("llama", ("q_proj", "v_proj")),
        ("llama", ("all-linear",)),
        ("phi3", ("all-linear",)),
        ("qwen3_moe", ("all-linear",)),
        ("mixtral", ("all-linear",)),
        ("deepseek_v3", ("all-linear",)),
        ("qwen2_moe", ("all-linear",)),
        ("deepseek_v3", ("q_b_proj", "kv_b_proj")),
    ],
)
def test_lora_params_equal_peft(case, targets):
    peft = pytest.importorskip("peft")
    config, model = _meta_model(case, TINY_CONFIGS[case])
    lora = LoraSetup(rank=8, targets=targets)
    peft_targets = "all-linear" if lora.all_linear else list(targets)
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=8, target_modules=peft_targets))
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    assert adapter_params(spec_from_hf_config(config.to_dict(), name=case), lora) == trainable


@pytest.mark.parametrize(
    ("case", "noted"), [("qwen2_moe", "the routed experts' fused weights"), ("deepseek_v3", "the dense MLPs"),
                        ("deepseek_v2", "the dense MLPs"), ("qwen3_moe", None), ("mixtral", None)],
)  # fmt: skip
def test_all_linear_says_where_peft_0_22_adapts_more(case, noted):
    """peft 0.22 wraps more of these MoE models under all-linear than the 0.21 rules (pinned by
    test_lora_params_equal_peft); the plan says so where they differ, and only there."""
    config, _ = _meta_model(case, TINY_CONFIGS[case])
    spec = spec_from_hf_config(config.to_dict(), name=case)
    note = all_linear_peft_note(spec, LoraSetup(rank=8, targets=("all-linear",)))
    assert (note is None) if noted is None else (noted in note and "peft 0.22" in note)
    assert all_linear_peft_note(spec, LoraSetup(rank=8, targets=("q_proj",))) is None
