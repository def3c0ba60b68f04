"""The fake-tensor tracer against real tensors: one checkpointed LoRA step of a tiny Llama, tracked with the same
MemoryTracker over real CPU tensors (real autograd, whose gradient sums and frees are a GPU's) and traced on fake
ones, peaks byte for byte equal — with peft's fp32 adapters and dropout, and with adapters in the model dtype.
The real step runs in a fresh interpreter (`python -m tests.test_trace_real_tensors`), away from what other tests
leave in torch's and transformers' process-wide state."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

TINY = {
    "hidden_size": 256, "intermediate_size": 1408, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 4, "vocab_size": 512, "max_position_embeddings": 4096, "torch_dtype": "bfloat16",
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
}  # fmt: skip
BATCH, SEQ = 2, 512


def _real_peak(dropout: float, adapter: str) -> int:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from swiftplan.executors.trace_memory import MemoryTracker
    from swiftplan.executors.trace_patches import cuda_like_kernels
    from swiftplan.executors.trace_session import register_model

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**TINY)).to(torch.bfloat16)
    model.config.use_cache = False
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=dropout, target_modules="all-linear")
    model = get_peft_model(model, lora, autocast_adapter_dtype=adapter == "fp32")
    model.train()
    ids = torch.randint(0, TINY["vocab_size"], (BATCH, SEQ))
    peak = 0
    with cuda_like_kernels(Counter()):
        for step in range(2):  # the second step is measured, as the tracer measures its last
            with MemoryTracker(round_bytes=512) as tracker:
                register_model(tracker, model)
                if step == 1:
                    tracker.start_measuring()
                model(input_ids=ids, labels=ids).loss.backward()
                peak = tracker.peak_bytes
            model.zero_grad(set_to_none=True)
    return peak


@pytest.mark.parametrize(("dropout", "adapter"), [(0.05, "fp32"), (0.0, "model")])
def test_the_fake_trace_peaks_where_real_tensors_do(dropout: float, adapter: str) -> None:
    pytest.importorskip("peft")
    from swiftplan.executors.trace import trace_training
    from swiftplan.executors.trace_features import TraceFeatures

    fake = trace_training(TINY, method="lora", precision="bf16", lora_rank=16, lora_dropout=dropout,
                          lora_targets="all-linear", batch=BATCH, seq=SEQ, grad_ckpt=True, optimizer="sgd",
                          features=TraceFeatures(adapter_dtype=adapter))  # fmt: skip
    real = subprocess.run(
        [sys.executable, "-m", "tests.test_trace_real_tensors", str(dropout), adapter],
        capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert fake.peak_bytes == int(real.stdout.split()[-1])


if __name__ == "__main__":
    print(_real_peak(float(sys.argv[1]), sys.argv[2]))
