"""bitsandbytes 4-bit bases traced for real (executors/trace_quant.py): transformers' quantizer, bitsandbytes'
quantize_4bit and MatMul4Bit, peft's 4-bit LoRA layers and k-bit preparation, over fake tensors, against the
planner's QLoRA terms."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
bnb = pytest.importorskip("bitsandbytes")

from swiftplan.executors.trace import trace_training, training_rig  # noqa: E402
from swiftplan.executors.trace_memory import MemoryTracker  # noqa: E402
from swiftplan.executors.trace_quant import CudaDequantizingGemm, QuantBase, fake_quantize  # noqa: E402
from swiftplan.executors.verify import verify_training  # noqa: E402
from swiftplan.planner.model_catalog import catalog_spec  # noqa: E402
from swiftplan.planner.model_spec import spec_from_hf_config  # noqa: E402
from swiftplan.planner.setup import LoraSetup, RuntimeKnobs, TrainSetup  # noqa: E402
from tests.bad_input_support import run_cli  # noqa: E402

TWO = spec_from_hf_config(
    dict(catalog_spec("meta-llama/Llama-2-7b-hf").hf_config) | {"num_hidden_layers": 2},
    name="llama-2-7b-2-layers",
)
"""Llama-2-7B's widths with two blocks: every quantized shape of the real model, traced in seconds."""


def _rows(**setup: object) -> dict[str, tuple[int, int]]:
    base = {"method": "qlora", "quant": "nf4", "precision": "bf16", "seq_len": 256, "grad_ckpt": True,
            "lora": LoraSetup(rank=16, targets=("all-linear",), dropout=0.0),
            "runtime": RuntimeKnobs(name="hf", loss="full", optimizer_impl="fused")}  # fmt: skip
    comparison = verify_training(TWO, TrainSetup(**(base | setup)))  # type: ignore[arg-type]
    return {row.name: (row.estimate, row.traced) for row in comparison.rows}


@pytest.mark.parametrize(
    "setup",
    [
        {},
        {"double_quant": False},
        {"kbit_upcast": True},
        {"kbit_upcast": True, "grad_ckpt": False, "precision": "fp16"},
        {"quant": "fp4", "grad_ckpt": False},
        {"method": "lora", "quant": "int8"},
        {"method": "lora", "quant": "int8", "kbit_upcast": True, "grad_ckpt": False},
    ],
)
def test_qlora_terms_match_the_real_bitsandbytes_and_peft_code(setup: dict[str, object]) -> None:
    """The packed 4-bit weights with their absmax statistics (nested or not), the fp32 upcast of the rest, and
    the peak of peft's bitsandbytes LoRA layers over MatMul4Bit / MatMul8bitLt (the dequantized weight in backward
    included) within 1 % of the trace; the step's own tensors (activations and logits: on this two-block model
    the two sides may put the peak at different moments of nearly the same height) within 6 %."""
    rows = _rows(**setup)
    for term in ("weights", "adapters", "peak_allocated"):
        estimate, traced = rows[term]
        assert estimate == pytest.approx(traced, rel=0.01), term
    step = [sum(rows.get(term, (0, 0))[side] for term in ("activations", "logits")) for side in (0, 1)]
    assert step[0] == pytest.approx(step[1], rel=0.06)


def test_a_recomputed_block_holds_one_dequantized_weight() -> None:
    """At 256 tokens the recomputed block's backward sets the peak, with the MLP's dequantized weight in it:
    the estimate that counts it agrees with the trace, one without it would be 86 MiB short."""
    rows = _rows()
    estimate, traced = rows["peak_allocated"]
    assert estimate == pytest.approx(traced, rel=0.005)
    assert traced - (estimate - 4096 * 11008 * 2) > 0.5 * 4096 * 11008 * 2


def test_the_upcast_makes_the_stream_fp32() -> None:
    """peft's k-bit preparation (run, not assumed) doubles the saved activations of a bf16 stream."""
    plain, upcast = _rows(grad_ckpt=False), _rows(grad_ckpt=False, kbit_upcast=True)
    assert upcast["activations"][1] > 1.5 * plain["activations"][1]
    assert upcast["weights"][1] > plain["weights"][1]  # embeddings, LM head and norms in fp32


def test_double_quantization_shrinks_the_traced_statistics() -> None:
    """bnb_4bit_use_double_quant: the fp32 absmax per 64 weights becomes one byte (plus blocks of 256)."""
    nested, plain = _rows()["weights"][1], _rows(double_quant=False)["weights"][1]
    quantized = sum(module.weight.numel() for name, module in _meta_linears() if not name.endswith("lm_head"))
    assert plain - nested == pytest.approx(quantized / 64 * 3, rel=0.02)


