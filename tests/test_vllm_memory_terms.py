"""vLLM serving memory as vLLM 0.32.0 lays it out: fp8 routed experts, an fp8 checkpoint's own
quantization_config (ignored layers, block scales), and the CUDA-graph and sampler terms that come off
the KV budget (planner/checkpoint_quant.py, planner/vllm_runtime.py)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from swiftplan.errors import SwiftplanError
from swiftplan.planner.architecture import Linear, layer_linears
from swiftplan.planner.checkpoint_quant import CheckpointQuant, checkpoint_quant
from swiftplan.planner.model_catalog import catalog_spec
from swiftplan.planner.model_spec import spec_from_hf_config
from swiftplan.planner.serve_memory import serve_memory, serve_weight_bytes
from swiftplan.planner.setup import ServeSetup
from swiftplan.planner.vllm_runtime import cudagraph_capture_sizes, cudagraph_counts
from swiftplan.planner.weights import layer_weight_bytes, quantized_linear_bytes
from tests.bad_input_support import assert_refused, run_cli

GiB = 2**30
MOE = "Qwen/Qwen3-30B-A3B"

# Qwen3-30B-A3B's shapes (the catalog entry), as a config.json a user would pass.
QWEN3_MOE: dict[str, Any] = {
    "model_type": "qwen3_moe",
    "hidden_size": 2048,
    "intermediate_size": 6144,
    "moe_intermediate_size": 768,
    "num_experts": 128,
    "num_experts_per_tok": 8,
    "num_hidden_layers": 48,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "head_dim": 128,
    "vocab_size": 151936,
    "max_position_embeddings": 40960,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}


def _fp8_config(**quant: Any) -> dict[str, Any]:
    return QWEN3_MOE | {
        "quantization_config": {"quant_method": "fp8", "activation_scheme": "dynamic", **quant}
    }


def test_moe_fp8_serving_weights_are_half_of_bf16_experts_included() -> None:
    spec = catalog_spec(MOE)
    bf16 = serve_weight_bytes(spec, ServeSetup())
    fp8 = serve_weight_bytes(spec, ServeSetup(quant="fp8"))
    # Experts are ~95 % of Qwen3-30B-A3B; only the embedding, LM head and norms stay bf16.
    assert 0.50 < fp8 / bf16 < 0.52
    layer = next(i for i in range(spec.num_layers) if spec.is_moe_layer(i))
    bf16_layer = layer_weight_bytes(spec, layer, dtype_bytes=2, quant="none", double_quant=True)
    served = layer_weight_bytes(
        spec, layer, dtype_bytes=2, quant="fp8", double_quant=True, quantize_experts=True
    )
    trained = layer_weight_bytes(spec, layer, dtype_bytes=2, quant="fp8", double_quant=True)
    assert served / bf16_layer == pytest.approx(0.5, abs=0.002)
    assert trained / bf16_layer > 0.95  # transformers' rules unchanged: fused experts stay bf16 in training


def test_fp8_experts_carry_one_scale_per_expert_and_gate_up_shard() -> None:
    gate_up = Linear(
        name="experts.gate_up_proj", in_features=2048, out_features=1536, count=128, kind="experts"
    )
    down = Linear(name="experts.down_proj", in_features=768, out_features=2048, count=128, kind="experts")
    assert quantized_linear_bytes(gate_up, "fp8") == 128 * (2048 * 1536 + 2 * 4)
    assert quantized_linear_bytes(down, "fp8") == 128 * (768 * 2048 + 4)


def test_block_quantized_checkpoint_counts_one_fp32_scale_per_128_by_128_block() -> None:
    block = CheckpointQuant(method="fp8", scales="block", weight_block=(128, 128))
    square = Linear(name="q_proj", in_features=4096, out_features=4096)
    assert quantized_linear_bytes(square, "fp8", checkpoint=block) == 4096 * 4096 + 4 * 32 * 32
    ragged = Linear(name="down_proj", in_features=300, out_features=1000)  # partial blocks round up
    assert quantized_linear_bytes(ragged, "fp8", checkpoint=block) == 300 * 1000 + 4 * 8 * 3
    spec = spec_from_hf_config(_fp8_config(weight_block_size=[128, 128]), name="block")
    per_tensor = spec_from_hf_config(_fp8_config(), name="tensor")
    extra = serve_weight_bytes(spec, ServeSetup()) - serve_weight_bytes(per_tensor, ServeSetup())
    expected = 0
    for i in range(spec.num_layers):
        for lin in layer_linears(spec, i):
            if lin.kind == "router":
                continue
            blocks = -(-lin.out_features // 128) * -(-lin.in_features // 128)
            shards = 2 if lin.kind == "experts" and lin.name.endswith("gate_up_proj") else 1
            expected += lin.count * 4 * (blocks - shards)
    assert extra == expected


def test_ignored_layers_are_counted_in_the_compute_dtype() -> None:
    attention = [f"model.layers.0.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj")]
    plain = spec_from_hf_config(_fp8_config(), name="plain")
    kept = spec_from_hf_config(_fp8_config(ignored_layers=["lm_head", *attention]), name="kept")
    assert kept.checkpoint_quant is not None and kept.checkpoint_quant.ignores(attention[0])
    diff = serve_weight_bytes(kept, ServeSetup()) - serve_weight_bytes(plain, ServeSetup())
    attn_params = sum(lin.params for lin in layer_linears(kept, 0) if lin.block == "attention")
    # each ignored projection: 2 B/weight instead of 1 B/weight + a 4 B scale; lm_head is bf16 either way
    assert diff == attn_params - 4 * 4


def test_modules_to_not_convert_and_compressed_tensors_regex_ignores() -> None:
    quant = checkpoint_quant(
        {
            "quantization_config": {
                "quant_method": "fp8",
                "modules_to_not_convert": ["model.layers.47.mlp.experts"],
            }
        },
        "m",
    )
    assert quant is not None and quant.ignored == ("model.layers.47.mlp.experts",)
    ct = checkpoint_quant(
        {
            "quantization_config": {
                "quant_method": "compressed-tensors",
                "ignore": ["lm_head", "re:.*mlp.gate$"],
                "config_groups": {
                    "group_0": {
                        "targets": ["Linear"],
                        "weights": {"num_bits": 8, "type": "float", "strategy": "channel"},
                        "input_activations": {"num_bits": 8, "type": "float", "dynamic": True},
                    }
                },
            }
        },
        "m",
    )
    assert ct is not None and ct.scales == "channel" and not ct.static_activations
    assert ct.ignores("model.layers.3.mlp.gate") and not ct.ignores("model.layers.3.mlp.gate_proj")
    int4 = {"quant_method": "compressed-tensors",
            "config_groups": {"g": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int"}}}}  # fmt: skip
    assert checkpoint_quant({"quantization_config": int4}, "m") is None  # left to --quant gptq/awq


@pytest.mark.parametrize(
    ("quant", "fragment"),
    [
        ({"quant_method": "fp8", "weight_block_size": [128]}, "weight_block_size=[128]"),
        ({"quant_method": "fp8", "ignored_layers": "lm_head"}, "ignored_layers='lm_head'"),
        ({"quant_method": "fp8", "activation_scheme": "per-token"}, "activation_scheme='per-token'"),
    ],
)
def test_malformed_fp8_quantization_config_names_the_key(quant: dict[str, Any], fragment: str) -> None:
    with pytest.raises(SwiftplanError, match=fragment.replace("[", r"\[")):
        spec_from_hf_config(QWEN3_MOE | {"quantization_config": quant}, name="bad")


def test_prequantized_checkpoint_is_served_as_fp8_without_quant_and_refuses_another(tmp_path: Path) -> None:
    spec = spec_from_hf_config(_fp8_config(), name="fp8-export")
    assert serve_weight_bytes(spec, ServeSetup()) == serve_weight_bytes(spec, ServeSetup(quant="fp8"))
    assert serve_weight_bytes(spec, ServeSetup()) == serve_weight_bytes(
        catalog_spec(MOE), ServeSetup(quant="fp8")
    )
    (tmp_path / "config.json").write_text(json.dumps(_fp8_config()))
    assert_refused(
        run_cli(
            "estimate", str(tmp_path / "config.json"), "--task", "serve", "--gpus", "h100", "--quant", "nf4"
        ),
        "--quant nf4",
        "already quantized to fp8",
    )


def test_capture_sizes_follow_vllm_defaults() -> None:
    # vLLM logs 'Profiling CUDA graph memory: PIECEWISE=51 (largest=512), FULL=35 (largest=256)' at
    # --max-num-seqs 256 (vllm-project/vllm PR #39559).
    setup = ServeSetup(concurrency=256, prefill_chunk=8192)
    assert cudagraph_capture_sizes(setup)[-1] == 512
    assert cudagraph_counts(setup) == (51, 35)
    small = ServeSetup(concurrency=4, prefill_chunk=2048)  # largest = 2 × max_num_seqs
    assert cudagraph_capture_sizes(small) == (1, 2, 4, 8)


def test_graph_pool_and_sampler_come_off_the_kv_budget() -> None:
    spec = catalog_spec("meta-llama/Meta-Llama-3-8B")
    setup = ServeSetup(concurrency=256, context=4096, prefill_chunk=256)
    served = serve_memory(spec, setup, device_memory_bytes=80 * GiB)
    terms = {t.name: t.value_bytes for t in served.device.terms}
    # sampler: 256 requests × 128,256 vocab × (2 + 12) B exceeds a 256-token prefill workspace
    assert terms["sampler_warmup"] == 256 * 128_256 * 14 - terms["activations"]
    assert 0.5 * GiB < terms["cudagraph_pool"] < 1 * GiB  # vLLM logs 0.44-0.73 GiB for 51-86 graphs
    eager = terms["weights"] + terms["activations"] + terms["runtime_overhead"]
    assert (
        served.kv_budget_bytes
        == int(80 * GiB * 0.9) - eager - terms["sampler_warmup"] - terms["cudagraph_pool"]
    )


def test_estimate_json_shows_the_graph_pool_and_sampler_with_their_sources() -> None:
    result = run_cli("estimate", MOE, "--task", "serve", "--gpus", "h100", "--concurrency", "64", "--json")
    assert result.exit_code == 0, result.output
    terms = {t["name"]: t for t in json.loads(result.output)["terms"]}
    assert (
        terms["cudagraph_pool"]["bytes"] > 0
        and "profile_cudagraph_memory" in terms["cudagraph_pool"]["source"]
    )
    assert "[prior]" in terms["cudagraph_pool"]["source"]  # the per-graph constant is still a prior
    assert "_dummy_sampler_run" in terms["sampler_warmup"]["source"]
    fp8 = run_cli("estimate", MOE, "--task", "serve", "--gpus", "h100", "--quant", "fp8", "--json")
    weights = {t["name"]: t for t in json.loads(fp8.output)["terms"]}["weights"]
    assert "routed experts fp8" in weights["formula"] and "Fp8MoEMethod" in weights["source"]


def test_dense_model_without_quantization_config_is_unchanged() -> None:
    spec = catalog_spec("meta-llama/Meta-Llama-3-8B")
    assert spec.checkpoint_quant is None
    assert serve_weight_bytes(spec, ServeSetup(quant="fp8")) == serve_weight_bytes(
        replace(spec, checkpoint_quant=None), ServeSetup(quant="fp8")
    )
