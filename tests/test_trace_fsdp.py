"""FSDP against the real code: torch's FSDP2 `fully_shard` runs as rank 0 of 2 or 4 on torch's fake process
group over the tracer's fake tensors (`executors/trace_fsdp.py`), and `verify` lines its live bytes up with
the planner's FSDP terms (planner/fsdp_memory.py) moment by moment.

Two tiny models from their configs (no weights: the tracer builds them on the meta device): a Qwen2 with tied
embeddings whose root unit (embedding, LM head) is five times a block, and a Llama whose root is about three
blocks — so each of FSDP's moments sets the peak somewhere in the table below.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from swiftplan.executors.trace_fsdp import (  # noqa: E402
    FsdpLayout,
    FsdpTraceResult,
    fake_process_group,
    trace_fsdp_training,
)
from swiftplan.executors.verify import Comparison, verify_training  # noqa: E402
from swiftplan.planner.architecture import (  # noqa: E402
    embedding_params,
    final_norm_params,
    layer_params,
    total_params,
)
from swiftplan.planner.fsdp_memory import fsdp_gathered  # noqa: E402
from swiftplan.planner.model_spec import spec_from_hf_config  # noqa: E402
from swiftplan.planner.setup import LoraSetup, RuntimeKnobs, TrainSetup  # noqa: E402
from tests.bad_input_support import assert_refused, run_cli  # noqa: E402

_COMMON = {"num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
           "max_position_embeddings": 2048, "rope_theta": 10000.0}  # fmt: skip
TIED = {"model_type": "qwen2", "hidden_size": 128, "intermediate_size": 352, "vocab_size": 8192,
        "tie_word_embeddings": True, "rms_norm_eps": 1e-6, **_COMMON}  # fmt: skip
UNTIED = {"model_type": "llama", "hidden_size": 256, "intermediate_size": 688, "vocab_size": 2048,
          "tie_word_embeddings": False, "rms_norm_eps": 1e-5, **_COMMON}  # fmt: skip
SPECS = {
    "tied": spec_from_hf_config(TIED, name="tiny-qwen2-tied"),
    "untied": spec_from_hf_config(UNTIED, name="tiny-llama"),
}

PEAK_TOLERANCE = 0.025
"""Largest |error| of the planner's peak against the trace in the table (measured: -0.49 % to +2.08 %). The
residue comes from moments the planner adds up whole that overlap only in part in the real code: a block's
gradients and the previous block's reduce-scatter input beside the activations still saved (+1.1 to +2.1 %,
full fine-tuning of the untied model at 32 tokens), and the CUDA allocator's 512-byte rounding of the tiny
models' many small tensors (-0.03 to -0.49 %). At 512 tokens, where the loss sets the peak, every case is
within 0.09 %."""
LOSS_TOLERANCE = 0.002
SHARD_GRAD_OP_EXCESS = 0.04
"""shard_grad_op at the loss: the last block's all-gather buffer is alive until the root's forward (the loss
included) ends, the backward's larger logits after it is freed; the planner has one logits figure (the
backward's, 12 B per token × vocab) and adds the buffer to it, above the trace (+3.1 % full, +3.3 % LoRA at 256
tokens; the forward's logits are 10 B per token × vocab)."""


def _setup(method: str, *, seq: int, offload: bool = False, sharding: str = "full_shard", group: int = 0,
           grad_ckpt: bool = False) -> TrainSetup:  # fmt: skip
    lora = LoraSetup(rank=8, dropout=0.0) if method == "lora" else None
    knobs = RuntimeKnobs(fsdp="fsdp2", fsdp_sharding=sharding, fsdp_shard_group=group, fsdp_cpu_offload=offload)  # fmt: skip
    return TrainSetup(method=method, lora=lora, seq_len=seq, grad_ckpt=grad_ckpt, runtime=knobs)


def _rows(comparison: Comparison) -> dict[str, tuple[int, int]]:
    return {row.name: (row.estimate, row.traced) for row in comparison.rows}


