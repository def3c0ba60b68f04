"""The moment a DoRA Linear's forward sets the peak without checkpointing: the last block's down_proj or up_proj
rebuilding and combining its adapted weight (planner/dora.py) beside every saved tensor made before it.

down_proj is the block's last Linear: everything the block saves exists but its own lora_B output (and, with dropout,
DoRA's base output), which `dora.dora_forward_bytes` leaves out of its norm moment. up_proj comes before the SwiGLU
product's saved tensors: its own output (kept by the product), down_proj's LoRA and DoRA tensors do not exist yet.
Both hold the forward's locals: the residual and the MLP input unless saved, down_proj's input product and its
adapter-dtype cast beside dropout (`recompute.down_input_locals`), and with dropout the base layer's own output, which
DoRA does not keep (it multiplies the dropped input again). gate_proj, before up_proj, is bounded by up_proj's moment;
the attention's Linears are counted with down_proj's locals and nothing taken off: an upper bound, smaller than the
MLP's moments whenever the MLP is wrapped. Traced with peft 0.21.2's DoRA on two blocks of Llama-3.1-8B (tests/test_dora.py).
"""

from __future__ import annotations

from swiftplan.planner.architecture import Linear
from swiftplan.planner.dora import dora_forward_bytes, dora_linears, dora_saved_bytes_of
from swiftplan.planner.dtypes import activation_dtype_bytes, adapter_dtype, dtype_bytes
from swiftplan.planner.lora_saves import linear_saves
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.recompute import dense_layout, down_input_locals, mlp_forward_locals, stream_bytes
from swiftplan.planner.setup import TrainSetup

DORA_FORWARD = "a DoRA Linear's forward"
"""The moment the last block's largest DoRA Linear rebuilds and combines its adapted weight."""


def dora_forward_moment_bytes(
    spec: ModelSpec, setup: TrainSetup, tokens: int, *, tp: int = 1, recomputed: bool = False
) -> int | None:
    """Without checkpointing, the most the last block's forward holds beyond every block's saved tensors (its own
    included) at one of its DoRA Linears (module docstring); None without DoRA. Counted whole, then per
    tensor-parallel rank."""
    linears = dora_linears(spec, setup, spec.num_layers - 1)
    if not linears:
        return None
    locals_ = down_input_locals(spec, setup, tokens, tp=1) or 0
    pair = dense_layout(spec, setup)
    after_up = 0 if pair is None else _made_after_up(spec, setup, *pair, tokens, down_locals=locals_)
    moments = []
    for linear in linears:
        alive = _own_output(linear, setup, tokens) + locals_
        if pair is not None and linear.block == "mlp" and linear != pair[1]:
            # gate_proj (before up_proj) holds less than up_proj's moment; that moment bounds it
            alive -= after_up
        moments.append(alive + dora_forward_bytes(linear, setup, tokens, recomputed=recomputed))
    return max(moments) // tp


def _own_output(linear: Linear, setup: TrainSetup, tokens: int) -> int:
    """With dropout, the base layer's own output, a local DoRA does not keep; without, it is among the saved."""
    assert setup.lora is not None
    return tokens * linear.out_features * activation_dtype_bytes(setup) if setup.lora.dropout > 0 else 0


def _made_after_up(
    spec: ModelSpec, setup: TrainSetup, up: Linear, down: Linear, tokens: int, *, down_locals: int
) -> int:
    """What down_proj's moment counts that up_proj's does not have yet: up_proj's output (the product keeps it),
    down_proj's LoRA and DoRA saved tensors, and of `down_locals` (down_proj's, `recompute.down_input_locals`) its
    input product and that product's cast, beyond the MLP's own locals."""
    cb = activation_dtype_bytes(setup)
    _, down_lora = linear_saves(down, setup, tokens, cb, spec.model_type)
    product_and_cast = down_locals - (mlp_forward_locals(spec, setup, tokens, tp=1) or 0)
    return (
        tokens * up.out_features * cb
        + down_lora
        + dora_saved_bytes_of(down, setup, tokens)
        + product_and_cast
    )


def dora_recompute_extra_bytes(spec: ModelSpec, setup: TrainSetup, tokens: int, *, tp: int = 1) -> int | None:
    """With checkpointing, the most a recomputed block holds beyond its saved tensors at one of its DoRA Linears'
    forward (`dora_forward_moment_bytes`' moment, the block recomputed in full by then), beside the gradients
    waiting at its output when backward asked for the recompute: the block output's (T × h, stream dtype) and the
    chain through down_proj's DoRA output (the cast back from the adapters' dtype, the base branch's and the scaled
    branch's: T × h each). None without DoRA."""
    moment = dora_forward_moment_bytes(spec, setup, tokens, tp=tp, recomputed=True)
    if moment is None:
        return None
    h = spec.hidden_size
    waiting = (
        tokens
        * h
        * (stream_bytes(setup) + activation_dtype_bytes(setup) + 3 * dtype_bytes(adapter_dtype(setup)))
    )
    return moment + waiting // tp
