"""Live bytes of transformers' causal-LM loss before and after its loss refactor, against the planner.

transformers < 4.46 (4.38.2 modeling_llama.py / modeling_qwen2.py `*ForCausalLM.forward`) upcast the
logits in forward (`logits = logits.float()`, kept in the returned output) and shifted them
(`shift_logits = logits[..., :-1, :].contiguous()`) before `CrossEntropyLoss`; 4.46.0 moved the loss into
`self.loss_function` (transformers/loss/loss_utils.py `ForCausalLMLoss`), and transformers 5 shifts the
labels by padding instead of shifting the logits. This runs the installed transformers' own
`LlamaForCausalLM` / `Qwen2ForCausalLM` (from a config, random init, bf16, real CPU tensors) through
forward + loss + backward under swiftplan's MemoryTracker and records the most bytes alive in the loss
region (from the LM head's input to the gradient of that input), in forward and in backward, under two
training loops:

- trainer: the model output is dropped before backward (transformers `Trainer.compute_loss` returns only
  the loss);
- keeps_output: the output (with its logits) stays alive through backward (AnswerDotAI/fsdp_qlora train.py
  @ e4968fd: `output = model(...)`, `loss.backward()`, `output = None` only after the step).

    python benchmarks/trace_legacy_loss.py --legacy-python /tmp/tf438/bin/python --legacy-python /tmp/tf448/bin/python
        # each legacy venv's transformers (4.38.2, 4.48.3) in a subprocess, this venv's (5.x) in-process, then
        # the planner's terms for the same shapes; prints the table of benchmarks/results/legacy_loss_trace.md
    python benchmarks/trace_legacy_loss.py --trace   # JSON of this interpreter's transformers only

A legacy venv: `python -m venv /tmp/tf438 && /tmp/tf438/bin/pip install torch==2.13.0 transformers==4.38.2`
(likewise /tmp/tf448 with 4.48.3), run with PYTHONPATH at the repository root (only
swiftplan.executors.trace_memory is imported there). The planner column is the loss implementation of that
version: full_legacy below 4.46, full from 4.46 on (4.46.0-4.48.x shift the fp32 logits inside
ForCausalLMLoss, which `full` does not model: the table shows what that costs).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

VOCAB = 32000
SHAPES = ((2, 256), (1, 1024))
"""(batch, seq) pairs traced; vocab 32000 (Llama 2)."""
ARCHS = ("llama", "qwen2")
LOOPS = ("trainer", "keeps_output")
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4,
        "num_key_value_heads": 2}  # fmt: skip
"""A one-block model: the loss region does not depend on the blocks, only on tokens × vocab."""


def trace_one(arch: str, batch: int, seq: int, loop: str) -> dict[str, int]:
    """Most bytes alive in the loss region in forward and in backward (exact, no allocator rounding)."""
    import torch
    import transformers

    from swiftplan.executors.trace_memory import MemoryTracker

    config_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }[arch]
    torch.manual_seed(0)
    model = model_cls(config_cls(vocab_size=VOCAB, tie_word_embeddings=False, **TINY)).to(torch.bfloat16)
    model.train()
    for p in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        p.requires_grad_(False)  # only the block trains: no vocab-sized weight gradient in the region
    ids = torch.randint(0, VOCAB, (batch, seq))

    class RegionTracker(MemoryTracker):
        """Also keeps, per phase, the most bytes alive in the "logits" category."""

        region: dict[str, int]

        def _grow(self, delta: int) -> None:
            super()._grow(delta)
            if self.phase is not None and delta > 0:
                live = self.live_by_category()["logits"]
                self.region[self.phase] = max(self.region.get(self.phase, 0), live)

    tracker = RegionTracker(round_bytes=1)
    tracker.region = {}
    head = model.get_output_embeddings()

    def before_head(_module: Any, args: tuple[Any, ...]) -> None:
        tracker.context_category = "logits"
        args[0].register_hook(lambda _grad: setattr(tracker, "context_category", "activations"))

    def after_model(_module: Any, _args: Any, _output: Any) -> None:
        tracker.context_category = "activations"

    head.register_forward_pre_hook(before_head)
    model.register_forward_hook(after_model)
    with tracker:
        tracker.classify([*model.parameters(), *model.buffers()], "weights")  # known before the step
        tracker.classify([ids], "activations")
        tracker.start_measuring()
        tracker.set_phase("forward")
        if loop == "trainer":
            loss = model(input_ids=ids, labels=ids).loss  # Trainer.compute_loss: the output is dropped
            output = None
        else:
            output = model(input_ids=ids, labels=ids)
            loss = output.loss
        tracker.set_phase("backward")
        tracker.context_category = "logits"
        loss.backward()
        tracker.set_phase(None)
        del output
    return {"forward": tracker.region["forward"], "backward": tracker.region["backward"]}


def trace_all() -> dict[str, Any]:
    """Every (arch, shape, loop) under this interpreter's transformers, with the versions."""
    import torch
    import transformers

    rows = [
        {"arch": arch, "batch": b, "seq": s, "loop": loop, **trace_one(arch, b, s, loop)}
        for arch in ARCHS
        for b, s in SHAPES
        for loop in LOOPS
    ]
    return {"transformers": transformers.__version__, "torch": torch.__version__, "rows": rows}