def _meta_linears() -> list[tuple[str, torch.nn.Linear]]:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**dict(TWO.hf_config))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def test_a_4bit_matmul_holds_its_dequantized_weight_while_it_multiplies() -> None:
    """The fused gemm_4bit op is run as CUDA's unfused path: a compute-dtype copy of the weight is alive
    during the forward matmul, next to its input and output."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    layer = bnb.nn.Linear4bit(
        4096, 11008, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4", device="meta"
    )
    mode = FakeTensorMode(allow_non_fake_inputs=False)
    fake_quantize(layer, mode, torch.device("cpu"))
    tracker = MemoryTracker()
    with mode, tracker, CudaDequantizingGemm():
        x = torch.empty((1, 512, 4096), dtype=torch.bfloat16)
        before = tracker.live_bytes
        tracker.start_measuring()
        y = layer(x)
        assert y.shape == (1, 512, 11008)
    dequantized = 4096 * 11008 * 2
    assert tracker.peak_bytes - before >= dequantized + y.numel() * 2


def test_a_quantized_base_is_trained_through_lora_only() -> None:
    with (
        pytest.raises(ValueError, match="method must be 'lora'"),
        training_rig(
            dict(TWO.hf_config), method="full", precision="bf16", quant_base=QuantBase(quant_type="nf4")
        ),
    ):
        pass


def test_trace_notes_say_what_ran() -> None:
    result = trace_training(
        dict(TWO.hf_config), method="lora", precision="bf16", seq=64, steps=1,
        quant_base=QuantBase(quant_type="fp4", kbit_upcast=True),
    )  # fmt: skip
    notes = " ".join(result.notes)
    assert "bitsandbytes 4-bit (fp4" in notes and "prepare_model_for_kbit_training" in notes


def test_verify_cli_traces_an_fp4_base() -> None:
    result = run_cli(
        "verify", "meta-llama/Llama-2-7b-hf", "--method", "qlora", "--quant", "fp4", "--seq", "128", "--json"
    )
    assert result.exit_code == 0, result.output
    terms = {t["name"]: t for t in json.loads(result.output)["terms"]}
    assert abs(terms["weights"]["error"]) < 0.01
    assert abs(terms["peak_allocated"]["error"]) < 0.02


def test_dpo_on_a_4bit_base_matches_trls_own_loss_code() -> None:
    """TRL's DPO step (reference pass with the adapters disabled) over bitsandbytes' 4-bit layers: the weights
    and the peak within 1 % of the trace, every other term and moment within 2 % (the logits' -1.6 % at this
    shape is the unquantized model's too)."""
    from swiftplan.executors.verify_objective import verify_objective
    from swiftplan.planner.objective import ObjectiveSetup

    setup = TrainSetup(
        method="qlora", quant="nf4", seq_len=256, grad_ckpt=True, lora=LoraSetup(rank=16, dropout=0.0),
        runtime=RuntimeKnobs(name="hf", loss="full", optimizer_impl="fused"),
        objective=ObjectiveSetup(kind="dpo", prompt_len=64),
    )  # fmt: skip
    comparison = verify_objective(TWO, setup)
    assert any("bitsandbytes 4-bit (nf4" in note for note in comparison.notes)  # shown by verify's output
    for row in comparison.rows:
        bound = 0.01 if row.name in ("weights", "peak_allocated") else 0.02
        assert row.error is None or abs(row.error) < bound, row


def test_verify_json_stdout_is_json_alone() -> None:
    """What the traced libraries log (DeepSpeed's accelerator warning, on stdout, when TRL imports it) goes to
    stderr: --json prints one JSON object."""
    result = subprocess.run(
        [sys.executable, "-c", "from swiftplan.cli import main; main()", "verify", "Qwen/Qwen2.5-0.5B",
         "--task", "dpo", "--seq", "256", "--json"],
        capture_output=True, text=True, timeout=300, env={"SWIFTPLAN_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["model"] == "Qwen/Qwen2.5-0.5B"


def test_an_int8_base_keeps_its_linears_inputs_through_checkpointing() -> None:
    """bitsandbytes' MatMul8bitLt stores its input on the autograd context, which checkpointing's saved-tensor
    hooks never see: with every block checkpointed, each still keeps its attention input and output, its MLP
    input and its SwiGLU product (3 × 4096 + 11008 values per token in bf16 for Llama-2-7B), and the planner
    counts them."""
    estimate, traced = _rows(method="lora", quant="int8")["peak_allocated"]
    kept = 2 * 256 * (3 * 4096 + 11008) * 2  # two blocks
    assert estimate == pytest.approx(traced, rel=0.005)
    # without the term the estimate would be short by most of it
    assert traced - (estimate - kept) > 0.5 * kept