# (model, method, seq) -> the planner's peak moment; every case runs on 2 and 4 ranks, with and without CPU offload
MOMENTS = {
    # the root's whole gradients: the LM head's and the embedding's in autograd's input buffer, their sum
    ("tied", "full", 32): "end of backward",
    ("tied", "lora", 32): "loss and backward start",
    # the LM head's whole gradient held through the blocks' backward, a block's and the previous reduce input
    ("untied", "full", 32): "FSDP block backward",
    # the root, the last block and its all-gather buffer, the previous block's buffer at its copy-out
    ("untied", "lora", 32): "FSDP last block forward",
    ("tied", "full", 512): "loss and backward start",
    ("tied", "lora", 512): "loss and backward start",
    ("untied", "full", 512): "loss and backward start",
    ("untied", "lora", 512): "loss and backward start",
}  # fmt: skip


@pytest.mark.parametrize("offload", [False, True], ids=["on-device", "cpu-offload"])
@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize(
    ("model", "method", "seq"), list(MOMENTS), ids=["-".join(map(str, k)) for k in MOMENTS]
)
def test_planner_peak_agrees_with_fsdp2_on_a_fake_process_group(model: str, method: str, seq: int, world: int, offload: bool) -> None:  # fmt: skip
    comparison = verify_training(SPECS[model], _setup(method, seq=seq, offload=offload), world_size=world)
    assert comparison.estimate_phase == MOMENTS[(model, method, seq)]
    rows = _rows(comparison)
    tolerance = LOSS_TOLERANCE if seq == 512 else PEAK_TOLERANCE
    assert comparison.peak.error is not None and abs(comparison.peak.error) <= tolerance, comparison.rows
    # this rank's shards and FSDP's gathered units, row by row (the tiny tensors' 512-B rounding aside)
    for name in ("weights", "adapters", "gathered"):
        estimate, traced = rows.get(name, (0, 0))
        assert estimate == pytest.approx(traced, rel=0.01, abs=16 * 1024), name
    assert any(f"rank 0 of {world}" in note for note in comparison.notes)


def test_shards_are_this_ranks_and_cpu_offload_leaves_them_on_the_host() -> None:
    def trace(world: int, offload: bool) -> FsdpTraceResult:
        layout = FsdpLayout(world_size=world, cpu_offload=offload)
        return trace_fsdp_training(UNTIED, layout=layout, method="full", precision="bf16", seq=64)

    two, four, offloaded = trace(2, False), trace(4, False), trace(2, True)
    weights = total_params(SPECS["untied"]) * 2  # bf16; each rank holds 1/N (each shard rounded to 512 B)
    assert two.trace.at_peak["weights"] == pytest.approx(weights / 2, rel=0.005)
    assert four.trace.at_peak["weights"] == pytest.approx(weights / 4, rel=0.005)
    at_peak = offloaded.trace.at_peak
    assert at_peak["weights"] == at_peak["optimizer"] == 0
    assert offloaded.trace.phase_peaks["optimizer"] < 64 * 1024  # stepped on the host
    assert offloaded.trace.peak_bytes < two.trace.peak_bytes
    # the gathered units are the same with and without offload: the root and the block all-gathered again
    held = fsdp_gathered(SPECS["untied"], _setup("full", seq=64), range(4), 2)
    assert offloaded.gathered_at_peak == two.gathered_at_peak
    root = (2 * embedding_params(SPECS["untied"]) + final_norm_params(SPECS["untied"])) * 2
    assert held.root == root and held.forward_start == 2 * (held.root + held.block)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_shard_grad_op_keeps_every_unit_gathered_and_hybrid_shards_within_its_group(method: str) -> None:
    spec = SPECS["untied"]
    grad_op = verify_training(spec, _setup(method, seq=256, sharding="shard_grad_op"), world_size=4)
    full = verify_training(spec, _setup(method, seq=256), world_size=4)
    hybrid = verify_training(spec, _setup(method, seq=256, sharding="hybrid_shard", group=2), world_size=4)
    # shard_grad_op: every unit gathered from forward to backward, beside the same shards as full_shard
    assert _rows(grad_op)["weights"] == _rows(full)["weights"]
    assert _rows(grad_op)["gathered"][1] > _rows(full)["gathered"][1] + 2 * layer_params(spec, 0) * 2
    assert 0 <= grad_op.peak.error <= SHARD_GRAD_OP_EXCESS, grad_op.rows
    # hybrid_shard over groups of 2 holds the shards of 2 ranks, not 4
    assert _rows(hybrid)["weights"][1] == pytest.approx(2 * _rows(full)["weights"][1], rel=0.01)
    for comparison in (full, hybrid):
        assert abs(comparison.peak.error) <= LOSS_TOLERANCE, comparison.rows


