"""The planner's bitsandbytes activation terms as arithmetic (the traces behind them: tests/test_trace_quant.py):
int8 Linears keep their inputs on the autograd context, a dequantized weight rides along in backward."""

from __future__ import annotations

from dataclasses import replace

from swiftplan.planner import activations as act
from swiftplan.planner.model_catalog import catalog_spec
from swiftplan.planner.setup import LoraSetup, TrainSetup

LLAMA = catalog_spec("meta-llama/Llama-2-7b-hf")  # h 4096, I 11008, 32 heads × 128
TOKENS = 1024
INT8 = TrainSetup(method="lora", quant="int8", lora=LoraSetup(rank=16, dropout=0.0), seq_len=TOKENS)


def test_a_checkpointed_int8_block_keeps_four_linear_inputs():
    """Attention input (q, k, v), attention output (o), MLP input (gate, up) and the SwiGLU product (down)."""
    kept = act.int8_kept_input_bytes(LLAMA, INT8, TOKENS, checkpointed=True)
    assert kept == TOKENS * 2 * (4096 + 4096 + 4096 + 11008)


def test_without_checkpointing_the_sdpa_output_is_kept_anyway():
    kept = act.int8_kept_input_bytes(LLAMA, INT8, TOKENS, checkpointed=False)
    assert kept == TOKENS * 2 * (4096 + 4096 + 11008)


def test_lora_that_keeps_the_same_tensor_is_not_counted_twice():
    """After peft's fp32 upcast the stream and the fp32 adapters share a dtype: q and v's LoRA keeps the
    attention input itself (without checkpointing), so only the other three inputs are the int8 layers' own."""
    upcast = replace(INT8, kbit_upcast=True)
    kept = act.int8_kept_input_bytes(LLAMA, upcast, TOKENS, checkpointed=False)
    assert kept == TOKENS * 4 * (4096 + 11008)


def test_other_bases_keep_nothing_and_dequantize_nothing():
    for quant in ("none", "gptq", "awq"):
        setup = replace(INT8, quant=quant)
        assert act.int8_kept_input_bytes(LLAMA, setup, TOKENS, checkpointed=True) == 0
        assert act.dequantized_weight_bytes(LLAMA, setup) == 0


def test_the_dequantized_weight_is_the_largest_block_matrix():
    nf4 = TrainSetup(method="qlora", quant="nf4", lora=LoraSetup(rank=16), seq_len=TOKENS)
    assert act.dequantized_weight_bytes(LLAMA, nf4) == 4096 * 11008 * 2  # bf16
    assert (
        act.dequantized_weight_bytes(LLAMA, replace(INT8, kbit_upcast=True)) == 4096 * 11008 * 4
    )  # input's dtype
    # backward holds it beside one T × I gradient when that beats three gradients; a forward (no grad) beside two
    gradient = TOKENS * 11008 * 2
    assert act.backward_working_bytes(LLAMA, nf4, TOKENS) == max(3 * gradient, gradient + 4096 * 11008 * 2)
    assert act.forward_working_bytes(LLAMA, nf4, TOKENS) == max(3 * gradient, 2 * gradient + 4096 * 11008 * 2)
    assert act.forward_working_bytes(LLAMA, INT8, TOKENS) == 3 * gradient  # int8 × int8 in forward
