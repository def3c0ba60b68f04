"""TRL 1.16 as the hf runtime runs it: SFT's loss through TRL's fused LM head (planned with its formula and
traced with TRL's own add_fused_lm_head), and the bf16 cast TRL's trainers give the trainable parameters of a
bitsandbytes base (planned, traced, and noted by the TRL renderer when a plan counted fp32 adapters)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from swiftplan.executors.train_engines.common import RunOptions
from swiftplan.executors.train_engines.registry import render_for
from swiftplan.planner import fused_head
from swiftplan.planner.activations import logits_bytes
from swiftplan.planner.dtypes import adapter_dtype, saved_module_dtype
from swiftplan.planner.hardware import parse_cluster
from swiftplan.planner.model_catalog import catalog_spec
from swiftplan.planner.setup import LoraSetup, RuntimeKnobs, TrainSetup
from swiftplan.planner.states import state_dtypes
from swiftplan.planner.train_memory import train_memory
from swiftplan.usecases.estimate import plan_for_setup
from tests.bad_input_support import run_cli

SMALL = "Qwen/Qwen2.5-0.5B"
HF = RuntimeKnobs(name="hf", loss="fused_head", adapter_dtype="kbit-bf16")


# --- the fused head, as arithmetic -------------------------------------------------------------------


def test_fused_head_logits_are_one_tile_the_scored_hidden_states_and_their_fp32_gradient() -> None:
    spec = catalog_spec(SMALL)  # hidden 896, vocabulary 151,936
    setup = TrainSetup(method="lora", micro_batch=2, seq_len=1024, runtime=HF)
    tokens, hidden, cb = 2 * 1024, 896, 2
    tile = 2048 * 32768 * cb  # [min(T, 4096) × min(V, 32768)] in the compute dtype, reused for every tile
    saved = tokens * hidden * cb + 2 * tokens * 4 + tokens * 8  # hidden[mask], log_z, entropy, targets
    gradient = tokens * hidden * (4 + cb)  # the fp32 accumulator and its cast
    assert logits_bytes(spec, setup) == saved + tile + gradient
    # no tokens × vocabulary tensor: far below the full loss's three fp32 copies
    full = logits_bytes(spec, replace(setup, runtime=replace(HF, loss="full")))
    assert full == tokens * spec.vocab_size * 12
    assert logits_bytes(spec, setup) < full / 10


def test_fused_head_tiles_cap_at_4096_tokens_and_a_full_fine_tune_adds_the_heads_fp32_gradient() -> None:
    spec = catalog_spec(SMALL)
    lora = TrainSetup(method="lora", micro_batch=4, seq_len=4096, runtime=HF)
    full = replace(lora, method="full")
    tile = 4096 * 32768 * 2
    beyond_saved = fused_head.head_bytes(spec, lora, 16384, backward=True) - fused_head.saved_bytes(
        spec, lora, 16384
    )
    assert beyond_saved == tile + 16384 * 896 * 6
    head = spec.vocab_size * 896 * (4 + 2)
    assert logits_bytes(spec, full) - logits_bytes(spec, lora) == head
    # the plain matmul would save the trained head's input; the fused head keeps its own masked copy instead
    assert fused_head.input_not_saved_bytes(spec, full, 16384) == 16384 * 896 * 2
    assert fused_head.input_not_saved_bytes(spec, lora, 16384) == 0


# --- TRL's bf16 cast of a bitsandbytes base's trainable parameters -----------------------------------


@pytest.mark.parametrize(("quant", "method", "expected"), [
    ("nf4", "qlora", "bf16"), ("fp4", "qlora", "bf16"), ("int8", "lora", "bf16"),
    ("none", "lora", "fp32"), ("gptq", "lora", "fp32"),
])  # fmt: skip
def test_kbit_bf16_casts_adapters_on_a_bitsandbytes_base_only(quant: str, method: str, expected: str) -> None:
    setup = TrainSetup(method=method, quant=quant, precision="fp16", runtime=HF)  # type: ignore[arg-type]
    assert (
        adapter_dtype(setup) == expected
    )  # bf16 even under fp16 compute: TRL casts to bf16, not the model dtype
    assert state_dtypes(setup).optimizer == expected  # moments follow the adapters


def test_kbit_bf16_halves_adapter_state_and_casts_modules_to_save_copies() -> None:
    spec = catalog_spec("Qwen/Qwen2.5-7B-Instruct")
    knobs = replace(HF, modules_to_save=("embed_tokens",))
    # peft's fp32 preparation makes the module (and so the embedding's trainable copy) fp32; TRL then casts
    # what trains to bf16
    cast = TrainSetup(method="qlora", lora=LoraSetup(rank=64, targets=("all-linear",)), runtime=knobs,
                      kbit_upcast=True)  # fmt: skip
    peft = replace(cast, runtime=replace(knobs, adapter_dtype="fp32"))
    assert (saved_module_dtype(cast), saved_module_dtype(peft)) == ("bf16", "fp32")
    a, b = train_memory(spec, cast).device, train_memory(spec, peft).device
    copy = spec.vocab_size * spec.hidden_size
    lora_params = train_memory(spec, cast).trainable_params - copy
    assert b.adapters - a.adapters == lora_params * 2 + copy * 2  # fp32 → bf16 adapters and embedding copy
    assert b.optimizer - a.optimizer == (lora_params + copy) * 2 * 2  # two AdamW moments follow them
    assert b.gradients - a.gradients == (lora_params + copy) * 2


def test_the_cast_leaves_doras_magnitude_as_trl_does() -> None:
    pytest.importorskip("peft")
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from swiftplan.executors.trl_cast import cast_trainable_to_bf16

    tiny = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                       num_key_value_heads=4, vocab_size=128)  # fmt: skip
    net = get_peft_model(LlamaForCausalLM(tiny), LoraConfig(r=4, target_modules=["q_proj"], use_dora=True))
    assert cast_trainable_to_bf16(net) == 2  # lora_A and lora_B
    dtypes = {name: p.dtype for name, p in net.named_parameters() if p.requires_grad}
    assert {d for n, d in dtypes.items() if "lora_magnitude_vector" in n} == {torch.float32}
    assert {d for n, d in dtypes.items() if "lora_magnitude_vector" not in n} == {torch.bfloat16}


def test_an_engine_that_does_not_cast_refuses_kbit_bf16_on_a_bitsandbytes_base() -> None:
    from swiftplan.planner.engines import engine_reasons, get_engine, train_requirements

    knobs = RuntimeKnobs(adapter_dtype="kbit-bf16")
    qlora = train_requirements(TrainSetup(method="qlora", runtime=knobs), backend="cuda", gpus=1)
    lora = train_requirements(TrainSetup(method="lora", runtime=knobs), backend="cuda", gpus=1)
    assert any("kbit-bf16" in r for r in engine_reasons(get_engine("axolotl"), qlora))
    assert not any("adapter dtype" in r for r in engine_reasons(get_engine("axolotl"), lora))
    assert not any(
        "adapter dtype" in r for r in engine_reasons(get_engine("swiftplan"), qlora)
    )  # our loop casts


def test_trl_renderer_notes_fp32_adapters_on_a_bitsandbytes_base() -> None:
    cluster = parse_cluster("rtx4090")
    options = RunOptions(data="/data/train.jsonl", output_dir="/runs/out")
    planned = plan_for_setup(SMALL, cluster, TrainSetup(method="qlora", runtime=HF), engine="trl")
    fp32 = plan_for_setup(
        SMALL, cluster, TrainSetup(method="qlora", runtime=replace(HF, adapter_dtype="fp32")), engine="trl"
    )
    assert not any("bf16" in n for n in render_for("trl", planned, options).notes)
    assert any("counted fp32 adapters" in n for n in render_for("trl", fp32, options).notes)


# --- traced with TRL's own code ----------------------------------------------------------------------


def _verify(*args: str) -> dict:
    pytest.importorskip("trl")
    result = run_cli("verify", SMALL, "--runtime", "hf", "--json", *args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    return payload | {"by_term": {t["name"]: t for t in payload["terms"]}}


def test_verify_traces_trls_fused_head_at_the_loss() -> None:
    traced = _verify("--method", "lora", "--seq", "4096", "--no-grad-ckpt")
    assert traced["estimate_peak_phase"] == "loss and backward start"
    logits = traced["by_term"]["logits"]
    assert logits["traced"] > 0 and abs(logits["error"]) <= 0.001, traced["terms"]
    assert abs(traced["by_term"]["peak_allocated"]["error"]) <= 0.005, traced["terms"]
    assert any("TRL 1.16's fused LM head" in n for n in traced["notes"])


def test_verify_traces_the_fused_head_under_autocast_and_with_a_trained_head() -> None:
    for args in (("--precision", "amp-bf16"), ("--modules-to-save", "lm_head")):
        traced = _verify("--method", "lora", "--seq", "4096", "--no-grad-ckpt", *args)
        assert traced["estimate_peak_phase"] == "loss and backward start"
        assert abs(traced["by_term"]["peak_allocated"]["error"]) <= 0.005, (args, traced["terms"])


def test_a_trained_head_adds_its_fp32_gradient_and_drops_the_matmuls_saved_input() -> None:
    spec = catalog_spec(SMALL)
    frozen = TrainSetup(method="lora", micro_batch=1, seq_len=4096, runtime=HF)
    trained = replace(frozen, runtime=replace(HF, modules_to_save=("lm_head",)))
    head = spec.vocab_size * 896
    assert logits_bytes(spec, trained) - logits_bytes(spec, frozen) == head * (
        4 + 2
    )  # fp32 gradient, bf16 cast
    assert fused_head.input_not_saved_bytes(spec, trained, 4096) == 4096 * 896 * 2


def test_verify_traces_trls_bf16_cast_of_qlora_adapters() -> None:
    traced = _verify("--method", "qlora", "--seq", "512")
    adapters = traced["by_term"]["adapters"]
    assert adapters["estimate"] == adapters["traced"], traced["terms"]
    fp32 = _verify("--method", "qlora", "--seq", "512", "--adapter-dtype", "fp32")
    assert fp32["by_term"]["adapters"]["traced"] == 2 * adapters["traced"]
    assert any("cast to bf16 after LoRA" in n for n in traced["notes"])
    assert not any("cast to bf16" in n for n in fp32["notes"])


def test_engines_see_kbit_bf16_as_fp32_on_a_base_bitsandbytes_does_not_quantize() -> None:
    from swiftplan.planner.engines import train_requirements

    knobs = RuntimeKnobs(adapter_dtype="kbit-bf16")
    lora = train_requirements(TrainSetup(method="lora", runtime=knobs), backend="cuda", gpus=1)
    qlora = train_requirements(TrainSetup(method="qlora", runtime=knobs), backend="cuda", gpus=1)
    assert lora.adapter_dtype == "fp32"  # peft's default: any engine that builds fp32 adapters runs it
    assert qlora.adapter_dtype == "kbit-bf16"  # only an engine that casts them (TRL) runs it as planned