@pytest.mark.parametrize(("model", "seq", "offload", "moment"), [
    ("tied", 512, False, "loss and backward start"),
    ("untied", 512, False, "recomputation in backward"),  # measured +0.28 %
    ("untied", 32, True, "recomputation in backward"),  # measured -1.46 %
])  # fmt: skip
def test_checkpointed_blocks_recompute_under_fsdp(model: str, seq: int, offload: bool, moment: str) -> None:
    """Full fine-tuning with every block checkpointed: a block's gradients appear as its recomputed tensors are
    freed, so the planner counts the larger of the two beside the gathered units and the LM head's gradient."""
    comparison = verify_training(
        SPECS[model], _setup("full", seq=seq, offload=offload, grad_ckpt=True), world_size=2
    )
    assert comparison.estimate_phase == moment
    assert comparison.peak.error is not None and abs(comparison.peak.error) <= 0.015, comparison.rows
    assert any("checkpointing" in note for note in comparison.notes)


def test_the_fake_process_group_is_released_and_never_stacked() -> None:
    import torch.distributed as dist

    trace_fsdp_training(TIED, layout=FsdpLayout(world_size=2), method="lora", precision="bf16", seq=16)
    assert not dist.is_initialized()
    with fake_process_group(2), pytest.raises(RuntimeError, match="already exists"):
        trace_fsdp_training(TIED, layout=FsdpLayout(world_size=2), method="lora", precision="bf16", seq=16)
    assert not dist.is_initialized()


def test_verify_cli_traces_fsdp2_on_the_gpus_it_is_given(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps(UNTIED))
    result = run_cli("verify", str(config), "--method", "full", "--seq", "512", "--fsdp", "fsdp2",
                     "--fsdp-cpu-offload", "--gpus", "4xH100", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    terms = {t["name"]: t for t in payload["terms"]}
    assert "gathered" in terms and abs(terms["peak_allocated"]["error"]) <= LOSS_TOLERANCE
    assert "weights" not in terms  # the shards are in host RAM under CPU offload
    assert any("rank 0 of 4" in n and "CPUOffloadPolicy" in n for n in payload["notes"])


@pytest.mark.parametrize(
    ("args", "fragments"),
    [(("--fsdp", "fsdp1", "--gpus", "2xH100"), ["--fsdp fsdp1", "FlatParameter"]),
     (("--fsdp", "fsdp2", "--gpus", "H100"), ["--fsdp fsdp2 needs --gpus", "got 1"]),
     (("--fsdp", "fsdp2", "--gpus", "4xH100", "--fsdp-sharding", "hybrid_shard", "--fsdp-shard-group", "3"),
      ["--fsdp-shard-group 3 must divide the 4 devices"]),
     (("--fsdp", "fsdp2", "--gpus", "2xH100", "--task", "dpo"), ["FSDP is traced for SFT"]),
     (("--fsdp", "fsdp2", "--gpus", "2xH100", "--precision", "amp-bf16"), ["MixedPrecisionPolicy"])],
    ids=["fsdp1", "one-gpu", "shard-group", "dpo", "amp"],
)  # fmt: skip
def test_verify_refuses_the_fsdp_set_ups_it_cannot_trace(tmp_path: Path, args: tuple[str, ...], fragments: list[str]) -> None:  # fmt: skip
    config = tmp_path / "config.json"
    config.write_text(json.dumps(TIED))
    assert_refused(run_cli("verify", str(config), "--seq", "64", *args), *fragments)
