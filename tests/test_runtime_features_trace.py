"""Runtime features against the real code on fake tensors: selective checkpointing (transformers' own
every_n_layers, and torchtune's rule with torch's checkpoint_wrapper on a transformers model) and activation offloading (torchtune's
pack rule with torch's save_on_cpu copy) through `verify_training`; torchao's Float8Linear backward and
NF4Tensor layout against their terms."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from swiftplan.executors.verify import verify_training  # noqa: E402
from swiftplan.planner.model_catalog import catalog_spec  # noqa: E402
from swiftplan.planner.model_spec import spec_from_hf_config  # noqa: E402
from swiftplan.planner.runtime_features import float8_linear_backward_bytes  # noqa: E402
from swiftplan.planner.setup import LoraSetup, RuntimeKnobs, TrainSetup  # noqa: E402
from swiftplan.planner.weights import torchao_nf4_bytes  # noqa: E402

SIX = spec_from_hf_config(
    dict(catalog_spec("Qwen/Qwen2.5-0.5B").hf_config) | {"num_hidden_layers": 6}, name="qwen2.5-0.5b-6-layers"
)
"""Qwen2.5-0.5B's widths with six blocks: every 2nd and 3rd block patterns, traced in seconds."""


def _rows(method: str, *, grad_ckpt: bool, **knobs: object) -> dict[str, tuple[int, int]]:
    lora = LoraSetup(rank=16, dropout=0.0) if method == "lora" else None
    setup = TrainSetup(
        method=method, lora=lora, seq_len=512, grad_ckpt=grad_ckpt, runtime=RuntimeKnobs(**knobs)
    )  # type: ignore[arg-type]
    comparison = verify_training(SIX, setup)
    return {row.name: (row.estimate, row.traced) for row in comparison.rows}


@pytest.mark.parametrize(
    ("method", "every", "position"),
    [("lora", 2, "last"), ("lora", 3, "last"), ("full", 2, "last"), ("lora", 4, "last"), ("lora", 2, "first"),
     ("lora", 4, "first"), ("full", 3, "first")],
)  # fmt: skip
def test_selective_checkpointing_matches_the_trace(method: str, every: int, position: str) -> None:
    """Every k-th block wrapped, the others keeping their saved tensors: activations within 3 % of the
    trace (the plain blocks carry the planner's +1-2 % of LoRA blocks without checkpointing) and the peak
    within 1 % (torchtune's rule, torch's checkpoint_wrapper: the last block of each k; transformers' own
    every_n_layers: the first)."""
    rows = _rows(method, grad_ckpt=True, ckpt_every=every, ckpt_position=position)
    estimate, traced = rows["activations"]
    assert estimate == pytest.approx(traced, rel=0.03)
    assert rows["peak_allocated"][0] == pytest.approx(rows["peak_allocated"][1], rel=0.01)


def test_selective_checkpointing_sits_between_none_and_every_block() -> None:
    every = _rows("lora", grad_ckpt=True)["activations"][1]
    second = _rows("lora", grad_ckpt=True, ckpt_every=2)["activations"][1]
    none = _rows("lora", grad_ckpt=False)["activations"][1]
    assert every < second < none


@pytest.mark.parametrize(
    ("method", "grad_ckpt", "every"), [("lora", True, 1), ("lora", False, 1), ("full", True, 2)]
)
def test_activation_offloading_bounds_the_trace(method: str, grad_ckpt: bool, every: int) -> None:
    """Offloaded saved tensors: the term is an upper bound of what stays on the device at the loss (the
    last 5 offloaded tensors), and the peak is within 3 % of the trace."""
    rows = _rows(method, grad_ckpt=grad_ckpt, ckpt_every=every, activation_offload=True)
    estimate, traced = rows["activations"]
    assert traced <= estimate
    assert rows["peak_allocated"][0] == pytest.approx(rows["peak_allocated"][1], rel=0.03)
    kept = _rows(method, grad_ckpt=grad_ckpt, ckpt_every=every)["peak_allocated"]
    assert rows["peak_allocated"][1] <= kept[1] and rows["peak_allocated"][0] <= kept[0]


def _float8_backward_extra(tokens: int, fin: int, fout: int) -> int:
    """Peak bytes a Linear's backward allocates, torchao Float8Linear minus a bf16 Linear, on fake tensors."""
    from torch import nn
    from torch._subclasses.fake_tensor import FakeTensorMode

    from swiftplan.executors.trace_memory import MemoryTracker

    float8 = pytest.importorskip("torchao.float8")
    extra = []
    for convert in (False, True):
        with FakeTensorMode():
            model = nn.Sequential(nn.Linear(fin, fout, bias=False, dtype=torch.bfloat16))
            if convert:
                float8.convert_to_float8_training(model, config=float8.Float8LinearConfig())
            x = torch.randn(tokens, fin, dtype=torch.bfloat16, requires_grad=True)
            grad = torch.randn(tokens, fout, dtype=torch.bfloat16)
            with MemoryTracker(round_bytes=1) as tracker:
                tracker.start_measuring()
                y = model(x)
                start, tracker.peak_bytes = tracker.live_bytes, 0
                y.backward(grad)
                extra.append(tracker.peak_bytes - start)
    return extra[1] - extra[0]


@pytest.mark.parametrize(
    ("tokens", "fin", "fout"), [(1024, 512, 2048), (1024, 2048, 512), (4096, 1024, 1024)]
)
def test_float8_backward_term_matches_torchaos_linear(tokens: int, fin: int, fout: int) -> None:
    traced = _float8_backward_extra(tokens, fin, fout)
    assert float8_linear_backward_bytes(tokens, fin, fout) == pytest.approx(traced, rel=0.2)


@pytest.mark.parametrize("shape", [(256, 512), (896, 896), (4864, 896), (128, 896)])
def test_torchao_nf4_bytes_are_torchaos_own(shape: tuple[int, int]) -> None:
    """Every tensor of torchao's NF4Tensor, as torchtune quantizes a bf16 base (to_nf4 defaults)."""
    quantization = pytest.importorskip("torchao.quantization")
    nf4 = quantization.to_nf4(torch.randn(*shape, dtype=torch.bfloat16))
    stored = sum(
        getattr(nf4, name).numel() * getattr(nf4, name).element_size()
        for name in ("quantized_data", "quantized_scalers", "quantization_factor", "scaler_mean", "nf4")
    )
    assert torchao_nf4_bytes(shape[0] * shape[1]) == stored