def planner_terms(batch: int, seq: int) -> dict[str, int]:
    """The planner's logits term for each loss implementation, for the tiny bf16 Llama."""
    from swiftplan.planner.activations import logits_bytes
    from swiftplan.planner.model_spec import spec_from_hf_config
    from swiftplan.planner.setup import LOSS_IMPLS, RuntimeKnobs, TrainSetup

    spec = spec_from_hf_config({"model_type": "llama", "vocab_size": VOCAB, **TINY}, name="tiny-llama")
    return {
        loss: logits_bytes(
            spec,
            TrainSetup(
                method="full",
                precision="bf16",
                micro_batch=batch,
                seq_len=seq,
                runtime=RuntimeKnobs(loss=loss),
            ),  # fmt: skip
        )
        for loss in LOSS_IMPLS
        if loss in ("full", "full_legacy")
    }


def report(results: list[dict[str, Any]]) -> str:
    """Markdown: each traced row next to the planner's term for the loss implementation of its version."""
    lines = [
        "| transformers | arch | batch × seq | loop | forward peak | backward peak | max | planner term | "
        "planner / traced |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        legacy = tuple(int(x) for x in res["transformers"].split(".")[:2]) < (4, 46)
        loss = "full_legacy" if legacy else "full"
        for r in res["rows"]:
            tv = r["batch"] * r["seq"] * VOCAB
            term = planner_terms(r["batch"], r["seq"])[loss]
            peak = max(r["forward"], r["backward"])
            lines.append(
                f"| {res['transformers']} | {r['arch']} | {r['batch']} × {r['seq']} | {r['loop']} | "
                f"{r['forward']:,} ({r['forward'] / tv:.3f} B/logit) | {r['backward']:,} "
                f"({r['backward'] / tv:.3f}) | {peak / tv:.3f} | {term:,} `{loss}` | {term / peak:.4f} |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", action="store_true", help="print this interpreter's trace as JSON")
    parser.add_argument(
        "--legacy-python",
        action="append",
        default=[],
        help="interpreter with another transformers installed (repeatable), e.g. 4.38.2 or 4.48.3",
    )
    args = parser.parse_args()
    if args.trace:
        print(json.dumps(trace_all()))
        return 0
    results = []
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root}
    for python in args.legacy_python:
        done = subprocess.run(
            [python, __file__, "--trace"], capture_output=True, text=True, check=True, env=env
        )
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    results.append(trace_all())
    print(f"traced {datetime.date.today().isoformat()}; torch {results[-1]['torch']}\n")
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
