"""The loss of transformers 4.31-4.45 (`--loss full_legacy`): its term against the code it models.

`LlamaForCausalLM.forward` of transformers 4.38.2 (src/transformers/models/llama/modeling_llama.py, the
same lines in 4.31.0-4.45.2 and in Qwen2ForCausalLM 4.37-4.45) is replayed below on fake tensors under
swiftplan's MemoryTracker; benchmarks/results/legacy_loss_trace.md records the real 4.38.2 models traced
the same way (benchmarks/trace_legacy_loss.py).
"""

from __future__ import annotations

import json

import pytest

from swiftplan.planner.activations import logits_bytes
from swiftplan.planner.model_spec import spec_from_hf_config
from swiftplan.planner.setup import RuntimeKnobs, TrainSetup
from tests.bad_input_support import run_cli

V, H = 32000, 64
"""Llama 2's vocabulary; a small hidden size (the loss region does not depend on it)."""
SPEC = spec_from_hf_config(
    {"model_type": "llama", "vocab_size": V, "hidden_size": H, "intermediate_size": 128,
     "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2},
    name="tiny-llama",
)  # fmt: skip


def _term(loss: str, batch: int, seq: int) -> int:
    setup = TrainSetup(
        method="full", precision="bf16", micro_batch=batch, seq_len=seq, runtime=RuntimeKnobs(loss=loss)
    )
    return logits_bytes(SPEC, setup)


def test_legacy_term_is_the_larger_of_its_forward_and_backward() -> None:
    # batch > 1: forward holds the output's fp32 logits (B·S·V·4), the shifted fp32 copy and the
    # log_softmax output (B·(S-1)·V·4 each); backward 3 fp32 tensors over the shifted positions.
    assert _term("full_legacy", 2, 256) == 4 * 2 * 256 * V + 8 * 2 * 255 * V
    # batch 1: logits[..., :-1, :] is already contiguous (no copy), so backward is the larger.
    assert _term("full_legacy", 1, 1024) == 12 * 1023 * V
    # transformers >= 4.49 (`full`): 3 fp32 tensors over every position (labels padded, logits unshifted).
    assert _term("full", 2, 256) == 12 * 2 * 256 * V
    # Under a Trainer (output dropped before backward) the two differ by less than one token per sequence.
    assert _term("full", 2, 256) - _term("full_legacy", 2, 256) == 8 * 2 * V


def _replay_legacy(batch: int, seq: int) -> tuple[int, int]:
    """(bytes the loss region held at its peak, the planner's term): the 4.38.2 lines, under a Trainer."""
    torch = pytest.importorskip("torch")
    from torch._subclasses.fake_tensor import FakeTensorMode

    from swiftplan.executors.trace_memory import MemoryTracker

    def forward(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = torch.nn.functional.linear(hidden, weight)  # self.lm_head(hidden_states)
        logits = logits.float()
        shift_logits = logits[..., :-1, :].contiguous()
        shift_labels = labels[..., 1:].contiguous()
        loss_fct = torch.nn.CrossEntropyLoss()
        shift_logits = shift_logits.view(-1, V)
        shift_labels = shift_labels.view(-1)
        return loss_fct(shift_logits, shift_labels)  # the output (with `logits`) is dropped by the caller

    with FakeTensorMode():
        tracker = MemoryTracker(round_bytes=1)
        with tracker:
            hidden = torch.empty(batch, seq, H, dtype=torch.bfloat16, requires_grad=True)
            weight = torch.empty(V, H, dtype=torch.bfloat16)
            labels = torch.zeros(batch, seq, dtype=torch.long)
            base = tracker.live_bytes
            tracker.start_measuring()
            forward(hidden, weight, labels).backward()
            peak = tracker.peak_bytes - base
    return peak, _term("full_legacy", batch, seq)


@pytest.mark.parametrize(("batch", "seq"), [(2, 256), (1, 1024), (4, 64)])
def test_legacy_term_matches_the_replayed_code(batch: int, seq: int) -> None:
    traced, term = _replay_legacy(batch, seq)
    # Beyond the vocab-sized tensors the code holds the shifted int64 labels (8 B per position) and two
    # fp32 scalars; nothing else.
    assert 0 <= traced - term <= 8 * batch * seq + 16, (traced, term)


def test_cli_accepts_full_legacy_and_names_its_source() -> None:
    result = run_cli("estimate", "Qwen/Qwen2.5-7B", "--gpus", "rtx4090", "--json", "--loss", "full_legacy")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert "loss" in out["runtime"]["overridden"]
    logits = next(t for t in out["terms"] if t["name"] == "logits")
    assert "transformers 4.38.2" in logits["source"] and "modeling_llama.py" in logits["source"]
    assert "transformers < 4.46" in logits["formula"]
    full = run_cli("estimate", "Qwen/Qwen2.5-7B", "--gpus", "rtx4090", "--json", "--loss", "full")
    assert json.loads(full.output)["per_device"]["logits"] != out["per_device"]["logits"]


def test_bad_loss_value_lists_every_valid_one() -> None:
    result = run_cli("estimate", "Qwen/Qwen2.5-7B", "--gpus", "rtx4090", "--loss", "legacy")
    assert result.exit_code != 0
    text = " ".join(result.output.split())
    assert (
        "Unknown --loss 'legacy'; valid values are: full, chunked, fused_linear, fused_head, full_legacy."
        in text
    )
    assert "Traceback" not in result.output
