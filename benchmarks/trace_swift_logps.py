"""Live bytes of ms-swift 4.6's DPO log-prob path on fake tensors, per scored token × vocabulary entry.

ms-swift 4.6 (swift/rlhf_trainers/dpo_trainer.py `concatenated_forward`) pops the labels, so the model's
forward returns compute-dtype (bf16) logits, and scores them with TRL 0.29.1's `selective_log_softmax`
(swift/rlhf_trainers/rlhf_mixin.py:169), whose bf16 path runs `log_softmax` one sequence at a time
(trl 0.29.1 trainer/utils.py:558-564); the reference pass runs after the policy forward, without grad
(dpo_trainer.py `compute_ref_log_probs`). This replays exactly that path (LM head matmul, per-row
log_softmax + gather, the sigmoid DPO loss with rpo_alpha's NLL, backward) on fake tensors under
swiftplan's MemoryTracker and prints the bytes alive per scored token × vocab at three moments, to set
against the planner's `logits` and reference-forward figures (objective_accuracy.md, findings).

    python benchmarks/trace_swift_logps.py        # needs torch (the [trace] extra); a second on CPU
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from swiftplan.executors.trace_memory import MemoryTracker


def selective_log_softmax_0291(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """trl 0.29.1 trainer/utils.py:525 `selective_log_softmax`, its bf16 branch (one row at a time)."""
    rows = [
        F.log_softmax(row, dim=-1).gather(dim=-1, index=labels.unsqueeze(-1))
        for row, labels in zip(logits, index, strict=True)
    ]
    return torch.stack(rows).squeeze(-1)


def trace(
    sequences: int = 2, tokens: int = 2048, hidden: int = 3584, vocab: int = 152064
) -> dict[str, float]:
    """Bytes per scored token × vocab alive after the policy forward, at the reference pass's peak and at
    the backward's peak (one pair of Qwen2.5-7B sequences by default; the ratios do not depend on it)."""
    out: dict[str, int] = {}
    with FakeTensorMode():
        tracker = MemoryTracker()
        with tracker:
            head = torch.empty(vocab, hidden, dtype=torch.bfloat16)
            policy_hidden = torch.empty(sequences, tokens, hidden, dtype=torch.bfloat16, requires_grad=True)
            labels = torch.zeros(sequences, tokens, dtype=torch.long)
            base = tracker.live_bytes
            tracker.start_measuring()
            logits = policy_hidden @ head.t()
            logps = selective_log_softmax_0291(logits, labels)
            _ = logits.mean(-1)  # mean_all_logits (rlhf_mixin.py:161): saves nothing large
            chosen = logps.sum(-1)
            out["after policy forward"] = tracker.live_bytes - base
            tracker.start_measuring()
            with torch.no_grad():
                ref_hidden = torch.empty(sequences, tokens, hidden, dtype=torch.bfloat16)
                ref = selective_log_softmax_0291(ref_hidden @ head.t(), labels).sum(-1)
                del ref_hidden
            out["reference forward peak"] = tracker.peak_bytes - base
            margin = (chosen[0] - chosen[1]) - (ref[0] - ref[1])
            loss = -F.logsigmoid(0.1 * margin) + 0.1 * -logps[0].mean()
            tracker.start_measuring()
            loss.backward()
            out["backward peak"] = tracker.peak_bytes - base
    scored = sequences * tokens * vocab
    return {moment: value / scored for moment, value in out.items()}


def main() -> int:
    for moment, per in trace().items():
        print(f"{moment:24s} {per:5.2f} bytes per scored token x vocab")
    return 0


if __name__ == "__main__":
    sys.exit(main())
